// strata/kernels/detail/attention_tiles.hpp: the internals of the attention kernel
// (kernels/attention.hpp): tile sizes, the per-(batch, head) tiled forward and backward passes with
// online softmax, the thread dispatch and the validation of a call. Not public API.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../../core/error.hpp"
#include "../../core/types.hpp"
#include "../attention_sources.hpp"
#include "../check.hpp"

namespace strata {

namespace detail {

/// Query and key tile height, and the largest head size (tiles live on the stack).
constexpr Index kAttentionTile = 64;
constexpr Index kAttentionMaxHeadSize = 256;
/// Below about this many multiply-adds a call runs in the calling thread: waking a thread team
/// costs more than tiny calls (decode of a small model, gradient checks) take.
constexpr double kAttentionParallelWork = 65536;

/// Rough multiply-adds of one pass: every query row against every visible key of its head's
/// sources.
template <typename Sources>
double attention_work(const Sources& sources, Index B, Index NH, Index Tq, Index hs, Index q_pos) {
  double n = 0;
  for (Index h = 0; h < NH; ++h) n += static_cast<double>(sources.count(h));
  return n * static_cast<double>(B) * static_cast<double>(Tq) * static_cast<double>(q_pos + Tq)
       * static_cast<double>(hs);
}

/// Makes Scalar non-deducible in a parameter, so that plain matrices and blocks convert to Refs
/// while Scalar is deduced from AttentionSources<Scalar>.
template <typename T>
struct NonDeduced {
  using type = T;
};
template <typename T>
using NoDeduce = typename NonDeduced<T>::type;

template <typename S>
using ScoreTile = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor, kAttentionTile,
                                kAttentionTile>;
template <typename S>
using HeadTile = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor, kAttentionTile,
                               kAttentionMaxHeadSize>;
template <typename S>
using TileColumn = Eigen::Matrix<S, Eigen::Dynamic, 1, Eigen::ColMajor, kAttentionTile, 1>;
template <typename S>
using RowsMap = Eigen::Map<Matrix<S>, 0, Eigen::OuterStride<>>;
template <typename S>
using ConstRowsMap = Eigen::Map<const Matrix<S>, 0, Eigen::OuterStride<>>;

/// Row-strided [rows, hs] view of a column block.
template <typename S>
ConstRowsMap<S> rows_map(const S* p, Index rows, Index hs, Index stride) {
  return ConstRowsMap<S>(p, rows, hs, Eigen::OuterStride<>(stride));
}
template <typename S>
RowsMap<S> rows_map(S* p, Index rows, Index hs, Index stride) {
  return RowsMap<S>(p, rows, hs, Eigen::OuterStride<>(stride));
}

/// One source of one head for one batch element: K row tau at k + tau*k_stride, and so on.
template <typename S>
struct SourceRows {
  const S* k;
  const S* v;
  S* dk;
  S* dv;
  Index k_stride, v_stride, dk_stride, dv_stride;
};

/// The kernels read sources through one of two adapters: a user's AttentionSources ...
template <typename S>
struct ListedSources {
  const AttentionSources<S>& list;
  Index count(Index h) const { return list.count(h); }
  SourceRows<S> rows(Index b, Index h, Index i) const {
    const KVSource<S>& s = list.source(h, i);
    const Index o = b * s.batch_stride;
    return {s.k + o,
            s.v + o,
            s.dk ? s.dk + o : nullptr,
            s.dv ? s.dv + o : nullptr,
            s.row_stride,
            s.row_stride,
            s.row_stride,
            s.row_stride};
  }
};

/// ... or standard self-attention, where head h reads column block h of k, v (each [B*T, NH*hs]).
template <typename S>
struct SelfSource {
  const S* k;
  const S* v;
  S* dk;
  S* dv;
  Index k_stride, v_stride, dk_stride, dv_stride;
  Index T, hs;
  Index count(Index) const { return 1; }
  SourceRows<S> rows(Index b, Index h, Index) const {
    const Index row = b * T, col = h * hs;
    return {k + row * k_stride + col,
            v + row * v_stride + col,
            dk ? dk + row * dk_stride + col : nullptr,
            dv ? dv + row * dv_stride + col : nullptr,
            k_stride,
            v_stride,
            dk_stride,
            dv_stride};
  }
};

/// Query row r of the tile sits at position diag + r relative to the key tile and sees key
/// columns j <= diag + r; the others are set to `value`: -inf before the running max (which then
/// ignores them), and 0 again after the exp, because Eigen's vectorised exp clamps its argument and
/// returns about 1e-38 (float) for -inf, which would leak a little mass through the mask.
template <typename S>
void causal_mask(ScoreTile<S>& scores, Index diag, S value) {
  const Index tk = scores.cols();
  if (diag >= tk - 1) return;  // the whole tile is visible
  for (Index r = 0; r < scores.rows(); ++r) {
    const Index first = std::max<Index>(0, diag + r + 1);
    if (first < tk) scores.row(r).tail(tk - first).setConstant(value);
  }
}

/// Where Eigen's vectorised assignment to `n` values from `row` ends its packets: values
/// [0, first_aligned) and [end, n) go through the scalar path, the rest through packets. A prefix
/// [0, k) of the same row ends its packets at this grid too, so any k that is n or on the grid
/// (k <= first_aligned, or k - first_aligned a multiple of the packet size) computes every value
/// it shares with the whole row by the same path, bit for bit.
template <typename S>
Index packet_grid_end(const S* row, Index n, Index k) {
  // a packet's alignment is its size (naming the packet type as a template argument would drop
  // its vector attributes, which GCC warns about)
  constexpr Index P = Eigen::internal::packet_traits<S>::size;
  constexpr int kAlign = int(P * Index(sizeof(S)));
  if (P == 1) return k;
  const Index a = Eigen::internal::first_aligned<kAlign>(row, n);
  if (k <= a) return k;
  return std::min(n, a + (k - a + P - 1) / P * P);
}

/// P(r, j) = exp(c P(r, j) - shift(r)), then 0 where the causal mask hides key j from row r.
/// Row by row: a row-major tile broadcast with colwise() would not vectorise the exp. On a tile
/// the diagonal crosses, only row r's visible keys [0, diag + r] are exponentiated, up to the end
/// of the packet that holds the last of them (packet_grid_end), so each visible value is bit for
/// bit the one the whole row's exp gives. The hidden values inside that last packet are first set
/// to shift(r) / c, whose exp is about 1: masked scores (-inf in the forward pass, anything in
/// the backward pass) can be very negative, and Eigen's AVX exp returns a subnormal for those,
/// which costs a microcode assist per packet on Intel CPUs (6x the time of a diagonal tile's
/// exp measured on a Xeon with AVX2 code).
template <typename S>
void exp_rows_masked(ScoreTile<S>& P, S c, const TileColumn<S>& shift, Index diag) {
  const Index tk = P.cols();
  if (diag >= tk - 1) {  // the whole tile is visible
    for (Index r = 0; r < P.rows(); ++r) P.row(r).array() = (c * P.row(r).array() - shift(r)).exp();
    return;
  }
  for (Index r = 0; r < P.rows(); ++r) {
    auto row = P.row(r);
    const Index seen = std::clamp<Index>(diag + r + 1, 0, tk);
    const Index end = packet_grid_end(row.data(), tk, seen);
    row.segment(seen, end - seen).setConstant(shift(r) / c);
    row.head(end).array() = (c * row.head(end).array() - shift(r)).exp();
    row.tail(tk - seen).setZero();
  }
}

// ----------------------------------------------------------------------------------------------
// one (batch b, head h) pair

// out, q: Tq rows of hs at their row strides; lse: Tq values lse_stride apart
template <typename S, typename Sources>
void attention_forward_pair(S* out, Index out_stride, S* lse, Index lse_stride, const S* q,
                            Index q_stride, const Sources& sources, Index b, Index h, Index Tq,
                            Index hs, Index q_pos) {
  const S c = S(1) / std::sqrt(S(hs));
  ScoreTile<S> P;
  HeadTile<S> O;
  TileColumn<S> m, l, m_new, alpha;
  for (Index t0 = 0; t0 < Tq; t0 += kAttentionTile) {
    const Index tq = std::min(kAttentionTile, Tq - t0);
    const auto Q = rows_map(q + t0 * q_stride, tq, hs, q_stride);
    const Index visible = q_pos + t0 + tq;  // keys [0, visible) are seen by some row of the tile
    m.setConstant(tq, -std::numeric_limits<S>::infinity());
    l.setZero(tq);
    O.setZero(tq, hs);
    for (Index i = 0; i < sources.count(h); ++i) {
      const SourceRows<S> src = sources.rows(b, h, i);
      for (Index k0 = 0; k0 < visible; k0 += kAttentionTile) {
        const Index tk = std::min(kAttentionTile, visible - k0);
        const auto K = rows_map(src.k + k0 * src.k_stride, tk, hs, src.k_stride);
        const auto V = rows_map(src.v + k0 * src.v_stride, tk, hs, src.v_stride);
        // score(t, tau) = c * q_t . K[tau], -inf for tau > t (c is applied inside the exp: a
        // scaled operand would make Eigen copy a one-row Q to the heap)
        P.resize(tq, tk);
        P.noalias() = Q * K.transpose();
        causal_mask(P, q_pos + t0 - k0, -std::numeric_limits<S>::infinity());
        // online softmax. Key 0 of the first source is visible to every row, so m_new is finite
        // from the first tile on and exp never sees -inf - (-inf).
        m_new = m.cwiseMax(c * P.rowwise().maxCoeff());
        alpha = (m - m_new).array().exp();
        exp_rows_masked(P, c, m_new, q_pos + t0 - k0);
        l = alpha.cwiseProduct(l) + P.rowwise().sum();
        for (Index r = 0; r < tq; ++r) O.row(r) *= alpha(r);
        O.noalias() += P * V;
        m = m_new;
      }
    }
    // out_t = O_t / l_t, lse_t = m_t + log l_t
    auto Out = rows_map(out + t0 * out_stride, tq, hs, out_stride);
    for (Index r = 0; r < tq; ++r) Out.row(r) = O.row(r) / l(r);
    for (Index r = 0; r < tq; ++r) lse[(t0 + r) * lse_stride] = m(r) + std::log(l(r));
  }
}

// dq, dout, q, out: Tq rows of hs at their row strides; lse: Tq values lse_stride apart
template <typename S, typename Sources>
void attention_backward_pair(S* dq, Index dq_stride, const S* dout, Index dout_stride, const S* q,
                             Index q_stride, const S* out, Index out_stride, const S* lse,
                             Index lse_stride, const Sources& sources, Index b, Index h, Index Tq,
                             Index hs, Index q_pos) {
  const S c = S(1) / std::sqrt(S(hs));
  ScoreTile<S> P, dS;
  TileColumn<S> L, D;
  const Index visible = q_pos + Tq;
  for (Index i = 0; i < sources.count(h); ++i) {
    const SourceRows<S> src = sources.rows(b, h, i);
    for (Index k0 = 0; k0 < visible; k0 += kAttentionTile) {
      const Index tk = std::min(kAttentionTile, visible - k0);
      const auto K = rows_map(src.k + k0 * src.k_stride, tk, hs, src.k_stride);
      const auto V = rows_map(src.v + k0 * src.v_stride, tk, hs, src.v_stride);
      auto dK = rows_map(src.dk + k0 * src.dk_stride, tk, hs, src.dk_stride);
      auto dV = rows_map(src.dv + k0 * src.dv_stride, tk, hs, src.dv_stride);
      // query tiles at or below the diagonal: rows with q_pos + t >= k0
      const Index first = std::max<Index>(0, k0 - q_pos) / kAttentionTile * kAttentionTile;
      for (Index t0 = first; t0 < Tq; t0 += kAttentionTile) {
        const Index tq = std::min(kAttentionTile, Tq - t0);
        const auto Q = rows_map(q + t0 * q_stride, tq, hs, q_stride);
        const auto dO = rows_map(dout + t0 * dout_stride, tq, hs, dout_stride);
        const auto O = rows_map(out + t0 * out_stride, tq, hs, out_stride);
        auto dQ = rows_map(dq + t0 * dq_stride, tq, hs, dq_stride);
        L.resize(tq);
        for (Index r = 0; r < tq; ++r) L(r) = lse[(t0 + r) * lse_stride];
        D = dO.cwiseProduct(O).rowwise().sum();  // D_t = dout_t . out_t
        // recompute P = exp(c q_t . K[tau] - lse_t), 0 where masked
        P.resize(tq, tk);
        P.noalias() = Q * K.transpose();
        exp_rows_masked(P, c, L, q_pos + t0 - k0);
        // forward: out_t = sum_tau P(t, tau) V[tau]
        dV.noalias() += P.transpose() * dO;
        dS.resize(tq, tk);
        dS.noalias() = dO * V.transpose();  // dP(t, tau) = dout_t . V[tau]
        // forward: P = softmax(score), so dscore = P * (dP - D); times c for score = c * q . K
        for (Index r = 0; r < tq; ++r)
          dS.row(r).array() = c * P.row(r).array() * (dS.row(r).array() - D(r));
        dQ.noalias() += dS * K;
        dK.noalias() += dS.transpose() * Q;
      }
    }
  }
}

// mass: Tq rows, S_max columns from mass + h*S_max, row stride mass_stride
template <typename S, typename Sources>
void attention_source_mass_pair(S* mass, Index mass_stride, Index S_max, const S* q, Index q_stride,
                                const S* lse, Index lse_stride, const Sources& sources, Index b,
                                Index h, Index Tq, Index hs, Index q_pos) {
  const S c = S(1) / std::sqrt(S(hs));
  ScoreTile<S> P;
  TileColumn<S> L, sum;
  for (Index t0 = 0; t0 < Tq; t0 += kAttentionTile) {
    const Index tq = std::min(kAttentionTile, Tq - t0);
    const auto Q = rows_map(q + t0 * q_stride, tq, hs, q_stride);
    const Index visible = q_pos + t0 + tq;
    L.resize(tq);
    for (Index r = 0; r < tq; ++r) L(r) = lse[(t0 + r) * lse_stride];
    for (Index i = 0; i < S_max; ++i) {
      sum.setZero(tq);
      if (i < sources.count(h)) {
        const SourceRows<S> src = sources.rows(b, h, i);
        for (Index k0 = 0; k0 < visible; k0 += kAttentionTile) {
          const Index tk = std::min(kAttentionTile, visible - k0);
          const auto K = rows_map(src.k + k0 * src.k_stride, tk, hs, src.k_stride);
          // mass(t, s) = sum_tau exp(c q_t . K_s[tau] - lse_t)
          P.resize(tq, tk);
          P.noalias() = Q * K.transpose();
          exp_rows_masked(P, c, L, q_pos + t0 - k0);
          sum += P.rowwise().sum();
        }
      }
      for (Index r = 0; r < tq; ++r) mass[(t0 + r) * mass_stride + i] = sum(r);
    }
  }
}

// ----------------------------------------------------------------------------------------------
// all pairs

template <typename S, typename Sources>
void run_attention_forward(MatrixRef<S>& out, MatrixRef<S>& lse,
                           const Eigen::Ref<const Matrix<S>>& q, const Sources& sources, Index B,
                           Index NH, Index q_pos) {
  const Index Tq = q.rows() / B, hs = q.cols() / NH;
  const bool parallel = attention_work(sources, B, NH, Tq, hs, q_pos) >= kAttentionParallelWork;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
#else
  (void)parallel;
#endif
  for (Index bh = 0; bh < B * NH; ++bh) {
    const Index b = bh / NH, h = bh % NH, row = b * Tq;
    attention_forward_pair<S>(out.data() + row * out.outerStride() + h * hs, out.outerStride(),
                              lse.data() + row * lse.outerStride() + h, lse.outerStride(),
                              q.data() + row * q.outerStride() + h * hs, q.outerStride(), sources,
                              b, h, Tq, hs, q_pos);
  }
}

// Two pairs may write the same dk/dv rows when heads share a source (share_heads) or when a source
// is broadcast over the batch (share_batch, batch_stride 0); such pairs run in one thread, in
// order.
template <typename S, typename Sources>
void run_attention_backward(MatrixRef<S>& dq, const Eigen::Ref<const Matrix<S>>& dout,
                            const Eigen::Ref<const Matrix<S>>& q,
                            const Eigen::Ref<const Matrix<S>>& out,
                            const Eigen::Ref<const Matrix<S>>& lse, const Sources& sources, Index B,
                            Index NH, Index q_pos, bool share_heads, bool share_batch) {
  const Index Tq = q.rows() / B, hs = q.cols() / NH;
  const Index groups_b = share_batch ? 1 : B, groups_h = share_heads ? 1 : NH;
  const bool parallel = attention_work(sources, B, NH, Tq, hs, q_pos) >= kAttentionParallelWork;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
#else
  (void)parallel;
#endif
  for (Index g = 0; g < groups_b * groups_h; ++g) {
    const Index b_begin = share_batch ? 0 : g / groups_h, b_end = share_batch ? B : b_begin + 1;
    const Index h_begin = share_heads ? 0 : g % groups_h, h_end = share_heads ? NH : h_begin + 1;
    for (Index b = b_begin; b < b_end; ++b) {
      for (Index h = h_begin; h < h_end; ++h) {
        const Index row = b * Tq, col = h * hs;
        attention_backward_pair<S>(dq.data() + row * dq.outerStride() + col, dq.outerStride(),
                                   dout.data() + row * dout.outerStride() + col, dout.outerStride(),
                                   q.data() + row * q.outerStride() + col, q.outerStride(),
                                   out.data() + row * out.outerStride() + col, out.outerStride(),
                                   lse.data() + row * lse.outerStride() + h, lse.outerStride(),
                                   sources, b, h, Tq, hs, q_pos);
      }
    }
  }
}

// ----------------------------------------------------------------------------------------------
// validation (O(heads + sources), before any work)

inline void check_rows_cols(const char* fn, const char* name, Index rows, Index cols,
                            Index expected_rows, Index expected_cols, const char* rows_why,
                            const char* cols_why) {
  if (rows == expected_rows && cols == expected_cols) return;
  const std::string why = std::string(rows_why) == cols_why
                            ? std::string("rows and columns ") + rows_why
                            : std::string("rows ") + rows_why + ", columns " + cols_why;
  check_shape(fn, name, rows, cols, expected_rows, expected_cols, why);
}

/// Checks B, q_pos and q against NH; returns hs.
inline Index check_query(const char* fn, Index q_rows, Index q_cols, Index NH, Index B,
                         Index q_pos) {
  STRATA_CHECK(B >= 1, fn, ": B is ", B, ", expected at least 1");
  STRATA_CHECK(q_pos >= 0, fn, ": q_pos is ", q_pos, ", expected at least 0");
  STRATA_CHECK(q_cols > 0 && q_cols % NH == 0, fn, ": q has ", q_cols,
               " columns, expected a positive multiple of ", NH, " (n_head)");
  const Index hs = q_cols / NH;
  STRATA_CHECK(hs <= kAttentionMaxHeadSize, fn, ": head_size is ", hs, " (q has ", q_cols,
               " columns, n_head ", NH, "), expected at most ", kAttentionMaxHeadSize);
  STRATA_CHECK(q_rows % B == 0, fn, ": q has ", q_rows, " rows, expected a multiple of ", B,
               " (B)");
  return hs;
}

/// The sizes of a call, checked: n_head (from the sources), head size and query rows per batch.
struct CallSizes {
  Index NH, hs, Tq;
};
template <typename S>
CallSizes check_call(const char* fn, Index q_rows, Index q_cols, const AttentionSources<S>& sources,
                     Index B, Index q_pos) {
  const Index NH = sources.n_head();
  STRATA_CHECK(NH >= 1, fn, ": sources has ", NH, " heads, expected at least 1");
  const Index hs = check_query(fn, q_rows, q_cols, NH, B, q_pos);
  return {NH, hs, q_rows / B};
}

template <typename S>
void check_sources(const char* fn, const AttentionSources<S>& sources, Index hs, Index Tq,
                   Index q_pos, bool backward) {
  for (Index h = 0; h < sources.n_head(); ++h) {
    STRATA_CHECK(sources.count(h) >= 1, fn, ": head ", h, " has no sources, expected at least 1");
    for (Index i = 0; i < sources.count(h); ++i) {
      const KVSource<S>& s = sources.source(h, i);
      STRATA_CHECK(s.k != nullptr, fn, ": source ", i, " of head ", h, " has a null k");
      STRATA_CHECK(s.v != nullptr, fn, ": source ", i, " of head ", h, " has a null v");
      STRATA_CHECK(!backward || s.dk != nullptr, fn, ": source ", i, " of head ", h,
                   " has a null dk (backward accumulates into it)");
      STRATA_CHECK(!backward || s.dv != nullptr, fn, ": source ", i, " of head ", h,
                   " has a null dv (backward accumulates into it)");
      STRATA_CHECK(s.row_stride >= hs, fn, ": source ", i, " of head ", h, " has row_stride ",
                   s.row_stride, ", expected at least ", hs, " (head_size)");
      STRATA_CHECK(s.length >= q_pos + Tq, fn, ": source ", i, " of head ", h, " has length ",
                   s.length, ", expected at least ", q_pos + Tq, " (q_pos ", q_pos, " + Tq ", Tq,
                   ")");
    }
  }
}

/// True if two different heads accumulate into the same dk or dv (a source shared between heads).
template <typename S>
bool heads_share_gradients(const AttentionSources<S>& sources) {
  for (Index h = 0; h < sources.n_head(); ++h)
    for (Index i = 0; i < sources.count(h); ++i)
      for (Index g = h + 1; g < sources.n_head(); ++g)
        for (Index j = 0; j < sources.count(g); ++j) {
          const KVSource<S>&x = sources.source(h, i), &y = sources.source(g, j);
          if (x.dk == y.dk || x.dv == y.dv) return true;
        }
  return false;
}

/// True if batch elements accumulate into the same rows (a source broadcast with batch_stride 0).
template <typename S>
bool batch_shares_gradients(const AttentionSources<S>& sources, Index B) {
  if (B < 2) return false;
  for (Index h = 0; h < sources.n_head(); ++h)
    for (Index i = 0; i < sources.count(h); ++i)
      if (sources.source(h, i).batch_stride == 0) return true;
  return false;
}

}  // namespace detail

}  // namespace strata
