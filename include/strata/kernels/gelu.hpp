// strata/kernels/gelu.hpp: GELU, tanh approximation (GPT-2):
//   gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
#pragma once

#include <algorithm>

#include "../core/types.hpp"
#include "check.hpp"

namespace strata {

namespace detail {
template <typename Scalar>
inline constexpr Scalar gelu_scale = Scalar(0.7978845608028654);  // sqrt(2/pi)
template <typename Scalar>
inline constexpr Scalar gelu_cubic = Scalar(0.044715);
}  // namespace detail

/// out = gelu(inp), elementwise. out, inp [N, D].
template <typename Scalar>
void gelu_forward(MatrixRef<Scalar> out, ConstMatrixRef<Scalar> inp) {
  detail::check_shape("gelu_forward", "out", out.rows(), out.cols(), inp.rows(), inp.cols());
  const Scalar k = detail::gelu_scale<Scalar>, a = detail::gelu_cubic<Scalar>;
#pragma omp parallel for schedule(static) if (inp.size() > detail::kRowPassParallelSize)
  for (Index i = 0; i < inp.rows(); ++i) {
    const auto x = inp.row(i).array();
    out.row(i).array() = Scalar(0.5) * x * (Scalar(1) + (k * (x + a * x.cube())).tanh());
  }
}

/// A linear layer's bias and GELU in one pass: pre.row(i) += bias^T, then out = gelu(pre).
/// pre, out [N, D]; bias [D]. pre comes in as the layer's product without its bias and leaves as
/// the pre-activation that gelu_backward reads: the product is written without first broadcasting
/// the bias into it, and the bias is added while the row is at hand for GELU, one pass over pre
/// fewer than linear_forward with bias followed by gelu_forward (the same values: the bias is
/// added to the finished product rather than the product accumulated onto the bias, so they may
/// differ in the last bit).
template <typename Scalar>
void bias_gelu_forward(MatrixRef<Scalar> out, MatrixRef<Scalar> pre, ConstVectorRef<Scalar> bias) {
  detail::check_shape("bias_gelu_forward", "out", out.rows(), out.cols(), pre.rows(), pre.cols());
  detail::check_size("bias_gelu_forward", "bias", bias.size(), pre.cols());
  const Scalar k = detail::gelu_scale<Scalar>, a = detail::gelu_cubic<Scalar>;
#pragma omp parallel for schedule(static) if (pre.size() > detail::kRowPassParallelSize)
  for (Index i = 0; i < pre.rows(); ++i) {
    pre.row(i) += bias.transpose();
    const auto x = pre.row(i).array();
    out.row(i).array() = Scalar(0.5) * x * (Scalar(1) + (k * (x + a * x.cube())).tanh());
  }
}

/// Mirror of gelu_forward: dinp += dout * gelu'(inp) (= with InputGrad::overwrite; dinp's old
/// contents are then not read), with u = k (x + a x^3):
///   gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) k (1 + 3 a x^2).
/// dinp, dout, inp [N, D].
template <typename Scalar>
void gelu_backward(MatrixRef<Scalar> dinp, ConstMatrixRef<Scalar> dout, ConstMatrixRef<Scalar> inp,
                   InputGrad dinp_mode = InputGrad::accumulate) {
  detail::check_shape("gelu_backward", "dinp", dinp.rows(), dinp.cols(), inp.rows(), inp.cols());
  detail::check_shape("gelu_backward", "dout", dout.rows(), dout.cols(), inp.rows(), inp.cols());
  const Scalar k = detail::gelu_scale<Scalar>, a = detail::gelu_cubic<Scalar>;
  // tanh u is evaluated once per chunk of at most kChunk columns into a fixed-capacity buffer on
  // the stack (evaluating a whole dynamic row would allocate on the heap once per row and step).
  constexpr Index kChunk = 64;
  using Chunk = Eigen::Array<Scalar, 1, Eigen::Dynamic, Eigen::RowMajor, 1, kChunk>;
#pragma omp parallel for schedule(static) if (inp.size() > detail::kRowPassParallelSize)
  for (Index i = 0; i < inp.rows(); ++i) {
    for (Index j0 = 0; j0 < inp.cols(); j0 += kChunk) {
      const Index w = std::min(kChunk, inp.cols() - j0);
      const auto x = inp.row(i).segment(j0, w).array();
      const Chunk th = (k * (x + a * x.cube())).tanh();
      const auto d = dout.row(i).segment(j0, w).array()
                   * (Scalar(0.5) * (Scalar(1) + th)
                      + Scalar(0.5) * x * (Scalar(1) - th.square()) * k
                            * (Scalar(1) + Scalar(3) * a * x.square()));
      if (dinp_mode == InputGrad::overwrite)
        dinp.row(i).segment(j0, w).array() = d;
      else
        dinp.row(i).segment(j0, w).array() += d;
    }
  }
}

}  // namespace strata
