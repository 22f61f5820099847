// strata/kernels/layernorm.hpp: LayerNorm over the last dimension (eps 1e-5, biased variance).
#pragma once

#include <algorithm>
#include <cmath>

#include "../core/types.hpp"
#include "check.hpp"

namespace strata {

/// LayerNorm's epsilon (PyTorch's and GPT-2's default).
template <typename Scalar>
inline constexpr Scalar layernorm_eps = Scalar(1e-5);

/// out = (inp - mean) * rstd * weight + bias, row by row; mean and rstd are saved for backward.
/// out, inp [N, C]; mean, rstd [N]; weight, bias [C]. Two-pass statistics (mean, then centred
/// sum of squares) so that rows with a large mean keep their precision.
template <typename Scalar>
void layernorm_forward(MatrixRef<Scalar> out, VectorRef<Scalar> mean, VectorRef<Scalar> rstd,
                       ConstMatrixRef<Scalar> inp, ConstVectorRef<Scalar> weight,
                       ConstVectorRef<Scalar> bias) {
  const Index N = inp.rows(), C = inp.cols();
  const char* fn = "layernorm_forward";
  detail::check_shape(fn, "out", out.rows(), out.cols(), N, C);
  detail::check_size(fn, "mean", mean.size(), N);
  detail::check_size(fn, "rstd", rstd.size(), N);
  detail::check_size(fn, "weight", weight.size(), C);
  detail::check_size(fn, "bias", bias.size(), C);
  const auto w = weight.transpose().array();
  const auto b = bias.transpose().array();
#pragma omp parallel for schedule(static) if (N * C > 32768)
  for (Index i = 0; i < N; ++i) {
    const auto x = inp.row(i).array();
    const Scalar m = x.sum() / Scalar(C);
    const Scalar var = (x - m).square().sum() / Scalar(C);
    const Scalar s = Scalar(1) / std::sqrt(var + layernorm_eps<Scalar>);
    out.row(i).array() = (x - m) * s * w + b;
    mean(i) = m;
    rstd(i) = s;
  }
}

/// Mirror of layernorm_forward. With n = (inp - mean) * rstd and g = dout * weight:
///   dbias += sum_rows dout;  dweight += sum_rows dout * n;
///   dinp  += rstd * (g - mean(g) - n * mean(g * n))   (= with InputGrad::overwrite; dinp's old
///                                                      contents are then not read).
/// dinp, dout, inp [N, C]; dweight, dbias, weight [C]; mean, rstd [N]. The parameter gradients
/// always accumulate. dinp must not alias dout: the parameter gradients read dout after dinp is
/// written.
template <typename Scalar>
void layernorm_backward(MatrixRef<Scalar> dinp, VectorRef<Scalar> dweight, VectorRef<Scalar> dbias,
                        ConstMatrixRef<Scalar> dout, ConstMatrixRef<Scalar> inp,
                        ConstVectorRef<Scalar> mean, ConstVectorRef<Scalar> rstd,
                        ConstVectorRef<Scalar> weight,
                        InputGrad dinp_mode = InputGrad::accumulate) {
  const Index N = inp.rows(), C = inp.cols();
  const char* fn = "layernorm_backward";
  detail::check_shape(fn, "dinp", dinp.rows(), dinp.cols(), N, C);
  detail::check_shape(fn, "dout", dout.rows(), dout.cols(), N, C);
  detail::check_size(fn, "dweight", dweight.size(), C);
  detail::check_size(fn, "dbias", dbias.size(), C);
  detail::check_size(fn, "mean", mean.size(), N);
  detail::check_size(fn, "rstd", rstd.size(), N);
  detail::check_size(fn, "weight", weight.size(), C);
  const auto w = weight.transpose().array();
#pragma omp parallel for schedule(static) if (N * C > 32768)
  for (Index i = 0; i < N; ++i) {
    const auto n = (inp.row(i).array() - mean(i)) * rstd(i);
    const auto g = dout.row(i).array() * w;
    const Scalar g_mean = g.sum() / Scalar(C);
    const Scalar gn_mean = (g * n).sum() / Scalar(C);
    if (dinp_mode == InputGrad::overwrite)
      dinp.row(i).array() = rstd(i) * (g - g_mean - n * gn_mean);
    else
      dinp.row(i).array() += rstd(i) * (g - g_mean - n * gn_mean);
  }
  // The parameter gradients are sums over rows, each column summed in row order onto its old
  // value. Threads own contiguous ranges of whole column groups and sweep every row over their
  // range, so dout and inp are read in memory order (sweeps down 16-column strips re-read every
  // row's cache lines once per strip: 3.5x the time, a one-file timing), with the same bits on any
  // thread count (for_column_groups).
  const Index parts = detail::column_parts(C, N * C > 32768);
#pragma omp parallel for schedule(static) if (parts > 1)
  for (Index part = 0; part < parts; ++part) {
    const auto [c0, c1] = detail::column_range(C, part, parts);
    for (Index i = 0; i < N; ++i) {
      const Scalar m = mean(i), s = rstd(i);
      detail::for_column_groups(c0, c1, [&](Index c, auto w) {
        const auto dy = dout.row(i).segment(c, w).array();
        const auto n = (inp.row(i).segment(c, w).array() - m) * s;
        dbias.segment(c, w).array() += dy.transpose();
        dweight.segment(c, w).array() += (dy * n).transpose();
      });
    }
  }
}

}  // namespace strata
