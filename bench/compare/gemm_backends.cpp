// bench/compare/gemm_backends.cpp: the matrix products of a training step of the tiny and small
// models (each linear layer's forward and both backward products) timed with one product library,
// chosen at compile time, so that the libraries can be compared on strata's exact shapes:
//   -DGEMM_OPENBLAS  OpenBLAS's cblas_sgemm (what STRATA_USE_BLAS uses today)
//   -DGEMM_BLIS      BLIS through its CBLAS interface
//   -DGEMM_DNNL      oneDNN's dnnl_sgemm (the library PyTorch calls on CPUs)
//   -DGEMM_EIGEN     Eigen's own product (strata's header-only default)
// One library per program: OpenBLAS and BLIS export the same BLAS symbols. gemm_backends.py builds
// each program whose library is installed and runs them alternately. Prints one JSON line per
// (shape, product): {"lib", "threads", "model", "layer", "op", "M", "N", "K", "ms", "gflops"}.
//
// Layout as strata's: row-major, a linear layer Y[N, out] = X[N, in] W[out, in]^T, so
//   forward  Y  = X  W^T   (M = N, N = out, K = in)
//   dX       dX = dY W     (M = N, N = in,  K = out)
//   dW       dW = dY^T X   (M = out, N = in, K = N)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#if defined(GEMM_OPENBLAS) || defined(GEMM_BLIS)
#include <cblas.h>
#if defined(GEMM_OPENBLAS)
extern "C" void openblas_set_num_threads(int);
static const char* kLib = "openblas";
#else
extern "C" void bli_thread_set_num_threads(long);
static const char* kLib = "blis";
#endif
#elif defined(GEMM_DNNL)
#include <oneapi/dnnl/dnnl.h>
static const char* kLib = "onednn";
#elif defined(GEMM_EIGEN)
#include <Eigen/Core>
static const char* kLib = "eigen";
#else
#error "define one of GEMM_OPENBLAS, GEMM_BLIS, GEMM_DNNL, GEMM_EIGEN"
#endif

namespace {

// C[M, N] = op(A) op(B), row-major; ta / tb: the operand is stored transposed.
void gemm(bool ta, bool tb, long M, long N, long K, const float* A, const float* B, float* C) {
  const long lda = ta ? M : K, ldb = tb ? K : N;
#if defined(GEMM_OPENBLAS) || defined(GEMM_BLIS)
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
#elif defined(GEMM_DNNL)
  if (dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N)
      != dnnl_success) {
    std::fprintf(stderr, "gemm_backends: dnnl_sgemm failed\n");
    std::exit(1);
  }
#elif defined(GEMM_EIGEN)
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Map = Eigen::Map<const Mat>;
  Eigen::Map<Mat> c(C, M, N);
  const Map a(A, ta ? K : M, ta ? M : K), b(B, tb ? N : K, tb ? K : N);
  if (ta && tb)
    c.noalias() = a.transpose() * b.transpose();
  else if (ta)
    c.noalias() = a.transpose() * b;
  else if (tb)
    c.noalias() = a * b.transpose();
  else
    c.noalias() = a * b;
#endif
}

void set_threads(int n) {
  omp_set_num_threads(n);
#if defined(GEMM_OPENBLAS)
  openblas_set_num_threads(n);
#elif defined(GEMM_BLIS)
  bli_thread_set_num_threads(n);
#elif defined(GEMM_EIGEN)
  Eigen::setNbThreads(n);
#endif
}

struct Layer {
  const char* model;
  const char* name;
  long rows, in, out;
};

// Median over 5 batches of the time per product, each batch at least min_s seconds.
double time_ms(bool ta, bool tb, long M, long N, long K, double min_s) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> A(size_t(M * K)), B(size_t(K * N)), C(size_t(M * N));
  for (float& x : A) x = u(rng);
  for (float& x : B) x = u(rng);
  for (int i = 0; i < 3; ++i) gemm(ta, tb, M, N, K, A.data(), B.data(), C.data());
  std::vector<double> per;
  for (int batch = 0; batch < 5; ++batch) {
    long n = 0;
    const auto t0 = std::chrono::steady_clock::now();
    double s = 0;
    do {
      gemm(ta, tb, M, N, K, A.data(), B.data(), C.data());
      ++n;
      s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } while (s < min_s);
    per.push_back(1e3 * s / double(n));
  }
  std::sort(per.begin(), per.end());
  return per[2];
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  double min_s = 0.2;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--min-time") && i + 1 < argc)
      min_s = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--threads N] [--min-time SECONDS]\n", argv[0]);
      return 2;
    }
  }
  if (threads < 1) {
    std::fprintf(stderr, "gemm_backends: --threads %d, expected >= 1\n", threads);
    return 2;
  }
  set_threads(threads);
  // B x T = 2048 rows for both models (bench/bench_common.hpp); V = 256 (bytes).
  const Layer layers[] = {
      {"tiny", "qkv", 2048, 128, 384},      {"tiny", "proj", 2048, 128, 128},
      {"tiny", "fc", 2048, 128, 512},       {"tiny", "fcproj", 2048, 512, 128},
      {"tiny", "head", 2048, 128, 256},     {"small", "qkv", 2048, 384, 1152},
      {"small", "proj", 2048, 384, 384},    {"small", "fc", 2048, 384, 1536},
      {"small", "fcproj", 2048, 1536, 384}, {"small", "head", 2048, 384, 256},
  };
  for (const Layer& l : layers) {
    struct Op {
      const char* name;
      bool ta, tb;
      long M, N, K;
    };
    const Op ops[] = {{"fwd", false, true, l.rows, l.out, l.in},
                      {"dX", false, false, l.rows, l.in, l.out},
                      {"dW", true, false, l.out, l.in, l.rows}};
    for (const Op& op : ops) {
      const double ms = time_ms(op.ta, op.tb, op.M, op.N, op.K, min_s);
      const double gflops = 2.0 * double(op.M) * double(op.N) * double(op.K) / (ms * 1e6);
      std::printf(
          "{\"lib\": \"%s\", \"threads\": %d, \"model\": \"%s\", \"layer\": \"%s\", "
          "\"op\": \"%s\", \"M\": %ld, \"N\": %ld, \"K\": %ld, \"ms\": %.5f, "
          "\"gflops\": %.2f}\n",
          kLib, threads, l.model, l.name, op.name, op.M, op.N, op.K, ms, gflops);
      std::fflush(stdout);
    }
  }
  return 0;
}
