#include "alloc_counter.hpp"  // first: it configures Eigen before Eigen is included
// tests/test_cpu_caches.cpp: guarantees that must hold on every CPU, checked here under the cache
// sizes of other CPUs. Eigen sizes the blocks of its matrix products from the L1/L2/L3 sizes the
// CPU reports (Eigen::setCpuCacheSizes overrides them), so a property that holds with one CPU's
// caches can fail with another's: with an AMD Zen 5's 1 MB L2, Eigen's own product put its double
// precision blocks on the heap in every training step. Each test runs under the caches this CPU
// reports and under those of three CPU kinds, whatever CPU runs the suite:
//   - products (kernels/gemm.hpp) equal a naive double product, are bit-identical on 1 and 2
//     threads, and (header-only build) bit-identical to Eigen's own product on one thread;
//   - a training step allocates nothing after the first, for every plan, float and double;
//   - every plan's forward matches the naive reference model (float 1e-5, double 1e-12).

#include <cstdint>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include <strata/core/threading.hpp>
#include <strata/kernels/linear.hpp>
#include <strata/model/gpt.hpp>

#include "gradcheck.hpp"
#include "model_helpers.hpp"
#include "reference/model_reference.hpp"

namespace {

using strata::AttentionPlan;
using strata::GPT;
using strata::Index;
using strata::Matrix;
using strata::ModelConfig;
using strata::Rng;
using strata::TokenMatrix;
using strata::testing::random_tokens;
using strata::testing::rel_max_diff;

/// A CPU's data caches as Eigen sees them; zeros mean "as this CPU reports".
struct CpuCaches {
  const char* name;
  std::ptrdiff_t l1, l2, l3;
};

void PrintTo(const CpuCaches& cpu, std::ostream* os) {
  *os << cpu.name << " (L1 " << cpu.l1 << ", L2 " << cpu.l2 << ", L3 " << cpu.l3 << " bytes)";
}

constexpr std::ptrdiff_t KB = 1024, MB = 1024 * 1024;
const CpuCaches kCpus[] = {
    {"this_cpu", 0, 0, 0},
    {"amd_zen5", 48 * KB, 1 * MB, 532 * MB},      // AMD EPYC, cpu family 26, as Eigen reads it
    {"intel_spr", 48 * KB, 2 * MB, 105 * MB},     // Intel Xeon of the Sapphire Rapids class
    {"small_caches", 32 * KB, 256 * KB, 8 * MB},  // an older or smaller core
};

/// Sets Eigen's cache sizes for the life of the object and restores the previous ones.
class CacheSizesScope {
 public:
  explicit CacheSizesScope(const CpuCaches& cpu)
      : l1_(Eigen::l1CacheSize()), l2_(Eigen::l2CacheSize()), l3_(Eigen::l3CacheSize()) {
    if (cpu.l1 > 0) Eigen::setCpuCacheSizes(cpu.l1, cpu.l2, cpu.l3);
  }
  ~CacheSizesScope() { Eigen::setCpuCacheSizes(l1_, l2_, l3_); }
  CacheSizesScope(const CacheSizesScope&) = delete;
  CacheSizesScope& operator=(const CacheSizesScope&) = delete;

 private:
  std::ptrdiff_t l1_, l2_, l3_;
};

/// Restores the thread count (OpenMP, Eigen, BLAS) at the end of a test.
class ThreadsScope {
 public:
  ThreadsScope() : threads_(strata::num_threads()) {}
  ~ThreadsScope() { strata::set_num_threads(threads_); }

 private:
  int threads_;
};

struct Plan {
  const char* name;
  AttentionPlan plan;
};

std::vector<Plan> plans() {
  return {{"standard", AttentionPlan::standard()},
          {"skip_split", AttentionPlan::skip_layer(1, 2)},
          {"skip_concat", AttentionPlan::skip_layer(1, 2, strata::SkipMode::concat)},
          {"shortcut", AttentionPlan::shortcut()}};
}

ModelConfig config(Index L, Index NH, Index C, Index V, Index ctx, const AttentionPlan& plan) {
  ModelConfig cfg;
  cfg.n_layer = L;
  cfg.n_head = NH;
  cfg.n_embd = C;
  cfg.vocab_size = V;
  cfg.context_length = ctx;
  cfg.seed = 7;
  cfg.attention = plan;
  return cfg;
}

template <typename S>
Matrix<S> random_matrix(Index rows, Index cols, Rng& rng) {
  Matrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = S(rng.normal());
  return m;
}

class CpuCachesTest : public ::testing::TestWithParam<CpuCaches> {};

INSTANTIATE_TEST_SUITE_P(Cpus, CpuCachesTest, ::testing::ValuesIn(kCpus),
                         [](const ::testing::TestParamInfo<CpuCaches>& info) {
                           return std::string(info.param.name);
                         });

// The three products of a linear layer (forward, both backward) through the library's kernels, on
// shapes below, at and far above the blocking sizes (k up to 4C = 1536 crosses several k-blocks on
// every cache setting; m and n not multiples of any SIMD width).
template <typename S>
void check_products(const CpuCaches& cpu) {
  CacheSizesScope caches(cpu);
  ThreadsScope threads;
  struct Shape {
    Index n, in, out;
  };
  const Shape shapes[] = {{5, 7, 9},      {33, 17, 65},  {70, 64, 256},
                          {140, 256, 64}, {257, 96, 37}, {300, 1536, 129}};
  Rng rng(17);
  for (const Shape& sh : shapes) {
    SCOPED_TRACE("N=" + std::to_string(sh.n) + " IC=" + std::to_string(sh.in)
                 + " OC=" + std::to_string(sh.out));
    const Matrix<S> inp = random_matrix<S>(sh.n, sh.in, rng);
    const Matrix<S> weight = random_matrix<S>(sh.out, sh.in, rng);
    const Matrix<S> dout = random_matrix<S>(sh.n, sh.out, rng);
    const Matrix<S> start_out = random_matrix<S>(sh.n, sh.out, rng);
    const Matrix<S> start_dinp = random_matrix<S>(sh.n, sh.in, rng);
    const Matrix<S> start_dw = random_matrix<S>(sh.out, sh.in, rng);

    // naive double: out = start + inp W^T, dinp = start + dout W, dW = start + dout^T inp
    Matrix<double> ref_out = start_out.template cast<double>();
    Matrix<double> ref_dinp = start_dinp.template cast<double>();
    Matrix<double> ref_dw = start_dw.template cast<double>();
    for (Index i = 0; i < sh.n; ++i)
      for (Index o = 0; o < sh.out; ++o)
        for (Index c = 0; c < sh.in; ++c) {
          ref_out(i, o) += double(inp(i, c)) * double(weight(o, c));
          ref_dinp(i, c) += double(dout(i, o)) * double(weight(o, c));
          ref_dw(o, c) += double(dout(i, o)) * double(inp(i, c));
        }

    std::vector<Matrix<S>> outs, dinps, dws;
    for (int t : {1, 2}) {
      strata::set_num_threads(t);
      Matrix<S> out = start_out, dinp = start_dinp, dw = start_dw;
      strata::linear_forward<S>(out, inp, weight, strata::Vector<S>::Zero(sh.out), out);
      strata::linear_backward<S>(dinp, dw, dout, inp, weight);
      outs.push_back(out);
      dinps.push_back(dinp);
      dws.push_back(dw);
    }
    const double tol = std::is_same<S, float>::value ? 1e-5 : 1e-13;
    EXPECT_LT(rel_max_diff(outs[0], ref_out), tol);
    EXPECT_LT(rel_max_diff(dinps[0], ref_dinp), tol);
    EXPECT_LT(rel_max_diff(dws[0], ref_dw), tol);
#if !defined(EIGEN_USE_BLAS)
    // strata's products split rows between threads, each computed exactly as on one thread
    EXPECT_TRUE(strata::testing::bit_equal(outs[0], outs[1])) << "forward differs on 2 threads";
    EXPECT_TRUE(strata::testing::bit_equal(dinps[0], dinps[1])) << "dinp differs on 2 threads";
    EXPECT_TRUE(strata::testing::bit_equal(dws[0], dws[1])) << "dweight differs on 2 threads";
    // and with the blocking Eigen's own product chooses on one thread, so a model computes what it
    // computed when its products were Eigen expressions
    strata::set_num_threads(1);
    Matrix<S> out = start_out, dinp = start_dinp, dw = start_dw;
    out.noalias() += inp * weight.transpose();
    dinp.noalias() += dout * weight;
    dw.noalias() += dout.transpose() * inp;
    EXPECT_TRUE(strata::testing::bit_equal(out, outs[0])) << "forward differs from Eigen's";
    EXPECT_TRUE(strata::testing::bit_equal(dinp, dinps[0])) << "dinp differs from Eigen's";
    EXPECT_TRUE(strata::testing::bit_equal(dw, dws[0])) << "dweight differs from Eigen's";
#endif
  }
}

TEST_P(CpuCachesTest, ProductsMatchNaiveAndDoNotDependOnThreads) {
  check_products<float>(GetParam());
  check_products<double>(GetParam());
}

// After the first step has sized the workspace and the product buffers, a training step
// allocates nothing: every plan, float and double, on every thread, at a width where the double
// blocks exceed Eigen's 128 KB stack limit under every cache setting here.
template <typename S>
void check_no_allocation(const CpuCaches& cpu) {
  CacheSizesScope caches(cpu);
  for (const Plan& p : plans()) {
    SCOPED_TRACE(p.name);
    GPT<S> model(config(2, 4, 128, 256, 128, p.plan));
    Rng rng(51);
    const TokenMatrix tokens = random_tokens(2, 128, 256, rng);
    const TokenMatrix targets = random_tokens(2, 128, 256, rng);
    alloc_counter::expect_step_allocates_nothing(model, tokens, targets);
  }
}

// oneDNN computes the float products of a STRATA_USE_DNNL build only: its double half runs there.
constexpr const char* kDnnlAllocates =
    "float half not run: oneDNN allocates inside dnnl_sgemm (a small block per product when it "
    "runs on more than one thread); the double half passed, and the header-only and BLAS builds "
    "run both";

TEST_P(CpuCachesTest, TrainingStepAllocatesNothing) {
  check_no_allocation<double>(GetParam());
#if defined(STRATA_USE_DNNL)
  if (!HasFailure()) GTEST_SKIP() << kDnnlAllocates;
#else
  check_no_allocation<float>(GetParam());
#endif
}

// The allocation check itself: Eigen's runtime check and the operator new counter both fire.
TEST(NoAllocation, RuntimeCheckIsLive) {
  alloc_counter::eigen_assert_failures = 0;
  Eigen::internal::set_is_malloc_allowed(false);
  { Matrix<double> m(10, 10); }
  Eigen::internal::set_is_malloc_allowed(true);
  EXPECT_EQ(alloc_counter::eigen_assert_failures.load(), 1);
  alloc_counter::eigen_assert_failures = 0;
  alloc_counter::allocations = 0;
  alloc_counter::counting = true;
  { std::vector<int> v(3); }
  alloc_counter::counting = false;
  EXPECT_EQ(alloc_counter::allocations.load(), 1);
}

// Below the width where the products block: the smallest model and several attention tiles
// (T 70), standard plan, this CPU's caches, float and double.
template <typename S>
void check_no_allocation_small() {
  for (const auto& [C, V, T] : {std::tuple<Index, Index, Index>{8, 11, 5}, {32, 37, 70}}) {
    SCOPED_TRACE("C " + std::to_string(C) + ", T " + std::to_string(T));
    GPT<S> model(config(2, C == 8 ? 2 : 4, C, V, 80, AttentionPlan::standard()));
    Rng rng(51);
    const TokenMatrix tokens = random_tokens(2, T, V, rng);
    const TokenMatrix targets = random_tokens(2, T, V, rng);
    alloc_counter::expect_step_allocates_nothing(model, tokens, targets);
  }
}

TEST(NoAllocation, SmallModelsTrainingStep) {
  check_no_allocation_small<double>();
#if defined(STRATA_USE_DNNL)
  if (!HasFailure()) GTEST_SKIP() << kDnnlAllocates;
#else
  check_no_allocation_small<float>();
#endif
}

// Every plan against the naive reference at a width where the products block (C 64, 4C 256).
template <typename S>
void check_reference(const CpuCaches& cpu) {
  CacheSizesScope caches(cpu);
  for (const Plan& p : plans()) {
    SCOPED_TRACE(p.name);
    GPT<S> model(config(3, 2, 64, 37, 80, p.plan));
    strata::testing::randomize(model, 23);
    Rng rng(5);
    const TokenMatrix tokens = random_tokens(2, 70, 37, rng);
    const TokenMatrix targets = random_tokens(2, 70, 37, rng);
    const strata::reference::ModelOutput ref =
        strata::reference::model_forward(model, tokens, &targets);
    const Matrix<S> logits = model.forward(tokens);
    EXPECT_LT(rel_max_diff(logits, ref.logits), strata::testing::tolerance<S>());
  }
}

TEST_P(CpuCachesTest, EveryPlanMatchesTheReference) {
  check_reference<float>(GetParam());
  check_reference<double>(GetParam());
}

}  // namespace

namespace {

// The banner's warning about kernels narrower than the CPU (examples, benchmarks).
TEST(KernelWidth, OpenBlasCoreNames) {
  EXPECT_EQ(strata::simd_bits_of_openblas_core("SkylakeX"), 512);
  EXPECT_EQ(strata::simd_bits_of_openblas_core("SapphireRapids"), 512);
  EXPECT_EQ(strata::simd_bits_of_openblas_core("Haswell"), 256);
  EXPECT_EQ(strata::simd_bits_of_openblas_core("Zen"), 256);
  EXPECT_EQ(strata::simd_bits_of_openblas_core("Prescott"), 128);
  EXPECT_EQ(strata::simd_bits_of_openblas_core("NoSuchCore"), 0);
}

TEST(KernelWidth, CompiledWidthIsEigens) {
  const std::string sets = Eigen::SimdInstructionSetsInUse();
  const int bits = strata::compiled_simd_bits();
  EXPECT_EQ(bits == 512, sets.find("AVX512") != std::string::npos) << sets;
  EXPECT_EQ(bits == 256,
            sets.find("AVX") != std::string::npos && sets.find("AVX512") == std::string::npos)
      << sets;
  EXPECT_GE(strata::cpu_simd_bits(), bits) << "the program runs, so the CPU has what it needs";
}

TEST(KernelWidth, WarnsExactlyWhenNarrower) {
  const std::string w = strata::kernel_width_warnings();
  const bool narrow_eigen = strata::compiled_simd_bits() < strata::cpu_simd_bits();
  EXPECT_EQ(w.find("-DSTRATA_NATIVE=ON") != std::string::npos, narrow_eigen) << w;
#if !(defined(EIGEN_USE_BLAS) && defined(STRATA_HAVE_OPENBLAS))
  EXPECT_EQ(w.find("OpenBLAS") != std::string::npos, false) << w;
#endif
#if defined(STRATA_USE_DNNL)
  const strata::DnnlIsa isa = strata::dnnl_isa();
  EXPECT_GT(isa.bits, 0) << isa.name;
  EXPECT_EQ(w.find("oneDNN runs its") != std::string::npos, isa.bits < strata::cpu_simd_bits())
      << w;
#else
  EXPECT_EQ(w.find("oneDNN") != std::string::npos, false) << w;
#endif
}

}  // namespace
