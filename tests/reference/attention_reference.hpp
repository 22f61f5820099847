// tests/reference/attention_reference.hpp: the plainest multi-source causal attention, from SPEC.md
// §2.
//
// For each (b, head, query t) it materialises the list of every visible key of every source with
// its score, takes one softmax over that list, and sums. The backward is derived by hand from that
// materialised softmax. Everything is computed in long double and rounded once at the end, so the
// reference is the "truth" for both float and double. Slow on purpose; tests only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <utility>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/core/types.hpp"

namespace strata::reference {

/// One source of one head, as plain matrices: key row tau of batch b is
/// (*k)(b*T + tau, col .. col+hs-1); same for v, and for dk, dv (gradients, += , may be null).
template <typename S>
struct Source {
  const Matrix<S>* k = nullptr;
  const Matrix<S>* v = nullptr;
  Index col = 0;  // first column of the head's block
  Index T = 0;    // rows per batch element in k, v, dk, dv
  Matrix<S>* dk = nullptr;
  Matrix<S>* dv = nullptr;
};

/// plan[h] = the sources of head h, in softmax order.
template <typename S>
using Plan = std::vector<std::vector<Source<S>>>;

namespace detail {

using Real = long double;
using RealMatrix = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// One visible key of one query row.
struct Key {
  std::size_t s;  // source index in plan[h]
  Index tau;      // key row
  Real score;     // c * q_t . K_s[tau]
  Real p;         // softmax probability
};

/// All visible keys of query row t of (b, h), with the joint softmax; returns the log-sum-exp.
template <typename S>
Real softmax_row(std::vector<Key>& keys, const Matrix<S>& q, const Plan<S>& plan, Index b, Index h,
                 Index t, Index Tq, Index hs, Index q_pos) {
  const Real c = 1.0L / std::sqrt(static_cast<Real>(hs));
  const Index qrow = b * Tq + t;
  keys.clear();
  for (std::size_t s = 0; s < plan[static_cast<std::size_t>(h)].size(); ++s) {
    const Source<S>& src = plan[static_cast<std::size_t>(h)][s];
    for (Index tau = 0; tau <= q_pos + t; ++tau) {
      Real dot = 0;
      for (Index j = 0; j < hs; ++j)
        dot += static_cast<Real>(q(qrow, h * hs + j))
             * static_cast<Real>((*src.k)(b * src.T + tau, src.col + j));
      keys.push_back({s, tau, c * dot, 0});
    }
  }
  Real mx = keys[0].score;
  for (const Key& key : keys) mx = std::max(mx, key.score);
  Real z = 0;
  for (Key& key : keys) {
    key.p = std::exp(key.score - mx);
    z += key.p;
  }
  for (Key& key : keys) key.p /= z;
  return mx + std::log(z);
}

/// Long double accumulators for the distinct gradient matrices of a plan.
template <typename S>
struct GradAccumulators {
  std::vector<std::pair<Matrix<S>*, RealMatrix>> list;
  RealMatrix& of(Matrix<S>* m) {
    for (auto& entry : list)
      if (entry.first == m) return entry.second;
    list.emplace_back(m, RealMatrix::Zero(m->rows(), m->cols()));
    return list.back().second;
  }
  void add_to_targets() {
    for (auto& entry : list) *entry.first += entry.second.template cast<S>();
  }
};

}  // namespace detail

/// out [B*Tq, NH*hs], lse [B*Tq, NH], q [B*Tq, NH*hs]; NH = plan.size(). Writes out, lse.
template <typename S>
void attention_forward(Matrix<S>& out, Matrix<S>& lse, const Matrix<S>& q, const Plan<S>& plan,
                       Index B, Index q_pos = 0) {
  const Index NH = static_cast<Index>(plan.size()), hs = q.cols() / NH, Tq = q.rows() / B;
  STRATA_CHECK(NH * hs == q.cols() && B * Tq == q.rows(), "reference: bad q shape");
  out.setZero(q.rows(), q.cols());
  lse.setZero(q.rows(), NH);
  std::vector<detail::Key> keys;
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < NH; ++h)
      for (Index t = 0; t < Tq; ++t) {
        lse(b * Tq + t, h) =
            static_cast<S>(detail::softmax_row(keys, q, plan, b, h, t, Tq, hs, q_pos));
        for (Index j = 0; j < hs; ++j) {
          detail::Real o = 0;
          for (const detail::Key& key : keys) {
            const Source<S>& src = plan[static_cast<std::size_t>(h)][key.s];
            o += key.p * static_cast<detail::Real>((*src.v)(b * src.T + key.tau, src.col + j));
          }
          out(b * Tq + t, h * hs + j) = static_cast<S>(o);
        }
      }
}

/// Accumulates dq += ..., and dk, dv += ... into every source's matrices (recomputes the forward).
template <typename S>
void attention_backward(Matrix<S>& dq, const Matrix<S>& dout, const Matrix<S>& q,
                        const Plan<S>& plan, Index B, Index q_pos = 0) {
  using detail::Real;
  const Index NH = static_cast<Index>(plan.size()), hs = q.cols() / NH, Tq = q.rows() / B;
  const Real c = 1.0L / std::sqrt(static_cast<Real>(hs));
  detail::GradAccumulators<S> grads;
  detail::RealMatrix dq_acc = detail::RealMatrix::Zero(dq.rows(), dq.cols());
  std::vector<detail::Key> keys;
  std::vector<Real> dp, ds;
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < NH; ++h)
      for (Index t = 0; t < Tq; ++t) {
        const Index row = b * Tq + t;
        detail::softmax_row(keys, q, plan, b, h, t, Tq, hs, q_pos);
        const auto& srcs = plan[static_cast<std::size_t>(h)];
        // out = sum_k p_k v_k  =>  dp_k = dout . v_k, dv_k += p_k dout
        dp.assign(keys.size(), 0);
        for (std::size_t n = 0; n < keys.size(); ++n) {
          const Source<S>& src = srcs[keys[n].s];
          const Index krow = b * src.T + keys[n].tau;
          detail::RealMatrix& dv = grads.of(src.dv);
          for (Index j = 0; j < hs; ++j) {
            const Real g = static_cast<Real>(dout(row, h * hs + j));
            dp[n] += g * static_cast<Real>((*src.v)(krow, src.col + j));
            dv(krow, src.col + j) += keys[n].p * g;
          }
        }
        // p = softmax(score)  =>  dscore_k = p_k (dp_k - sum_i p_i dp_i)
        Real pdp = 0;
        for (std::size_t n = 0; n < keys.size(); ++n) pdp += keys[n].p * dp[n];
        ds.assign(keys.size(), 0);
        for (std::size_t n = 0; n < keys.size(); ++n) ds[n] = keys[n].p * (dp[n] - pdp);
        // score_k = c q . k_k  =>  dq += c dscore_k k_k, dk_k += c dscore_k q
        for (std::size_t n = 0; n < keys.size(); ++n) {
          const Source<S>& src = srcs[keys[n].s];
          const Index krow = b * src.T + keys[n].tau;
          detail::RealMatrix& dk = grads.of(src.dk);
          for (Index j = 0; j < hs; ++j) {
            dq_acc(row, h * hs + j) += c * ds[n] * static_cast<Real>((*src.k)(krow, src.col + j));
            dk(krow, src.col + j) += c * ds[n] * static_cast<Real>(q(row, h * hs + j));
          }
        }
      }
  dq += dq_acc.cast<S>();
  grads.add_to_targets();
}

/// mass [B*Tq, NH*Smax]: mass(b*Tq + t, h*Smax + s) = sum over visible tau of P(t, s, tau).
template <typename S>
void attention_source_mass(Matrix<S>& mass, const Matrix<S>& q, const Plan<S>& plan, Index B,
                           Index q_pos = 0) {
  const Index NH = static_cast<Index>(plan.size()), hs = q.cols() / NH, Tq = q.rows() / B;
  Index Smax = 0;
  for (const auto& srcs : plan) Smax = std::max(Smax, static_cast<Index>(srcs.size()));
  mass.setZero(q.rows(), NH * Smax);
  std::vector<detail::Key> keys;
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < NH; ++h)
      for (Index t = 0; t < Tq; ++t) {
        detail::softmax_row(keys, q, plan, b, h, t, Tq, hs, q_pos);
        std::vector<detail::Real> m(static_cast<std::size_t>(Smax), 0);
        for (const detail::Key& key : keys) m[key.s] += key.p;
        for (Index s = 0; s < Smax; ++s)
          mass(b * Tq + t, h * Smax + s) = static_cast<S>(m[static_cast<std::size_t>(s)]);
      }
}

}  // namespace strata::reference
