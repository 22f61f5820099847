// strata/model/gpt.hpp: the GPT-style decoder (SPEC.md §1) driven by an attention plan (§2):
// forward to logits, loss, backward into one gradient arena, and incremental decoding with a
// KV cache. Every variant runs through the same code; the plan table decides where each head's
// keys and values come from.
#pragma once

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
#include "parameters.hpp"

namespace strata {

template <typename Scalar>
class GPT;

/// Keys and values of every layer (and of every shortcut depth) for incremental decoding.
/// Made by GPT::make_cache; holds `capacity` = context_length positions for `batch` sequences.
template <typename Scalar>
class KVCache {
 public:
  KVCache() = default;
  Index batch() const { return B_; }
  Index capacity() const { return capacity_; }
  /// Positions already in the cache (the absolute position of the next token).
  Index length() const { return length_; }
  /// Forgets the cached positions (keeps the memory).
  void clear() { length_ = 0; }
  /// Bytes held by the cache, all layers.
  Index bytes() const {
    Index n = 0;
    for (const auto& m : layer_kv_) n += m.size();
    for (const auto& m : feature_kv_) n += m.size();
    return n * Index(sizeof(Scalar));
  }

 private:
  friend class GPT<Scalar>;
  Index B_ = 0, capacity_ = 0, length_ = 0;
  std::vector<Matrix<Scalar>> layer_kv_;    ///< per block: [B*capacity, 2C], keys then values
  std::vector<Matrix<Scalar>> feature_kv_;  ///< per shortcut feature depth: [B*capacity, 2C]
};

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
        layout_(cfg_),
        table_(cfg_.attention.table(int(cfg_.n_layer), int(cfg_.n_head))),
        params_(Vector<Scalar>::Zero(layout_.total_size())),
        grads_(Vector<Scalar>::Zero(layout_.total_size())),
        p_(params_.data(), layout_, cfg_),
        g_(grads_.data(), layout_, cfg_) {
    init_parameters();
    plan_layout();
  }
  GPT(const GPT&) = delete;
  GPT& operator=(const GPT&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ParameterLayout& layout() const { return layout_; }
  /// table[l][h] = the key/value sources of head h of block l.
  const PlanTable& plan_table() const { return table_; }

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
  /// backward pass goes on: first the final block with ln_f and any shortcut features, then every
  /// earlier block down to block 0, then the embeddings. The ranges are disjoint and cover the
  /// arena. A data-parallel communicator starts reducing each range here
  /// (strata/train/distributed.hpp); an empty hook (the default) does nothing.
  using GradientReadyHook = std::function<void(Index begin, Index end)>;
  void set_gradient_ready_hook(GradientReadyHook hook) { gradient_ready_ = std::move(hook); }

  /// Bytes of activation and backward scratch memory the model holds now: the workspace of
  /// forward/loss/forward_backward (sized by the largest batch seen) plus the one of
  /// forward_cached (KV caches are the caller's and not counted). Parameters and gradients
  /// (2 num_parameters() scalars) are not included either. Linear in batch x sequence length: the
  /// attention keeps only its output and one log-sum-exp per query and head.
  std::size_t workspace_bytes() const { return bytes_of(train_) + bytes_of(decode_); }

  /// Re-initialises every parameter from the configuration's seed.
  void init_parameters() {
    Rng rng(cfg_.seed);
    for (const TensorInfo& t : layout_.tensors()) {
      Scalar* x = params_.data() + t.offset;
      for (Index i = 0; i < t.size(); ++i)
        x[i] = t.init_std > 0 ? Scalar(t.init_std * rng.normal()) : Scalar(t.init_value);
    }
  }

  void zero_grad() { grads_.setZero(); }

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
  /// for a shortcut plan's final block, column j is depth shortcut_depths()[j]. Every head of the
  /// block must have the same number of sources. tokens [B, T].
  Matrix<Scalar> attention_mass(ConstTokensRef tokens, Index layer) {
    const char* fn = "GPT::attention_mass";
    if (layer < 0 || layer >= cfg_.n_layer)
      fail(fn, ": layer ", layer, " is out of range, expected 0..", cfg_.n_layer - 1);
    const Index NH = cfg_.n_head, S = Index(table_[layer][0].size());
    for (Index h = 1; h < NH; ++h)
      if (Index(table_[layer][h].size()) != S)
        fail(fn, ": the heads of layer ", layer, " have different numbers of sources (head 0 has ",
             S, ", head ", h, " has ", table_[layer][h].size(), ")");
    forward(tokens);
    const LayerActs& a = train_.layers[layer];
    Matrix<Scalar> per_head(a.qkv.rows(), NH * S);
    attention_source_mass(per_head, a.qkv.leftCols(cfg_.n_embd), a.lse, train_.sources[layer],
                          train_.B, 0);
    Matrix<Scalar> mass = Matrix<Scalar>::Zero(per_head.rows(), S);
    for (Index h = 0; h < NH; ++h) mass += per_head.middleCols(h * S, S);
    return mass / Scalar(NH);
  }

  /// The residual-stream depths the final block attends over, in source order (shortcut plans;
  /// for other plans, {n_layer - 1}: the final block's own input).
  std::vector<int> shortcut_depths() const {
    if (cfg_.attention.kind() != AttentionPlan::Kind::shortcut) return {int(cfg_.n_layer) - 1};
    return cfg_.attention.resolved_depths(int(cfg_.n_layer));
  }

  /// An empty cache for `batch` sequences of up to context_length positions.
  KVCache<Scalar> make_cache(Index batch = 1) const {
    STRATA_CHECK(batch >= 1, "GPT::make_cache: batch ", batch, ", expected >= 1");
    KVCache<Scalar> c;
    c.B_ = batch;
    c.capacity_ = cfg_.context_length;
    const Index C = cfg_.n_embd;
    for (Index l = 0; l < cfg_.n_layer; ++l)
      c.layer_kv_.push_back(Matrix<Scalar>::Zero(batch * c.capacity_, 2 * C));
    for (size_t f = 0; f < p_.features.size(); ++f)
      c.feature_kv_.push_back(Matrix<Scalar>::Zero(batch * c.capacity_, 2 * C));
    return c;
  }

  /// Appends tokens [B, Tq] (B = cache.batch()) at positions cache.length().. and returns their
  /// logits [B*Tq, V]; equal to the rows of a full forward() over the whole sequence.
  const Matrix<Scalar>& forward_cached(ConstTokensRef tokens, KVCache<Scalar>& cache) {
    const char* fn = "GPT::forward_cached";
    check_tokens(fn, tokens);
    if (cache.capacity_ != cfg_.context_length || Index(cache.layer_kv_.size()) != cfg_.n_layer ||
        cache.feature_kv_.size() != p_.features.size())
      fail(fn, ": the cache was not made by a model of this configuration");
    if (tokens.rows() != cache.B_)
      fail(fn, ": tokens have ", tokens.rows(), " rows, expected ", cache.B_, " (the cache's batch)");
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
  struct LayerActs {
    Matrix<Scalar> ln1, qkv, att, lse, res_attn, ln2, fc, gelu, res_out, dqkv;
    Vector<Scalar> ln1_mean, ln1_rstd, ln2_mean, ln2_rstd;
  };
  struct FeatureActs {  // one shortcut depth: z = proj(gelu(fc(LN(h_r)))), kv = z Wkv^T + bkv
    Matrix<Scalar> ln, fc, gelu, z, kv, dkv, dres;
    Vector<Scalar> mean, rstd;
  };
  struct Workspace {
    Index B = 0, T = 0;
    bool grads = false;
    Matrix<Scalar> embed;  // h_0
    std::vector<LayerActs> layers;
    std::vector<FeatureActs> features;
    Matrix<Scalar> lnf, logits;
    Vector<Scalar> lnf_mean, lnf_rstd, ce_lse, losses;
    // backward scratch, reused by every layer
    Matrix<Scalar> dres, dln, datt, dfc, dgelu, dlogits, dz, dfeat_fc, dfeat_gelu;
    std::vector<AttentionSources<Scalar>> sources;
  };

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
  // skip heads of a split skip-layer plan), as contiguous column runs of the [N, 3C] qkv buffer;
  // and the feature index of each shortcut depth.
  void plan_layout() {
    const Index L = cfg_.n_layer, NH = cfg_.n_head, C = cfg_.n_embd, hs = cfg_.head_size();
    std::vector<std::vector<bool>> read(L, std::vector<bool>(NH, false));
    for (const auto& layer : table_)
      for (const auto& head : layer)
        for (const SourceRef& s : head)
          if (s.kind == SourceKind::layer) read[s.index][s.head] = true;
    qkv_runs_.assign(L, {});
    for (Index l = 0; l < L; ++l) {
      std::vector<bool> col(3 * C, false);
      for (Index c = 0; c < C; ++c) col[c] = true;  // queries are always needed
      for (Index h = 0; h < NH; ++h)
        if (read[l][h])
          for (Index i = 0; i < hs; ++i) col[C + h * hs + i] = col[2 * C + h * hs + i] = true;
      for (Index c = 0; c < 3 * C;) {
        if (!col[c]) { ++c; continue; }
        Index e = c;
        while (e < 3 * C && col[e]) ++e;
        qkv_runs_[l].push_back({c, e - c});
        c = e;
      }
    }
    feature_of_depth_.assign(L + 1, -1);
    for (size_t f = 0; f < p_.features.size(); ++f) feature_of_depth_[p_.features[f].depth] = int(f);
  }

  // ---- workspace -------------------------------------------------------------------------------
  void prepare(Workspace& ws, Index B, Index T, bool grads) {
    if (ws.B == B && ws.T == T && (ws.grads || !grads)) return;
    const Index N = B * T, C = cfg_.n_embd, H = cfg_.mlp_width(), V = cfg_.vocab_size;
    const Index NH = cfg_.n_head, Cf = cfg_.feature_width();
    auto mat = [](Index r, Index c) { return Matrix<Scalar>::Zero(r, c).eval(); };
    auto vec = [](Index n) { return Vector<Scalar>::Zero(n).eval(); };
    ws.B = B;
    ws.T = T;
    ws.grads = grads;
    ws.embed = mat(N, C);
    ws.layers.assign(cfg_.n_layer, LayerActs{});
    for (LayerActs& a : ws.layers) {
      a.ln1 = mat(N, C); a.qkv = mat(N, 3 * C); a.att = mat(N, C); a.lse = mat(N, NH);
      a.res_attn = mat(N, C); a.ln2 = mat(N, C); a.fc = mat(N, H); a.gelu = mat(N, H);
      a.res_out = mat(N, C);
      a.ln1_mean = vec(N); a.ln1_rstd = vec(N); a.ln2_mean = vec(N); a.ln2_rstd = vec(N);
      if (grads) a.dqkv = mat(N, 3 * C);
    }
    ws.features.assign(p_.features.size(), FeatureActs{});
    for (FeatureActs& f : ws.features) {
      f.ln = mat(N, C); f.fc = mat(N, Cf); f.gelu = mat(N, Cf); f.z = mat(N, C);
      f.kv = mat(N, 2 * C); f.mean = vec(N); f.rstd = vec(N);
      if (grads) { f.dkv = mat(N, 2 * C); f.dres = mat(N, C); }
    }
    ws.lnf = mat(N, C); ws.logits = mat(N, V);
    ws.lnf_mean = vec(N); ws.lnf_rstd = vec(N); ws.ce_lse = vec(N); ws.losses = vec(N);
    if (grads) {
      ws.dres = mat(N, C); ws.dln = mat(N, C); ws.datt = mat(N, C); ws.dfc = mat(N, H);
      ws.dgelu = mat(N, H); ws.dlogits = mat(N, V);
      if (!ws.features.empty()) { ws.dz = mat(N, C); ws.dfeat_fc = mat(N, Cf); ws.dfeat_gelu = mat(N, Cf); }
    }
    ws.sources.assign(cfg_.n_layer, AttentionSources<Scalar>(NH));
  }

  // Points every head's sources at the K/V it reads: the workspace's qkv/feature buffers in
  // training, the cache when decoding.
  void bind_sources(Workspace& ws, KVCache<Scalar>* cache, Index pos0) {
    const Index C = cfg_.n_embd, hs = cfg_.head_size(), NH = cfg_.n_head;
    const Index length = pos0 + ws.T;
    for (Index l = 0; l < cfg_.n_layer; ++l) {
      AttentionSources<Scalar>& src = ws.sources[l];
      src.reset(NH);
      for (Index h = 0; h < NH; ++h)
        for (const SourceRef& r : table_[l][h]) {
          // Rows hold keys then values, C apart: [k | v] in the cache and feature buffers,
          // [q | k | v] in a block's qkv buffer.
          KVSource<Scalar> s;
          Scalar* base = nullptr;
          Scalar* dbase = nullptr;
          Index k_off = r.head * hs;
          if (cache) {
            base = r.kind == SourceKind::layer ? cache->layer_kv_[r.index].data()
                                               : cache->feature_kv_[feature_of_depth_[r.index]].data();
            s.row_stride = 2 * C;
            s.batch_stride = cache->capacity_ * 2 * C;
          } else if (r.kind == SourceKind::layer) {
            base = ws.layers[r.index].qkv.data();
            if (ws.grads) dbase = ws.layers[r.index].dqkv.data();
            k_off += C;
            s.row_stride = 3 * C;
            s.batch_stride = ws.T * 3 * C;
          } else {
            FeatureActs& f = ws.features[feature_of_depth_[r.index]];
            base = f.kv.data();
            if (ws.grads) dbase = f.dkv.data();
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

  const Matrix<Scalar>& residual(const Workspace& ws, Index depth) const {
    return depth == 0 ? ws.embed : ws.layers[depth - 1].res_out;
  }

  // Appends rows [N, 2C] (keys then values at column offset col) of src to a cache at pos0.
  void append_to_cache(Matrix<Scalar>& cache_kv, const Matrix<Scalar>& src, Index col, Index B,
                       Index T, Index pos0, Index capacity) const {
    const Index C = cfg_.n_embd;
    for (Index b = 0; b < B; ++b)
      cache_kv.middleRows(b * capacity + pos0, T) = src.block(b * T, col, T, 2 * C);
  }

  // ---- forward -----------------------------------------------------------------------------------
  // Runs the decoder on tokens [B, T] at absolute positions pos0..pos0+T-1. With a cache, the new
  // K/V rows are appended to it and attention reads the cache; otherwise attention reads ws.
  void run_forward(Workspace& ws, ConstTokensRef tokens, Index pos0, KVCache<Scalar>* cache) {
    const Index B = ws.B, T = ws.T, C = cfg_.n_embd, L = cfg_.n_layer;
    bind_sources(ws, cache, pos0);
    embedding_forward<Scalar>(ws.embed, tokens, p_.wte, p_.wpe, pos0);
    for (Index l = 0; l < L; ++l) {
      LayerActs& a = ws.layers[l];
      const BlockTensors<Scalar>& p = p_.blocks[l];
      const Matrix<Scalar>& in = residual(ws, l);
      layernorm_forward<Scalar>(a.ln1, a.ln1_mean, a.ln1_rstd, in, p.ln1_w, p.ln1_b);
      for (const auto& [c0, w] : qkv_runs_[l])
        linear_forward<Scalar>(a.qkv.middleCols(c0, w), a.ln1, p.qkv_w.middleRows(c0, w),
                               p.qkv_b.segment(c0, w));
      if (cache) append_to_cache(cache->layer_kv_[l], a.qkv, C, B, T, pos0, cache->capacity_);
      if (l == L - 1)
        for (size_t f = 0; f < ws.features.size(); ++f) {
          feature_forward(ws.features[f], p_.features[f], residual(ws, p_.features[f].depth), p);
          if (cache)
            append_to_cache(cache->feature_kv_[f], ws.features[f].kv, 0, B, T, pos0,
                            cache->capacity_);
        }
      attention_forward<Scalar>(a.att, a.lse, a.qkv.leftCols(C), ws.sources[l], B, pos0);
      linear_forward<Scalar>(a.res_attn, a.att, p.proj_w, p.proj_b, in);
      layernorm_forward<Scalar>(a.ln2, a.ln2_mean, a.ln2_rstd, a.res_attn, p.ln2_w, p.ln2_b);
      linear_forward<Scalar>(a.fc, a.ln2, p.fc_w, p.fc_b);
      gelu_forward<Scalar>(a.gelu, a.fc);
      linear_forward<Scalar>(a.res_out, a.gelu, p.fcproj_w, p.fcproj_b, a.res_attn);
    }
    layernorm_forward<Scalar>(ws.lnf, ws.lnf_mean, ws.lnf_rstd, ws.layers[L - 1].res_out, p_.lnf_w,
                              p_.lnf_b);
    linear_forward<Scalar>(ws.logits, ws.lnf, p_.wte);
  }

  // z = proj(gelu(fc(LN(h)))); kv = z Wkv^T + bkv with the final block's key/value weights.
  void feature_forward(FeatureActs& f, const FeatureTensors<Scalar>& w, const Matrix<Scalar>& h,
                       const BlockTensors<Scalar>& last) {
    const Index C = cfg_.n_embd;
    layernorm_forward<Scalar>(f.ln, f.mean, f.rstd, h, w.ln_w, w.ln_b);
    linear_forward<Scalar>(f.fc, f.ln, w.fc_w, w.fc_b);
    gelu_forward<Scalar>(f.gelu, f.fc);
    linear_forward<Scalar>(f.z, f.gelu, w.proj_w, w.proj_b);
    linear_forward<Scalar>(f.kv, f.z, last.qkv_w.middleRows(C, 2 * C), last.qkv_b.segment(C, 2 * C));
  }

  // ---- backward ----------------------------------------------------------------------------------
  // Mirror of run_forward for the mean loss; accumulates into the (zeroed) gradient arena. Blocks
  // are visited L-1..0, so every head that reads an earlier block's K/V (skip layers, shortcut
  // features) has added its share to that block's dqkv before the block's own backward reads it.
  void run_backward(Workspace& ws, ConstTokensRef tokens, ConstTokensRef targets) {
    const Index B = ws.B, N = ws.B * ws.T, C = cfg_.n_embd, L = cfg_.n_layer;
    ws.dlogits.setZero();
    cross_entropy_backward<Scalar>(ws.dlogits, ws.logits, ws.ce_lse, targets, Scalar(1) / Scalar(N));
    ws.dln.setZero();
    linear_backward<Scalar>(ws.dln, g_.wte, ws.dlogits, ws.lnf, p_.wte);
    ws.dres.setZero();
    layernorm_backward<Scalar>(ws.dres, g_.lnf_w, g_.lnf_b, ws.dln, ws.layers[L - 1].res_out,
                               ws.lnf_mean, ws.lnf_rstd, p_.lnf_w);
    for (LayerActs& a : ws.layers) a.dqkv.setZero();
    for (FeatureActs& f : ws.features) { f.dkv.setZero(); f.dres.setZero(); }

    for (Index l = L - 1; l >= 0; --l) {
      LayerActs& a = ws.layers[l];
      const BlockTensors<Scalar>& p = p_.blocks[l];
      BlockTensors<Scalar>& g = g_.blocks[l];
      const Matrix<Scalar>& in = residual(ws, l);
      // h_out = res_attn + fcproj(gelu(fc(ln2(res_attn)))); ws.dres holds d h_out
      ws.dgelu.setZero();
      linear_backward<Scalar>(ws.dgelu, g.fcproj_w, g.fcproj_b, ws.dres, a.gelu, p.fcproj_w);
      ws.dfc.setZero();
      gelu_backward<Scalar>(ws.dfc, ws.dgelu, a.fc);
      ws.dln.setZero();
      linear_backward<Scalar>(ws.dln, g.fc_w, g.fc_b, ws.dfc, a.ln2, p.fc_w);
      layernorm_backward<Scalar>(ws.dres, g.ln2_w, g.ln2_b, ws.dln, a.res_attn, a.ln2_mean,
                                 a.ln2_rstd, p.ln2_w);
      // res_attn = in + proj(attention(q, sources)); ws.dres now holds d res_attn
      ws.datt.setZero();
      linear_backward<Scalar>(ws.datt, g.proj_w, g.proj_b, ws.dres, a.att, p.proj_w);
      attention_backward<Scalar>(a.dqkv.leftCols(C), ws.datt, a.qkv.leftCols(C), a.att, a.lse,
                                 ws.sources[l], B, 0);
      if (l == L - 1)
        for (size_t f = 0; f < ws.features.size(); ++f)
          feature_backward(ws, ws.features[f], p_.features[f], g_.features[f],
                           residual(ws, p_.features[f].depth), p, g);
      ws.dln.setZero();
      for (const auto& [c0, w] : qkv_runs_[l])
        linear_backward<Scalar>(ws.dln, g.qkv_w.middleRows(c0, w), g.qkv_b.segment(c0, w),
                                a.dqkv.middleCols(c0, w), a.ln1, p.qkv_w.middleRows(c0, w));
      layernorm_backward<Scalar>(ws.dres, g.ln1_w, g.ln1_b, ws.dln, in, a.ln1_mean, a.ln1_rstd,
                                 p.ln1_w);
      // ws.dres now holds d h_l; add what the shortcut feature of depth l sends back
      if (feature_of_depth_[l] >= 0) ws.dres += ws.features[feature_of_depth_[l]].dres;
      // Block l's tensors (and, after the final block, ln_f and the features that follow the
      // blocks in the layout) get no more gradient.
      if (gradient_ready_)
        gradient_ready_(block_offset(l), l == L - 1 ? grads_.size() : block_offset(l + 1));
    }
    embedding_backward<Scalar>(g_.wte, g_.wpe, ws.dres, tokens, 0);
    if (gradient_ready_) gradient_ready_(0, block_offset(0));
  }
  // First element of block l's tensors in the arena.
  Index block_offset(Index l) const { return Index(g_.blocks[l].ln1_w.data() - grads_.data()); }

  // Mirror of feature_forward; d h accumulates into f.dres, added to the residual gradient of its
  // depth when the backward pass reaches it.
  void feature_backward(Workspace& ws, FeatureActs& f, const FeatureTensors<Scalar>& w,
                        FeatureTensors<Scalar>& gw, const Matrix<Scalar>& h,
                        const BlockTensors<Scalar>& last, BlockTensors<Scalar>& glast) {
    const Index C = cfg_.n_embd;
    ws.dz.setZero();
    linear_backward<Scalar>(ws.dz, glast.qkv_w.middleRows(C, 2 * C), glast.qkv_b.segment(C, 2 * C),
                            f.dkv, f.z, last.qkv_w.middleRows(C, 2 * C));
    ws.dfeat_gelu.setZero();
    linear_backward<Scalar>(ws.dfeat_gelu, gw.proj_w, gw.proj_b, ws.dz, f.gelu, w.proj_w);
    ws.dfeat_fc.setZero();
    gelu_backward<Scalar>(ws.dfeat_fc, ws.dfeat_gelu, f.fc);
    ws.dln.setZero();
    linear_backward<Scalar>(ws.dln, gw.fc_w, gw.fc_b, ws.dfeat_fc, f.ln, w.fc_w);
    layernorm_backward<Scalar>(f.dres, gw.ln_w, gw.ln_b, ws.dln, h, f.mean, f.rstd, w.ln_w);
  }

  ModelConfig cfg_;
  ParameterLayout layout_;
  PlanTable table_;
  Vector<Scalar> params_, grads_;
  ModelTensors<Scalar> p_, g_;
  std::vector<std::vector<std::pair<Index, Index>>> qkv_runs_;
  std::vector<int> feature_of_depth_;
  GradientReadyHook gradient_ready_;
  static std::size_t bytes_of(const Workspace& ws) {
    std::size_t n = 0;
    const auto add = [&n](const auto&... m) { ((n += std::size_t(m.size())), ...); };
    add(ws.embed, ws.lnf, ws.logits, ws.lnf_mean, ws.lnf_rstd, ws.ce_lse, ws.losses, ws.dres, ws.dln,
        ws.datt, ws.dfc, ws.dgelu, ws.dlogits, ws.dz, ws.dfeat_fc, ws.dfeat_gelu);
    for (const LayerActs& a : ws.layers)
      add(a.ln1, a.qkv, a.att, a.lse, a.res_attn, a.ln2, a.fc, a.gelu, a.res_out, a.dqkv, a.ln1_mean,
          a.ln1_rstd, a.ln2_mean, a.ln2_rstd);
    for (const FeatureActs& f : ws.features)
      add(f.ln, f.fc, f.gelu, f.z, f.kv, f.dkv, f.dres, f.mean, f.rstd);
    return n * sizeof(Scalar);
  }

  Workspace train_, decode_;
};

}  // namespace strata
