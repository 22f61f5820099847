// tests/gradcheck.hpp: shared numeric helpers for the strata tests (namespace strata::testing).
//
// API (everything in double; gradients are checked in double only):
//
//   GradCheckResult check_gradient(loss, params, count, grad, options = {})
//       Central differences of the scalar `loss()` with respect to params[0..count), compared with
//       the analytic gradient grad[0..count). `loss` must read the parameters from `params` (the
//       function perturbs them in place and restores every entry bit for bit). Step for entry j: h
//       = options.eps * max(1, |x_j|) (Eigen's NumericalDiff scaling), numeric derivative (loss(x +
//       h) - loss(x - h)) / ((x + h) - (x - h)). Relative error per entry: |g - g_num| /
//       max(options.floor, |g| + |g_num|), NaN counts as infinite. Every entry is checked, or a
//       seeded sample of options.max_entries distinct entries when 0 < max_entries < count. Returns
//       the maximum relative error, the worst (flat) index and both values there. Conditioning: the
//       numeric derivative carries absolute noise ~1e-16 |loss| / h, so an entry whose true
//       gradient is below ~1e-3 cannot reach 1e-6 relative; pick test data without near-zero
//       gradient entries (e.g. weights R bounded away from 0) or raise options.floor.
//
//   expect_gradient_close(name, loss, params, count, grad, tol = 1e-6, options = {})
//   expect_gradient_close(name, loss, param_matrix, grad_matrix, tol = 1e-6, options = {})
//       gtest wrapper: EXPECT max relative error < tol; on failure prints name, worst entry (flat
//       index, and [row, col] for the Eigen overload), analytic and numeric values, and how many
//       entries were checked. The Eigen overload takes plain (contiguous) matrices or vectors of
//       double.
//
//   double rel_max_diff(a, b)
//       max |a - b| / max(1, max |b|) over two Eigen objects of the same shape (b is the
//       reference); +infinity when the shapes differ, NaN-safe (a NaN anywhere gives +infinity).
//
//   fill_normal(m, rng, stddev = 1)             fills any writable Eigen object (also blocks) with
//                                               N(0, stddev^2) samples from strata::Rng, row by
//                                               row.
//   random_matrix<Scalar>(rows, cols, rng, sd)  a new row-major strata::Matrix<Scalar> filled that
//   way. random_vector<Scalar>(size, rng, sd)        a new strata::Vector<Scalar>. random_tokens(B,
//   T, V, rng)                 a TokenMatrix [B, T] of uniform ids in [0, V).
//
//   EXPECT_STRATA_ERROR(statement, message)     expects `statement` to throw strata::Error whose
//                                               what() equals `message` exactly.
//
// Note: inside namespace strata, `testing` names this namespace; gtest's is `::testing`.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include <strata/core/error.hpp>
#include <strata/core/rng.hpp>
#include <strata/core/types.hpp>

namespace strata::testing {

struct GradCheckOptions {
  double eps = 1e-6;           ///< relative step: h = eps * max(1, |x|)
  Index max_entries = 0;       ///< 0 = check all entries; else a seeded sample of at most this many
  std::uint64_t seed = 12345;  ///< seed of the sample
  double floor = 1e-8;         ///< denominator floor of the relative error
};

struct GradCheckResult {
  double max_rel_error = 0;  ///< over the checked entries
  Index worst = -1;          ///< flat index of the worst entry, -1 if nothing was checked
  double analytic = 0;       ///< grad[worst]
  double numeric = 0;        ///< central difference at worst
  Index checked = 0;         ///< number of entries perturbed
};

inline GradCheckResult check_gradient(const std::function<double()>& loss, double* params,
                                      Index count, const double* grad,
                                      const GradCheckOptions& options = {}) {
  // Which entries: all, or a partial Fisher-Yates sample.
  std::vector<Index> indices(static_cast<std::size_t>(std::max<Index>(count, 0)));
  for (Index j = 0; j < count; ++j) indices[static_cast<std::size_t>(j)] = j;
  if (options.max_entries > 0 && options.max_entries < count) {
    Rng rng(options.seed);
    for (Index j = 0; j < options.max_entries; ++j) {
      const Index k = j + static_cast<Index>(rng.below(static_cast<std::uint64_t>(count - j)));
      std::swap(indices[static_cast<std::size_t>(j)], indices[static_cast<std::size_t>(k)]);
    }
    indices.resize(static_cast<std::size_t>(options.max_entries));
    std::sort(indices.begin(), indices.end());
  }

  GradCheckResult result;
  for (const Index j : indices) {
    double& x = params[j];
    const double x0 = x;
    const double h = options.eps * std::max(1.0, std::abs(x0));
    const double xp = x0 + h, xm = x0 - h;
    x = xp;
    const double fp = loss();
    x = xm;
    const double fm = loss();
    x = x0;
    const double numeric = (fp - fm) / (xp - xm);
    const double analytic = grad[j];
    double err = std::abs(analytic - numeric)
               / std::max(options.floor, std::abs(analytic) + std::abs(numeric));
    if (std::isnan(err)) err = std::numeric_limits<double>::infinity();
    if (result.worst < 0 || err > result.max_rel_error) {
      result.max_rel_error = err;
      result.worst = j;
      result.analytic = analytic;
      result.numeric = numeric;
    }
    ++result.checked;
  }
  return result;
}

namespace detail {
inline void report_gradient(const std::string& name, const GradCheckResult& r, double tol,
                            Index count, Index cols) {
  std::string where = "index " + std::to_string(r.worst);
  if (cols > 0 && r.worst >= 0)
    where += " = [" + std::to_string(r.worst / cols) + ", " + std::to_string(r.worst % cols) + "]";
  EXPECT_LT(r.max_rel_error, tol) << name << ": max relative error " << r.max_rel_error << " at "
                                  << where << " (analytic " << r.analytic << ", numeric "
                                  << r.numeric << "), " << r.checked << " of " << count
                                  << " entries checked";
}
}  // namespace detail

inline GradCheckResult expect_gradient_close(const std::string& name,
                                             const std::function<double()>& loss, double* params,
                                             Index count, const double* grad, double tol = 1e-6,
                                             const GradCheckOptions& options = {}) {
  const GradCheckResult r = check_gradient(loss, params, count, grad, options);
  detail::report_gradient(name, r, tol, count, 0);
  return r;
}

/// Eigen overload: param and grad are plain double matrices/vectors of the same shape; a row-major
/// matrix reports the worst entry as [row, col].
template <typename P, typename G>
GradCheckResult expect_gradient_close(const std::string& name, const std::function<double()>& loss,
                                      Eigen::PlainObjectBase<P>& param,
                                      const Eigen::PlainObjectBase<G>& grad, double tol = 1e-6,
                                      const GradCheckOptions& options = {}) {
  static_assert(
      std::is_same_v<typename P::Scalar, double> && std::is_same_v<typename G::Scalar, double>,
      "gradient checks run in double");
  if (param.rows() != grad.rows() || param.cols() != grad.cols()) {
    ADD_FAILURE() << name << ": parameter [" << param.rows() << ", " << param.cols()
                  << "] and gradient [" << grad.rows() << ", " << grad.cols()
                  << "] differ in shape";
    return {};
  }
  const GradCheckResult r = check_gradient(loss, param.data(), param.size(), grad.data(), options);
  const Index cols = (P::IsRowMajor && param.rows() > 1 && param.cols() > 1) ? param.cols() : 0;
  detail::report_gradient(name, r, tol, param.size(), cols);
  return r;
}

template <typename A, typename B>
double rel_max_diff(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return std::numeric_limits<double>::infinity();
  double max_diff = 0, max_ref = 0;
  for (Index r = 0; r < a.rows(); ++r)
    for (Index c = 0; c < a.cols(); ++c) {
      const double x = static_cast<double>(a.derived()(r, c)),
                   y = static_cast<double>(b.derived()(r, c));
      const double d = std::abs(x - y);
      if (std::isnan(d)) return std::numeric_limits<double>::infinity();
      max_diff = std::max(max_diff, d);
      max_ref = std::max(max_ref, std::abs(y));
    }
  return max_diff / std::max(1.0, max_ref);
}

template <typename D>
void fill_normal(Eigen::DenseBase<D>& m, Rng& rng, double stddev = 1.0) {
  using Scalar = typename D::Scalar;
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c)
      m.derived().coeffRef(r, c) = static_cast<Scalar>(stddev * rng.normal());
}

/// Overload for temporaries such as m.block(...) or m.col(2).
template <typename D>
void fill_normal(Eigen::DenseBase<D>&& m, Rng& rng, double stddev = 1.0) {
  fill_normal(m, rng, stddev);
}

template <typename Scalar>
Matrix<Scalar> random_matrix(Index rows, Index cols, Rng& rng, double stddev = 1.0) {
  Matrix<Scalar> m(rows, cols);
  fill_normal(m, rng, stddev);
  return m;
}

template <typename Scalar>
Vector<Scalar> random_vector(Index size, Rng& rng, double stddev = 1.0) {
  Vector<Scalar> v(size);
  fill_normal(v, rng, stddev);
  return v;
}

inline TokenMatrix random_tokens(Index B, Index T, Index V, Rng& rng) {
  TokenMatrix tokens(B, T);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t)
      tokens(b, t) = static_cast<Token>(rng.below(static_cast<std::uint64_t>(V)));
  return tokens;
}

/// The message of the strata::Error that f throws, or "<no error>" (to compare exact texts).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

/// Bit-for-bit equality of two dense Eigen objects of one scalar type (matrices, vectors, maps or
/// blocks): same shape and the same bits in every coefficient (so -0 != 0, and NaN == NaN when the
/// payloads match). For the "exactly equal" checks: causality, degenerate plans, resume.
template <typename A, typename B>
bool bit_equal(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b) {
  using S = typename A::Scalar;
  static_assert(std::is_same<S, typename B::Scalar>::value, "bit_equal compares one scalar type");
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j) {
      const S x = a(i, j), y = b(i, j);
      if (std::memcmp(&x, &y, sizeof(S)) != 0) return false;
    }
  return true;
}

}  // namespace strata::testing

/// Expects `statement` to throw strata::Error whose what() is exactly `message`.
#define EXPECT_STRATA_ERROR(statement, message)                                                 \
  do {                                                                                          \
    try {                                                                                       \
      statement;                                                                                \
      ADD_FAILURE() << "no strata::Error from " #statement "; expected: " << (message);         \
    } catch (const ::strata::Error& strata_error_) {                                            \
      EXPECT_EQ(std::string(strata_error_.what()), std::string(message)) << "from " #statement; \
    }                                                                                           \
  } while (0)
