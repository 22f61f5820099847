// strata/kernels/check.hpp: shape validation, the threading threshold and the column split
// shared by the public kernels.
#pragma once

#include <algorithm>
#include <string>
#include <utility>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/types.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace strata::detail {

/// Elements above which a kernel's row passes split their work between threads: below it a pass
/// is a few microseconds, less than waking the team.
inline constexpr Index kRowPassParallelSize = 65536;

/// Column passes (sums over rows, one per column) deal `cols` columns out to threads in contiguous
/// ranges of whole groups of kColumnGroup, and each thread sweeps every row across its range in
/// memory order. column_parts is how many ranges (one per thread when `parallel`, else 1, and
/// never more than there are groups), column_range the columns [first, last) of range `part`, and
/// for_column_groups(first, last, f) calls f(c, w) for each group [c, c + w) of a range: a full
/// group with w = Eigen::fix<kColumnGroup>, so that f's segment(c, w) are fixed-size and a group
/// is computed with the same instructions whatever range it falls in; the partial last group, with
/// w an Index, is always the last range's. What f adds to a column is then the same on any thread
/// count, bit for bit.
inline constexpr Index kColumnGroup = 16;
inline Index column_parts(Index cols, bool parallel) {
  const Index groups = (cols + kColumnGroup - 1) / kColumnGroup;
  Index threads = 1;
#if defined(_OPENMP)
  if (parallel) threads = omp_get_max_threads();
#else
  (void)parallel;
#endif
  return std::min(groups, threads);
}
inline std::pair<Index, Index> column_range(Index cols, Index part, Index parts) {
  const Index groups = (cols + kColumnGroup - 1) / kColumnGroup;
  return {groups * part / parts * kColumnGroup,
          std::min(cols, groups * (part + 1) / parts * kColumnGroup)};
}
template <typename F>
void for_column_groups(Index first, Index last, F&& f) {
  Index c = first;
  for (; c + kColumnGroup <= last; c += kColumnGroup) f(c, Eigen::fix<kColumnGroup>);
  if (c < last) f(c, last - c);
}

/// Throws "<fn>: <arg> has shape [r, c], expected [er, ec]" when the shapes differ.
inline void check_shape(const char* fn, const char* arg, Index rows, Index cols,
                        Index expected_rows, Index expected_cols) {
  if (rows != expected_rows || cols != expected_cols)
    fail(fn, ": ", arg, " has shape [", rows, ", ", cols, "], expected [", expected_rows, ", ",
         expected_cols, "]");
}

/// Throws "<fn>: <arg> has shape [r, c], expected [er, ec] (<why>)": the same, with the reason
/// for the expected shape ("rows and columns as q").
inline void check_shape(const char* fn, const char* arg, Index rows, Index cols,
                        Index expected_rows, Index expected_cols, const std::string& why) {
  if (rows != expected_rows || cols != expected_cols)
    fail(fn, ": ", arg, " has shape [", rows, ", ", cols, "], expected [", expected_rows, ", ",
         expected_cols, "] (", why, ")");
}

/// Throws "<fn>: <arg> has size n, expected e" when the sizes differ.
inline void check_size(const char* fn, const char* arg, Index size, Index expected) {
  if (size != expected) fail(fn, ": ", arg, " has size ", size, ", expected ", expected);
}

/// Throws "<fn>: <what> <id> at [b, t] is outside the vocabulary [0, V)" for the first id of
/// `ids` [B, T] outside 0..V-1 (what is "token" or "target").
inline void check_ids(const char* fn, const char* what, ConstTokensRef ids, Index V) {
  for (Index b = 0; b < ids.rows(); ++b)
    for (Index t = 0; t < ids.cols(); ++t)
      if (ids(b, t) < 0 || ids(b, t) >= V)
        fail(fn, ": ", what, " ", ids(b, t), " at [", b, ", ", t,
             "] is outside the vocabulary [0, ", V, ")");
}

}  // namespace strata::detail
