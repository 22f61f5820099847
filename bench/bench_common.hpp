// bench/bench_common.hpp: shared pieces of the benchmark programs: the --threads flag, the
// context (threads, SIMD, CPU) recorded in every JSON output, and the model configurations.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <benchmark/benchmark.h>

#include <strata/strata.hpp>

#include "cpu_model.hpp"

namespace bench {

/// Parses "L1,L2,L3" (kilobytes) into bytes; false when it is not three positive integers.
inline bool parse_cache_sizes(const char* text, std::ptrdiff_t (&bytes)[3]) {
  for (int i = 0; i < 3; ++i) {
    char* end = nullptr;
    const long long kb = std::strtoll(text, &end, 10);
    if (end == text || kb <= 0 || *end != (i < 2 ? ',' : '\0')) return false;
    bytes[i] = std::ptrdiff_t(kb) * 1024;
    text = end + (i < 2 ? 1 : 0);
  }
  return true;
}

/// Removes strata's own flags from argv (before Google Benchmark sees it) and applies them:
///   --threads=N             threads (default 0 = all cores)
///   --eigen-caches=L1,L2,L3 the data cache sizes, in KB, Eigen sizes its product blocks from,
///                           instead of what this CPU reports: how the header-only products would
///                           block on another CPU (for example 48,1024,544768 as an AMD Zen 5
///                           reports them, 48,2048,107520 as a Sapphire Rapids Xeon does)
/// Returns the thread count; a malformed flag ends the program with a message.
inline int take_threads_flag(int& argc, char** argv) {
  int threads = 0;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else if (std::strncmp(argv[i], "--eigen-caches=", 15) == 0) {
      std::ptrdiff_t bytes[3];
      if (!parse_cache_sizes(argv[i] + 15, bytes)) {
        std::fprintf(stderr,
                     "%s: bad %s, expected --eigen-caches=L1,L2,L3 in KB (e.g. 48,1024,544768)\n",
                     argv[0], argv[i]);
        std::exit(2);
      }
      Eigen::setCpuCacheSizes(bytes[0], bytes[1], bytes[2]);
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  strata::set_num_threads(threads);
  return strata::num_threads();
}

inline void add_context() {
  benchmark::AddCustomContext("strata_threads", std::to_string(strata::num_threads()));
  benchmark::AddCustomContext("eigen_threads", std::to_string(Eigen::nbThreads()));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  std::ptrdiff_t l1 = 0, l2 = 0, l3 = 0;
  Eigen::internal::manage_caching_sizes(Eigen::GetAction, &l1, &l2, &l3);
  benchmark::AddCustomContext("eigen_caches_kb", std::to_string(l1 / 1024) + ","
                                                     + std::to_string(l2 / 1024) + ","
                                                     + std::to_string(l3 / 1024));
  benchmark::AddCustomContext("product_backend", strata::product_backend());
  const std::string warnings = strata::kernel_width_warnings();
  benchmark::AddCustomContext("kernel_warnings", warnings.empty() ? "none" : warnings);
  std::fputs(warnings.c_str(), stderr);
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("strata_version", strata::version);
}

/// The two reference configurations of ../shared/perf (nanoGPT layout, byte vocabulary).
struct BenchConfig {
  const char* name;
  strata::Index L, NH, C, T, B;
};
inline constexpr BenchConfig kTiny{"tiny", 4, 4, 128, 128, 16};
inline constexpr BenchConfig kSmall{"small", 6, 6, 384, 256, 8};

inline strata::ModelConfig model_config(const BenchConfig& b, strata::AttentionPlan plan) {
  strata::ModelConfig c;
  c.n_layer = b.L;
  c.n_head = b.NH;
  c.n_embd = b.C;
  c.context_length = b.T;
  c.attention = std::move(plan);
  return c;
}

/// Training FLOPs per step as ../shared/perf counts them: 6 N tokens + 12 L T C tokens, with N the
/// non-embedding parameters plus the tied head (V x C).
inline double train_flops(const strata::ModelConfig& c, strata::Index B, strata::Index T,
                          strata::Index n_params) {
  const double N = double(n_params - c.context_length * c.n_embd);  // all but wpe
  const double tokens = double(B * T);
  return 6 * N * tokens + 12.0 * double(c.n_layer * T * c.n_embd) * tokens;
}

}  // namespace bench
