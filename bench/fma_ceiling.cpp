// fma_ceiling: the fp32 FMA throughput ceiling of this machine, measured on the spot, in GFLOP/s,
// on 1 thread and on N threads. The denominator of "% of the FMA ceiling" in
// bench/compare/compare.py.
//
//   build/bench/strata_fma_ceiling                      # 1 thread and all cores, JSON on stdout
//   build/bench/strata_fma_ceiling --threads 1,2 --samples 9 --ms 200
//
// Each thread runs kChains independent accumulator chains acc = acc * a + b in vector registers
// (one FMA instruction each per iteration, no loads or stores), so the loop is bound by FMA
// throughput, not latency (latency 4 x 2 FMA pipes needs 8 chains; 12 leave room). FLOPs per
// instruction = 2 x lanes. The widest vector ISA the compiler was allowed (-march=native:
// AVX-512, else AVX2+FMA) is the ceiling; narrower ISAs are measured too, for reference.
// Threads: OpenMP when available (each thread an independent copy; the wall time between two
// barriers counts), else std::thread. Output: one JSON object.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__FMA__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int kChains = 12;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One kernel per vector type: `iters` iterations of kChains independent FMAs. Returns a value
// that depends on every chain so that the compiler keeps the work.
#ifdef __AVX512F__
float kernel_512(long iters) {
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float out[16];  // (not _mm512_reduce_add_ps: GCC 12 warns inside it, bug 105593)
  _mm512_store_ps(out, s);
  float r = 0;
  for (float v : out) r += v;
  return r;
}
#endif
#if defined(__AVX2__) && defined(__FMA__)
float kernel_256(long iters) {
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  float r = 0;
  for (float v : out) r += v;
  return r;
}
#endif
// Scalar fallback (no FMA unit assumed: mul + add count as 2 FLOPs).
float kernel_scalar(long iters) {
  float acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = float(i) * 1e-3f;
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
  float r = 0;
  for (float v : acc) r += v;
  return r;
}

struct Isa {
  const char* name;
  int lanes;
  float (*kernel)(long);
};

std::vector<Isa> isas() {
  std::vector<Isa> v;
#ifdef __AVX512F__
  v.push_back({"avx512", 16, kernel_512});
#endif
#if defined(__AVX2__) && defined(__FMA__)
  v.push_back({"avx2", 8, kernel_256});
#endif
  v.push_back({"scalar", 1, kernel_scalar});
  return v;
}

std::atomic<float> sink{0};

// Seconds for `threads` threads each running kernel(iters) once, from a common start.
double run_once(const Isa& isa, int threads, long iters) {
  double t0 = 0, t1 = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
#pragma omp barrier
#pragma omp master
    t0 = now();
    float r = isa.kernel(iters);
#pragma omp barrier
#pragma omp master
    t1 = now();
    if (r == 12345.f) sink.store(r);
  }
  if (omp_get_max_threads() < threads)
    std::fprintf(stderr, "fma_ceiling: OpenMP allows fewer threads than asked\n");
#else
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      ready.fetch_add(1);
      while (!go.load()) {
      }
      float r = isa.kernel(iters);
      if (r == 12345.f) sink.store(r);
    });
  while (ready.load() < threads) {
  }
  t0 = now();
  go.store(true);
  for (auto& th : pool) th.join();
  t1 = now();
#endif
  return t1 - t0;
}

struct Result {
  double median, max, min;
};

Result measure(const Isa& isa, int threads, int samples, double sample_ms) {
  // Calibrate the iteration count so that one sample takes about sample_ms on 1 thread.
  long iters = 1 << 16;
  while (true) {
    const double s = run_once(isa, 1, iters);
    if (s > 0.02) {
      iters = std::max(1L, long(double(iters) * sample_ms * 1e-3 / s));
      break;
    }
    iters *= 4;
  }
  run_once(isa, threads, iters / 4);  // warm up: clocks and thread pool
  const double flops = 2.0 * isa.lanes * kChains * double(iters) * threads;
  std::vector<double> g;
  for (int i = 0; i < samples; ++i) g.push_back(flops / run_once(isa, threads, iters) * 1e-9);
  std::sort(g.begin(), g.end());
  return {g[g.size() / 2], g.back(), g.front()};
}

int hardware_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return std::max(1u, std::thread::hardware_concurrency());
#endif
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads;
  int samples = 7;
  double sample_ms = 150;
  bool all_isas = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "fma_ceiling: %s needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--threads") {
      std::string list = value("--threads");
      for (size_t p = 0; p <= list.size();) {
        size_t q = list.find(',', p);
        if (q == std::string::npos) q = list.size();
        const int t = std::atoi(list.substr(p, q - p).c_str());
        if (t < 1) {
          std::fprintf(stderr, "fma_ceiling: bad thread count in '%s'\n", list.c_str());
          return 2;
        }
        threads.push_back(t);
        p = q + 1;
      }
    } else if (a == "--samples") {
      samples = std::max(1, std::atoi(value("--samples")));
    } else if (a == "--ms") {
      sample_ms = std::max(1.0, std::atof(value("--ms")));
    } else if (a == "--widest-only") {
      all_isas = false;
    } else if (a == "-h" || a == "--help") {
      std::printf(
          "usage: %s [--threads 1,N] [--samples 7] [--ms 150] [--widest-only]\n"
          "Measures the fp32 FMA ceiling (GFLOP/s) with independent FMA chains in registers and\n"
          "prints JSON: per ISA and thread count, the median, max and min of the samples.\n",
          argv[0]);
      return 0;
    } else {
      std::fprintf(stderr, "fma_ceiling: unknown argument '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }
  const int hw = hardware_threads();
  if (threads.empty()) {
    threads.push_back(1);
    if (hw > 1) threads.push_back(hw);
  }
  const std::vector<Isa> list = isas();
  std::printf("{\n  \"program\": \"strata_fma_ceiling\",\n");
  std::printf("  \"widest_isa\": \"%s\",\n", list[0].name);
  std::printf("  \"chains\": %d,\n  \"samples\": %d,\n  \"sample_ms\": %.0f,\n", kChains, samples,
              sample_ms);
#ifdef _OPENMP
  std::printf("  \"threading\": \"openmp\",\n");
#else
  std::printf("  \"threading\": \"std::thread\",\n");
#endif
  std::printf("  \"hardware_threads\": %d,\n  \"gflops\": {", hw);
  for (size_t k = 0; k < list.size(); ++k) {
    if (!all_isas && k > 0) break;
    const Isa& isa = list[k];
    std::printf("%s\n    \"%s\": {", k ? "," : "", isa.name);
    for (size_t j = 0; j < threads.size(); ++j) {
      const Result r = measure(isa, threads[j], samples, sample_ms);
      std::printf("%s\"%d\": {\"median\": %.1f, \"max\": %.1f, \"min\": %.1f}", j ? ", " : "",
                  threads[j], r.median, r.max, r.min);
      std::fflush(stdout);
    }
    std::printf("}");
  }
  std::printf("\n  }\n}\n");
  return 0;
}
