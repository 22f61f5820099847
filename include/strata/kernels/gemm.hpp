// strata/kernels/gemm.hpp: the matrix products of the linear layers, run through Eigen's own
// packing routines and micro-kernel, with blocking buffers that strata owns.
//
// Why not `C.noalias() += A * B`? Eigen sizes its GEMM blocks from the cache sizes the CPU reports
// and puts blocks larger than EIGEN_STACK_ALLOCATION_LIMIT (128 KB) on the heap, freshly allocated
// for every product. On a CPU with large caches (an AMD Zen 5 reports a 1 MB L2), products of the
// model's shapes in double precision then allocate, so "a training step allocates nothing" would
// hold on some CPUs and not on others. Here the blocks live in one buffer per thread that grows to
// the largest block needed and is then reused: after the first step nothing is allocated, whatever
// the caches.
//
// The computation is Eigen's sequential GEMM (general_matrix_matrix_product::run with the blocking
// Eigen itself would choose on one thread). With several threads, the rows of the row-major result
// are split between them; every thread uses the blocking of the whole product, so each output
// element is computed by exactly the same operations in the same order as on one thread: products
// do not depend on the thread count, bit for bit.
//
// In a STRATA_USE_BLAS build (EIGEN_USE_BLAS), products go to the BLAS library instead, which keeps
// its own buffers; this file is then not used by the linear layers.
#pragma once

#include <algorithm>
#include <cstddef>
#include <new>

#include <Eigen/Core>

#include "../core/types.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace strata::detail {

/// A growable, 64-byte aligned scratch buffer, one per thread and scalar type. It only grows, and
/// only when a product needs larger blocks than any before it (the first step, or after the cache
/// sizes given to Eigen were raised).
template <typename Scalar>
class GemmScratch {
 public:
  GemmScratch() = default;
  GemmScratch(const GemmScratch&) = delete;
  GemmScratch& operator=(const GemmScratch&) = delete;
  ~GemmScratch() { release(); }

  /// Room for `count` scalars, 64-byte aligned.
  Scalar* reserve(std::size_t count) {
    if (count > capacity_) {
      release();
      data_ =
          static_cast<Scalar*>(::operator new(count * sizeof(Scalar), std::align_val_t(kAlign)));
      capacity_ = count;
    }
    return data_;
  }
  std::size_t capacity() const { return capacity_; }

  /// The calling thread's buffer.
  static GemmScratch& local() {
    static thread_local GemmScratch scratch;
    return scratch;
  }

 private:
  static constexpr std::size_t kAlign = 64;
  void release() {
    if (data_) ::operator delete(data_, std::align_val_t(kAlign));
    data_ = nullptr;
    capacity_ = 0;
  }
  Scalar* data_ = nullptr;
  std::size_t capacity_ = 0;
};

/// Eigen's blocking with buffers supplied by strata.
template <typename Scalar>
class GemmBlocking : public Eigen::internal::level3_blocking<Scalar, Scalar> {
 public:
  GemmBlocking(Index kc, Index mc, Index nc, Scalar* block_a, Scalar* block_b) {
    this->m_kc = kc;
    this->m_mc = mc;
    this->m_nc = nc;
    this->m_blockA = block_a;
    this->m_blockB = block_b;
  }
};

/// `count` rounded up so that the next block starts on a 64-byte boundary.
template <typename Scalar>
constexpr std::size_t aligned_count(std::size_t count) {
  const std::size_t per_line = 64 / sizeof(Scalar);
  return (count + per_line - 1) / per_line * per_line;
}

/// C += alpha A B for a row-major C [m, n], with A [m, k] and B [k, n] stored in the given orders
/// (Eigen::RowMajor or Eigen::ColMajor) with leading dimensions lda, ldb; C's is ldc.
/// Runs on up to `threads` OpenMP threads (1 inside a parallel region).
template <int LhsOrder, int RhsOrder, typename Scalar>
void gemm(Index m, Index n, Index k, const Scalar* a, Index lda, const Scalar* b, Index ldb,
          Scalar* c, Index ldc, Scalar alpha, int threads) {
  if (m <= 0 || n <= 0 || k <= 0) return;
  using Product =
      Eigen::internal::general_matrix_matrix_product<Index, Scalar, LhsOrder, false, Scalar,
                                                     RhsOrder, false, Eigen::RowMajor, 1>;
  // Eigen computes a row-major C as the column-major C^T = B^T A^T: its "rows" are n, its
  // "columns" m. The blocking is the one Eigen chooses for the whole product on one thread.
  Index kc = k, mc = n, nc = m;
  Eigen::internal::computeProductBlockingSizes<Scalar, Scalar, 1, Index>(kc, mc, nc, Index(1));
  const std::size_t size_a = aligned_count<Scalar>(std::size_t(kc) * std::size_t(mc));
  const std::size_t size_b = aligned_count<Scalar>(std::size_t(kc) * std::size_t(nc));

  // Each thread takes a contiguous range of C's rows, a multiple of 16 long so that Eigen's
  // micro-kernel groups columns of C^T (its nr is at most 8) exactly as on one thread.
  constexpr Index kRowGrain = 16;
  Index parts = 1;
  if (threads > 1) {
    const double work = double(m) * double(n) * double(k);
    parts = std::min<Index>({Index(threads), (m + kRowGrain - 1) / kRowGrain,
                             std::max<Index>(1, Index(work / 50000.0))});
  }
  const Index rows_per_part = (m + parts - 1) / parts;
  [[maybe_unused]] const Index step = (rows_per_part + kRowGrain - 1) / kRowGrain * kRowGrain;
  const Index a_row_stride = LhsOrder == Eigen::RowMajor ? lda : 1;

  auto run_rows = [&](Index row0, Index rows) {
    Scalar* scratch = GemmScratch<Scalar>::local().reserve(size_a + size_b);
    GemmBlocking<Scalar> blocking(kc, mc, std::min(nc, rows), scratch, scratch + size_a);
    Product::run(rows, n, k, a + row0 * a_row_stride, lda, b, ldb, c + row0 * ldc, 1, ldc, alpha,
                 blocking, nullptr);
  };
#if defined(_OPENMP)
  if (parts > 1 && !omp_in_parallel()) {
#pragma omp parallel for num_threads(int(parts)) schedule(static, 1)
    for (Index part = 0; part < parts; ++part) {
      const Index row0 = part * step;
      if (row0 < m) run_rows(row0, std::min(step, m - row0));
    }
    return;
  }
#endif
  run_rows(0, m);
}

/// Threads a product may use: Eigen's setting (strata::set_num_threads sets it).
inline int gemm_threads() { return Eigen::nbThreads(); }

/// dst (+)= lhs rhs for row-major dst and any mix of row-major blocks and their transposes:
/// `Accumulate` false assigns. Shapes are the caller's to check. Small or vector-shaped products
/// stay with Eigen's expression (its coefficient-wise and matrix-vector paths, which use no
/// blocking buffers).
template <bool Accumulate, typename Dst, typename Lhs, typename Rhs>
void product(Dst& dst, const Lhs& lhs, const Rhs& rhs) {
  using Scalar = typename Dst::Scalar;
  const Index m = dst.rows(), n = dst.cols(), k = lhs.cols();
#if defined(EIGEN_USE_BLAS)
  constexpr bool kBlas = true;
#else
  constexpr bool kBlas = false;
#endif
  if constexpr (!kBlas) {
    if (!(m + n + k < 20 || m == 1 || n == 1 || k == 0)) {
      if constexpr (!Accumulate) dst.setZero();
      constexpr int lhs_order =
          (Lhs::Flags & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor;
      constexpr int rhs_order =
          (Rhs::Flags & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor;
      static_assert(Dst::IsRowMajor, "strata's products write row-major results");
      gemm<lhs_order, rhs_order, Scalar>(m, n, k, lhs.data(), lhs.outerStride(), rhs.data(),
                                         rhs.outerStride(), dst.data(), dst.outerStride(),
                                         Scalar(1), gemm_threads());
      return;
    }
  }
  if constexpr (Accumulate)
    dst.noalias() += lhs * rhs;
  else
    dst.noalias() = lhs * rhs;
}

}  // namespace strata::detail
