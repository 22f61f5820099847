// strata/core/threading.hpp: one knob for every parallel region (OpenMP loops, Eigen's GEMM and,
// in a STRATA_USE_BLAS build, the BLAS library's threads).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <string>
#include <thread>

#include "error.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(STRATA_HAVE_OPENBLAS)
// OpenBLAS's own thread knob: its OpenMP build follows omp_set_num_threads, its pthread build only
// this. Declared here so that no OpenBLAS header is needed.
extern "C" void openblas_set_num_threads(int num_threads);
extern "C" char* openblas_get_config(void);
#endif

namespace strata {

/// Sets the number of threads used by strata's own parallel loops, by Eigen's products and, in a
/// STRATA_USE_BLAS build with OpenBLAS, by OpenBLAS.
/// n = 0 means "all hardware threads". Call it before the first model step.
inline void set_num_threads(int n) {
  STRATA_CHECK(n >= 0, "set_num_threads: n = ", n, ", expected >= 0 (0 means all cores)");
  if (n == 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
  Eigen::setNbThreads(n);
#if defined(STRATA_HAVE_OPENBLAS)
  openblas_set_num_threads(n);
#endif
}

/// What computes the matrix products: "Eigen" (the header-only default), or, in a build with the
/// CMake option STRATA_USE_BLAS (EIGEN_USE_BLAS), "BLAS" followed by OpenBLAS's configuration
/// string when the library is OpenBLAS.
inline std::string product_backend() {
#if defined(EIGEN_USE_BLAS) && defined(STRATA_HAVE_OPENBLAS)
  return std::string("BLAS (") + openblas_get_config() + ")";
#elif defined(EIGEN_USE_BLAS)
  return "BLAS";
#else
  return "Eigen";
#endif
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
