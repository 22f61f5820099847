// tests/test_kernels.cpp: the dense kernels (embedding, layernorm, linear, gelu, cross-entropy).
//
// For every kernel, in float and double:
//   MatchesReference     optimized vs the naive loops of reference/kernels_reference.hpp, forward
//   and
//                        backward, on shapes with N = 1, C = 1, odd sizes and one above the OpenMP
//                        threshold (N*C > 65536); tolerance rel_max_diff <= 1e-5 (float), 1e-12
//                        (double).
//   AcceptsBlocksAndViews  inputs and outputs that are blocks of wider matrices (outer stride) and
//                        strided vectors (copied by the const Ref); untouched neighbours stay
//                        untouched.
//   BackwardAccumulates  prefilled gradients receive prefill + fresh.
// In double only: FiniteDifferences (every input, loss sum(R o out) or the mean cross-entropy,
// relative error < 1e-6), Errors (exact what() text), and special values.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__unix__)
#include <signal.h>
#include <unistd.h>
#endif

#include <gtest/gtest.h>

#include <strata/core/error.hpp>
#include <strata/core/rng.hpp>
#include <strata/core/threading.hpp>
#include <strata/kernels/cross_entropy.hpp>
#include <strata/kernels/embedding.hpp>
#include <strata/kernels/gelu.hpp>
#include <strata/kernels/layernorm.hpp>
#include <strata/kernels/linear.hpp>

#include "gradcheck.hpp"
#include "reference/kernels_reference.hpp"

namespace {

using strata::Index;
using strata::Matrix;
using strata::Rng;
using strata::TokenMatrix;
using strata::Vector;
namespace ref = strata::reference;
namespace st = strata::testing;

using Scalars = ::testing::Types<float, double>;
struct ScalarName {
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, float> ? "float" : "double";
  }
};

template <typename Scalar>
constexpr double kTol = std::is_same_v<Scalar, float> ? 1e-5 : 1e-12;

constexpr double kGradTol = 1e-6;

#define EXPECT_REL_CLOSE(actual, expected, tol)                                            \
  do {                                                                                     \
    const double rel_ = st::rel_max_diff((actual), (expected));                            \
    EXPECT_LE(rel_, (tol)) << #actual << " vs " << #expected << ": rel_max_diff " << rel_; \
  } while (0)

template <typename A, typename B>
bool bitwise_equal(const A& a, const B& b) {
  static_assert(std::is_same_v<typename A::Scalar, typename B::Scalar>);
  return a.rows() == b.rows() && a.cols() == b.cols()
      && std::memcmp(a.data(), b.data(),
                     sizeof(typename A::Scalar) * static_cast<std::size_t>(a.size()))
             == 0;
}

template <typename Scalar>
Matrix<Scalar> zeros(Index r, Index c) {
  return Matrix<Scalar>::Zero(r, c);
}
template <typename Scalar>
Vector<Scalar> zeros(Index n) {
  return Vector<Scalar>::Zero(n);
}

double weighted_sum(const Matrix<double>& r, const Matrix<double>& out) {
  return (r.array() * out.array()).sum();
}

/// Restores the thread count when a test ends, also on failure.
struct ThreadCountGuard {
  int saved = strata::num_threads();
  ~ThreadCountGuard() { strata::set_num_threads(saved); }
};

#if defined(STRATA_HAVE_OPENBLAS)
extern "C" int openblas_get_num_threads(void);
#endif

// One knob governs every parallel region: OpenMP, Eigen's products and, in a STRATA_USE_BLAS build
// with OpenBLAS, OpenBLAS's own threads.
TEST(Threading, SetNumThreadsGovernsEveryParallelRegion) {
  ThreadCountGuard guard;
  for (int n : {1, 2, 3}) {
    strata::set_num_threads(n);
    EXPECT_EQ(Eigen::nbThreads(), n);
#if defined(_OPENMP)
    EXPECT_EQ(strata::num_threads(), n);
    EXPECT_EQ(omp_get_max_threads(), n);
#endif
#if defined(STRATA_HAVE_OPENBLAS)
    EXPECT_EQ(openblas_get_num_threads(), n);
#endif
  }
  EXPECT_STRATA_ERROR(strata::set_num_threads(-1),
                      "set_num_threads: n = -1, expected >= 0 (0 means all cores)");
  std::string backend = strata::product_backend();
#if defined(STRATA_USE_DNNL)
  // "oneDNN 2.6.3 (linear layers, float; ISA avx2), other products: <the rest>"
  EXPECT_EQ(backend.rfind("oneDNN ", 0), 0u) << backend;
  const std::string rest = ", other products: ";
  ASSERT_NE(backend.find(rest), std::string::npos) << backend;
  backend = backend.substr(backend.find(rest) + rest.size());
#endif
#if defined(EIGEN_USE_BLAS)
  EXPECT_EQ(backend.rfind("BLAS", 0), 0u) << backend;
#else
  EXPECT_EQ(backend, "Eigen");
#endif
}

// ================================================================================================
// Embedding
// ================================================================================================
template <typename T>
class EmbeddingTest : public ::testing::Test {};
TYPED_TEST_SUITE(EmbeddingTest, Scalars, ScalarName);

struct EmbShape {
  Index B, T, C, V, maxT, pos0;
};
const EmbShape kEmbShapes[] = {{1, 1, 1, 1, 1, 0},
                               {1, 1, 5, 3, 4, 3},
                               {2, 3, 1, 7, 8, 2},
                               {3, 5, 7, 11, 9, 4},
                               {3, 100, 257, 50, 128, 5}};

TYPED_TEST(EmbeddingTest, MatchesReference) {
  using S = TypeParam;
  Rng rng(101);
  for (const auto& s : kEmbShapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C << " V=" << s.V
                                      << " maxT=" << s.maxT << " pos0=" << s.pos0);
    const TokenMatrix tokens = st::random_tokens(s.B, s.T, s.V, rng);
    const Matrix<S> wte = st::random_matrix<S>(s.V, s.C, rng);
    const Matrix<S> wpe = st::random_matrix<S>(s.maxT, s.C, rng);
    Matrix<S> out(s.B * s.T, s.C);
    strata::embedding_forward<S>(out, tokens, wte, wpe, s.pos0);
    EXPECT_REL_CLOSE(out, ref::embedding_forward(tokens, wte, wpe, s.pos0), kTol<S>);

    const Matrix<S> dout = st::random_matrix<S>(s.B * s.T, s.C, rng);
    Matrix<S> dwte = zeros<S>(s.V, s.C), dwpe = zeros<S>(s.maxT, s.C);
    strata::embedding_backward<S>(dwte, dwpe, dout, tokens, s.pos0);
    const auto expected = ref::embedding_backward(dout, tokens, s.V, s.maxT, s.pos0);
    EXPECT_REL_CLOSE(dwte, expected.dwte, kTol<S>);
    EXPECT_REL_CLOSE(dwpe, expected.dwpe, kTol<S>);
  }
}

TYPED_TEST(EmbeddingTest, AcceptsBlocksAndViews) {
  using S = TypeParam;
  Rng rng(102);
  const Index B = 2, T = 5, C = 6, V = 9, maxT = 12, pos0 = 3;
  TokenMatrix wide_tokens = st::random_tokens(B + 1, T + 4, V, rng);
  const auto tokens = wide_tokens.block(1, 2, B, T);  // outer stride T + 4
  const Matrix<S> wide_wte = st::random_matrix<S>(V, C + 3, rng);
  const Matrix<S> wide_wpe = st::random_matrix<S>(maxT + 2, C, rng);
  const auto wte = wide_wte.middleCols(2, C);
  const auto wpe = wide_wpe.middleRows(1, maxT);
  Matrix<S> wide_out = Matrix<S>::Constant(B * T, C + 2, S(7));
  strata::embedding_forward<S>(wide_out.middleCols(1, C), tokens, wte, wpe, pos0);
  const TokenMatrix tokens_plain = tokens;
  EXPECT_REL_CLOSE(wide_out.middleCols(1, C),
                   ref::embedding_forward<S>(tokens_plain, wte, wpe, pos0), kTol<S>);
  EXPECT_TRUE((wide_out.col(0).array() == S(7)).all()
              && (wide_out.col(C + 1).array() == S(7)).all());

  const Matrix<S> wide_dout = st::random_matrix<S>(B * T, C + 5, rng);
  const auto dout = wide_dout.middleCols(4, C);
  Matrix<S> wide_dwte = zeros<S>(V, C + 2), wide_dwpe = zeros<S>(maxT, C + 1);
  strata::embedding_backward<S>(wide_dwte.middleCols(2, C), wide_dwpe.leftCols(C), dout, tokens,
                                pos0);
  const auto expected = ref::embedding_backward<S>(dout, tokens_plain, V, maxT, pos0);
  EXPECT_REL_CLOSE(wide_dwte.middleCols(2, C), expected.dwte, kTol<S>);
  EXPECT_REL_CLOSE(wide_dwpe.leftCols(C), expected.dwpe, kTol<S>);
  EXPECT_TRUE(wide_dwte.leftCols(2).isZero(0) && wide_dwpe.col(C).isZero(0));
}

TYPED_TEST(EmbeddingTest, BackwardAccumulates) {
  using S = TypeParam;
  Rng rng(103);
  const Index B = 2, T = 4, C = 5, V = 3, maxT = 6, pos0 = 1;  // V = 3: repeated tokens
  const TokenMatrix tokens = st::random_tokens(B, T, V, rng);
  const Matrix<S> dout = st::random_matrix<S>(B * T, C, rng);
  Matrix<S> fresh_wte = zeros<S>(V, C), fresh_wpe = zeros<S>(maxT, C);
  strata::embedding_backward<S>(fresh_wte, fresh_wpe, dout, tokens, pos0);
  const Matrix<S> pre_wte = st::random_matrix<S>(V, C, rng),
                  pre_wpe = st::random_matrix<S>(maxT, C, rng);
  Matrix<S> dwte = pre_wte, dwpe = pre_wpe;
  strata::embedding_backward<S>(dwte, dwpe, dout, tokens, pos0);
  EXPECT_REL_CLOSE(dwte, (pre_wte + fresh_wte).eval(), kTol<S>);
  EXPECT_REL_CLOSE(dwpe, (pre_wpe + fresh_wpe).eval(), kTol<S>);
}

TEST(EmbeddingGradient, FiniteDifferences) {
  Rng rng(104);
  const Index B = 2, T = 3, C = 4, V = 5, maxT = 7, pos0 = 2;
  TokenMatrix tokens = st::random_tokens(B, T, V, rng);
  tokens(1, 2) = tokens(0, 0);  // a repeated token accumulates
  Matrix<double> wte = st::random_matrix<double>(V, C, rng),
                 wpe = st::random_matrix<double>(maxT, C, rng);
  const Matrix<double> R = st::random_matrix<double>(B * T, C, rng);
  Matrix<double> out(B * T, C);
  const auto loss = [&] {
    strata::embedding_forward<double>(out, tokens, wte, wpe, pos0);
    return weighted_sum(R, out);
  };
  Matrix<double> dwte = zeros<double>(V, C), dwpe = zeros<double>(maxT, C);
  strata::embedding_backward<double>(dwte, dwpe, R, tokens, pos0);
  st::expect_gradient_close("embedding dwte", loss, wte, dwte, kGradTol);
  st::expect_gradient_close("embedding dwpe", loss, wpe, dwpe, kGradTol);
}

TEST(EmbeddingErrors, ExactMessages) {
  const Index B = 2, T = 3, C = 4, V = 10, maxT = 8;
  TokenMatrix tokens = TokenMatrix::Zero(B, T);
  const Matrix<double> wte = zeros<double>(V, C), wpe = zeros<double>(maxT, C);
  Matrix<double> out(B * T, C);
  Matrix<double> dwte = zeros<double>(V, C), dwpe = zeros<double>(maxT, C);
  const Matrix<double> dout = zeros<double>(B * T, C);

  EXPECT_STRATA_ERROR(strata::embedding_forward<double>(out, tokens, wte, zeros<double>(maxT, 3)),
                      "embedding_forward: wpe has shape [8, 3], expected [8, 4]");
  Matrix<double> bad_rows(5, C), bad_cols(B * T, 3);
  EXPECT_STRATA_ERROR(strata::embedding_forward<double>(bad_rows, tokens, wte, wpe),
                      "embedding_forward: out has shape [5, 4], expected [6, 4]");
  EXPECT_STRATA_ERROR(strata::embedding_forward<double>(bad_cols, tokens, wte, wpe),
                      "embedding_forward: out has shape [6, 3], expected [6, 4]");
  EXPECT_STRATA_ERROR(
      strata::embedding_forward<double>(out, tokens, wte, wpe, 6),
      "embedding_forward: positions 6..8 exceed the context length 8 (sequence of 3 "
      "tokens starting at position 6)");
  EXPECT_STRATA_ERROR(
      strata::embedding_forward<double>(out, tokens, wte, wpe, -1),
      "embedding_forward: positions -1..1 exceed the context length 8 (sequence of 3 "
      "tokens starting at position -1)");
  {
    const TokenMatrix long_tokens = TokenMatrix::Zero(1, 9);
    Matrix<double> long_out(9, C);
    EXPECT_STRATA_ERROR(
        strata::embedding_forward<double>(long_out, long_tokens, wte, wpe),
        "embedding_forward: positions 0..8 exceed the context length 8 (sequence of 9 "
        "tokens starting at position 0)");
  }
  tokens(1, 2) = 10;
  EXPECT_STRATA_ERROR(strata::embedding_forward<double>(out, tokens, wte, wpe),
                      "embedding_forward: token 10 at [1, 2] is outside the vocabulary [0, 10)");
  EXPECT_STRATA_ERROR(strata::embedding_backward<double>(dwte, dwpe, dout, tokens),
                      "embedding_backward: token 10 at [1, 2] is outside the vocabulary [0, 10)");
  tokens(1, 2) = 0;
  tokens(0, 1) = -1;
  EXPECT_STRATA_ERROR(strata::embedding_forward<double>(out, tokens, wte, wpe),
                      "embedding_forward: token -1 at [0, 1] is outside the vocabulary [0, 10)");
  tokens(0, 1) = 0;

  Matrix<double> bad_dwpe = zeros<double>(maxT, 5);
  EXPECT_STRATA_ERROR(strata::embedding_backward<double>(dwte, bad_dwpe, dout, tokens),
                      "embedding_backward: dwpe has shape [8, 5], expected [8, 4]");
  EXPECT_STRATA_ERROR(strata::embedding_backward<double>(dwte, dwpe, zeros<double>(5, C), tokens),
                      "embedding_backward: dout has shape [5, 4], expected [6, 4]");
  EXPECT_STRATA_ERROR(
      strata::embedding_backward<double>(dwte, dwpe, dout, tokens, 7),
      "embedding_backward: positions 7..9 exceed the context length 8 (sequence of 3 "
      "tokens starting at position 7)");
  // Nothing was written by the failing calls.
  EXPECT_TRUE(dwte.isZero(0) && dwpe.isZero(0));
}

// ================================================================================================
// LayerNorm
// ================================================================================================
template <typename T>
class LayerNormTest : public ::testing::Test {};
TYPED_TEST_SUITE(LayerNormTest, Scalars, ScalarName);

struct NCShape {
  Index N, C;
};
const NCShape kNCShapes[] = {{1, 1}, {1, 9}, {6, 1}, {3, 5}, {17, 33}, {300, 257}};

template <typename S>
Vector<S> ln_weight(Index C, Rng& rng) {
  return (Vector<S>::Ones(C) + st::random_vector<S>(C, rng, 0.3)).eval();
}

TYPED_TEST(LayerNormTest, MatchesReference) {
  using S = TypeParam;
  Rng rng(201);
  for (const auto& s : kNCShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const Matrix<S> inp = (st::random_matrix<S>(s.N, s.C, rng, 2.0).array() + S(0.5)).matrix();
    const Vector<S> weight = ln_weight<S>(s.C, rng), bias = st::random_vector<S>(s.C, rng, 0.2);
    Matrix<S> out(s.N, s.C);
    Vector<S> mean(s.N), rstd(s.N);
    strata::layernorm_forward<S>(out, mean, rstd, inp, weight, bias);
    const auto expected = ref::layernorm_forward(inp, weight, bias);
    EXPECT_REL_CLOSE(out, expected.out, kTol<S>);
    EXPECT_REL_CLOSE(mean, expected.mean, kTol<S>);
    EXPECT_REL_CLOSE(rstd, expected.rstd, kTol<S>);

    const Matrix<S> dout = st::random_matrix<S>(s.N, s.C, rng);
    Matrix<S> dinp = zeros<S>(s.N, s.C);
    Vector<S> dweight = zeros<S>(s.C), dbias = zeros<S>(s.C);
    strata::layernorm_backward<S>(dinp, dweight, dbias, dout, inp, mean, rstd, weight);
    const auto grads = ref::layernorm_backward(dout, inp, weight);
    // dinp = rstd * (g - mean(g) - n mean(g n)): its rounding error is rstd times that of O(|g|)
    // terms. For C = 1 (var = 0, rstd = 1/sqrt(eps) = 316) the exact value is 0, and with FMA
    // contraction (-march=native) the float kernel returns ~1e-5, so the tolerance scales with
    // rstd.
    EXPECT_REL_CLOSE(dinp, grads.dinp,
                     kTol<S> * std::max(1.0, static_cast<double>(rstd.maxCoeff())));
    EXPECT_REL_CLOSE(dweight, grads.dweight, kTol<S>);
    EXPECT_REL_CLOSE(dbias, grads.dbias, kTol<S>);
  }
}

TYPED_TEST(LayerNormTest, AcceptsBlocksAndViews) {
  using S = TypeParam;
  Rng rng(202);
  const Index N = 7, C = 13;
  const Matrix<S> wide_inp = st::random_matrix<S>(N + 2, C + 5, rng);
  const auto inp = wide_inp.block(1, 3, N, C);
  const Matrix<S> params = st::random_matrix<S>(C, 3, rng, 0.5);   // columns: strided vectors
  const Matrix<S> params_t = st::random_matrix<S>(2, C + 1, rng);  // rows: contiguous vectors
  const auto weight = params.col(1);
  const auto bias = params_t.row(1).segment(1, C).transpose();
  const Matrix<S> inp_plain = inp;
  const Vector<S> weight_plain = weight, bias_plain = bias;

  Matrix<S> wide_out = Matrix<S>::Constant(N, C + 2, S(-3));
  Vector<S> stats = Vector<S>::Constant(2 * N + 3, S(-3));
  strata::layernorm_forward<S>(wide_out.rightCols(C), stats.segment(1, N), stats.segment(N + 2, N),
                               inp, weight, bias);
  const auto expected = ref::layernorm_forward(inp_plain, weight_plain, bias_plain);
  EXPECT_REL_CLOSE(wide_out.rightCols(C), expected.out, kTol<S>);
  EXPECT_REL_CLOSE(stats.segment(1, N), expected.mean, kTol<S>);
  EXPECT_REL_CLOSE(stats.segment(N + 2, N), expected.rstd, kTol<S>);
  EXPECT_TRUE((wide_out.leftCols(2).array() == S(-3)).all());
  EXPECT_TRUE(stats(0) == S(-3) && stats(N + 1) == S(-3) && stats(2 * N + 2) == S(-3));

  const Matrix<S> wide_dout = st::random_matrix<S>(N, C + 1, rng);
  const auto dout = wide_dout.leftCols(C);
  Matrix<S> wide_dinp = zeros<S>(N + 1, C + 4);
  Vector<S> dparams = zeros<S>(2 * C + 1);
  strata::layernorm_backward<S>(wide_dinp.block(1, 2, N, C), dparams.head(C), dparams.tail(C), dout,
                                inp, stats.segment(1, N), stats.segment(N + 2, N), weight);
  const auto grads = ref::layernorm_backward<S>(dout, inp_plain, weight_plain);
  EXPECT_REL_CLOSE(wide_dinp.block(1, 2, N, C), grads.dinp, kTol<S>);
  EXPECT_REL_CLOSE(dparams.head(C), grads.dweight, kTol<S>);
  EXPECT_REL_CLOSE(dparams.tail(C), grads.dbias, kTol<S>);
  EXPECT_TRUE(wide_dinp.row(0).isZero(0) && wide_dinp.leftCols(2).isZero(0) && dparams(C) == S(0));
}

TYPED_TEST(LayerNormTest, BackwardAccumulates) {
  using S = TypeParam;
  Rng rng(203);
  const Index N = 5, C = 11;
  const Matrix<S> inp = st::random_matrix<S>(N, C, rng);
  const Vector<S> weight = ln_weight<S>(C, rng), bias = st::random_vector<S>(C, rng);
  Matrix<S> out(N, C);
  Vector<S> mean(N), rstd(N);
  strata::layernorm_forward<S>(out, mean, rstd, inp, weight, bias);
  const Matrix<S> dout = st::random_matrix<S>(N, C, rng);
  Matrix<S> fresh_dinp = zeros<S>(N, C);
  Vector<S> fresh_dw = zeros<S>(C), fresh_db = zeros<S>(C);
  strata::layernorm_backward<S>(fresh_dinp, fresh_dw, fresh_db, dout, inp, mean, rstd, weight);
  const Matrix<S> pre_dinp = st::random_matrix<S>(N, C, rng);
  const Vector<S> pre_dw = st::random_vector<S>(C, rng), pre_db = st::random_vector<S>(C, rng);
  Matrix<S> dinp = pre_dinp;
  Vector<S> dw = pre_dw, db = pre_db;
  strata::layernorm_backward<S>(dinp, dw, db, dout, inp, mean, rstd, weight);
  EXPECT_REL_CLOSE(dinp, (pre_dinp + fresh_dinp).eval(), kTol<S>);
  EXPECT_REL_CLOSE(dw, (pre_dw + fresh_dw).eval(), kTol<S>);
  EXPECT_REL_CLOSE(db, (pre_db + fresh_db).eval(), kTol<S>);
}

// InputGrad::overwrite writes dinp without reading it (NaN there must not leak through) and gives
// the bits of accumulating into zeros; the parameter gradients still accumulate.
TYPED_TEST(LayerNormTest, BackwardOverwritesTheInputGradient) {
  using S = TypeParam;
  Rng rng(206);
  const Index N = 7, C = 70;
  const Matrix<S> inp = st::random_matrix<S>(N, C, rng, 3.0);
  const Vector<S> weight = ln_weight<S>(C, rng), bias = st::random_vector<S>(C, rng);
  Matrix<S> out(N, C);
  Vector<S> mean(N), rstd(N);
  strata::layernorm_forward<S>(out, mean, rstd, inp, weight, bias);
  const Matrix<S> dout = st::random_matrix<S>(N, C, rng);
  const Vector<S> pre_dw = st::random_vector<S>(C, rng), pre_db = st::random_vector<S>(C, rng);
  Matrix<S> from_zero = zeros<S>(N, C);
  Vector<S> dw_a = pre_dw, db_a = pre_db;
  strata::layernorm_backward<S>(from_zero, dw_a, db_a, dout, inp, mean, rstd, weight);
  Matrix<S> dinp = Matrix<S>::Constant(N, C, std::numeric_limits<S>::quiet_NaN());
  Vector<S> dw_o = pre_dw, db_o = pre_db;
  strata::layernorm_backward<S>(dinp, dw_o, db_o, dout, inp, mean, rstd, weight,
                                strata::InputGrad::overwrite);
  EXPECT_TRUE(st::bit_equal(dinp, from_zero));
  EXPECT_TRUE(st::bit_equal(dw_o, dw_a));
  EXPECT_TRUE(st::bit_equal(db_o, db_a));
}

TYPED_TEST(LayerNormTest, BackwardIsDeterministicAcrossThreadCounts) {
  using S = TypeParam;
  ThreadCountGuard guard;
  Rng rng(204);
  const Index N = 256, C = 300;  // N*C = 76800: both parallel loops run threaded
  const Matrix<S> inp = st::random_matrix<S>(N, C, rng);
  const Vector<S> weight = ln_weight<S>(C, rng), bias = st::random_vector<S>(C, rng);
  Matrix<S> out(N, C);
  Vector<S> mean(N), rstd(N);
  strata::layernorm_forward<S>(out, mean, rstd, inp, weight, bias);
  const Matrix<S> dout = st::random_matrix<S>(N, C, rng);
  const Matrix<S> pre = st::random_matrix<S>(N, C, rng);
  const auto run = [&](int threads) {
    strata::set_num_threads(threads);
#if defined(_OPENMP)
    EXPECT_EQ(strata::num_threads(),
              threads);  // without OpenMP the kernel is serial: trivially equal
#endif
    ref::LayerNormGrads<S> g{pre, zeros<S>(C), zeros<S>(C)};
    strata::layernorm_backward<S>(g.dinp, g.dweight, g.dbias, dout, inp, mean, rstd, weight);
    return g;
  };
  const auto one = run(1), two = run(2), two_again = run(2), three = run(3), one_again = run(1);
  const std::pair<const char*, const ref::LayerNormGrads<S>*> runs[] = {
      {"2 threads", &two},
      {"2 threads, second run", &two_again},
      {"3 threads", &three},
      {"1 thread, second run", &one_again}};
  for (const auto& [name, g] : runs) {
    EXPECT_TRUE(bitwise_equal(g->dinp, one.dinp)) << name << " vs 1 thread: dinp";
    EXPECT_TRUE(bitwise_equal(g->dweight, one.dweight)) << name << " vs 1 thread: dweight";
    EXPECT_TRUE(bitwise_equal(g->dbias, one.dbias)) << name << " vs 1 thread: dbias";
  }
}

TEST(LayerNormGradient, FiniteDifferences) {
  Rng rng(205);
  const Index N = 4, C = 9;
  Matrix<double> inp = st::random_matrix<double>(N, C, rng, 1.5);
  Vector<double> weight = ln_weight<double>(C, rng), bias = st::random_vector<double>(C, rng);
  const Matrix<double> R = st::random_matrix<double>(N, C, rng);
  Matrix<double> out(N, C);
  Vector<double> mean(N), rstd(N);
  const auto loss = [&] {
    strata::layernorm_forward<double>(out, mean, rstd, inp, weight, bias);
    return weighted_sum(R, out);
  };
  loss();
  Matrix<double> dinp = zeros<double>(N, C);
  Vector<double> dweight = zeros<double>(C), dbias = zeros<double>(C);
  strata::layernorm_backward<double>(dinp, dweight, dbias, R, inp, mean, rstd, weight);
  st::expect_gradient_close("layernorm dinp", loss, inp, dinp, kGradTol);
  st::expect_gradient_close("layernorm dweight", loss, weight, dweight, kGradTol);
  st::expect_gradient_close("layernorm dbias", loss, bias, dbias, kGradTol);
}

TEST(LayerNormErrors, ExactMessages) {
  const Index N = 3, C = 4;
  const Matrix<double> inp = zeros<double>(N, C), dout = zeros<double>(N, C);
  const Vector<double> w = zeros<double>(C), b = zeros<double>(C);
  Matrix<double> out(N, C), bad_out(N, 5), dinp(N, C);
  Vector<double> mean(N), rstd(N), short_v(2), long_v(4), dw(C), db(C), wrong_c(5);
  EXPECT_STRATA_ERROR(strata::layernorm_forward<double>(bad_out, mean, rstd, inp, w, b),
                      "layernorm_forward: out has shape [3, 5], expected [3, 4]");
  EXPECT_STRATA_ERROR(strata::layernorm_forward<double>(out, short_v, rstd, inp, w, b),
                      "layernorm_forward: mean has size 2, expected 3");
  EXPECT_STRATA_ERROR(strata::layernorm_forward<double>(out, mean, long_v, inp, w, b),
                      "layernorm_forward: rstd has size 4, expected 3");
  EXPECT_STRATA_ERROR(strata::layernorm_forward<double>(out, mean, rstd, inp, wrong_c, b),
                      "layernorm_forward: weight has size 5, expected 4");
  EXPECT_STRATA_ERROR(strata::layernorm_forward<double>(out, mean, rstd, inp, w, short_v),
                      "layernorm_forward: bias has size 2, expected 4");

  EXPECT_STRATA_ERROR(strata::layernorm_backward<double>(bad_out, dw, db, dout, inp, mean, rstd, w),
                      "layernorm_backward: dinp has shape [3, 5], expected [3, 4]");
  EXPECT_STRATA_ERROR(
      strata::layernorm_backward<double>(dinp, dw, db, zeros<double>(2, C), inp, mean, rstd, w),
      "layernorm_backward: dout has shape [2, 4], expected [3, 4]");
  EXPECT_STRATA_ERROR(
      strata::layernorm_backward<double>(dinp, wrong_c, db, dout, inp, mean, rstd, w),
      "layernorm_backward: dweight has size 5, expected 4");
  EXPECT_STRATA_ERROR(
      strata::layernorm_backward<double>(dinp, dw, short_v, dout, inp, mean, rstd, w),
      "layernorm_backward: dbias has size 2, expected 4");
  EXPECT_STRATA_ERROR(strata::layernorm_backward<double>(dinp, dw, db, dout, inp, long_v, rstd, w),
                      "layernorm_backward: mean has size 4, expected 3");
  EXPECT_STRATA_ERROR(strata::layernorm_backward<double>(dinp, dw, db, dout, inp, mean, short_v, w),
                      "layernorm_backward: rstd has size 2, expected 3");
  EXPECT_STRATA_ERROR(
      strata::layernorm_backward<double>(dinp, dw, db, dout, inp, mean, rstd, wrong_c),
      "layernorm_backward: weight has size 5, expected 4");
}

// ================================================================================================
// Linear
// ================================================================================================
template <typename T>
class LinearTest : public ::testing::Test {};
TYPED_TEST_SUITE(LinearTest, Scalars, ScalarName);

struct LinShape {
  Index N, IC, OC;
};
const LinShape kLinShapes[] = {{1, 1, 1}, {1, 5, 3},   {4, 1, 6},
                               {6, 7, 1}, {7, 13, 11}, {300, 257, 129}};

TYPED_TEST(LinearTest, MatchesReference) {
  using S = TypeParam;
  Rng rng(301);
  for (const auto& s : kLinShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC);
    const Matrix<S> inp = st::random_matrix<S>(s.N, s.IC, rng);
    const Matrix<S> weight = st::random_matrix<S>(s.OC, s.IC, rng, 0.5);
    const Vector<S> bias = st::random_vector<S>(s.OC, rng);
    Matrix<S> out(s.N, s.OC), out_nb(s.N, s.OC);
    strata::linear_forward<S>(out, inp, weight, bias);
    strata::linear_forward<S>(out_nb, inp, weight);
    EXPECT_REL_CLOSE(out, ref::linear_forward(inp, weight, bias), kTol<S>);
    EXPECT_REL_CLOSE(out_nb, ref::linear_forward(inp, weight, Vector<S>()), kTol<S>);
    // the residual form, into a separate output and in place
    const Matrix<S> residual = st::random_matrix<S>(s.N, s.OC, rng);
    const Matrix<S> want_res = residual + ref::linear_forward(inp, weight, bias);
    Matrix<S> out_res(s.N, s.OC), in_place = residual;
    strata::linear_forward<S>(out_res, inp, weight, bias, residual);
    strata::linear_forward<S>(in_place, inp, weight, bias, in_place);
    EXPECT_REL_CLOSE(out_res, want_res, kTol<S>);
    EXPECT_REL_CLOSE(in_place, want_res, kTol<S>);

    const Matrix<S> dout = st::random_matrix<S>(s.N, s.OC, rng);
    Matrix<S> dinp = zeros<S>(s.N, s.IC), dweight = zeros<S>(s.OC, s.IC);
    Vector<S> dbias = zeros<S>(s.OC);
    strata::linear_backward<S>(dinp, dweight, dbias, dout, inp, weight);
    const auto grads = ref::linear_backward(dout, inp, weight);
    EXPECT_REL_CLOSE(dinp, grads.dinp, kTol<S>);
    EXPECT_REL_CLOSE(dweight, grads.dweight, kTol<S>);
    EXPECT_REL_CLOSE(dbias, grads.dbias, kTol<S>);

    Matrix<S> dinp_nb = zeros<S>(s.N, s.IC), dweight_nb = zeros<S>(s.OC, s.IC);
    strata::linear_backward<S>(dinp_nb, dweight_nb, dout, inp, weight);
    EXPECT_REL_CLOSE(dinp_nb, grads.dinp, kTol<S>);
    EXPECT_REL_CLOSE(dweight_nb, grads.dweight, kTol<S>);
  }
}

TYPED_TEST(LinearTest, AcceptsBlocksAndViews) {
  using S = TypeParam;
  Rng rng(302);
  const Index N = 9, IC = 10, OC = 7;
  const Matrix<S> wide_inp = st::random_matrix<S>(N, IC + 6, rng);
  const auto inp = wide_inp.middleCols(2, IC);  // e.g. the q block of a fused qkv activation
  const Matrix<S> wide_w = st::random_matrix<S>(OC + 3, IC + 2, rng);
  const auto weight = wide_w.block(2, 1, OC, IC);
  const Matrix<S> bias_cols = st::random_matrix<S>(OC, 4, rng);
  const auto bias = bias_cols.col(3);  // inner stride 4: the const Ref copies it
  const Matrix<S> inp_plain = inp, weight_plain = weight;
  const Vector<S> bias_plain = bias;

  Matrix<S> wide_out = Matrix<S>::Constant(N, 3 * OC, S(5));
  strata::linear_forward<S>(wide_out.middleCols(OC, OC), inp, weight, bias);
  strata::linear_forward<S>(wide_out.rightCols(OC), inp, weight);
  EXPECT_REL_CLOSE(wide_out.middleCols(OC, OC),
                   ref::linear_forward(inp_plain, weight_plain, bias_plain), kTol<S>);
  EXPECT_REL_CLOSE(wide_out.rightCols(OC),
                   ref::linear_forward(inp_plain, weight_plain, Vector<S>()), kTol<S>);
  EXPECT_TRUE((wide_out.leftCols(OC).array() == S(5)).all());

  const Matrix<S> wide_dout = st::random_matrix<S>(N + 1, OC + 3, rng);
  const auto dout = wide_dout.block(1, 3, N, OC);
  Matrix<S> wide_dinp = zeros<S>(N, 2 * IC), wide_dw = zeros<S>(OC, IC + 1);
  Vector<S> dbias_store = zeros<S>(OC + 2);
  strata::linear_backward<S>(wide_dinp.rightCols(IC), wide_dw.leftCols(IC),
                             dbias_store.segment(1, OC), dout, inp, weight);
  const auto grads = ref::linear_backward<S>(dout, inp_plain, weight_plain);
  EXPECT_REL_CLOSE(wide_dinp.rightCols(IC), grads.dinp, kTol<S>);
  EXPECT_REL_CLOSE(wide_dw.leftCols(IC), grads.dweight, kTol<S>);
  EXPECT_REL_CLOSE(dbias_store.segment(1, OC), grads.dbias, kTol<S>);
  EXPECT_TRUE(wide_dinp.leftCols(IC).isZero(0) && wide_dw.col(IC).isZero(0)
              && dbias_store(0) == S(0) && dbias_store(OC + 1) == S(0));
}

TYPED_TEST(LinearTest, BackwardAccumulates) {
  using S = TypeParam;
  Rng rng(303);
  const Index N = 37, IC = 29, OC = 23;
  const Matrix<S> inp = st::random_matrix<S>(N, IC, rng),
                  weight = st::random_matrix<S>(OC, IC, rng);
  const Matrix<S> dout = st::random_matrix<S>(N, OC, rng);
  Matrix<S> fresh_dinp = zeros<S>(N, IC), fresh_dw = zeros<S>(OC, IC);
  Vector<S> fresh_db = zeros<S>(OC);
  strata::linear_backward<S>(fresh_dinp, fresh_dw, fresh_db, dout, inp, weight);
  const Matrix<S> pre_dinp = st::random_matrix<S>(N, IC, rng),
                  pre_dw = st::random_matrix<S>(OC, IC, rng);
  const Vector<S> pre_db = st::random_vector<S>(OC, rng);
  Matrix<S> dinp = pre_dinp, dw = pre_dw;
  Vector<S> db = pre_db;
  strata::linear_backward<S>(dinp, dw, db, dout, inp, weight);
  EXPECT_REL_CLOSE(dinp, (pre_dinp + fresh_dinp).eval(), kTol<S>);
  EXPECT_REL_CLOSE(dw, (pre_dw + fresh_dw).eval(), kTol<S>);
  EXPECT_REL_CLOSE(db, (pre_db + fresh_db).eval(), kTol<S>);
  Matrix<S> dinp_nb = pre_dinp, dw_nb = pre_dw;
  strata::linear_backward<S>(dinp_nb, dw_nb, dout, inp, weight);
  EXPECT_REL_CLOSE(dinp_nb, (pre_dinp + fresh_dinp).eval(), kTol<S>);
  EXPECT_REL_CLOSE(dw_nb, (pre_dw + fresh_dw).eval(), kTol<S>);
}

// InputGrad::overwrite writes dinp without reading it (NaN there must not leak through) and gives
// what accumulating onto zeros gives, bit for bit; the parameter gradients still accumulate. Sizes
// on both sides of where the products block.
TYPED_TEST(LinearTest, BackwardOverwritesTheInputGradient) {
  using S = TypeParam;
  Rng rng(305);
  for (const auto& [N, IC, OC] : {std::tuple<Index, Index, Index>{3, 4, 2}, {70, 96, 130}}) {
    SCOPED_TRACE("N " + std::to_string(N) + ", IC " + std::to_string(IC));
    const Matrix<S> inp = st::random_matrix<S>(N, IC, rng),
                    weight = st::random_matrix<S>(OC, IC, rng),
                    dout = st::random_matrix<S>(N, OC, rng);
    const Matrix<S> pre_dw = st::random_matrix<S>(OC, IC, rng);
    const Vector<S> pre_db = st::random_vector<S>(OC, rng);
    Matrix<S> zero_dinp = zeros<S>(N, IC), dw_acc = pre_dw;
    Vector<S> db_acc = pre_db;
    strata::linear_backward<S>(zero_dinp, dw_acc, db_acc, dout, inp, weight);
    Matrix<S> nan_dinp = Matrix<S>::Constant(N, IC, std::numeric_limits<S>::quiet_NaN()),
              dw = pre_dw;
    Vector<S> db = pre_db;
    strata::linear_backward<S>(nan_dinp, dw, db, dout, inp, weight, strata::InputGrad::overwrite);
    EXPECT_TRUE(st::bit_equal(nan_dinp, zero_dinp));
    EXPECT_TRUE(st::bit_equal(dw, dw_acc)) << "dweight must accumulate in either mode";
    EXPECT_TRUE(st::bit_equal(db, db_acc)) << "dbias must accumulate in either mode";
    Matrix<S> nan_nb = Matrix<S>::Constant(N, IC, std::numeric_limits<S>::quiet_NaN()),
              dw_nb = pre_dw, zero_nb = zeros<S>(N, IC), dw_nb_acc = pre_dw;
    strata::linear_backward<S>(zero_nb, dw_nb_acc, dout, inp, weight);
    strata::linear_backward<S>(nan_nb, dw_nb, dout, inp, weight, strata::InputGrad::overwrite);
    EXPECT_TRUE(st::bit_equal(nan_nb, zero_nb));
    EXPECT_TRUE(st::bit_equal(dw_nb, dw_nb_acc));
  }
}

// A weight gradient with many rows and a large result: in a oneDNN build its product runs as a
// sum of products of depth 512, accumulated in turn (two whole pieces and a short one here); it
// must still add dout^T inp to what dweight held, with or without the bias.
TYPED_TEST(LinearTest, LongWeightGradientAccumulatesInPieces) {
  using S = TypeParam;
  Rng rng(307);
  const Index N = 1100, IC = 520, OC = 512;  // OC * IC = 266240 >= kDnnlSplitArea
#if defined(STRATA_USE_DNNL)
  static_assert(OC * IC >= strata::detail::kDnnlSplitArea
                && N > 2 * strata::detail::kDnnlDepthChunk);
#endif
  const Matrix<S> inp = st::random_matrix<S>(N, IC, rng),
                  weight = st::random_matrix<S>(OC, IC, rng, 0.5),
                  dout = st::random_matrix<S>(N, OC, rng);
  const Matrix<S> pre_dw = st::random_matrix<S>(OC, IC, rng);
  const Matrix<double> want =
      pre_dw.template cast<double>()
      + dout.template cast<double>().transpose() * inp.template cast<double>();
  Matrix<S> dinp(N, IC), dw = pre_dw, dw_nb = pre_dw;
  Vector<S> db = zeros<S>(OC);
  strata::linear_backward<S>(dinp, dw, db, dout, inp, weight, strata::InputGrad::overwrite);
  strata::linear_backward<S>(dinp, dw_nb, dout, inp, weight, strata::InputGrad::overwrite);
  EXPECT_REL_CLOSE(dw.template cast<double>().eval(), want, kTol<S>);
  EXPECT_TRUE(st::bit_equal(dw_nb, dw));
}

// The row passes of the linear layer (bias broadcast, residual add, bias gradient) split rows or
// columns between threads above a size: threaded, they must compute what one thread computes, bit
// for bit, and what the plain expressions and the reference compute. (The products around them
// are the back end's: OpenBLAS's double products, say, may differ in the last bit from 1 to 2
// threads, so the forward passes are checked on their own.)
TYPED_TEST(LinearTest, BiasPassesAreDeterministicAcrossThreadCounts) {
  using S = TypeParam;
  ThreadCountGuard guard;
  Rng rng(306);
  const Index N = 600, IC = 40,
              OC = 300;  // N*OC = 180000: the passes run threaded, 3 column blocks
  const Matrix<S> inp = st::random_matrix<S>(N, IC, rng),
                  weight = st::random_matrix<S>(OC, IC, rng);
  const Matrix<S> residual = st::random_matrix<S>(N, OC, rng),
                  dout = st::random_matrix<S>(N, OC, rng);
  const Vector<S> bias = st::random_vector<S>(OC, rng), pre_db = st::random_vector<S>(OC, rng);
  const Matrix<S> want_broadcast = bias.transpose().replicate(N, 1);
  const Matrix<S> want_res = residual.rowwise() + bias.transpose();
  const Vector<S> want_db = pre_db + ref::linear_backward(dout, inp, weight).dbias;
  Vector<S> first_db;
  for (const int threads : {1, 2, 3}) {
    SCOPED_TRACE(::testing::Message() << threads << " thread(s)");
    strata::set_num_threads(threads);
    Matrix<S> out(N, OC), out_res(N, OC);
    strata::MatrixRef<S> out_ref(out), out_res_ref(out_res);
    strata::detail::broadcast_bias<S>(out_ref, bias, nullptr);
    const Eigen::Ref<const Matrix<S>> residual_ref(residual);
    strata::detail::broadcast_bias<S>(out_res_ref, bias, &residual_ref);
    EXPECT_TRUE(st::bit_equal(out, want_broadcast));
    EXPECT_TRUE(st::bit_equal(out_res, want_res));
    Matrix<S> dinp(N, IC), dweight = zeros<S>(OC, IC);
    Vector<S> dbias = pre_db;
    strata::linear_backward<S>(dinp, dweight, dbias, dout, inp, weight,
                               strata::InputGrad::overwrite);
    EXPECT_REL_CLOSE(dbias, want_db, kTol<S>);
    if (threads == 1)
      first_db = dbias;
    else
      EXPECT_TRUE(st::bit_equal(dbias, first_db));
  }
}

TEST(LinearGradient, FiniteDifferences) {
  Rng rng(304);
  const Index N = 5, IC = 7, OC = 4;
  Matrix<double> inp = st::random_matrix<double>(N, IC, rng),
                 weight = st::random_matrix<double>(OC, IC, rng);
  Vector<double> bias = st::random_vector<double>(OC, rng);
  const Matrix<double> R = st::random_matrix<double>(N, OC, rng);
  Matrix<double> out(N, OC);
  const auto loss = [&] {
    strata::linear_forward<double>(out, inp, weight, bias);
    return weighted_sum(R, out);
  };
  Matrix<double> dinp = zeros<double>(N, IC), dweight = zeros<double>(OC, IC);
  Vector<double> dbias = zeros<double>(OC);
  strata::linear_backward<double>(dinp, dweight, dbias, R, inp, weight);
  st::expect_gradient_close("linear dinp", loss, inp, dinp, kGradTol);
  st::expect_gradient_close("linear dweight", loss, weight, dweight, kGradTol);
  st::expect_gradient_close("linear dbias", loss, bias, dbias, kGradTol);

  const auto loss_nb = [&] {
    strata::linear_forward<double>(out, inp, weight);
    return weighted_sum(R, out);
  };
  Matrix<double> dinp_nb = zeros<double>(N, IC), dweight_nb = zeros<double>(OC, IC);
  strata::linear_backward<double>(dinp_nb, dweight_nb, R, inp, weight);
  st::expect_gradient_close("linear (no bias) dinp", loss_nb, inp, dinp_nb, kGradTol);
  st::expect_gradient_close("linear (no bias) dweight", loss_nb, weight, dweight_nb, kGradTol);
}

#if defined(__unix__)
std::atomic<int> g_signals_seen{0};
extern "C" void count_signal(int) { g_signals_seen.fetch_add(1, std::memory_order_relaxed); }

// A program with signal handlers (train's SIGINT/SIGTERM, a sampling profiler) must survive
// signals that arrive in the middle of a product: oneDNN 2.6's JIT GEMM kernels point the stack
// register into the heap while they run, so a signal frame pushed there corrupts the heap (fixed
// upstream in oneDNN 3.11.2); strata keeps signals away from those kernels. Products of tiny's
// shapes on two threads run while another thread signals the process every few microseconds; the
// results must stay exact and the heap whole (glibc aborts the test program when it is not).
TEST(LinearSignals, ProductsSurviveSignalsDuringTheProduct) {
  ThreadCountGuard guard;
  strata::set_num_threads(2);
  struct sigaction action = {}, saved = {};
  action.sa_handler = count_signal;
  sigemptyset(&action.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &action, &saved), 0);
  g_signals_seen = 0;

  Rng rng(3);
  const Index N = 512, IC = 128, OC = 384;
  Matrix<float> inp(N, IC), weight(OC, IC), dout(N, OC);
  for (auto* m : {&inp, &weight, &dout})
    for (Index i = 0; i < m->size(); ++i) m->data()[i] = float(rng.uniform() - 0.5);
  const Vector<float> bias = Vector<float>::Zero(OC);
  Matrix<float> expected_out(N, OC), expected_dinp = Matrix<float>::Zero(N, IC),
                                     expected_dw = Matrix<float>::Zero(OC, IC);
  Vector<float> dbias = Vector<float>::Zero(OC);
  strata::linear_forward<float>(expected_out, inp, weight, bias);
  strata::linear_backward<float>(expected_dinp, expected_dw, dbias, dout, inp, weight);

  std::atomic<bool> done{false};
  std::thread sender([&] {
    while (!done.load()) {
      ::kill(::getpid(), SIGUSR1);
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  });
  int mismatches = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(700);
  int rounds = 0;
  while (std::chrono::steady_clock::now() < until || rounds < 10) {
    Matrix<float> out(N, OC), dinp = Matrix<float>::Zero(N, IC), dw = Matrix<float>::Zero(OC, IC);
    dbias.setZero();
    strata::linear_forward<float>(out, inp, weight, bias);
    strata::linear_backward<float>(dinp, dw, dbias, dout, inp, weight);
    mismatches += !st::bit_equal(out, expected_out) + !st::bit_equal(dinp, expected_dinp)
                + !st::bit_equal(dw, expected_dw);
    std::vector<std::vector<char>> churn(64);  // allocate and free: glibc checks its chunks
    for (std::size_t i = 0; i < churn.size(); ++i) churn[i].resize(100 + 97 * i);
    ++rounds;
  }
  done = true;
  sender.join();
  sigaction(SIGUSR1, &saved, nullptr);
  EXPECT_EQ(mismatches, 0) << "products changed when interrupted by signals";
  EXPECT_GT(g_signals_seen.load(), 100) << "the signals were not delivered: the test tests nothing";
  RecordProperty("signals", g_signals_seen.load());
  RecordProperty("rounds", rounds);
}
#endif

TEST(LinearErrors, ExactMessages) {
  const Index N = 2, IC = 4, OC = 3;
  const Matrix<double> inp = zeros<double>(N, IC), w = zeros<double>(OC, IC),
                       dout = zeros<double>(N, OC);
  const Vector<double> b = zeros<double>(OC);
  Matrix<double> out(N, OC), dinp = zeros<double>(N, IC), dw = zeros<double>(OC, IC);
  Vector<double> db = zeros<double>(OC), short_v(2);
  const Matrix<double> w35 = zeros<double>(OC, 5);
  Matrix<double> out24(N, 4), out33(3, OC);

  EXPECT_STRATA_ERROR(strata::linear_forward<double>(out, inp, w35, b),
                      "linear_forward: weight has shape [3, 5], expected [3, 4]");
  EXPECT_STRATA_ERROR(strata::linear_forward<double>(out, inp, w35),
                      "linear_forward: weight has shape [3, 5], expected [3, 4]");
  EXPECT_STRATA_ERROR(strata::linear_forward<double>(out24, inp, w, b),
                      "linear_forward: out has shape [2, 4], expected [2, 3]");
  EXPECT_STRATA_ERROR(strata::linear_forward<double>(out33, inp, w),
                      "linear_forward: out has shape [3, 3], expected [2, 3]");
  EXPECT_STRATA_ERROR(strata::linear_forward<double>(out, inp, w, short_v),
                      "linear_forward: bias has size 2, expected 3");
  EXPECT_STRATA_ERROR(strata::linear_forward<double>(out, inp, w, b, out33),
                      "linear_forward: residual has shape [3, 3], expected [2, 3]");
  EXPECT_STRATA_ERROR(strata::linear_forward<double>(out24, inp, w, b, out),
                      "linear_forward: out has shape [2, 4], expected [2, 3]");

  EXPECT_STRATA_ERROR(strata::linear_backward<double>(dinp, dw, db, dout, inp, w35),
                      "linear_backward: weight has shape [3, 5], expected [3, 4]");
  EXPECT_STRATA_ERROR(strata::linear_backward<double>(dinp, dw, db, zeros<double>(N, 5), inp, w),
                      "linear_backward: dout has shape [2, 5], expected [2, 3]");
  EXPECT_STRATA_ERROR(strata::linear_backward<double>(dinp, dw, zeros<double>(3, OC), inp, w),
                      "linear_backward: dout has shape [3, 3], expected [2, 3]");
  Matrix<double> dinp25 = zeros<double>(N, 5), dw44 = zeros<double>(4, IC);
  EXPECT_STRATA_ERROR(strata::linear_backward<double>(dinp25, dw, db, dout, inp, w),
                      "linear_backward: dinp has shape [2, 5], expected [2, 4]");
  EXPECT_STRATA_ERROR(strata::linear_backward<double>(dinp, dw44, db, dout, inp, w),
                      "linear_backward: dweight has shape [4, 4], expected [3, 4]");
  EXPECT_STRATA_ERROR(strata::linear_backward<double>(dinp, dw44, dout, inp, w),
                      "linear_backward: dweight has shape [4, 4], expected [3, 4]");
  EXPECT_STRATA_ERROR(strata::linear_backward<double>(dinp, dw, short_v, dout, inp, w),
                      "linear_backward: dbias has size 2, expected 3");
  EXPECT_TRUE(dinp.isZero(0) && dw.isZero(0) && db.isZero(0));
}

// ================================================================================================
// GELU
// ================================================================================================
template <typename T>
class GeluTest : public ::testing::Test {};
TYPED_TEST_SUITE(GeluTest, Scalars, ScalarName);

TYPED_TEST(GeluTest, MatchesReference) {
  using S = TypeParam;
  Rng rng(401);
  for (const auto& s : kNCShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const Matrix<S> inp = st::random_matrix<S>(s.N, s.C, rng, 2.5);
    Matrix<S> out(s.N, s.C);
    strata::gelu_forward<S>(out, inp);
    EXPECT_REL_CLOSE(out, ref::gelu_forward(inp), kTol<S>);
    const Matrix<S> dout = st::random_matrix<S>(s.N, s.C, rng);
    Matrix<S> dinp = zeros<S>(s.N, s.C);
    strata::gelu_backward<S>(dinp, dout, inp);
    EXPECT_REL_CLOSE(dinp, ref::gelu_backward(dout, inp), kTol<S>);
  }
}

TYPED_TEST(GeluTest, AcceptsBlocksAndViews) {
  using S = TypeParam;
  Rng rng(402);
  const Index N = 6, C = 11;
  const Matrix<S> wide_inp = st::random_matrix<S>(N + 2, C + 3, rng, 2.0);
  const auto inp = wide_inp.block(2, 1, N, C);
  const Matrix<S> inp_plain = inp;
  Matrix<S> wide_out = Matrix<S>::Constant(N, C + 1, S(9));
  strata::gelu_forward<S>(wide_out.rightCols(C), inp);
  EXPECT_REL_CLOSE(wide_out.rightCols(C), ref::gelu_forward(inp_plain), kTol<S>);
  EXPECT_TRUE((wide_out.col(0).array() == S(9)).all());
  const Matrix<S> wide_dout = st::random_matrix<S>(N, C + 2, rng);
  const auto dout = wide_dout.middleCols(1, C);
  Matrix<S> wide_dinp = zeros<S>(N + 1, C);
  strata::gelu_backward<S>(wide_dinp.bottomRows(N), dout, inp);
  EXPECT_REL_CLOSE(wide_dinp.bottomRows(N), ref::gelu_backward<S>(dout, inp_plain), kTol<S>);
  EXPECT_TRUE(wide_dinp.row(0).isZero(0));
}

TYPED_TEST(GeluTest, BackwardAccumulates) {
  using S = TypeParam;
  Rng rng(403);
  const Index N = 4, C = 9;
  const Matrix<S> inp = st::random_matrix<S>(N, C, rng, 2.0),
                  dout = st::random_matrix<S>(N, C, rng);
  Matrix<S> fresh = zeros<S>(N, C);
  strata::gelu_backward<S>(fresh, dout, inp);
  const Matrix<S> pre = st::random_matrix<S>(N, C, rng);
  Matrix<S> dinp = pre;
  strata::gelu_backward<S>(dinp, dout, inp);
  EXPECT_REL_CLOSE(dinp, (pre + fresh).eval(), kTol<S>);
}

TYPED_TEST(GeluTest, BackwardOverwritesTheInputGradient) {
  using S = TypeParam;
  Rng rng(404);
  const Index N = 5, C = 70;  // more than one chunk of columns
  const Matrix<S> inp = st::random_matrix<S>(N, C, rng, 2.0),
                  dout = st::random_matrix<S>(N, C, rng);
  Matrix<S> from_zero = zeros<S>(N, C);
  strata::gelu_backward<S>(from_zero, dout, inp);
  Matrix<S> dinp = Matrix<S>::Constant(N, C, std::numeric_limits<S>::quiet_NaN());
  strata::gelu_backward<S>(dinp, dout, inp, strata::InputGrad::overwrite);
  EXPECT_TRUE(st::bit_equal(dinp, from_zero));
}

// bias_gelu_forward is the bias add and gelu_forward in one pass: the pre-activation it leaves is
// pre + bias exactly, and its output is gelu_forward's of that, bit for bit (threaded too).
TYPED_TEST(GeluTest, BiasGeluIsBiasThenGelu) {
  using S = TypeParam;
  ThreadCountGuard guard;
  Rng rng(405);
  for (const auto& s : {NCShape{1, 1}, NCShape{3, 5}, NCShape{17, 33}, NCShape{300, 257}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const Matrix<S> product = st::random_matrix<S>(s.N, s.C, rng, 2.0);
    const Vector<S> bias = st::random_vector<S>(s.C, rng);
    const Matrix<S> want_pre = product.rowwise() + bias.transpose();
    Matrix<S> want_out(s.N, s.C);
    strata::gelu_forward<S>(want_out, want_pre);
    for (const int threads : {1, 2}) {
      strata::set_num_threads(threads);
      Matrix<S> pre = product, out(s.N, s.C);
      strata::bias_gelu_forward<S>(out, pre, bias);
      EXPECT_TRUE(st::bit_equal(pre, want_pre)) << threads << " thread(s)";
      EXPECT_TRUE(st::bit_equal(out, want_out)) << threads << " thread(s)";
      EXPECT_REL_CLOSE(out, ref::gelu_forward(want_pre), kTol<S>);
    }
  }
}

TYPED_TEST(GeluTest, HandComputedValues) {
  using S = TypeParam;
  // x, gelu(x) from 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), gelu'(x)
  Matrix<S> inp(1, 7);
  inp << S(0), S(1), S(-1), S(-10), S(-1e4), S(10), S(1e4);
  Matrix<S> out(1, 7), dinp = zeros<S>(1, 7);
  strata::gelu_forward<S>(out, inp);
  strata::gelu_backward<S>(dinp, Matrix<S>::Ones(1, 7), inp);
  const double tol = std::is_same_v<S, float> ? 1e-6 : 1e-15;
  EXPECT_EQ(out(0, 0), S(0));
  EXPECT_NEAR(static_cast<double>(out(0, 1)), 0.8411919906082768, tol);
  EXPECT_NEAR(static_cast<double>(out(0, 2)), 0.8411919906082768 - 1.0,
              tol);                                        // gelu(-x) = gelu(x) - x
  EXPECT_NEAR(static_cast<double>(dinp(0, 0)), 0.5, tol);  // gelu'(0) = 1/2
  for (Index j = 3; j <= 4; ++j) {  // large negative: ~0, no NaN, in both directions
    EXPECT_TRUE(std::isfinite(out(0, j)) && std::isfinite(dinp(0, j))) << inp(0, j);
    EXPECT_LT(std::abs(static_cast<double>(out(0, j))), 1e-30) << inp(0, j);
    EXPECT_LT(std::abs(static_cast<double>(dinp(0, j))), 1e-30) << inp(0, j);
  }
  for (Index j = 5; j <= 6; ++j) {  // large positive: identity, slope 1
    EXPECT_NEAR(static_cast<double>(out(0, j)), static_cast<double>(inp(0, j)),
                tol * std::abs(inp(0, j)));
    EXPECT_NEAR(static_cast<double>(dinp(0, j)), 1.0, tol);
  }
}

TEST(GeluGradient, FiniteDifferences) {
  Rng rng(404);
  const Index N = 3, C = 11;
  // Inputs in [-3.5, 3.5] and weights |R| in [0.5, 1.5]: further out in the left tail gelu' falls
  // below 1e-3 and the central difference (noise ~1e-10 / h) cannot resolve it to 1e-6 relative.
  // (gelu' also crosses zero at x = -0.7518; no input lies within 1e-2 of it.)
  Matrix<double> inp(N, C), R(N, C);
  for (Index i = 0; i < N; ++i)
    for (Index j = 0; j < C; ++j) {
      inp(i, j) = -3.5 + 7.0 * rng.uniform();
      R(i, j) = (rng.uniform() < 0.5 ? -1.0 : 1.0) * (0.5 + rng.uniform());
    }
  inp(0, 0) = 0.0;
  inp(0, 1) = 1.0;
  inp(0, 2) = -2.0;
  ASSERT_TRUE(((inp.array() + 0.7518).abs() > 1e-2).all());
  Matrix<double> out(N, C);
  const auto loss = [&] {
    strata::gelu_forward<double>(out, inp);
    return weighted_sum(R, out);
  };
  Matrix<double> dinp = zeros<double>(N, C);
  strata::gelu_backward<double>(dinp, R, inp);
  st::expect_gradient_close("gelu dinp", loss, inp, dinp, kGradTol);
}

TEST(GeluErrors, ExactMessages) {
  const Matrix<double> inp = zeros<double>(3, 3);
  Matrix<double> out23(2, 3), out(3, 3), dinp34 = zeros<double>(3, 4);
  EXPECT_STRATA_ERROR(strata::gelu_forward<double>(out23, inp),
                      "gelu_forward: out has shape [2, 3], expected [3, 3]");
  Matrix<double> pre = zeros<double>(3, 3);
  EXPECT_STRATA_ERROR(strata::bias_gelu_forward<double>(out23, pre, zeros<double>(3)),
                      "bias_gelu_forward: out has shape [2, 3], expected [3, 3]");
  EXPECT_STRATA_ERROR(strata::bias_gelu_forward<double>(out, pre, zeros<double>(4)),
                      "bias_gelu_forward: bias has size 4, expected 3");
  EXPECT_STRATA_ERROR(strata::gelu_backward<double>(dinp34, inp, inp),
                      "gelu_backward: dinp has shape [3, 4], expected [3, 3]");
  EXPECT_STRATA_ERROR(strata::gelu_backward<double>(out, zeros<double>(3, 1), inp),
                      "gelu_backward: dout has shape [3, 1], expected [3, 3]");
}

// ================================================================================================
// Cross-entropy
// ================================================================================================
template <typename T>
class CrossEntropyTest : public ::testing::Test {};
TYPED_TEST_SUITE(CrossEntropyTest, Scalars, ScalarName);

struct CEShape {
  Index B, T, V;
};
const CEShape kCEShapes[] = {{1, 1, 1}, {1, 1, 6}, {3, 1, 2}, {2, 3, 7}, {4, 75, 257}};

TYPED_TEST(CrossEntropyTest, MatchesReference) {
  using S = TypeParam;
  Rng rng(501);
  for (const auto& s : kCEShapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " V=" << s.V);
    const Index N = s.B * s.T;
    const Matrix<S> logits = st::random_matrix<S>(N, s.V, rng, 3.0);
    const TokenMatrix targets = st::random_tokens(s.B, s.T, s.V, rng);
    Vector<S> losses(N), lse(N);
    const S mean = strata::cross_entropy_forward<S>(losses, lse, logits, targets);
    const auto expected = ref::cross_entropy_forward(logits, targets);
    EXPECT_REL_CLOSE(losses, expected.losses, kTol<S>);
    EXPECT_REL_CLOSE(lse, expected.lse, kTol<S>);
    EXPECT_LE(std::abs(static_cast<double>(mean) - expected.mean_loss)
                  / std::max(1.0, expected.mean_loss),
              kTol<S>);

    for (const double scale : {1.0 / static_cast<double>(N), 0.37}) {
      Matrix<S> dlogits = zeros<S>(N, s.V);
      strata::cross_entropy_backward<S>(dlogits, logits, lse, targets, static_cast<S>(scale));
      EXPECT_REL_CLOSE(dlogits, ref::cross_entropy_backward(logits, targets, scale), kTol<S>);
    }
  }
}

TYPED_TEST(CrossEntropyTest, AcceptsBlocksAndViews) {
  using S = TypeParam;
  Rng rng(502);
  const Index B = 2, T = 3, V = 9, N = B * T;
  const Matrix<S> wide_logits = st::random_matrix<S>(N + 1, V + 4, rng, 2.0);
  const auto logits = wide_logits.block(1, 2, N, V);
  const Matrix<S> logits_plain = logits;
  TokenMatrix wide_targets = st::random_tokens(B + 2, T + 2, V, rng);
  const auto targets = wide_targets.block(1, 1, B, T);
  const TokenMatrix targets_plain = targets;
  Vector<S> stats = Vector<S>::Constant(2 * N + 2, S(4));
  strata::cross_entropy_forward<S>(stats.segment(1, N), stats.tail(N), logits, targets);
  const auto expected = ref::cross_entropy_forward(logits_plain, targets_plain);
  EXPECT_REL_CLOSE(stats.segment(1, N), expected.losses, kTol<S>);
  EXPECT_REL_CLOSE(stats.tail(N), expected.lse, kTol<S>);
  EXPECT_TRUE(stats(0) == S(4) && stats(N + 1) == S(4));
  Matrix<S> wide_dlogits = zeros<S>(N, V + 2);
  strata::cross_entropy_backward<S>(wide_dlogits.leftCols(V), logits, stats.tail(N), targets,
                                    S(0.5));
  EXPECT_REL_CLOSE(wide_dlogits.leftCols(V),
                   ref::cross_entropy_backward(logits_plain, targets_plain, 0.5), kTol<S>);
  EXPECT_TRUE(wide_dlogits.rightCols(2).isZero(0));
}

TYPED_TEST(CrossEntropyTest, BackwardAccumulates) {
  using S = TypeParam;
  Rng rng(503);
  const Index B = 3, T = 2, V = 8, N = B * T;
  const Matrix<S> logits = st::random_matrix<S>(N, V, rng);
  const TokenMatrix targets = st::random_tokens(B, T, V, rng);
  Vector<S> losses(N), lse(N);
  strata::cross_entropy_forward<S>(losses, lse, logits, targets);
  Matrix<S> fresh = zeros<S>(N, V);
  strata::cross_entropy_backward<S>(fresh, logits, lse, targets, S(1) / S(N));
  const Matrix<S> pre = st::random_matrix<S>(N, V, rng);
  Matrix<S> dlogits = pre;
  strata::cross_entropy_backward<S>(dlogits, logits, lse, targets, S(1) / S(N));
  EXPECT_REL_CLOSE(dlogits, (pre + fresh).eval(), kTol<S>);
}

// InputGrad::overwrite writes dlogits without reading it and gives the bits of accumulating into
// zeros (the model's backward pass no longer zeroes dlogits first).
TYPED_TEST(CrossEntropyTest, BackwardOverwritesTheLogitGradient) {
  using S = TypeParam;
  Rng rng(504);
  const Index B = 3, T = 5, V = 40, N = B * T;
  const Matrix<S> logits = st::random_matrix<S>(N, V, rng, 4.0);
  const TokenMatrix targets = st::random_tokens(B, T, V, rng);
  Vector<S> losses(N), lse(N);
  strata::cross_entropy_forward<S>(losses, lse, logits, targets);
  Matrix<S> from_zero = zeros<S>(N, V);
  strata::cross_entropy_backward<S>(from_zero, logits, lse, targets, S(1) / S(N));
  Matrix<S> dlogits = Matrix<S>::Constant(N, V, std::numeric_limits<S>::quiet_NaN());
  strata::cross_entropy_backward<S>(dlogits, logits, lse, targets, S(1) / S(N),
                                    strata::InputGrad::overwrite);
  EXPECT_TRUE(st::bit_equal(dlogits, from_zero));
}

TYPED_TEST(CrossEntropyTest, UniformLogitsGiveLogV) {
  using S = TypeParam;
  const Index B = 2, T = 3, V = 11, N = B * T;
  const Matrix<S> logits = Matrix<S>::Constant(N, V, S(2.5));
  Rng rng(504);
  const TokenMatrix targets = st::random_tokens(B, T, V, rng);
  Vector<S> losses(N), lse(N);
  const S mean = strata::cross_entropy_forward<S>(losses, lse, logits, targets);
  const double tol = std::is_same_v<S, float> ? 1e-6 : 1e-14;
  EXPECT_NEAR(static_cast<double>(mean), std::log(11.0), tol);
  for (Index i = 0; i < N; ++i) EXPECT_NEAR(static_cast<double>(losses(i)), std::log(11.0), tol);
  Matrix<S> dlogits = zeros<S>(N, V);
  strata::cross_entropy_backward<S>(dlogits, logits, lse, targets, S(1) / S(N));
  for (Index i = 0; i < N; ++i)
    for (Index j = 0; j < V; ++j) {
      const double expected =
          (1.0 / 11.0 - (j == targets(i / T, i % T) ? 1.0 : 0.0)) / static_cast<double>(N);
      EXPECT_NEAR(static_cast<double>(dlogits(i, j)), expected, tol);
    }
}

TYPED_TEST(CrossEntropyTest, LargeLogitsStayFinite) {
  using S = TypeParam;
  Rng rng(505);
  const Index B = 1, T = 4, V = 5, N = B * T;
  const Matrix<S> base = st::random_matrix<S>(N, V, rng);
  const Matrix<S> shifted =
      (base.array() + S(1000)).matrix();  // exp(1000) overflows without the max
  const TokenMatrix targets = st::random_tokens(B, T, V, rng);
  Vector<S> l0(N), lse0(N), l1(N), lse1(N);
  strata::cross_entropy_forward<S>(l0, lse0, base, targets);
  strata::cross_entropy_forward<S>(l1, lse1, shifted, targets);
  ASSERT_TRUE(l1.allFinite() && lse1.allFinite());
  // Softmax is shift invariant; float loses ~1000 * 2^-24 in the shifted logits themselves.
  EXPECT_REL_CLOSE(l1, l0, (std::is_same_v<S, float> ? 1e-4 : 1e-12));
  Matrix<S> d0 = zeros<S>(N, V), d1 = zeros<S>(N, V);
  strata::cross_entropy_backward<S>(d0, base, lse0, targets, S(1));
  strata::cross_entropy_backward<S>(d1, shifted, lse1, targets, S(1));
  ASSERT_TRUE(d1.allFinite());
  EXPECT_REL_CLOSE(d1, d0, (std::is_same_v<S, float> ? 1e-4 : 1e-12));
}

TEST(CrossEntropyGradient, FiniteDifferences) {
  Rng rng(506);
  const Index B = 2, T = 3, V = 7, N = B * T;
  Matrix<double> logits = st::random_matrix<double>(N, V, rng);
  const TokenMatrix targets = st::random_tokens(B, T, V, rng);
  Vector<double> losses(N), lse(N);
  const auto mean_loss = [&] {
    return strata::cross_entropy_forward<double>(losses, lse, logits, targets);
  };
  mean_loss();
  Matrix<double> dlogits = zeros<double>(N, V);
  strata::cross_entropy_backward<double>(dlogits, logits, lse, targets,
                                         1.0 / static_cast<double>(N));
  st::expect_gradient_close("cross_entropy dlogits (mean)", mean_loss, logits, dlogits, kGradTol);

  const double scale = 0.37;  // the loss scale * sum_i losses[i]
  const auto scaled_loss = [&] { return scale * static_cast<double>(N) * mean_loss(); };
  mean_loss();
  Matrix<double> dlogits_scaled = zeros<double>(N, V);
  strata::cross_entropy_backward<double>(dlogits_scaled, logits, lse, targets, scale);
  st::expect_gradient_close("cross_entropy dlogits (scaled)", scaled_loss, logits, dlogits_scaled,
                            kGradTol);
}

TEST(CrossEntropyErrors, ExactMessages) {
  const Index B = 2, T = 3, V = 5, N = B * T;
  const Matrix<double> logits = zeros<double>(N, V);
  TokenMatrix targets = TokenMatrix::Zero(B, T);
  Vector<double> losses(N), lse = zeros<double>(N), short_v(5), long_v(7);
  Matrix<double> dlogits = zeros<double>(N, V), dlogits64 = zeros<double>(N, 4);

  const TokenMatrix small_targets = TokenMatrix::Zero(2, 2);
  EXPECT_STRATA_ERROR(strata::cross_entropy_forward<double>(losses, lse, logits, small_targets),
                      "cross_entropy_forward: targets has size 4, expected 6");
  EXPECT_STRATA_ERROR(
      strata::cross_entropy_backward<double>(dlogits, logits, lse, small_targets, 1.0),
      "cross_entropy_backward: targets has size 4, expected 6");
  EXPECT_STRATA_ERROR(strata::cross_entropy_forward<double>(short_v, lse, logits, targets),
                      "cross_entropy_forward: losses has size 5, expected 6");
  EXPECT_STRATA_ERROR(strata::cross_entropy_forward<double>(losses, long_v, logits, targets),
                      "cross_entropy_forward: lse has size 7, expected 6");
  EXPECT_STRATA_ERROR(strata::cross_entropy_backward<double>(dlogits64, logits, lse, targets, 1.0),
                      "cross_entropy_backward: dlogits has shape [6, 4], expected [6, 5]");
  EXPECT_STRATA_ERROR(
      strata::cross_entropy_backward<double>(dlogits, logits, short_v, targets, 1.0),
      "cross_entropy_backward: lse has size 5, expected 6");
  targets(1, 0) = 5;
  EXPECT_STRATA_ERROR(strata::cross_entropy_forward<double>(losses, lse, logits, targets),
                      "cross_entropy_forward: target 5 at [1, 0] is outside the vocabulary [0, 5)");
  EXPECT_STRATA_ERROR(
      strata::cross_entropy_backward<double>(dlogits, logits, lse, targets, 1.0),
      "cross_entropy_backward: target 5 at [1, 0] is outside the vocabulary [0, 5)");
  targets(1, 0) = 0;
  targets(0, 2) = -2;
  EXPECT_STRATA_ERROR(
      strata::cross_entropy_forward<double>(losses, lse, logits, targets),
      "cross_entropy_forward: target -2 at [0, 2] is outside the vocabulary [0, 5)");
  EXPECT_TRUE(dlogits.isZero(0));
}

// ================================================================================================
// The shared helpers themselves
// ================================================================================================
TEST(GradCheckHelpers, DetectAWrongGradientAndReportTheWorstEntry) {
  Vector<double> x(4);
  x << 0.5, -2.0, 3.0, 1e3;
  const auto loss = [&] { return x(0) * x(0) + std::sin(x(1)) + x(2) * x(2) * x(2) + 0.5 * x(3); };
  Vector<double> g(4);
  g << 1.0, std::cos(-2.0), 27.0, 0.5;
  const st::GradCheckResult good = st::check_gradient(loss, x.data(), x.size(), g.data());
  EXPECT_LT(good.max_rel_error, 1e-6);
  EXPECT_EQ(good.checked, 4);
  const Vector<double> x_before = x;
  g(2) = 27.01;  // wrong by ~2e-4 relative
  const st::GradCheckResult bad = st::check_gradient(loss, x.data(), x.size(), g.data());
  EXPECT_EQ(bad.worst, 2);
  EXPECT_GT(bad.max_rel_error, 1e-4);
  EXPECT_NEAR(bad.numeric, 27.0, 1e-6);
  EXPECT_TRUE(bitwise_equal(x, x_before));  // parameters restored exactly
  st::GradCheckOptions sample;
  sample.max_entries = 2;
  EXPECT_EQ(st::check_gradient(loss, x.data(), x.size(), g.data(), sample).checked, 2);
  g(0) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(st::check_gradient(loss, x.data(), x.size(), g.data()).max_rel_error,
            std::numeric_limits<double>::infinity());

  Matrix<double> a(2, 2), b(2, 2);
  a << 1, 2, 3, 4;
  b << 1, 2, 3, 4.5;
  EXPECT_DOUBLE_EQ(st::rel_max_diff(a, b), 0.5 / 4.5);
  EXPECT_DOUBLE_EQ(st::rel_max_diff((a * 0.1).eval(), (b * 0.1).eval()),
                   0.05);  // max|b| < 1: absolute
  EXPECT_EQ(st::rel_max_diff(a, Matrix<double>(2, 3)), std::numeric_limits<double>::infinity());
}

}  // namespace
