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
// its own buffers. In a STRATA_USE_DNNL build, the linear layers' float products go to oneDNN's
// dnnl_sgemm, which picks its kernels from the CPU at run time (AVX-512 where the CPU has it,
// whatever OPENBLAS_CORETYPE says); double products and the small or vector-shaped ones keep the
// path they would take without it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <new>
#include <type_traits>

#include <Eigen/Core>

#include "../core/types.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(STRATA_USE_DNNL)
#include <oneapi/dnnl/dnnl.h>

#include "../core/error.hpp"
#if defined(__unix__)
#include <pthread.h>
#include <signal.h>
#endif
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

#if defined(STRATA_USE_DNNL)
// Signals and oneDNN's GEMM kernels. oneDNN's JIT f32 GEMM kernels (AVX2 and AVX-512, up to
// oneDNN 3.11.1, so Debian 12's 2.6) point the stack register into a heap buffer while they run;
// a signal handled on a thread inside such a kernel has its frame written over the heap, which
// corrupts it (oneDNN issue 4845, fixed in 3.11.2). strata's own train installs SIGINT/SIGTERM
// handlers, and profilers send signals too. So no signal may be handled by a thread while it runs
// those kernels:
// - the calling thread blocks every signal for the duration of the product; one that arrives
//   meanwhile stays pending and is handled as soon as the product returns;
// - OpenMP's worker threads, which run parts of the product, block every signal for good (once
//   per thread pool and thread count); the process's signals then go to the calling thread or to
//   threads that never run the kernels. Threads the pool creates later inherit the blocked mask
//   from the calling thread, which creates them inside the product.
// Synchronous signals from a fault (SIGSEGV, SIGFPE) are not held back by the kernel and still
// end the program as usual.
#if defined(__unix__)
/// Blocks every signal on the calling thread; the mask before goes to *saved when given.
inline void block_all_signals(sigset_t* saved) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, saved);
}

class SignalsHeld {
 public:
  SignalsHeld() { block_all_signals(&saved_); }
  ~SignalsHeld() { pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }
  SignalsHeld(const SignalsHeld&) = delete;
  SignalsHeld& operator=(const SignalsHeld&) = delete;

 private:
  sigset_t saved_;
};

inline void hold_signals_in_openmp_workers() {
#if defined(_OPENMP)
  static thread_local int held_for = 1;  // the calling thread's pool: workers that block signals
  if (omp_in_parallel()) return;         // inside a team: its workers were handled by its master
  const int threads = omp_get_max_threads();
  if (threads <= held_for) return;
#pragma omp parallel num_threads(threads)
  if (omp_get_thread_num() != 0) block_all_signals(nullptr);
  held_for = threads;
#endif
}
#endif

/// The depth of the pieces a long weight-gradient product is split into, and the smallest result
/// (m n) for which it is (see product).
inline constexpr Index kDnnlDepthChunk = 512;
inline constexpr Index kDnnlSplitArea = 256 * 1024;

/// C (+)= A B through oneDNN: row-major C [m, n]; A [m, k] and B [k, n] row-major or, with
/// `a_transposed` / `b_transposed`, stored as their row-major transposes. beta 1 accumulates.
/// oneDNN's OpenMP build runs on omp_get_max_threads() threads (strata::set_num_threads sets it).
inline void dnnl_gemm(bool a_transposed, bool b_transposed, Index m, Index n, Index k,
                      const float* a, Index lda, const float* b, Index ldb, float* c, Index ldc,
                      float beta) {
  dnnl_status_t status;
  {
#if defined(__unix__)
    hold_signals_in_openmp_workers();
    const SignalsHeld held;
#endif
    status = dnnl_sgemm(a_transposed ? 'T' : 'N', b_transposed ? 'T' : 'N', m, n, k, 1.0f, a, lda,
                        b, ldb, beta, c, ldc);
  }
  STRATA_CHECK(status == dnnl_success, "dnnl_sgemm failed on a ", m, " x ", n, " x ", k,
               " product (oneDNN status ", int(status), ")");
}
#endif

/// dst (+)= lhs rhs for row-major dst and any mix of row-major blocks and their transposes:
/// `Accumulate` false assigns. Shapes are the caller's to check. Small or vector-shaped products
/// stay with Eigen's expression (its coefficient-wise and matrix-vector paths, which use no
/// blocking buffers, or the BLAS library's in a STRATA_USE_BLAS build).
template <bool Accumulate, typename Dst, typename Lhs, typename Rhs>
void product(Dst& dst, const Lhs& lhs, const Rhs& rhs) {
  using Scalar = typename Dst::Scalar;
  static_assert(Dst::IsRowMajor, "strata's products write row-major results");
  const Index m = dst.rows(), n = dst.cols(), k = lhs.cols();
  const bool blocked = !(m + n + k < 20 || m == 1 || n == 1 || k == 0);
  constexpr bool lhs_row_major = (Lhs::Flags & Eigen::RowMajorBit) != 0;
  constexpr bool rhs_row_major = (Rhs::Flags & Eigen::RowMajorBit) != 0;
#if defined(STRATA_USE_DNNL)
  if constexpr (std::is_same_v<Scalar, float>) {
    if (blocked) {
      const Index lda = lhs.outerStride(), ldb = rhs.outerStride();
      // A weight gradient (dY^T X: the lhs transposed, a long k over the batch's rows) with a
      // large result runs as a sum of products of depth kDnnlDepthChunk, each accumulated onto
      // dst in order: measured on a Xeon, oneDNN 2.6 took 1.07-1.17x the time for small's fc
      // and fcproj weight gradients as one product of depth 2048 (AVX-512 code; AVX2 code gains
      // less, and no product of other shapes gained).
      const bool split = !lhs_row_major && k >= 2 * kDnnlDepthChunk && m * n >= kDnnlSplitArea;
      const Index depth = split ? kDnnlDepthChunk : k;
      for (Index k0 = 0; k0 < k; k0 += depth) {
        const Index kk = std::min(depth, k - k0);
        const float* a = lhs.data() + (lhs_row_major ? k0 : k0 * lda);
        const float* b = rhs.data() + (rhs_row_major ? k0 * ldb : k0);
        dnnl_gemm(!lhs_row_major, !rhs_row_major, m, n, kk, a, lda, b, ldb, dst.data(),
                  dst.outerStride(), Accumulate || k0 > 0 ? 1.0f : 0.0f);
      }
      return;
    }
  }
#endif
#if defined(EIGEN_USE_BLAS)
  constexpr bool kBlas = true;
#else
  constexpr bool kBlas = false;
#endif
  if constexpr (!kBlas) {
    if (blocked) {
      if constexpr (!Accumulate) dst.setZero();
      gemm<lhs_row_major ? Eigen::RowMajor : Eigen::ColMajor,
           rhs_row_major ? Eigen::RowMajor : Eigen::ColMajor, Scalar>(
          m, n, k, lhs.data(), lhs.outerStride(), rhs.data(), rhs.outerStride(), dst.data(),
          dst.outerStride(), Scalar(1), gemm_threads());
      return;
    }
  }
  if constexpr (Accumulate)
    dst.noalias() += lhs * rhs;
  else
    dst.noalias() = lhs * rhs;
}

}  // namespace strata::detail
