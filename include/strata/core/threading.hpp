// strata/core/threading.hpp: one knob for every parallel region (OpenMP loops and Eigen's GEMM).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <thread>

#include "error.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace strata {

/// Sets the number of threads used by strata's own parallel loops and by Eigen's products.
/// n = 0 means "all hardware threads". Call it before the first model step.
inline void set_num_threads(int n) {
  STRATA_CHECK(n >= 0, "set_num_threads: n = ", n, ", expected >= 0 (0 means all cores)");
  if (n == 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
  Eigen::setNbThreads(n);
}

/// Threads strata's parallel regions will use.
inline int num_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace strata
