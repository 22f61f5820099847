// strata/core/threading.hpp: one knob for every parallel region (OpenMP loops, Eigen's GEMM and,
// in a STRATA_USE_BLAS or STRATA_USE_DNNL build, the library's threads).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>

#include <Eigen/Core>

#include "error.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(STRATA_HAVE_OPENBLAS)
// OpenBLAS's own thread knob: its OpenMP build follows omp_set_num_threads, its pthread build only
// this. Declared here so that no OpenBLAS header is needed.
extern "C" void openblas_set_num_threads(int num_threads);
extern "C" char* openblas_get_config(void);
extern "C" char* openblas_get_corename(void);
#endif

#if defined(STRATA_USE_DNNL)
#include <oneapi/dnnl/dnnl.h>
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

/// The instruction set oneDNN's kernels run on, as oneDNN names it, and its SIMD width in bits
/// (0 when unknown). Only in a STRATA_USE_DNNL build.
#if defined(STRATA_USE_DNNL)
struct DnnlIsa {
  const char* name;
  int bits;
};
inline DnnlIsa dnnl_isa() {
  switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_avx512_core_amx: return {"avx512_core_amx", 512};
    case dnnl_cpu_isa_avx512_core_bf16: return {"avx512_core_bf16", 512};
    case dnnl_cpu_isa_avx512_core_vnni: return {"avx512_core_vnni", 512};
    case dnnl_cpu_isa_avx512_core: return {"avx512_core", 512};
    case dnnl_cpu_isa_avx512_mic_4ops: return {"avx512_mic_4ops", 512};
    case dnnl_cpu_isa_avx512_mic: return {"avx512_mic", 512};
    case dnnl_cpu_isa_avx2_vnni: return {"avx2_vnni", 256};
    case dnnl_cpu_isa_avx2: return {"avx2", 256};
    case dnnl_cpu_isa_avx: return {"avx", 256};
    case dnnl_cpu_isa_sse41: return {"sse41", 128};
    default: return {"unknown", 0};
  }
}
#endif

/// What computes the matrix products: "Eigen" (the header-only default), or, in a build with the
/// CMake option STRATA_USE_BLAS (EIGEN_USE_BLAS), "BLAS" followed by OpenBLAS's configuration
/// string when the library is OpenBLAS. In a STRATA_USE_DNNL build, the linear layers' float
/// products go to oneDNN (named first, with its version and instruction set) and the rest to the
/// library that follows.
inline std::string product_backend() {
#if defined(EIGEN_USE_BLAS) && defined(STRATA_HAVE_OPENBLAS)
  std::string rest = std::string("BLAS (") + openblas_get_config() + ")";
#elif defined(EIGEN_USE_BLAS)
  std::string rest = "BLAS";
#else
  std::string rest = "Eigen";
#endif
#if defined(STRATA_USE_DNNL)
  const dnnl_version_t* v = dnnl_version();
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "."
       + std::to_string(v->patch) + " (linear layers, float; ISA " + dnnl_isa().name
       + "), other products: " + rest;
#else
  return rest;
#endif
}

/// The widest SIMD registers, in bits, of an instruction set name: an OpenBLAS core name
/// ("SkylakeX", "Haswell", "Zen", ...) or a compile-time Eigen set. 0 for names it does not know.
inline int simd_bits_of_openblas_core(const std::string& core) {
  for (const char* wide : {"SkylakeX", "Cooperlake", "SapphireRapids", "Zen4", "Zen5"})
    if (core == wide) return 512;
  for (const char* avx : {"Haswell", "Zen", "Sandybridge", "Excavator", "Steamroller", "Piledriver",
                          "Bulldozer", "AlderLake"})
    if (core == avx) return 256;
  for (const char* sse : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom",
                          "Barcelona", "Opteron", "Katmai", "Coppermine", "Northwood"})
    if (core == sse) return 128;
  return 0;
}

/// The SIMD width, in bits, that strata's own loops and Eigen's packets were compiled for.
constexpr int compiled_simd_bits() {
#if defined(EIGEN_VECTORIZE_AVX512)
  return 512;
#elif defined(EIGEN_VECTORIZE_AVX)
  return 256;
#elif defined(EIGEN_VECTORIZE_SSE2) || defined(EIGEN_VECTORIZE_NEON)
  return 128;
#else
  return 0;
#endif
}

/// The widest x86 SIMD registers this CPU can run, in bits (0 when unknown, e.g. not x86).
inline int cpu_simd_bits() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  if (__builtin_cpu_supports("avx512f")) return 512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 256;
  if (__builtin_cpu_supports("avx")) return 256;
  if (__builtin_cpu_supports("sse2")) return 128;
#endif
  return 0;
}

/// Warnings for kernels narrower than the CPU: Eigen compiled for narrower SIMD than the CPU runs
/// (build without -march=native), or, in a STRATA_USE_BLAS build with OpenBLAS, OpenBLAS running
/// a core narrower than the CPU (typically OPENBLAS_CORETYPE set in the environment), or, in a
/// STRATA_USE_DNNL build, oneDNN limited to a narrower instruction set (ONEDNN_MAX_CPU_ISA). Each
/// line says what was found and how to fix it; empty when the kernels match the CPU.
inline std::string kernel_width_warnings() {
  std::string out;
  const int cpu = cpu_simd_bits();
  if (cpu == 0) return out;
  const int eigen = compiled_simd_bits();
  if (eigen > 0 && eigen < cpu)
    out += "warning: strata was compiled for " + std::to_string(eigen)
         + "-bit SIMD, but this CPU runs " + std::to_string(cpu)
         + "-bit: build with -march=native (CMake: -DSTRATA_NATIVE=ON) for up to "
         + std::to_string(cpu / eigen) + "x faster kernels\n";
#if defined(EIGEN_USE_BLAS) && defined(STRATA_HAVE_OPENBLAS)
  const std::string core = openblas_get_corename();
  const int blas = simd_bits_of_openblas_core(core);
  if (blas > 0 && blas < cpu) {
    const char* env = std::getenv("OPENBLAS_CORETYPE");
    out += "warning: OpenBLAS runs its " + core + " kernels (" + std::to_string(blas)
         + "-bit), but this CPU runs " + std::to_string(cpu) + "-bit SIMD: products may run up to "
         + std::to_string(cpu / blas) + "x slower than the CPU allows";
    if (env && *env)
      out += std::string("; OPENBLAS_CORETYPE=") + env + " is set in the environment: set it to "
           + (cpu == 512 ? "SkylakeX" : "Haswell")
           + " for this command (if this OpenBLAS runs correctly on the CPU) or unset it";
    out += "\n";
  }
#endif
#if defined(STRATA_USE_DNNL)
  const DnnlIsa isa = dnnl_isa();
  if (isa.bits > 0 && isa.bits < cpu) {
    const char* env = std::getenv("ONEDNN_MAX_CPU_ISA");
    if (!env || !*env) env = std::getenv("DNNL_MAX_CPU_ISA");
    out += std::string("warning: oneDNN runs its ") + isa.name + " kernels ("
         + std::to_string(isa.bits) + "-bit), but this CPU runs " + std::to_string(cpu)
         + "-bit SIMD: the linear layers' products may run up to " + std::to_string(cpu / isa.bits)
         + "x slower than the CPU allows";
    if (env && *env) out += std::string("; the environment limits it (") + env + "): unset it";
    out += "\n";
  }
#endif
  return out;
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
