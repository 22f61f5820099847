// tests/reference/model_reference.hpp: the plainest whole-model forward, written from SPEC.md §1-§3
// (not from include/strata/model/gpt.hpp), used as the oracle of tests/test_model.cpp and
// tests/test_variants.cpp.
//
// - Everything runs in double with explicit loops (no Eigen products); a float model's parameters
//   are converted to double first, so one reference serves float and double models.
// - Parameters are read from the model's flat arena by their checkpoint names (SPEC.md §3), so the
//   reference depends only on the names and shapes the specification gives.
// - The sources of every head come from spec_table(), which rebuilds the plan from SPEC.md §2
//   (standard, skip-layer split/concat, shortcuts, dense shortcuts) out of the plan's *settings*;
//   only a custom plan's explicit table is taken as given. A test compares spec_table() with the
//   library's table. Every (block, depth) pair that a block's heads read as a feature source gets
//   its own feature map, found by the checkpoint names of SPEC.md §3 (and docs/plan_schema.md
//   for the maps of blocks other than the last), in any block.
// - Attention materialises, for each (b, head, t), the whole score vector over every visible key
//   of every source of that head, then takes one softmax over it (SPEC.md §2).
// Slow on purpose; tests only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include <strata/attention/plan.hpp>
#include <strata/core/types.hpp>
#include <strata/model/config.hpp>
#include <strata/model/gpt.hpp>

namespace strata::reference {

/// Result of reference::model_forward.
struct ModelOutput {
  Matrix<double> logits;  ///< [B*T, V], row b*T + t
  Vector<double> losses;  ///< [B*T] per-position -log softmax(logits)[target] (when targets given)
  double loss = std::numeric_limits<double>::quiet_NaN();  ///< mean of losses (when targets given)
  /// The depths J the final block reads (residual-stream numbering, 0 = embeddings), sorted, and
  /// the final block's attention mass per depth, [B*T, |J|]: for each position, the probability
  /// summed over the keys of that depth, averaged over heads (SPEC.md §2.3, exported maps).
  std::vector<Index> depths;
  Matrix<double> depth_mass;
};

namespace model_detail {

using Mat = Matrix<double>;  // row-major [rows, cols]
using Vec = std::vector<double>;

/// A tensor of the model's parameter arena by checkpoint name, as a double [rows, cols] matrix
/// (a 1-D tensor becomes [n, 1]).
template <typename S>
Mat tensor(const GPT<S>& model, const std::string& name) {
  const TensorInfo& info = model.layout().at(name);
  Mat m(info.rows, info.cols);
  const S* p = model.parameters().data() + info.offset;
  for (Index r = 0; r < info.rows; ++r)
    for (Index c = 0; c < info.cols; ++c) m(r, c) = static_cast<double>(p[r * info.cols + c]);
  return m;
}

/// out = x W^T + b: x [N, IC], W [OC, IC] (PyTorch Linear), b [OC, 1] or empty.
inline Mat linear(const Mat& x, const Mat& W, const Mat& b) {
  const Index N = x.rows(), IC = x.cols(), OC = W.rows();
  Mat out(N, OC);
  for (Index n = 0; n < N; ++n)
    for (Index o = 0; o < OC; ++o) {
      double acc = b.size() ? b(o, 0) : 0.0;
      for (Index i = 0; i < IC; ++i) acc += x(n, i) * W(o, i);
      out(n, o) = acc;
    }
  return out;
}

/// LayerNorm over each row: eps 1e-5, biased variance, affine weight and bias ([C, 1] each).
inline Mat layernorm(const Mat& x, const Mat& w, const Mat& b) {
  const Index N = x.rows(), C = x.cols();
  Mat out(N, C);
  for (Index n = 0; n < N; ++n) {
    double mean = 0;
    for (Index c = 0; c < C; ++c) mean += x(n, c);
    mean /= double(C);
    double var = 0;
    for (Index c = 0; c < C; ++c) var += (x(n, c) - mean) * (x(n, c) - mean);
    var /= double(C);
    const double rstd = 1.0 / std::sqrt(var + 1e-5);
    for (Index c = 0; c < C; ++c) out(n, c) = (x(n, c) - mean) * rstd * w(c, 0) + b(c, 0);
  }
  return out;
}

/// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
inline Mat gelu(const Mat& x) {
  const double k = std::sqrt(2.0 / 3.14159265358979323846);
  Mat out(x.rows(), x.cols());
  for (Index n = 0; n < x.rows(); ++n)
    for (Index c = 0; c < x.cols(); ++c) {
      const double v = x(n, c);
      out(n, c) = 0.5 * v * (1.0 + std::tanh(k * (v + 0.044715 * v * v * v)));
    }
  return out;
}

inline Mat add(const Mat& a, const Mat& b) {
  Mat out(a.rows(), a.cols());
  for (Index n = 0; n < a.rows(); ++n)
    for (Index c = 0; c < a.cols(); ++c) out(n, c) = a(n, c) + b(n, c);
  return out;
}

/// The feature map of h_j read by 0-based block `block` of L: "transformer.shortcut.{j-1}." for
/// the final block (h_j is the output of 1-based block j; ".embed." for h_0), and
/// "transformer.h.{block}.shortcut.{j-1}." for an earlier block.
inline std::string feature_prefix(Index depth, Index block, Index L) {
  const std::string owner =
      block == L - 1 ? "transformer." : "transformer.h." + std::to_string(block) + ".";
  return owner + "shortcut." + (depth == 0 ? std::string("embed") : std::to_string(depth - 1))
       + ".";
}

inline long round_half_away(double x) { return std::lround(x); }

}  // namespace model_detail

/// The sources of every head of every block (0-based), rebuilt from SPEC.md §2 out of the plan's
/// settings: standard (§2.1), skip-layer split/concat with the documented defaults (§2.2),
/// shortcuts (§2.3: the final block's heads read depth j's feature for every j in J, and their
/// own K/V for j = L-1); a custom plan's table (§2.4) is used as given. The order of a head's
/// sources does not matter (one joint softmax).
inline PlanTable spec_table(const ModelConfig& cfg) {
  const int L = int(cfg.n_layer), NH = int(cfg.n_head);
  const AttentionPlan& plan = cfg.attention;
  PlanTable t(L, std::vector<std::vector<SourceRef>>(NH));
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < NH; ++h) t[l][h] = {SourceRef{SourceKind::layer, l, h}};
  switch (plan.kind()) {
    case AttentionPlan::Kind::standard: break;
    case AttentionPlan::Kind::skip_layer: {
      // defaults: d = round(3L/4), n = round(3NH/4), at least 1
      const int d = plan.distance() ? int(*plan.distance())
                                    : int(std::max(1L, model_detail::round_half_away(0.75 * L)));
      const int n = plan.skip_heads() ? int(*plan.skip_heads())
                                      : int(std::max(1L, model_detail::round_half_away(0.75 * NH)));
      // 1-based layer l' is a skip layer when l' - d >= 1, i.e. 0-based l >= d; source l - d
      for (int l = d; l < L; ++l)
        for (int h = 0; h < n && h < NH; ++h) {
          const SourceRef src{SourceKind::layer, l - d, h};
          if (plan.mode() == SkipMode::split)
            t[l][h] = {src};
          else
            t[l][h].push_back(src);
        }
      break;
    }
    case AttentionPlan::Kind::shortcut: {
      std::vector<Index> J = plan.depths();
      if (J.empty())
        for (int j = 1; j <= L - 1; ++j) J.push_back(j);
      if (plan.include_embeddings()) J.push_back(0);
      std::sort(J.begin(), J.end());
      for (int h = 0; h < NH; ++h) {
        t[L - 1][h].clear();
        for (Index j : J)
          t[L - 1][h].push_back(j == L - 1 ? SourceRef{SourceKind::layer, L - 1, h}
                                           : SourceRef{SourceKind::feature, j, h});
      }
      break;
    }
    case AttentionPlan::Kind::dense_shortcut: {
      // every block l >= 1 (0-based; input h_l): features of h_j for j < l (from j = 0 with the
      // embeddings, else 1), then its own K/V
      for (int l = 1; l < L; ++l)
        for (int h = 0; h < NH; ++h) {
          t[l][h].clear();
          for (int j = plan.include_embeddings() ? 0 : 1; j < l; ++j)
            t[l][h].push_back(SourceRef{SourceKind::feature, j, h});
          t[l][h].push_back(SourceRef{SourceKind::layer, l, h});
        }
      break;
    }
    case AttentionPlan::Kind::custom: t = plan.custom_table(); break;
  }
  return t;
}

/// The whole model of SPEC.md §1 with the attention of §2, in double, on the parameters of
/// `model` (read by checkpoint name). tokens [B, T]; targets [B, T] or nullptr (then no loss).
template <typename S>
ModelOutput model_forward(const GPT<S>& model, const TokenMatrix& tokens,
                          const TokenMatrix* targets = nullptr) {
  using namespace model_detail;
  const ModelConfig& cfg = model.config();
  const Index B = tokens.rows(), T = tokens.cols(), N = B * T;
  const Index C = cfg.n_embd, NH = cfg.n_head, hs = C / NH, L = cfg.n_layer;
  const double scale = 1.0 / std::sqrt(double(hs));
  const PlanTable table = spec_table(cfg);

  // h_0 = wte[token] + wpe[position]
  const Mat wte = tensor(model, "transformer.wte.weight");
  const Mat wpe = tensor(model, "transformer.wpe.weight");
  const Index V = wte.rows();
  std::vector<Mat> h(L + 1);  // residual stream: h[0] embeddings, h[l] output of 1-based block l
  h[0] = Mat(N, C);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t)
      for (Index c = 0; c < C; ++c) h[0](b * T + t, c) = wte(tokens(b, t), c) + wpe(t, c);

  ModelOutput result;
  std::vector<Mat> qkv(L);  // per block [N, 3C]: q | k | v, head h at column h*hs of each block
  // the final block's depths: a layer source of block s reads h_s, a feature source its depth
  // (of every head: the heads of one block may read different sources, as skip-layer heads do)
  for (const auto& head : table[L - 1])
    for (const auto& src : head) result.depths.push_back(src.index);
  std::sort(result.depths.begin(), result.depths.end());
  result.depths.erase(std::unique(result.depths.begin(), result.depths.end()), result.depths.end());
  result.depth_mass = Mat::Zero(N, Index(result.depths.size()));
  for (Index l = 0; l < L; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    const Mat x = layernorm(h[l], tensor(model, p + "ln_1.weight"), tensor(model, p + "ln_1.bias"));
    const Mat Wqkv = tensor(model, p + "attn.c_attn.weight");  // [3C, C]
    const Mat bqkv = tensor(model, p + "attn.c_attn.bias");    // [3C]
    qkv[l] = linear(x, Wqkv, bqkv);

    // feature maps of this block, per depth j it reads: [N, 2C] = K_j | V_j with
    // z_j = F(LNs(h_j)), F = Linear(C, Cf) -> GELU -> Linear(Cf, C), K_j, V_j = z_j Wk_l + bk_l,
    // z_j Wv_l + bv_l (this block's key/value weights)
    std::vector<Mat> feature_kv(L + 1);
    {
      Mat Wkv(2 * C, C), bkv(2 * C, 1);
      for (Index r = 0; r < 2 * C; ++r) {
        bkv(r, 0) = bqkv(C + r, 0);
        for (Index c = 0; c < C; ++c) Wkv(r, c) = Wqkv(C + r, c);
      }
      for (const auto& head_sources : table[l])
        for (const auto& src : head_sources) {
          if (src.kind != SourceKind::feature || feature_kv[src.index].size() > 0) continue;
          const Index j = src.index;
          const std::string f = feature_prefix(j, l, L);
          const Mat ln =
              layernorm(h[j], tensor(model, f + "ln.weight"), tensor(model, f + "ln.bias"));
          const Mat hidden =
              gelu(linear(ln, tensor(model, f + "fc.weight"), tensor(model, f + "fc.bias")));
          const Mat z =
              linear(hidden, tensor(model, f + "proj.weight"), tensor(model, f + "proj.bias"));
          feature_kv[j] = linear(z, Wkv, bkv);
        }
    }

    // attention: one joint softmax over every visible key of every source of the head
    Mat o = Mat::Zero(N, C);
    struct Key {
      int source;
      Index tau;
      double score;
    };
    std::vector<Key> keys;
    auto key_at = [&](const SourceRef& src, Index row, Index i) {
      return src.kind == SourceKind::layer ? qkv[src.index](row, C + src.head * hs + i)
                                           : feature_kv[src.index](row, src.head * hs + i);
    };
    auto value_at = [&](const SourceRef& src, Index row, Index i) {
      return src.kind == SourceKind::layer ? qkv[src.index](row, 2 * C + src.head * hs + i)
                                           : feature_kv[src.index](row, C + src.head * hs + i);
    };
    for (Index b = 0; b < B; ++b)
      for (Index head = 0; head < NH; ++head) {
        const auto& sources = table[l][head];
        for (Index t = 0; t < T; ++t) {
          const Index row = b * T + t;
          keys.clear();
          for (size_t s = 0; s < sources.size(); ++s)
            for (Index tau = 0; tau <= t; ++tau) {  // causal in time, in every source
              double dot = 0;
              for (Index i = 0; i < hs; ++i)
                dot += qkv[l](row, head * hs + i) * key_at(sources[s], b * T + tau, i);
              keys.push_back({int(s), tau, scale * dot});
            }
          double m = -std::numeric_limits<double>::infinity();
          for (const Key& k : keys) m = std::max(m, k.score);
          double z = 0;
          for (const Key& k : keys) z += std::exp(k.score - m);
          for (const Key& k : keys) {
            const double prob = std::exp(k.score - m) / z;
            const SourceRef& src = sources[size_t(k.source)];
            for (Index i = 0; i < hs; ++i)
              o(row, head * hs + i) += prob * value_at(src, b * T + k.tau, i);
            if (l == L - 1) {
              const Index col =
                  std::lower_bound(result.depths.begin(), result.depths.end(), src.index)
                  - result.depths.begin();
              result.depth_mass(row, col) += prob / double(NH);
            }
          }
        }
      }

    // a = h + o Wo^T + bo;  h' = a + W2 gelu(W1 LN2(a) + b1) + b2
    const Mat a = add(h[l], linear(o, tensor(model, p + "attn.c_proj.weight"),
                                   tensor(model, p + "attn.c_proj.bias")));
    const Mat ln2 = layernorm(a, tensor(model, p + "ln_2.weight"), tensor(model, p + "ln_2.bias"));
    const Mat hidden =
        gelu(linear(ln2, tensor(model, p + "mlp.c_fc.weight"), tensor(model, p + "mlp.c_fc.bias")));
    h[l + 1] = add(a, linear(hidden, tensor(model, p + "mlp.c_proj.weight"),
                             tensor(model, p + "mlp.c_proj.bias")));
  }

  // logits = LN_f(h_L) wte^T (tied)
  const Mat lnf = layernorm(h[L], tensor(model, "transformer.ln_f.weight"),
                            tensor(model, "transformer.ln_f.bias"));
  result.logits = linear(lnf, wte, Mat());
  if (targets) {
    result.losses = Vector<double>(N);
    double total = 0;
    for (Index n = 0; n < N; ++n) {
      double m = -std::numeric_limits<double>::infinity();
      for (Index v = 0; v < V; ++v) m = std::max(m, result.logits(n, v));
      double z = 0;
      for (Index v = 0; v < V; ++v) z += std::exp(result.logits(n, v) - m);
      result.losses(n) = m + std::log(z) - result.logits(n, (*targets)(n / T, n % T));
      total += result.losses(n);
    }
    result.loss = total / double(N);
  }
  return result;
}

}  // namespace strata::reference
