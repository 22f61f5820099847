// strata/kernels/embedding.hpp: token + position embedding.
#pragma once

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "check.hpp"

namespace strata {

namespace detail {
inline void check_embedding(const char* fn, Index out_rows, Index out_cols, ConstTokensRef tokens,
                            Index V, Index wte_cols, Index max_T, Index wpe_cols, Index pos0,
                            const char* out_name = "out", const char* wpe_name = "wpe") {
  const Index B = tokens.rows(), T = tokens.cols(), C = wte_cols;
  check_shape(fn, wpe_name, max_T, wpe_cols, max_T, C);
  check_shape(fn, out_name, out_rows, out_cols, B * T, C);
  if (pos0 < 0 || pos0 + T > max_T)
    fail(fn, ": positions ", pos0, "..", pos0 + T - 1, " exceed the context length ", max_T,
         " (sequence of ", T, " tokens starting at position ", pos0, ")");
  check_ids(fn, "token", tokens, V);
}
}  // namespace detail

/// out[b*T + t] = wte[tokens(b, t)] + wpe[pos0 + t].
/// out [B*T, C], tokens [B, T], wte [V, C], wpe [maxT, C]; pos0 is the absolute position of column
/// 0.
template <typename Scalar>
void embedding_forward(MatrixRef<Scalar> out, ConstTokensRef tokens, ConstMatrixRef<Scalar> wte,
                       ConstMatrixRef<Scalar> wpe, Index pos0 = 0) {
  detail::check_embedding("embedding_forward", out.rows(), out.cols(), tokens, wte.rows(),
                          wte.cols(), wpe.rows(), wpe.cols(), pos0);
  const Index B = tokens.rows(), T = tokens.cols();
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t) out.row(b * T + t) = wte.row(tokens(b, t)) + wpe.row(pos0 + t);
}

/// Mirror of embedding_forward: dwte[tokens(b, t)] += dout[b*T + t]; dwpe[pos0 + t] += dout[b*T +
/// t]. dwte [V, C], dwpe [maxT, C], dout [B*T, C], tokens [B, T].
template <typename Scalar>
void embedding_backward(MatrixRef<Scalar> dwte, MatrixRef<Scalar> dwpe, ConstMatrixRef<Scalar> dout,
                        ConstTokensRef tokens, Index pos0 = 0) {
  detail::check_embedding("embedding_backward", dout.rows(), dout.cols(), tokens, dwte.rows(),
                          dwte.cols(), dwpe.rows(), dwpe.cols(), pos0, "dout", "dwpe");
  const Index B = tokens.rows(), T = tokens.cols();
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t) {
      dwte.row(tokens(b, t)) += dout.row(b * T + t);
      dwpe.row(pos0 + t) += dout.row(b * T + t);
    }
}

}  // namespace strata
