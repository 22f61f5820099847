// strata/kernels/cross_entropy.hpp: softmax + negative log-likelihood, fused.
#pragma once

#include <cmath>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "check.hpp"

namespace strata {

namespace detail {
inline void check_targets(const char* fn, ConstTokensRef targets, Index N, Index V) {
  check_size(fn, "targets", targets.size(), N);
  check_ids(fn, "target", targets, V);
}
}  // namespace detail

/// losses[i] = lse[i] - logits[i, y_i] with lse[i] = log sum_j exp(logits[i, j]); returns the mean
/// loss (summed in double). Row i of logits belongs to targets(i / T, i % T).
/// losses, lse [N]; logits [N, V]; targets [B, T] with B*T = N.
template <typename Scalar>
Scalar cross_entropy_forward(VectorRef<Scalar> losses, VectorRef<Scalar> lse,
                             ConstMatrixRef<Scalar> logits, ConstTokensRef targets) {
  const Index N = logits.rows(), V = logits.cols();
  const char* fn = "cross_entropy_forward";
  detail::check_targets(fn, targets, N, V);
  detail::check_size(fn, "losses", losses.size(), N);
  detail::check_size(fn, "lse", lse.size(), N);
  const Index T = targets.cols();
#pragma omp parallel for schedule(static) if (N * V > detail::kRowPassParallelSize)
  for (Index i = 0; i < N; ++i) {
    const auto row = logits.row(i).array();
    const Scalar m = row.maxCoeff();
    const Scalar s = m + std::log((row - m).exp().sum());
    lse(i) = s;
    losses(i) = s - logits(i, targets(i / T, i % T));
  }
  double total = 0;
  for (Index i = 0; i < N; ++i) total += static_cast<double>(losses(i));
  return static_cast<Scalar>(total / static_cast<double>(N));
}

/// Mirror of cross_entropy_forward for the loss `scale * sum_i losses[i]` (scale = 1/N for the
/// mean): dlogits[i, j] += scale * (softmax(logits[i])_j - [j == y_i]) (= with
/// InputGrad::overwrite; dlogits' old contents are then not read).
/// dlogits, logits [N, V]; lse [N]; targets [B, T].
template <typename Scalar>
void cross_entropy_backward(MatrixRef<Scalar> dlogits, ConstMatrixRef<Scalar> logits,
                            ConstVectorRef<Scalar> lse, ConstTokensRef targets, Scalar scale,
                            InputGrad dlogits_mode = InputGrad::accumulate) {
  const Index N = logits.rows(), V = logits.cols();
  const char* fn = "cross_entropy_backward";
  detail::check_targets(fn, targets, N, V);
  detail::check_shape(fn, "dlogits", dlogits.rows(), dlogits.cols(), N, V);
  detail::check_size(fn, "lse", lse.size(), N);
  const Index T = targets.cols();
#pragma omp parallel for schedule(static) if (N * V > detail::kRowPassParallelSize)
  for (Index i = 0; i < N; ++i) {
    if (dlogits_mode == InputGrad::overwrite)
      dlogits.row(i).array() = scale * (logits.row(i).array() - lse(i)).exp();
    else
      dlogits.row(i).array() += scale * (logits.row(i).array() - lse(i)).exp();
    dlogits(i, targets(i / T, i % T)) -= scale;
  }
}

}  // namespace strata
