// strata/model/gpt.hpp: the GPT-style decoder (SPEC.md §1) driven by an attention plan (§2):
// forward to logits, loss, backward into one gradient arena, and incremental decoding with a
// KV cache. Every variant runs through the same code: the resolved plan (attention/plan.hpp) says
// where each head's keys and values come from and which feature maps exist.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../attention/plan.hpp"
#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/types.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/check.hpp"
#include "../kernels/cross_entropy.hpp"
#include "../kernels/embedding.hpp"
#include "../kernels/gelu.hpp"
#include "../kernels/layernorm.hpp"
#include "../kernels/linear.hpp"
#include "config.hpp"
#include "kv_cache.hpp"
#include "parameters.hpp"
#include "workspace.hpp"

namespace strata {

/// A GPT-2 style decoder (pre-LayerNorm, learned positions, tied embeddings) whose attention
/// follows the configuration's plan. Scalar is float for training and double for gradient checks.
///
/// The parameters and their gradients are one flat arena each (parameters(), gradients()), with
/// named views (params(), grads()) whose names are the checkpoint names. Activations live in a
/// workspace owned by this model and sized on first use for a given batch shape; later steps of
/// the same shape allocate nothing.
template <typename Scalar>
class GPT {
 public:
  /// Validates cfg (strata::Error on a bad setting), allocates the arenas and initialises the
  /// parameters from cfg.seed as GPT-2 does (SPEC.md §1).
  explicit GPT(ModelConfig cfg)
      : cfg_((cfg.validate(), std::move(cfg))),
        plan_(cfg_.attention.resolve(cfg_.n_layer, cfg_.n_head, cfg_.n_embd)),
        layout_(cfg_, plan_),
        params_(Vector<Scalar>::Zero(layout_.total_size())),
        grads_(Vector<Scalar>::Zero(layout_.total_size())),
        p_(params_.data(), layout_),
        g_(grads_.data(), layout_) {
    init_parameters();
    plan_layout();
  }
  GPT(const GPT&) = delete;
  GPT& operator=(const GPT&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ParameterLayout& layout() const { return layout_; }
  /// The attention wiring: sources per block and head, and the feature maps.
  const ResolvedPlan& plan() const { return plan_; }
  /// table[l][h] = the key/value sources of head h of block l.
  const PlanTable& plan_table() const { return plan_.sources; }

  /// The flat parameter and gradient arenas (layout() says where each tensor lives). They are
  /// maps of storage the model owns: assigning to them copies values and never moves the storage
  /// that params() and grads() view.
  VectorMap<Scalar> parameters() { return VectorMap<Scalar>(params_.data(), params_.size()); }
  Eigen::Map<const Vector<Scalar>> parameters() const {
    return Eigen::Map<const Vector<Scalar>>(params_.data(), params_.size());
  }
  VectorMap<Scalar> gradients() { return VectorMap<Scalar>(grads_.data(), grads_.size()); }
  Eigen::Map<const Vector<Scalar>> gradients() const {
    return Eigen::Map<const Vector<Scalar>>(grads_.data(), grads_.size());
  }
  /// Named views of the arenas.
  ModelTensors<Scalar>& params() { return p_; }
  const ModelTensors<Scalar>& params() const { return p_; }
  ModelTensors<Scalar>& grads() { return g_; }
  const ModelTensors<Scalar>& grads() const { return g_; }
  Index num_parameters() const { return layout_.total_size(); }

  /// Called by forward_backward each time a range [begin, end) of gradients() is final, while the
  /// backward pass goes on. The ranges are disjoint, tile the arena from its end down to 0 and come
  /// in that order: first the top of the arena, from the lowest block b that reads a feature map
  /// (the final block when only it does, or when there are none) through ln_f and the feature maps;
  /// then every earlier block down to block 0, then the embeddings. A data-parallel communicator
  /// starts reducing each range here (strata/train/distributed.hpp); an empty hook (the default)
  /// does nothing.
  using GradientReadyHook = std::function<void(Index begin, Index end)>;
  void set_gradient_ready_hook(GradientReadyHook hook) { gradient_ready_ = std::move(hook); }

  /// Bytes of activation and backward scratch memory the model holds now: the workspace of
  /// forward/loss/forward_backward (sized by the largest batch seen) plus the one of
  /// forward_cached (KV caches are the caller's and not counted). Parameters and gradients
  /// (2 num_parameters() scalars) are not included either. Linear in batch x sequence length: the
  /// attention keeps only its output and one log-sum-exp per query and head.
  std::size_t workspace_bytes() const { return train_.bytes() + decode_.bytes(); }

  /// Re-initialises every parameter from the configuration's seed.
  void init_parameters() {
    Rng rng(cfg_.seed);
    for (const TensorInfo& t : layout_.tensors()) {
      Scalar* x = params_.data() + t.offset;
      for (Index i = 0; i < t.size(); ++i)
        x[i] = t.init_std > 0 ? Scalar(t.init_std * rng.normal()) : Scalar(t.init_value);
    }
  }

  /// Sets the gradient arena to zero, in blocks split between threads.
  void zero_grad() {
    constexpr Index kBlock = 65536;
    const Index n = grads_.size(), blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (blocks > 1)
    for (Index b = 0; b < blocks; ++b)
      grads_.segment(b * kBlock, std::min(kBlock, n - b * kBlock)).setZero();
  }

  /// Logits of every position, [B*T, V] (row b*T + t), for tokens [B, T] with T <= context.
  const Matrix<Scalar>& forward(ConstTokensRef tokens) {
    check_tokens("GPT::forward", tokens);
    prepare(train_, tokens.rows(), tokens.cols(), false);
    run_forward(train_, tokens, 0, nullptr);
    return train_.logits;
  }

  /// Mean cross-entropy (nats) of targets [B, T] given tokens [B, T]; no gradients.
  Scalar loss(ConstTokensRef tokens, ConstTokensRef targets) {
    forward(tokens);
    check_targets("GPT::loss", tokens, targets);
    return cross_entropy_forward<Scalar>(train_.losses, train_.ce_lse, train_.logits, targets);
  }

  /// Mean cross-entropy and its gradient: zeroes gradients(), runs forward and backward, and
  /// leaves d loss / d parameters in gradients().
  Scalar forward_backward(ConstTokensRef tokens, ConstTokensRef targets) {
    check_tokens("GPT::forward_backward", tokens);
    check_targets("GPT::forward_backward", tokens, targets);
    prepare(train_, tokens.rows(), tokens.cols(), true);
    run_forward(train_, tokens, 0, nullptr);
    const Scalar loss =
        cross_entropy_forward<Scalar>(train_.losses, train_.ce_lse, train_.logits, targets);
    zero_grad();
    run_backward(train_, tokens, targets);
    return loss;
  }

  /// Where the attention of block `layer` goes, per source: mass(b*T + t, s) is the softmax
  /// probability that query t puts on source s of its head (summed over that source's keys),
  /// averaged over heads; each row sums to 1. Sources are numbered as in plan_table()[layer][h], so
  /// column j is residual depth source_depths(layer)[j]. Every head of the block must have the
  /// same number of sources. tokens [B, T].
  Matrix<Scalar> attention_mass(ConstTokensRef tokens, Index layer);

  /// The residual-stream depths head 0 of block `layer` attends over, in source order (a layer
  /// source reads its block's input depth, a feature source the depth it maps).
  std::vector<Index> source_depths(Index layer) const {
    STRATA_CHECK(layer >= 0 && layer < cfg_.n_layer, "GPT::source_depths: layer ", layer,
                 " is out of range, expected 0..", cfg_.n_layer - 1);
    std::vector<Index> out;
    for (const SourceRef& s : plan_.sources[size_t(layer)][0]) out.push_back(source_depth(s));
    return out;
  }
  /// source_depths of the final block: for a shortcut plan the depths J of SPEC §2.3.
  std::vector<Index> shortcut_depths() const { return source_depths(cfg_.n_layer - 1); }

  /// An empty cache for `batch` sequences of up to `capacity` positions (0 = context_length; at
  /// most context_length). generate() asks for what it will use, so a short continuation of a
  /// model with a long context does not allocate the whole context.
  KVCache<Scalar> make_cache(Index batch = 1, Index capacity = 0) const {
    STRATA_CHECK(batch >= 1, "GPT::make_cache: batch ", batch, ", expected >= 1");
    STRATA_CHECK(capacity >= 0 && capacity <= cfg_.context_length, "GPT::make_cache: capacity ",
                 capacity, ", expected 0 (the context length) to ", cfg_.context_length);
    KVCache<Scalar> c;
    c.B_ = batch;
    c.capacity_ = capacity > 0 ? capacity : cfg_.context_length;
    const Index C = cfg_.n_embd;
    for (Index l = 0; l < cfg_.n_layer; ++l)
      c.layer_kv_.push_back(Matrix<Scalar>::Zero(batch * c.capacity_, 2 * C));
    for (size_t f = 0; f < plan_.features.size(); ++f)
      c.feature_kv_.push_back(Matrix<Scalar>::Zero(batch * c.capacity_, 2 * C));
    return c;
  }

  /// Appends tokens [B, Tq] (B = cache.batch()) at positions cache.length().. and returns their
  /// logits [B*Tq, V]; equal to the rows of a full forward() over the whole sequence.
  const Matrix<Scalar>& forward_cached(ConstTokensRef tokens, KVCache<Scalar>& cache) {
    const char* fn = "GPT::forward_cached";
    check_tokens(fn, tokens);
    if (cache.capacity_ < 1 || cache.capacity_ > cfg_.context_length
        || Index(cache.layer_kv_.size()) != cfg_.n_layer
        || cache.feature_kv_.size() != plan_.features.size())
      fail(fn, ": the cache was not made by a model of this configuration");
    if (tokens.rows() != cache.B_)
      fail(fn, ": tokens have ", tokens.rows(), " rows, expected ", cache.B_,
           " (the cache's batch)");
    const Index pos0 = cache.length_, Tq = tokens.cols();
    if (pos0 + Tq > cache.capacity_)
      fail(fn, ": the cache holds ", pos0, " of ", cache.capacity_, " positions; ", Tq,
           " more tokens do not fit (clear the cache or start a shorter window)");
    prepare(decode_, tokens.rows(), Tq, false);
    run_forward(decode_, tokens, pos0, &cache);
    cache.length_ = pos0 + Tq;
    return decode_.logits;
  }

 private:
  // ---- validation ------------------------------------------------------------------------------
  void check_tokens(const char* fn, ConstTokensRef tokens) const {
    if (tokens.rows() < 1 || tokens.cols() < 1)
      fail(fn, ": tokens have shape [", tokens.rows(), ", ", tokens.cols(),
           "], expected at least one row and one column");
    if (tokens.cols() > cfg_.context_length)
      fail(fn, ": sequence length ", tokens.cols(), " exceeds the context length ",
           cfg_.context_length);
    detail::check_ids(fn, "token", tokens, cfg_.vocab_size);
  }
  void check_targets(const char* fn, ConstTokensRef tokens, ConstTokensRef targets) const {
    if (targets.rows() != tokens.rows() || targets.cols() != tokens.cols())
      fail(fn, ": targets have shape [", targets.rows(), ", ", targets.cols(), "], expected [",
           tokens.rows(), ", ", tokens.cols(), "] (the shape of tokens)");
    detail::check_ids(fn, "target", targets, cfg_.vocab_size);
  }

  // ---- plan → computation layout ---------------------------------------------------------------
  // Which own K/V columns each block must compute (a head's K/V nobody reads is skipped, e.g. the
  // skip heads of a split skip-layer plan), as contiguous column runs of the [N, 3C] qkv buffer.
  void plan_layout() {
    const Index L = cfg_.n_layer, NH = cfg_.n_head, C = cfg_.n_embd, hs = cfg_.head_size();
    std::vector<std::vector<bool>> read(size_t(L), std::vector<bool>(size_t(NH), false));
    for (const auto& layer : plan_.sources)
      for (const auto& head : layer)
        for (const SourceRef& s : head)
          if (s.is_layer()) read[size_t(s.index)][size_t(s.head)] = true;
    qkv_runs_.assign(size_t(L), {});
    for (Index l = 0; l < L; ++l) {
      std::vector<bool> col(size_t(3 * C), false);
      for (Index c = 0; c < C; ++c) col[size_t(c)] = true;  // queries are always needed
      for (Index h = 0; h < NH; ++h)
        if (read[size_t(l)][size_t(h)])
          for (Index i = 0; i < hs; ++i)
            col[size_t(C + h * hs + i)] = col[size_t(2 * C + h * hs + i)] = true;
      for (Index c = 0; c < 3 * C;) {
        if (!col[size_t(c)]) {
          ++c;
          continue;
        }
        Index e = c;
        while (e < 3 * C && col[size_t(e)]) ++e;
        qkv_runs_[size_t(l)].push_back({c, e - c});
        c = e;
      }
    }
    features_of_block_.assign(size_t(L), {});
    features_of_depth_.assign(size_t(L + 1), {});
    for (Index l = 0; l < L; ++l) features_of_block_[size_t(l)] = plan_.features_of_block(l);
    for (Index d = 0; d <= L; ++d) features_of_depth_[size_t(d)] = plan_.features_of_depth(d);
    hook_top_block_ = L - 1;
    for (const FeatureMap& f : plan_.features) hook_top_block_ = std::min(hook_top_block_, f.block);
  }

  // ---- workspace -------------------------------------------------------------------------------
  void prepare(Workspace<Scalar>& ws, Index B, Index T, bool grads) {
    ws.prepare(B, T, grads, cfg_.n_layer, cfg_.n_head, cfg_.n_embd, cfg_.mlp_width(),
               cfg_.vocab_size, plan_);
  }

  // Points every head's sources at the K/V it reads: the workspace's qkv/feature buffers in
  // training, the cache when decoding.
  void bind_sources(Workspace<Scalar>& ws, KVCache<Scalar>* cache, Index pos0) {
    const Index C = cfg_.n_embd, hs = cfg_.head_size(), NH = cfg_.n_head;
    const Index length = pos0 + ws.T;
    for (Index l = 0; l < cfg_.n_layer; ++l) {
      AttentionSources<Scalar>& src = ws.sources[l];
      src.reset(NH);
      for (Index h = 0; h < NH; ++h)
        for (const SourceRef& r : plan_.sources[size_t(l)][size_t(h)]) {
          // Rows hold keys then values, C apart: [k | v] in the cache and feature buffers,
          // [q | k | v] in a block's qkv buffer.
          KVSource<Scalar> s;
          Scalar* base = nullptr;
          Scalar* dbase = nullptr;
          Index k_off = r.head * hs;
          const Index f = r.is_feature() ? plan_.feature_index(l, r.index) : -1;
          STRATA_ASSERT(r.is_layer() || f >= 0);  // resolve() made a map for every feature source
          if (cache) {
            base = r.is_layer() ? cache->layer_kv_[size_t(r.index)].data()
                                : cache->feature_kv_[size_t(f)].data();
            s.row_stride = 2 * C;
            s.batch_stride = cache->capacity_ * 2 * C;
          } else if (r.is_layer()) {
            base = ws.layers[size_t(r.index)].qkv.data();
            if (ws.grads) dbase = ws.layers[size_t(r.index)].dqkv.data();
            k_off += C;
            s.row_stride = 3 * C;
            s.batch_stride = ws.T * 3 * C;
          } else {
            FeatureActs<Scalar>& fa = ws.features[size_t(f)];
            base = fa.kv.data();
            if (ws.grads) dbase = fa.dkv.data();
            s.row_stride = 2 * C;
            s.batch_stride = ws.T * 2 * C;
          }
          s.k = base + k_off;
          s.v = base + k_off + C;
          if (dbase) {
            s.dk = dbase + k_off;
            s.dv = dbase + k_off + C;
          }
          s.length = length;
          src.add(h, s);
        }
    }
  }

  // h_depth: the embeddings or the output of block block_writing(depth).
  const Matrix<Scalar>& residual(const Workspace<Scalar>& ws, Index depth) const {
    return depth == 0 ? ws.embed : ws.layers[size_t(block_writing(depth))].res_out;
  }

  // Appends rows [N, 2C] (keys then values at column offset col) of src to a cache at pos0.
  void append_to_cache(Matrix<Scalar>& cache_kv, const Matrix<Scalar>& src, Index col, Index B,
                       Index T, Index pos0, Index capacity) const {
    const Index C = cfg_.n_embd;
    for (Index b = 0; b < B; ++b)
      cache_kv.middleRows(b * capacity + pos0, T) = src.block(b * T, col, T, 2 * C);
  }

  // ---- forward ---------------------------------------------------------------------------------
  // Runs the decoder on tokens [B, T] at absolute positions pos0..pos0+T-1. With a cache, the new
  // K/V rows are appended to it and attention reads the cache; otherwise attention reads ws.
  void run_forward(Workspace<Scalar>& ws, ConstTokensRef tokens, Index pos0,
                   KVCache<Scalar>* cache);

  // out = [*residual +] proj(gelu(fc(LN(in)))): a block's MLP (with its residual) or a feature map.
  // in [N, C], hidden [N, Cf or 4C], out [N, C].
  static void mlp_forward(MlpActs<Scalar>& a, Matrix<Scalar>& out, const Matrix<Scalar>& in,
                          const VectorMap<Scalar>& ln_w, const VectorMap<Scalar>& ln_b,
                          const MatrixMap<Scalar>& fc_w, const VectorMap<Scalar>& fc_b,
                          const MatrixMap<Scalar>& proj_w, const VectorMap<Scalar>& proj_b,
                          const Matrix<Scalar>* residual) {
    layernorm_forward<Scalar>(a.ln, a.mean, a.rstd, in, ln_w, ln_b);
    linear_forward<Scalar>(a.fc, a.ln, fc_w);  // its bias is added by bias_gelu_forward
    bias_gelu_forward<Scalar>(a.gelu, a.fc, fc_b);
    if (residual)
      linear_forward<Scalar>(out, a.gelu, proj_w, proj_b, *residual);
    else
      linear_forward<Scalar>(out, a.gelu, proj_w, proj_b);
  }

  // Mirror of mlp_forward: d in += (d out through the MLP and LN); the residual's share of d out is
  // the caller's (it is d out itself). dout may alias din (read before din is written).
  static void mlp_backward(Matrix<Scalar>& din, VectorMap<Scalar>& gln_w, VectorMap<Scalar>& gln_b,
                           MatrixMap<Scalar>& gfc_w, VectorMap<Scalar>& gfc_b,
                           MatrixMap<Scalar>& gproj_w, VectorMap<Scalar>& gproj_b,
                           const Matrix<Scalar>& dout, const MlpActs<Scalar>& a,
                           const Matrix<Scalar>& in, const VectorMap<Scalar>& ln_w,
                           const MatrixMap<Scalar>& fc_w, const MatrixMap<Scalar>& proj_w,
                           Matrix<Scalar>& dgelu, Matrix<Scalar>& dfc, Matrix<Scalar>& dln) {
    // dgelu, dfc and dln are this pass's own scratch: written, not accumulated (no zeroing pass)
    linear_backward<Scalar>(dgelu, gproj_w, gproj_b, dout, a.gelu, proj_w, InputGrad::overwrite);
    gelu_backward<Scalar>(dfc, dgelu, a.fc, InputGrad::overwrite);
    linear_backward<Scalar>(dln, gfc_w, gfc_b, dfc, a.ln, fc_w, InputGrad::overwrite);
    layernorm_backward<Scalar>(din, gln_w, gln_b, dln, in, a.mean, a.rstd, ln_w);
  }

  // z = MLP(LN(h)); kv = z Wkv^T + bkv with the consuming block's key/value weights.
  void feature_forward(FeatureActs<Scalar>& f, const FeatureTensors<Scalar>& w,
                       const Matrix<Scalar>& h, const BlockTensors<Scalar>& block) {
    const Index C = cfg_.n_embd;
    mlp_forward(f.mlp, f.z, h, w.ln_w, w.ln_b, w.fc_w, w.fc_b, w.proj_w, w.proj_b, nullptr);
    linear_forward<Scalar>(f.kv, f.z, block.qkv_w.middleRows(C, 2 * C),
                           block.qkv_b.segment(C, 2 * C));
  }

  // ---- backward --------------------------------------------------------------------------------
  // Mirror of run_forward for the mean loss; accumulates into the (zeroed) gradient arena. Blocks
  // are visited L-1..0, so every head that reads an earlier block's K/V (skip layers) and every
  // feature map of an earlier depth has added its share before that block's or depth's own
  // backward reads it.
  void run_backward(Workspace<Scalar>& ws, ConstTokensRef tokens, ConstTokensRef targets);
  // First element of block l's tensors in the arena.
  Index block_offset(Index l) const { return Index(g_.blocks[l].ln1_w.data() - grads_.data()); }

  // Mirror of feature_forward; d h accumulates into f.dres, added to the residual gradient of its
  // depth when the backward pass reaches it.
  void feature_backward(Workspace<Scalar>& ws, FeatureActs<Scalar>& f,
                        const FeatureTensors<Scalar>& w, FeatureTensors<Scalar>& gw,
                        const Matrix<Scalar>& h, const BlockTensors<Scalar>& block,
                        BlockTensors<Scalar>& gblock) {
    const Index C = cfg_.n_embd;
    linear_backward<Scalar>(ws.dz, gblock.qkv_w.middleRows(C, 2 * C),
                            gblock.qkv_b.segment(C, 2 * C), f.dkv, f.z,
                            block.qkv_w.middleRows(C, 2 * C), InputGrad::overwrite);
    mlp_backward(f.dres, gw.ln_w, gw.ln_b, gw.fc_w, gw.fc_b, gw.proj_w, gw.proj_b, ws.dz, f.mlp, h,
                 w.ln_w, w.fc_w, w.proj_w, f.dgelu, f.dfc, ws.dln);
  }

  ModelConfig cfg_;
  ResolvedPlan plan_;
  ParameterLayout layout_;
  Vector<Scalar> params_, grads_;
  ModelTensors<Scalar> p_, g_;
  std::vector<std::vector<std::pair<Index, Index>>> qkv_runs_;
  std::vector<std::vector<Index>> features_of_block_, features_of_depth_;
  GradientReadyHook gradient_ready_;
  Index hook_top_block_ = 0;  // the lowest block that reads a feature map, or L - 1

  Workspace<Scalar> train_, decode_;
};

// ---- the passes, out of line ----------------------------------------------------------------

template <typename Scalar>
Matrix<Scalar> GPT<Scalar>::attention_mass(ConstTokensRef tokens, Index layer) {
  const char* fn = "GPT::attention_mass";
  if (layer < 0 || layer >= cfg_.n_layer)
    fail(fn, ": layer ", layer, " is out of range, expected 0..", cfg_.n_layer - 1);
  const auto& heads = plan_.sources[size_t(layer)];
  const Index NH = cfg_.n_head, S = Index(heads[0].size());
  for (Index h = 1; h < NH; ++h)
    if (Index(heads[size_t(h)].size()) != S)
      fail(fn, ": the heads of layer ", layer, " have different numbers of sources (head 0 has ", S,
           ", head ", h, " has ", heads[size_t(h)].size(), ")");
  forward(tokens);
  const LayerActs<Scalar>& a = train_.layers[size_t(layer)];
  Matrix<Scalar> per_head(a.qkv.rows(), NH * S);
  attention_source_mass(per_head, a.qkv.leftCols(cfg_.n_embd), a.lse, train_.sources[layer],
                        train_.B, 0);
  Matrix<Scalar> mass = Matrix<Scalar>::Zero(per_head.rows(), S);
  for (Index h = 0; h < NH; ++h) mass += per_head.middleCols(h * S, S);
  return mass / Scalar(NH);
}

template <typename Scalar>
void GPT<Scalar>::run_forward(Workspace<Scalar>& ws, ConstTokensRef tokens, Index pos0,
                              KVCache<Scalar>* cache) {
  const Index B = ws.B, T = ws.T, C = cfg_.n_embd, L = cfg_.n_layer;
  bind_sources(ws, cache, pos0);
  embedding_forward<Scalar>(ws.embed, tokens, p_.wte, p_.wpe, pos0);
  for (Index l = 0; l < L; ++l) {
    LayerActs<Scalar>& a = ws.layers[size_t(l)];
    const BlockTensors<Scalar>& p = p_.blocks[size_t(l)];
    const Matrix<Scalar>& in = residual(ws, input_depth(l));
    layernorm_forward<Scalar>(a.ln1, a.ln1_mean, a.ln1_rstd, in, p.ln1_w, p.ln1_b);
    for (const auto& [c0, w] : qkv_runs_[size_t(l)])
      linear_forward<Scalar>(a.qkv.middleCols(c0, w), a.ln1, p.qkv_w.middleRows(c0, w),
                             p.qkv_b.segment(c0, w));
    if (cache) append_to_cache(cache->layer_kv_[size_t(l)], a.qkv, C, B, T, pos0, cache->capacity_);
    for (Index f : features_of_block_[size_t(l)]) {
      FeatureActs<Scalar>& fa = ws.features[size_t(f)];
      feature_forward(fa, p_.features[size_t(f)], residual(ws, plan_.features[size_t(f)].depth), p);
      if (cache)
        append_to_cache(cache->feature_kv_[size_t(f)], fa.kv, 0, B, T, pos0, cache->capacity_);
    }
    attention_forward<Scalar>(a.att, a.lse, a.qkv.leftCols(C), ws.sources[size_t(l)], B, pos0);
    linear_forward<Scalar>(a.res_attn, a.att, p.proj_w, p.proj_b, in);
    mlp_forward(a.mlp, a.res_out, a.res_attn, p.ln2_w, p.ln2_b, p.fc_w, p.fc_b, p.fcproj_w,
                p.fcproj_b, &a.res_attn);
  }
  layernorm_forward<Scalar>(ws.lnf, ws.lnf_mean, ws.lnf_rstd, ws.layers[size_t(L - 1)].res_out,
                            p_.lnf_w, p_.lnf_b);
  linear_forward<Scalar>(ws.logits, ws.lnf, p_.wte);
}

template <typename Scalar>
void GPT<Scalar>::run_backward(Workspace<Scalar>& ws, ConstTokensRef tokens,
                               ConstTokensRef targets) {
  const Index B = ws.B, N = ws.B * ws.T, C = cfg_.n_embd, L = cfg_.n_layer;
  cross_entropy_backward<Scalar>(ws.dlogits, ws.logits, ws.ce_lse, targets, Scalar(1) / Scalar(N),
                                 InputGrad::overwrite);
  linear_backward<Scalar>(ws.dln, g_.wte, ws.dlogits, ws.lnf, p_.wte, InputGrad::overwrite);
  layernorm_backward<Scalar>(ws.dres, g_.lnf_w, g_.lnf_b, ws.dln, ws.layers[size_t(L - 1)].res_out,
                             ws.lnf_mean, ws.lnf_rstd, p_.lnf_w, InputGrad::overwrite);
  // the buffers that several passes add to (skip heads and feature maps write earlier blocks')
  for (LayerActs<Scalar>& a : ws.layers) detail::set_zero<Scalar>(a.dqkv);
  for (FeatureActs<Scalar>& f : ws.features) {
    detail::set_zero<Scalar>(f.dkv);
    detail::set_zero<Scalar>(f.dres);
  }

  for (Index l = L - 1; l >= 0; --l) {
    LayerActs<Scalar>& a = ws.layers[size_t(l)];
    const BlockTensors<Scalar>& p = p_.blocks[size_t(l)];
    BlockTensors<Scalar>& g = g_.blocks[size_t(l)];
    const Matrix<Scalar>& in = residual(ws, input_depth(l));
    // h_out = res_attn + MLP(ln2(res_attn)); ws.dres holds d h_out and becomes d res_attn
    mlp_backward(ws.dres, g.ln2_w, g.ln2_b, g.fc_w, g.fc_b, g.fcproj_w, g.fcproj_b, ws.dres, a.mlp,
                 a.res_attn, p.ln2_w, p.fc_w, p.fcproj_w, ws.dgelu, ws.dfc, ws.dln);
    // res_attn = in + proj(attention(q, sources)); ws.dres now holds d res_attn
    linear_backward<Scalar>(ws.datt, g.proj_w, g.proj_b, ws.dres, a.att, p.proj_w,
                            InputGrad::overwrite);
    attention_backward<Scalar>(a.dqkv.leftCols(C), ws.datt, a.qkv.leftCols(C), a.att, a.lse,
                               ws.sources[size_t(l)], B, 0);
    for (Index f : features_of_block_[size_t(l)])
      feature_backward(ws, ws.features[size_t(f)], p_.features[size_t(f)], g_.features[size_t(f)],
                       residual(ws, plan_.features[size_t(f)].depth), p, g);
    // the first run of q/k/v columns writes d ln1, the others add to it
    InputGrad dln_mode = InputGrad::overwrite;
    for (const auto& [c0, w] : qkv_runs_[size_t(l)]) {
      linear_backward<Scalar>(ws.dln, g.qkv_w.middleRows(c0, w), g.qkv_b.segment(c0, w),
                              a.dqkv.middleCols(c0, w), a.ln1, p.qkv_w.middleRows(c0, w), dln_mode);
      dln_mode = InputGrad::accumulate;
    }
    if (dln_mode == InputGrad::overwrite) ws.dln.setZero();  // no run: no gradient through ln1
    layernorm_backward<Scalar>(ws.dres, g.ln1_w, g.ln1_b, ws.dln, in, a.ln1_mean, a.ln1_rstd,
                               p.ln1_w);
    // ws.dres now holds d h_l; add what the feature maps of depth l send back
    for (Index f : features_of_depth_[size_t(input_depth(l))])
      ws.dres += ws.features[size_t(f)].dres;
    // Block l's tensors get no more gradient; the top of the arena (the final block, ln_f and
    // every feature map, which follow the blocks in the layout) is final once the lowest block
    // that reads a feature map is done.
    if (gradient_ready_ && l <= hook_top_block_)
      gradient_ready_(block_offset(l), l == hook_top_block_ ? grads_.size() : block_offset(l + 1));
  }
  embedding_backward<Scalar>(g_.wte, g_.wpe, ws.dres, tokens, 0);
  if (gradient_ready_) gradient_ready_(0, block_offset(0));
}
// The passes above are defined outside the class, so that they are not inline: a program that
// defines STRATA_EXTERN_TEMPLATES compiles them for float and double once, in the one file that
// holds the explicit instantiations `template class strata::GPT<float>;` and
// `template class strata::GPT<double>;` (compiled with the same Eigen settings), instead of in
// every file that uses the model. strata's own tests build this way (tests/instances.cpp).
#if defined(STRATA_EXTERN_TEMPLATES)
extern template class GPT<float>;
extern template class GPT<double>;
#endif

}  // namespace strata
