// strata/model/workspace.hpp: the activations a forward pass keeps for its backward pass, and the
// backward scratch, of one GPT model (explicit state: two models never share one).
#pragma once

#include <cstddef>
#include <vector>

#include "../attention/plan.hpp"
#include "../core/types.hpp"
#include "../kernels/attention.hpp"

namespace strata {

/// A LayerNorm followed by an MLP, out = [residual +] proj(gelu(fc(LN(in)))): the saved
/// activations. Both the blocks' MLPs and the shortcut feature maps are one of these.
template <typename Scalar>
struct MlpActs {
  Matrix<Scalar> ln, fc, gelu;  ///< [N, C], [N, hidden], [N, hidden]
  Vector<Scalar> mean, rstd;    ///< LayerNorm statistics, [N]
  void resize(Index N, Index C, Index hidden) {
    ln = Matrix<Scalar>::Zero(N, C);
    fc = Matrix<Scalar>::Zero(N, hidden);
    gelu = Matrix<Scalar>::Zero(N, hidden);
    mean = Vector<Scalar>::Zero(N);
    rstd = Vector<Scalar>::Zero(N);
  }
  std::size_t size() const {
    return std::size_t(ln.size() + fc.size() + gelu.size() + mean.size() + rstd.size());
  }
};

/// One block's activations (N = B*T rows).
template <typename Scalar>
struct LayerActs {
  Matrix<Scalar> ln1, qkv, att, lse, res_attn, res_out, dqkv;  // dqkv only with gradients
  Vector<Scalar> ln1_mean, ln1_rstd;
  MlpActs<Scalar> mlp;  ///< LN2 and the MLP: res_out = res_attn + MLP(LN2(res_attn))
};

/// One feature map's activations: z = MLP(LN(h_depth)), kv = z Wkv^T + bkv (consuming block's
/// key/value weights); dres collects d h_depth until the backward pass reaches that depth.
template <typename Scalar>
struct FeatureActs {
  MlpActs<Scalar> mlp;
  Matrix<Scalar> z, kv, dkv, dres, dfc, dgelu;  // the d* only with gradients
};

/// Everything forward, loss and backward keep for one batch shape.
template <typename Scalar>
struct Workspace {
  Index B = 0, T = 0;
  bool grads = false;
  Matrix<Scalar> embed;  ///< h_0
  std::vector<LayerActs<Scalar>> layers;
  std::vector<FeatureActs<Scalar>> features;  ///< ResolvedPlan::features order
  Matrix<Scalar> lnf, logits;
  Vector<Scalar> lnf_mean, lnf_rstd, ce_lse, losses;
  // backward scratch, reused by every layer
  Matrix<Scalar> dres, dln, datt, dfc, dgelu, dlogits, dz;
  std::vector<AttentionSources<Scalar>> sources;  ///< per block: where each head reads

  /// Sizes the buffers for tokens [B, T] (and the backward pass when grads). Already of that
  /// shape: nothing happens, so later steps allocate nothing.
  void prepare(Index B_, Index T_, bool grads_, Index n_layer, Index n_head, Index C, Index H,
               Index V, const ResolvedPlan& plan) {
    if (B == B_ && T == T_ && (grads || !grads_)) return;
    const Index N = B_ * T_;
    auto mat = [](Index r, Index c) { return Matrix<Scalar>::Zero(r, c).eval(); };
    auto vec = [](Index n) { return Vector<Scalar>::Zero(n).eval(); };
    B = B_;
    T = T_;
    grads = grads_;
    embed = mat(N, C);
    layers.assign(size_t(n_layer), LayerActs<Scalar>{});
    for (LayerActs<Scalar>& a : layers) {
      a.ln1 = mat(N, C);
      a.qkv = mat(N, 3 * C);
      a.att = mat(N, C);
      a.lse = mat(N, n_head);
      a.res_attn = mat(N, C);
      a.res_out = mat(N, C);
      a.ln1_mean = vec(N);
      a.ln1_rstd = vec(N);
      a.mlp.resize(N, C, H);
      if (grads) a.dqkv = mat(N, 3 * C);
    }
    features.assign(plan.features.size(), FeatureActs<Scalar>{});
    for (size_t i = 0; i < features.size(); ++i) {
      FeatureActs<Scalar>& f = features[i];
      const Index Cf = plan.features[i].width;
      f.mlp.resize(N, C, Cf);
      f.z = mat(N, C);
      f.kv = mat(N, 2 * C);
      if (grads) {
        f.dkv = mat(N, 2 * C);
        f.dres = mat(N, C);
        f.dfc = mat(N, Cf);
        f.dgelu = mat(N, Cf);
      }
    }
    lnf = mat(N, C);
    logits = mat(N, V);
    lnf_mean = vec(N);
    lnf_rstd = vec(N);
    ce_lse = vec(N);
    losses = vec(N);
    if (grads) {
      dres = mat(N, C);
      dln = mat(N, C);
      datt = mat(N, C);
      dfc = mat(N, H);
      dgelu = mat(N, H);
      dlogits = mat(N, V);
      if (!features.empty()) dz = mat(N, C);
    }
    sources.assign(size_t(n_layer), AttentionSources<Scalar>(n_head));
  }

  /// Bytes held.
  std::size_t bytes() const {
    std::size_t n = 0;
    const auto add = [&n](const auto&... m) { ((n += std::size_t(m.size())), ...); };
    add(embed, lnf, logits, lnf_mean, lnf_rstd, ce_lse, losses, dres, dln, datt, dfc, dgelu,
        dlogits, dz);
    for (const LayerActs<Scalar>& a : layers) {
      add(a.ln1, a.qkv, a.att, a.lse, a.res_attn, a.res_out, a.dqkv, a.ln1_mean, a.ln1_rstd);
      n += a.mlp.size();
    }
    for (const FeatureActs<Scalar>& f : features) {
      add(f.z, f.kv, f.dkv, f.dres, f.dfc, f.dgelu);
      n += f.mlp.size();
    }
    return n * sizeof(Scalar);
  }
};

}  // namespace strata
