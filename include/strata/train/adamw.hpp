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

  /// One update of model.parameters() from model.gradients() with learning rate lr. With
  /// grad_scale, the update uses grad_scale x gradients, bit for bit what scaling the gradients
  /// first would give (clip_coefficient's factor, so that clipping needs no pass of its own); the
  /// gradients themselves are left as they are.
  void step(GPT<Scalar>& model, double lr, double grad_scale = 1.0) {
    VectorMap<Scalar> p = model.parameters();
    const VectorMap<Scalar> g = model.gradients();
    STRATA_CHECK(p.size() == m_.size(), "AdamW::step: the model has ", p.size(),
                 " parameters, the optimizer was made for ", m_.size());
    STRATA_CHECK(grad_scale > 0 && std::isfinite(grad_scale), "AdamW::step: grad_scale ",
                 grad_scale, ", expected a finite number > 0");
    ++t_;
    const double bc1 = 1 - std::pow(cfg_.beta1, double(t_));
    const double bc2 = 1 - std::pow(cfg_.beta2, double(t_));
    const Scalar b1 = Scalar(cfg_.beta1), b2 = Scalar(cfg_.beta2);
    const Scalar step_size = Scalar(lr / bc1), inv_sqrt_bc2 = Scalar(1 / std::sqrt(bc2));
    const Scalar eps = Scalar(cfg_.eps), scale = Scalar(grad_scale);
    // One pass over the arena, run by run (a run is a stretch of tensors with the same weight
    // decay), in chunks that stay in L1 between the three updates; one team of threads for all
    // runs, each splitting its chunks between the threads without waiting for the others.
    constexpr Index kChunk = 2048;
#pragma omp parallel if (p.size() > 8 * kChunk)
    for (size_t r = 0; r < runs_.size(); ++r) {
      const Scalar decay = decayed_[r] ? Scalar(1 - lr * cfg_.weight_decay) : Scalar(1);
#pragma omp for schedule(static) nowait
      for (Index begin = runs_[r].first; begin < runs_[r].second; begin += kChunk) {
        const Index n = std::min(kChunk, runs_[r].second - begin);
        auto pr = p.segment(begin, n).array();
        auto mr = m_.segment(begin, n).array();
        auto vr = v_.segment(begin, n).array();
        const auto gr = g.segment(begin, n).array() * scale;
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

namespace detail {
/// Sum of the squares of x[begin, begin + n) in double. Element begin + i goes to accumulator
/// i mod kLanes, each accumulator sums its elements in order, and the accumulators are then added
/// pairwise: accumulator j += accumulator j + 8 for j < 8, then j += j + 4 for j < 4, and so on.
/// Independent accumulators vectorise and do not wait on the add's latency (one accumulator,
/// Eigen's squaredNorm of a cast, took 9x as long on a Xeon). The order is fixed by the source,
/// so the result does not depend on the thread count or on how wide the compiler vectorises; like
/// any floating-point code, it may on whether the build fuses the multiply and the add (FMA).
template <typename Derived>
double sum_squares(const Derived& x, Index begin, Index n) {
  constexpr int kLanes = 16;
  double acc[kLanes] = {};
  Index i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const double v = double(x.coeff(begin + i + j));
      acc[j] += v * v;
    }
  for (int j = 0; i < n; ++i, ++j) {
    const double v = double(x.coeff(begin + i));
    acc[j] += v * v;
  }
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}
}  // namespace detail

/// The global L2 norm of a gradient arena, summed in double in chunks of 4096
/// (detail::sum_squares) whose sums are added in order: threads compute the chunks' sums, the
/// total does not depend on the thread count, bit for bit.
template <typename Derived>
double grad_norm(const Eigen::MatrixBase<Derived>& grads) {
  constexpr Index kChunk = 4096, kChunksPerTask = 16;
  const Index size = grads.size();
  const Index chunks = (size + kChunk - 1) / kChunk;
  const Index tasks = (chunks + kChunksPerTask - 1) / kChunksPerTask;
  double sum = 0;
#pragma omp parallel for ordered schedule(static, 1) if (tasks > 1)
  for (Index task = 0; task < tasks; ++task) {
    const Index c0 = task * kChunksPerTask, c1 = std::min(chunks, c0 + kChunksPerTask);
    double part[kChunksPerTask];
    for (Index c = c0; c < c1; ++c) {
      const Index begin = c * kChunk;
      part[c - c0] = detail::sum_squares(grads.derived(), begin, std::min(kChunk, size - begin));
    }
#pragma omp ordered
    for (Index c = c0; c < c1; ++c) sum += part[c - c0];
  }
  return std::sqrt(sum);
}

/// The factor that brings a gradient of norm `norm` to at most max_norm, as torch's
/// clip_grad_norm_ computes it: max_norm / (norm + 1e-6) when that is below 1, else 1 (and 1 when
/// max_norm <= 0: no clipping).
inline double clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1 ? coef : 1.0;
}

/// Scales grads so that their global L2 norm is at most max_norm (as torch's clip_grad_norm_,
/// with coefficient max_norm / (norm + 1e-6)); returns the norm before clipping. max_norm <= 0
/// only measures. (The trainer does not scale the arena: it passes clip_coefficient to
/// AdamW::step, which applies it on the fly.)
template <typename Derived>
double clip_grad_norm(const Eigen::MatrixBase<Derived>& gradients, double max_norm) {
  using Scalar = typename Derived::Scalar;
  // Eigen's idiom for writing through a temporary map or block argument.
  Eigen::MatrixBase<Derived>& grads = const_cast<Eigen::MatrixBase<Derived>&>(gradients);
  const double norm = grad_norm(grads);
  const double coef = clip_coefficient(norm, max_norm);
  if (coef < 1) {
    constexpr Index kChunk = 4096;
    const Scalar c = Scalar(coef);
#pragma omp parallel for schedule(static) if (grads.size() > 16 * kChunk)
    for (Index begin = 0; begin < grads.size(); begin += kChunk)
      grads.segment(begin, std::min(kChunk, grads.size() - begin)) *= c;
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
