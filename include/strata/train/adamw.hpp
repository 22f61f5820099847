// strata/train/adamw.hpp: AdamW with decoupled weight decay on matrices only, global-norm gradient
// clipping, and the warm-up + cosine learning-rate schedule.
#pragma once

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../model/gpt.hpp"
#include "../model/parameters.hpp"

namespace strata {

/// AdamW hyper-parameters (the defaults are the tiny model's recipe).
struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  ///< applied to matrices only (TensorInfo::decay)

  void validate() const {
    if (!(lr >= 0)) fail("AdamW: lr ", lr, ", expected >= 0");
    if (!(beta1 >= 0 && beta1 < 1)) fail("AdamW: beta1 ", beta1, ", expected in [0, 1)");
    if (!(beta2 >= 0 && beta2 < 1)) fail("AdamW: beta2 ", beta2, ", expected in [0, 1)");
    if (!(eps > 0)) fail("AdamW: eps ", eps, ", expected > 0");
    if (!(weight_decay >= 0)) fail("AdamW: weight_decay ", weight_decay, ", expected >= 0");
  }
};

/// AdamW as PyTorch's torch.optim.AdamW computes it, over a model's flat parameter arena:
///   p *= 1 - lr * wd (decayed tensors only);  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
///   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
/// The moments m and v are flat vectors in the parameter layout (saved in training checkpoints).
template <typename Scalar>
class AdamW {
 public:
  AdamW(const GPT<Scalar>& model, AdamWConfig cfg = {}) : cfg_(cfg) {
    cfg_.validate();
    const ParameterLayout& layout = model.layout();
    m_ = Vector<Scalar>::Zero(layout.total_size());
    v_ = Vector<Scalar>::Zero(layout.total_size());
    for (const TensorInfo& t : layout.tensors()) {
      if (!runs_.empty() && decayed_.back() == t.decay && runs_.back().second == t.offset) {
        runs_.back().second += t.size();  // extend the previous run of the same kind
      } else {
        runs_.push_back({t.offset, t.offset + t.size()});
        decayed_.push_back(t.decay);
      }
    }
  }

  const AdamWConfig& config() const { return cfg_; }
  AdamWConfig& config() { return cfg_; }
  /// Steps taken so far (t in the bias corrections).
  Index step_count() const { return t_; }
  void set_step_count(Index t) { t_ = t; }
  Vector<Scalar>& m() { return m_; }
  Vector<Scalar>& v() { return v_; }
  const Vector<Scalar>& m() const { return m_; }
  const Vector<Scalar>& v() const { return v_; }

  /// One update of model.parameters() from model.gradients() with learning rate lr.
  void step(GPT<Scalar>& model, double lr) {
    VectorMap<Scalar> p = model.parameters();
    const VectorMap<Scalar> g = model.gradients();
    STRATA_CHECK(p.size() == m_.size(), "AdamW::step: the model has ", p.size(),
                 " parameters, the optimizer was made for ", m_.size());
    ++t_;
    const double bc1 = 1 - std::pow(cfg_.beta1, double(t_));
    const double bc2 = 1 - std::pow(cfg_.beta2, double(t_));
    const Scalar b1 = Scalar(cfg_.beta1), b2 = Scalar(cfg_.beta2);
    const Scalar step_size = Scalar(lr / bc1), inv_sqrt_bc2 = Scalar(1 / std::sqrt(bc2));
    const Scalar eps = Scalar(cfg_.eps);
    // One pass per run of the arena, in chunks that stay in L1 between the three updates.
    constexpr Index kChunk = 2048;
    for (size_t r = 0; r < runs_.size(); ++r) {
      const Scalar decay = decayed_[r] ? Scalar(1 - lr * cfg_.weight_decay) : Scalar(1);
#pragma omp parallel for schedule(static) if (runs_[r].second - runs_[r].first > 8 * kChunk)
      for (Index begin = runs_[r].first; begin < runs_[r].second; begin += kChunk) {
        const Index n = std::min(kChunk, runs_[r].second - begin);
        auto pr = p.segment(begin, n).array();
        auto mr = m_.segment(begin, n).array();
        auto vr = v_.segment(begin, n).array();
        const auto gr = g.segment(begin, n).array();
        mr = b1 * mr + (Scalar(1) - b1) * gr;
        vr = b2 * vr + (Scalar(1) - b2) * gr.square();
        pr = decay * pr - step_size * mr / (vr.sqrt() * inv_sqrt_bc2 + eps);
      }
    }
  }

 private:
  AdamWConfig cfg_;
  Vector<Scalar> m_, v_;
  Index t_ = 0;
  std::vector<std::pair<Index, Index>> runs_;  // [begin, end) runs of the arena
  std::vector<bool> decayed_;                  // whether run r gets weight decay
};

/// Scales grads so that their global L2 norm is at most max_norm (as torch's clip_grad_norm_,
/// with coefficient max_norm / (norm + 1e-6)); returns the norm before clipping. max_norm <= 0
/// only measures.
template <typename Derived>
double clip_grad_norm(const Eigen::MatrixBase<Derived>& gradients, double max_norm) {
  using Scalar = typename Derived::Scalar;
  // Eigen's idiom for writing through a temporary map or block argument.
  Eigen::MatrixBase<Derived>& grads = const_cast<Eigen::MatrixBase<Derived>&>(gradients);
  // Sum of squares in double, in chunks (vectorised within a chunk, fixed order overall).
  constexpr Index kChunk = 4096;
  double sum = 0;
  for (Index begin = 0; begin < grads.size(); begin += kChunk) {
    const Index n = std::min(kChunk, grads.size() - begin);
    sum += grads.segment(begin, n).template cast<double>().squaredNorm();
  }
  const double norm = std::sqrt(sum);
  if (max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1) grads *= Scalar(coef);
  }
  return norm;
}

/// Linear warm-up to max_lr over `warmup` steps, then cosine decay to min_lr at `total` steps.
struct LRSchedule {
  double max_lr = 1e-3;
  double min_lr = 1e-4;
  Index warmup = 100;
  Index total = 2000;

  /// Learning rate of step `step` (0-based). Steps at or after `total` get min_lr, also when the
  /// warm-up is longer than the run.
  double at(Index step) const {
    if (step >= total) return min_lr;
    if (step < warmup) return max_lr * double(step + 1) / double(warmup);
    const double ratio = double(step - warmup) / double(std::max<Index>(1, total - warmup));
    return min_lr + 0.5 * (1 + std::cos(3.14159265358979323846 * ratio)) * (max_lr - min_lr);
  }
};

}  // namespace strata
