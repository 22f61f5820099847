// strata/kernels/linear.hpp: fully connected layer, weights stored as PyTorch's Linear ([out, in]).
#pragma once

#include <algorithm>

#include "../core/types.hpp"
#include "check.hpp"
#include "gemm.hpp"

namespace strata {

namespace detail {
/// The weight must fit the input; then the output (out, or dout in backward) must fit both, so that
/// the message names the argument that is actually wrong.
inline void check_linear(const char* fn, Index out_rows, Index out_cols, Index inp_rows,
                         Index inp_cols, Index w_rows, Index w_cols, const char* out_name = "out") {
  check_shape(fn, "weight", w_rows, w_cols, w_rows, inp_cols);
  check_shape(fn, out_name, out_rows, out_cols, inp_rows, w_rows);
}

/// out.row(i) = bias^T [+ residual.row(i)] for every row, rows split between threads.
template <typename Scalar>
void broadcast_bias(MatrixRef<Scalar>& out, ConstVectorRef<Scalar> bias,
                    const Eigen::Ref<const Matrix<Scalar>>* residual) {
#pragma omp parallel for schedule(static) if (out.size() > kRowPassParallelSize)
  for (Index i = 0; i < out.rows(); ++i) {
    if (residual)
      out.row(i) = residual->row(i) + bias.transpose();
    else
      out.row(i) = bias.transpose();
  }
}

/// m = 0, rows split between threads (a gradient buffer that several passes add to).
template <typename Scalar>
void set_zero(MatrixRef<Scalar> m) {
#pragma omp parallel for schedule(static) if (m.size() > kRowPassParallelSize)
  for (Index i = 0; i < m.rows(); ++i) m.row(i).setZero();
}

/// sums += the column sums of m, one row after another: each column's sum is sums(c) + m(0, c) +
/// m(1, c) + ... in that order, whatever the thread count. Threads own ranges of whole column
/// groups (column_range) and sweep the rows across them in memory order (for_column_groups).
template <typename Scalar>
void add_column_sums(VectorRef<Scalar>& sums, ConstMatrixRef<Scalar> m) {
  const Index rows = m.rows(), cols = m.cols();
  const Index parts = column_parts(cols, m.size() > kRowPassParallelSize);
#pragma omp parallel for schedule(static) if (parts > 1)
  for (Index part = 0; part < parts; ++part) {
    const auto [c0, c1] = column_range(cols, part, parts);
    for (Index i = 0; i < rows; ++i)
      for_column_groups(c0, c1, [&](Index c, auto w) {
        sums.segment(c, w) += m.row(i).segment(c, w).transpose();
      });
  }
}
}  // namespace detail

/// out = inp weight^T + bias.  out [N, OC], inp [N, IC], weight [OC, IC], bias [OC].
template <typename Scalar>
void linear_forward(MatrixRef<Scalar> out, ConstMatrixRef<Scalar> inp,
                    ConstMatrixRef<Scalar> weight, ConstVectorRef<Scalar> bias) {
  detail::check_linear("linear_forward", out.rows(), out.cols(), inp.rows(), inp.cols(),
                       weight.rows(), weight.cols());
  detail::check_size("linear_forward", "bias", bias.size(), weight.rows());
  // Broadcasting the bias first and accumulating the product saves a pass over out: an assigned
  // product would zero out before accumulating anyway.
  detail::broadcast_bias<Scalar>(out, bias, nullptr);
  detail::product<true>(out, inp, weight.transpose());
}

/// out = residual + inp weight^T + bias: a projection back into the residual stream. One pass
/// writes residual + bias and the product accumulates onto it, where a projection followed by
/// `out += residual` would pass over out twice. out may alias residual (then out += ...).
/// out, residual [N, OC].
template <typename Scalar>
void linear_forward(MatrixRef<Scalar> out, ConstMatrixRef<Scalar> inp,
                    ConstMatrixRef<Scalar> weight, ConstVectorRef<Scalar> bias,
                    ConstMatrixRef<Scalar> residual) {
  detail::check_linear("linear_forward", out.rows(), out.cols(), inp.rows(), inp.cols(),
                       weight.rows(), weight.cols());
  detail::check_size("linear_forward", "bias", bias.size(), weight.rows());
  detail::check_shape("linear_forward", "residual", residual.rows(), residual.cols(), out.rows(),
                      out.cols());
  detail::broadcast_bias<Scalar>(out, bias, &residual);
  detail::product<true>(out, inp, weight.transpose());
}

/// out = inp weight^T (no bias; e.g. the tied language-model head).
template <typename Scalar>
void linear_forward(MatrixRef<Scalar> out, ConstMatrixRef<Scalar> inp,
                    ConstMatrixRef<Scalar> weight) {
  detail::check_linear("linear_forward", out.rows(), out.cols(), inp.rows(), inp.cols(),
                       weight.rows(), weight.cols());
  detail::product<false>(out, inp, weight.transpose());
}

/// Mirror of linear_forward (out = inp weight^T + bias):
///   dinp += dout weight;  dweight += dout^T inp;  dbias += sum_rows dout.
/// dinp, inp [N, IC]; dout [N, OC]; dweight, weight [OC, IC]; dbias [OC].
/// With `dinp_mode` InputGrad::overwrite, dinp = dout weight instead (its old contents are not
/// read); the parameter gradients always accumulate.
template <typename Scalar>
void linear_backward(MatrixRef<Scalar> dinp, MatrixRef<Scalar> dweight, VectorRef<Scalar> dbias,
                     ConstMatrixRef<Scalar> dout, ConstMatrixRef<Scalar> inp,
                     ConstMatrixRef<Scalar> weight, InputGrad dinp_mode = InputGrad::accumulate) {
  const char* fn = "linear_backward";
  detail::check_linear(fn, dout.rows(), dout.cols(), inp.rows(), inp.cols(), weight.rows(),
                       weight.cols(), "dout");
  detail::check_shape(fn, "dinp", dinp.rows(), dinp.cols(), inp.rows(), inp.cols());
  detail::check_shape(fn, "dweight", dweight.rows(), dweight.cols(), weight.rows(), weight.cols());
  detail::check_size(fn, "dbias", dbias.size(), weight.rows());
  if (dinp_mode == InputGrad::overwrite)
    detail::product<false>(dinp, dout, weight);
  else
    detail::product<true>(dinp, dout, weight);
  detail::product<true>(dweight, dout.transpose(), inp);
  detail::add_column_sums<Scalar>(dbias, dout);
}

/// Mirror of the bias-free linear_forward: dinp += dout weight (= with InputGrad::overwrite);
/// dweight += dout^T inp.
template <typename Scalar>
void linear_backward(MatrixRef<Scalar> dinp, MatrixRef<Scalar> dweight, ConstMatrixRef<Scalar> dout,
                     ConstMatrixRef<Scalar> inp, ConstMatrixRef<Scalar> weight,
                     InputGrad dinp_mode = InputGrad::accumulate) {
  const char* fn = "linear_backward";
  detail::check_linear(fn, dout.rows(), dout.cols(), inp.rows(), inp.cols(), weight.rows(),
                       weight.cols(), "dout");
  detail::check_shape(fn, "dinp", dinp.rows(), dinp.cols(), inp.rows(), inp.cols());
  detail::check_shape(fn, "dweight", dweight.rows(), dweight.cols(), weight.rows(), weight.cols());
  if (dinp_mode == InputGrad::overwrite)
    detail::product<false>(dinp, dout, weight);
  else
    detail::product<true>(dinp, dout, weight);
  detail::product<true>(dweight, dout.transpose(), inp);
}

}  // namespace strata
