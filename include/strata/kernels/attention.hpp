// strata/kernels/attention.hpp: the multi-source causal attention kernel (SPEC.md §2).
//
// A query row t of head h attends over rows tau <= q_pos + t of EVERY key/value source of that
// head, with one joint softmax. Flash-attention style: query tiles and key tiles of kTile rows, a
// running max and sum per query row (online softmax); forward saves only out and lse, backward
// recomputes the probabilities tile by tile. Per (batch, head) pair the work memory is a few
// fixed-size tiles on the stack: no [T, T] matrix and no heap allocation. This header is the public
// API; the sources are in attention_sources.hpp, the tiled internals in detail/attention_tiles.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "attention_sources.hpp"
#include "detail/attention_tiles.hpp"

namespace strata {

// ------------------------------------------------------------------------------------------------
// public API

/// Sources for users with plain matrices: every head h attends over column block h (width hs) of
/// each K/V pair, in the given order. k[i], v[i] are [B*Tk, n_head*hs] (Tk = rows / B, may differ
/// between sources); dk/dv are optional gradient destinations (empty = forward only), same shapes.
/// The matrices must outlive the returned sources.
template <typename Scalar>
AttentionSources<Scalar> make_sources(const std::vector<const Matrix<Scalar>*>& k,
                                      const std::vector<const Matrix<Scalar>*>& v, Index n_head,
                                      Index B, const std::vector<Matrix<Scalar>*>& dk = {},
                                      const std::vector<Matrix<Scalar>*>& dv = {}) {
  const char* fn = "make_sources";
  const auto n = static_cast<Index>(k.size());
  STRATA_CHECK(n_head >= 1, fn, ": n_head is ", n_head, ", expected at least 1");
  STRATA_CHECK(B >= 1, fn, ": B is ", B, ", expected at least 1");
  STRATA_CHECK(n >= 1, fn, ": k is empty, expected at least 1 matrix");
  STRATA_CHECK(v.size() == k.size(), fn, ": v has ", v.size(), " matrices, expected ", n,
               " (one per k)");
  STRATA_CHECK(dk.empty() || dk.size() == k.size(), fn, ": dk has ", dk.size(),
               " matrices, expected ", n, " (one per k) or 0");
  STRATA_CHECK(dv.size() == dk.size(), fn, ": dv has ", dv.size(), " matrices, expected ",
               dk.size(), " (as dk)");
  const auto same_shape = [&](const char* name, Index i, const Matrix<Scalar>* x) {
    STRATA_CHECK(x != nullptr, fn, ": ", name, "[", i, "] is null");
    const Matrix<Scalar>& ki = *k[static_cast<std::size_t>(i)];
    STRATA_CHECK(x->rows() == ki.rows() && x->cols() == ki.cols(), fn, ": ", name, "[", i,
                 "] has shape [", x->rows(), ", ", x->cols(), "], expected [", ki.rows(), ", ",
                 ki.cols(), "] (as k[", i, "])");
  };
  for (Index i = 0; i < n; ++i) {
    const auto u = static_cast<std::size_t>(i);
    STRATA_CHECK(k[u] != nullptr, fn, ": k[", i, "] is null");
    if (i == 0) {
      STRATA_CHECK(k[0]->cols() > 0 && k[0]->cols() % n_head == 0, fn, ": k[0] has ", k[0]->cols(),
                   " columns, expected a positive multiple of ", n_head, " (n_head)");
    } else {
      STRATA_CHECK(k[u]->cols() == k[0]->cols(), fn, ": k[", i, "] has ", k[u]->cols(),
                   " columns, expected ", k[0]->cols(), " (as k[0])");
    }
    STRATA_CHECK(k[u]->rows() % B == 0, fn, ": k[", i, "] has ", k[u]->rows(),
                 " rows, expected a multiple of ", B, " (B)");
    same_shape("v", i, v[u]);
    if (!dk.empty()) {
      same_shape("dk", i, dk[u]);
      same_shape("dv", i, dv[u]);
    }
  }
  const Index hs = k[0]->cols() / n_head;
  AttentionSources<Scalar> sources(n_head);
  for (Index h = 0; h < n_head; ++h) {
    for (std::size_t i = 0; i < k.size(); ++i) {
      const Index C = k[i]->cols(), Tk = k[i]->rows() / B, col = h * hs;
      KVSource<Scalar> s;
      s.k = k[i]->data() + col;
      s.v = v[i]->data() + col;
      s.dk = dk.empty() ? nullptr : dk[i]->data() + col;
      s.dv = dv.empty() ? nullptr : dv[i]->data() + col;
      s.row_stride = C;
      s.batch_stride = Tk * C;
      s.length = Tk;
      sources.add(h, s);
    }
  }
  return sources;
}

/// Multi-source causal attention, forward.
/// out [B*Tq, NH*hs], lse [B*Tq, NH], q [B*Tq, NH*hs] (q may be a strided column block). Query row
/// t of batch b sits at absolute position q_pos + t and sees key rows tau <= q_pos + t of EVERY
/// source of its head, one joint softmax, scale 1/sqrt(hs). Writes (=) out and lse (natural
/// log-sum-exp of the scaled scores, saved for backward). NH = sources.n_head(); hs <= 256.
template <typename Scalar>
void attention_forward(MatrixRef<detail::NoDeduce<Scalar>> out,
                       MatrixRef<detail::NoDeduce<Scalar>> lse,
                       ConstMatrixRef<detail::NoDeduce<Scalar>> q,
                       const AttentionSources<Scalar>& sources, Index B, Index q_pos = 0) {
  const char* fn = "attention_forward";
  // (named variables, not a structured binding: C++17 lambdas cannot capture those; clang refuses)
  const detail::CallSizes sizes = detail::check_call(fn, q.rows(), q.cols(), sources, B, q_pos);
  const Index NH = sizes.NH, hs = sizes.hs, Tq = sizes.Tq;
  detail::check_rows_cols(fn, "out", out.rows(), out.cols(), q.rows(), q.cols(), "as q", "as q");
  detail::check_rows_cols(fn, "lse", lse.rows(), lse.cols(), q.rows(), NH, "as q", "n_head");
  detail::check_sources(fn, sources, hs, Tq, q_pos, false);
  if (Tq == 0) return;
  detail::run_attention_forward<Scalar>(out, lse, q, detail::ListedSources<Scalar>{sources}, B, NH,
                                        q_pos);
}

/// Multi-source causal attention, backward (the mirror of attention_forward).
/// dq, dout, q, out [B*Tq, NH*hs], lse [B*Tq, NH] from the forward. Accumulates: dq += ..., and
/// every source's dk, dv += ... (so a source feeding several layers or heads sums its gradients).
template <typename Scalar>
void attention_backward(MatrixRef<detail::NoDeduce<Scalar>> dq,
                        ConstMatrixRef<detail::NoDeduce<Scalar>> dout,
                        ConstMatrixRef<detail::NoDeduce<Scalar>> q,
                        ConstMatrixRef<detail::NoDeduce<Scalar>> out,
                        ConstMatrixRef<detail::NoDeduce<Scalar>> lse,
                        const AttentionSources<Scalar>& sources, Index B, Index q_pos = 0) {
  const char* fn = "attention_backward";
  const detail::CallSizes sizes = detail::check_call(fn, q.rows(), q.cols(), sources, B, q_pos);
  const Index NH = sizes.NH, hs = sizes.hs, Tq = sizes.Tq;
  detail::check_rows_cols(fn, "dq", dq.rows(), dq.cols(), q.rows(), q.cols(), "as q", "as q");
  detail::check_rows_cols(fn, "dout", dout.rows(), dout.cols(), q.rows(), q.cols(), "as q", "as q");
  detail::check_rows_cols(fn, "out", out.rows(), out.cols(), q.rows(), q.cols(), "as q", "as q");
  detail::check_rows_cols(fn, "lse", lse.rows(), lse.cols(), q.rows(), NH, "as q", "n_head");
  detail::check_sources(fn, sources, hs, Tq, q_pos, true);
  if (Tq == 0) return;
  detail::run_attention_backward<Scalar>(
      dq, dout, q, out, lse, detail::ListedSources<Scalar>{sources}, B, NH, q_pos,
      detail::heads_share_gradients(sources), detail::batch_shares_gradients(sources, B));
}

/// Attention maps: mass[b*Tq + t, h*S + s] = total softmax probability that head h of query t puts
/// on source s (S = sources.max_count(); sources beyond a head's count get 0). lse from forward.
template <typename Scalar>
void attention_source_mass(MatrixRef<detail::NoDeduce<Scalar>> mass,
                           ConstMatrixRef<detail::NoDeduce<Scalar>> q,
                           ConstMatrixRef<detail::NoDeduce<Scalar>> lse,
                           const AttentionSources<Scalar>& sources, Index B, Index q_pos = 0) {
  const char* fn = "attention_source_mass";
  const detail::CallSizes sizes = detail::check_call(fn, q.rows(), q.cols(), sources, B, q_pos);
  const Index NH = sizes.NH, hs = sizes.hs, Tq = sizes.Tq;
  detail::check_sources(fn, sources, hs, Tq, q_pos, false);
  const Index S = sources.max_count();
  detail::check_rows_cols(fn, "lse", lse.rows(), lse.cols(), q.rows(), NH, "as q", "n_head");
  detail::check_rows_cols(fn, "mass", mass.rows(), mass.cols(), q.rows(), NH * S, "as q",
                          "n_head x max sources per head");
  if (Tq == 0) return;
  const detail::ListedSources<Scalar> listed{sources};
  const bool parallel =
      detail::attention_work(listed, B, NH, Tq, hs, q_pos) >= detail::kAttentionParallelWork;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
#else
  (void)parallel;
#endif
  for (Index bh = 0; bh < B * NH; ++bh) {
    const Index b = bh / NH, h = bh % NH, row = b * Tq;
    detail::attention_source_mass_pair<Scalar>(
        mass.data() + row * mass.outerStride() + h * S, mass.outerStride(), S,
        q.data() + row * q.outerStride() + h * hs, q.outerStride(),
        lse.data() + row * lse.outerStride() + h, lse.outerStride(), listed, b, h, Tq, hs, q_pos);
  }
}

/// Standard causal self-attention for a user's own model: head h attends over column block h of
/// k, v. out, q, k, v [B*T, NH*hs], lse [B*T, NH]. Writes (=) out and lse.
template <typename Scalar>
void attention_forward(MatrixRef<Scalar> out, MatrixRef<Scalar> lse, ConstMatrixRef<Scalar> q,
                       ConstMatrixRef<Scalar> k, ConstMatrixRef<Scalar> v, Index n_head, Index B) {
  const char* fn = "attention_forward";
  STRATA_CHECK(n_head >= 1, fn, ": n_head is ", n_head, ", expected at least 1");
  const Index hs = detail::check_query(fn, q.rows(), q.cols(), n_head, B, 0);
  detail::check_rows_cols(fn, "k", k.rows(), k.cols(), q.rows(), q.cols(), "as q", "as q");
  detail::check_rows_cols(fn, "v", v.rows(), v.cols(), q.rows(), q.cols(), "as q", "as q");
  detail::check_rows_cols(fn, "out", out.rows(), out.cols(), q.rows(), q.cols(), "as q", "as q");
  detail::check_rows_cols(fn, "lse", lse.rows(), lse.cols(), q.rows(), n_head, "as q", "n_head");
  if (q.rows() == 0) return;
  const detail::SelfSource<Scalar> self{
      k.data(),        v.data(), nullptr, nullptr,      k.outerStride(),
      v.outerStride(), 0,        0,       q.rows() / B, hs};
  detail::run_attention_forward<Scalar>(out, lse, q, self, B, n_head, 0);
}

/// Backward of standard causal self-attention: dq, dk, dv += ... . All [B*T, NH*hs] but lse
/// [B*T, NH].
template <typename Scalar>
void attention_backward(MatrixRef<Scalar> dq, MatrixRef<Scalar> dk, MatrixRef<Scalar> dv,
                        ConstMatrixRef<Scalar> dout, ConstMatrixRef<Scalar> q,
                        ConstMatrixRef<Scalar> k, ConstMatrixRef<Scalar> v,
                        ConstMatrixRef<Scalar> out, ConstMatrixRef<Scalar> lse, Index n_head,
                        Index B) {
  const char* fn = "attention_backward";
  STRATA_CHECK(n_head >= 1, fn, ": n_head is ", n_head, ", expected at least 1");
  const Index hs = detail::check_query(fn, q.rows(), q.cols(), n_head, B, 0);
  const Index R = q.rows(), C = q.cols();
  detail::check_rows_cols(fn, "dq", dq.rows(), dq.cols(), R, C, "as q", "as q");
  detail::check_rows_cols(fn, "dk", dk.rows(), dk.cols(), R, C, "as q", "as q");
  detail::check_rows_cols(fn, "dv", dv.rows(), dv.cols(), R, C, "as q", "as q");
  detail::check_rows_cols(fn, "dout", dout.rows(), dout.cols(), R, C, "as q", "as q");
  detail::check_rows_cols(fn, "k", k.rows(), k.cols(), R, C, "as q", "as q");
  detail::check_rows_cols(fn, "v", v.rows(), v.cols(), R, C, "as q", "as q");
  detail::check_rows_cols(fn, "out", out.rows(), out.cols(), R, C, "as q", "as q");
  detail::check_rows_cols(fn, "lse", lse.rows(), lse.cols(), R, n_head, "as q", "n_head");
  if (R == 0) return;
  const detail::SelfSource<Scalar> self{
      k.data(),        v.data(),         dk.data(),        dv.data(), k.outerStride(),
      v.outerStride(), dk.outerStride(), dv.outerStride(), R / B,     hs};
  detail::run_attention_backward<Scalar>(dq, dout, q, out, lse, self, B, n_head, 0, false, false);
}

}  // namespace strata
