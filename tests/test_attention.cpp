#include "alloc_counter.hpp"  // first: it configures Eigen before Eigen is included
// tests/test_attention.cpp: the multi-source causal attention kernel against the naive reference,
// finite differences, accumulation, causality, source mass, errors, threads and no-allocation.

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "reference/attention_reference.hpp"
#include "strata/core/rng.hpp"
#include "strata/core/threading.hpp"
#include "strata/kernels/attention.hpp"

namespace {

using strata::AttentionSources;
using strata::Index;
using strata::KVSource;
using strata::Matrix;
using strata::Rng;

// ------------------------------------------------------------------------------------------------
// helpers

template <typename S>
double tolerance() {
  return std::is_same<S, float>::value ? 1e-5 : 1e-12;
}

/// max |a - b| scaled by max |b| (absolute when b is all zeros).
template <typename S>
double rel_err(const Eigen::Ref<const Matrix<S>>& a, const Eigen::Ref<const Matrix<S>>& b) {
  EXPECT_EQ(a.rows(), b.rows());
  EXPECT_EQ(a.cols(), b.cols());
  if (a.rows() != b.rows() || a.cols() != b.cols()) return 1e300;
  if (a.size() == 0) return 0;
  const double diff = static_cast<double>((a - b).cwiseAbs().maxCoeff());
  const double scale = static_cast<double>(b.cwiseAbs().maxCoeff());
  return scale > 0 ? diff / scale : diff;
}

template <typename S>
Matrix<S> random_matrix(Index rows, Index cols, Rng& rng, double scale = 1.0) {
  Matrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(scale * rng.normal());
  return m;
}

/// Sizes of one attention call. pad > 0 puts q, out, dq in the middle of wider matrices and each
/// head's K/V block pad columns into a wider buffer (strided rows everywhere).
struct Shape {
  Index B, NH, hs, Tq, q_pos, pad;
  Index C() const { return NH * hs; }
  Index W() const { return NH * hs + 2 * pad; }
};

/// Head reads column block col_head of buffer `buffer`.
struct Use {
  int buffer;
  Index col_head;
};
using PlanSpec = std::vector<std::vector<Use>>;  // [head][source]

/// One layer's K, V (all heads) and their gradients: [B*T, W]; T rows per batch element.
template <typename S>
struct Buffer {
  Matrix<S> k, v, dk, dv;
  Index T = 0;
};

template <typename S>
std::vector<Buffer<S>> make_buffers(const Shape& sh, const std::vector<Index>& T, Rng& rng,
                                    bool prefill) {
  std::vector<Buffer<S>> bufs(T.size());
  for (std::size_t i = 0; i < T.size(); ++i) {
    Buffer<S>& b = bufs[i];
    b.T = T[i];
    b.k = random_matrix<S>(sh.B * b.T, sh.W(), rng);
    b.v = random_matrix<S>(sh.B * b.T, sh.W(), rng);
    b.dk =
        prefill ? random_matrix<S>(sh.B * b.T, sh.W(), rng) : Matrix<S>::Zero(sh.B * b.T, sh.W());
    b.dv =
        prefill ? random_matrix<S>(sh.B * b.T, sh.W(), rng) : Matrix<S>::Zero(sh.B * b.T, sh.W());
  }
  return bufs;
}

/// The kernel's sources; heads are filled interleaved (head 0 source 0, head 1 source 0, head 0
/// source 1, ...) to check that each head keeps its own order.
template <typename S>
AttentionSources<S> build_sources(const Shape& sh, std::vector<Buffer<S>>& bufs,
                                  const PlanSpec& plan) {
  AttentionSources<S> sources(sh.NH);
  std::size_t most = 0;
  for (const auto& uses : plan) most = std::max(most, uses.size());
  for (std::size_t i = 0; i < most; ++i)
    for (Index h = 0; h < sh.NH; ++h) {
      const auto& uses = plan[static_cast<std::size_t>(h)];
      if (i >= uses.size()) continue;
      Buffer<S>& b = bufs[static_cast<std::size_t>(uses[i].buffer)];
      const Index col = sh.pad + uses[i].col_head * sh.hs, W = b.k.cols();
      KVSource<S> s;
      s.k = b.k.data() + col;
      s.v = b.v.data() + col;
      s.dk = b.dk.data() + col;
      s.dv = b.dv.data() + col;
      s.row_stride = W;
      s.batch_stride = b.T * W;
      s.length = b.T;
      sources.add(h, s);
    }
  return sources;
}

template <typename S>
strata::reference::Plan<S> build_plan(const Shape& sh, std::vector<Buffer<S>>& bufs,
                                      const PlanSpec& plan) {
  strata::reference::Plan<S> out(plan.size());
  for (std::size_t h = 0; h < plan.size(); ++h)
    for (const Use& u : plan[h]) {
      Buffer<S>& b = bufs[static_cast<std::size_t>(u.buffer)];
      out[h].push_back({&b.k, &b.v, sh.pad + u.col_head * sh.hs, b.T, &b.dk, &b.dv});
    }
  return out;
}

/// The per-call tensors: q, out, dq are column blocks [pad, pad + C) of wider matrices.
template <typename S>
struct Call {
  Shape sh;
  Matrix<S> q_full, out_full, dq_full, lse, dout;
  Call(const Shape& shape, Rng& rng, bool prefill) : sh(shape) {
    const Index R = sh.B * sh.Tq;
    q_full = random_matrix<S>(R, sh.W(), rng);
    out_full = Matrix<S>::Constant(R, sh.W(), S(7));
    dq_full = prefill ? random_matrix<S>(R, sh.W(), rng) : Matrix<S>::Zero(R, sh.W());
    lse = Matrix<S>::Zero(R, sh.NH);
    dout = random_matrix<S>(R, sh.C(), rng);
  }
  auto q() { return q_full.middleCols(sh.pad, sh.C()); }
  auto out() { return out_full.middleCols(sh.pad, sh.C()); }
  auto dq() { return dq_full.middleCols(sh.pad, sh.C()); }
};

struct Case {
  std::string name;
  Shape sh;
  std::vector<Index> T;  // rows per batch element of each buffer (>= q_pos + Tq)
  PlanSpec plan;
};

PlanSpec standard_plan(Index NH) {
  PlanSpec p(static_cast<std::size_t>(NH));
  for (Index h = 0; h < NH; ++h) p[static_cast<std::size_t>(h)] = {{0, h}};
  return p;
}

std::vector<Case> reference_cases() {
  std::vector<Case> cases;
  cases.push_back({"standard", {2, 4, 8, 37, 0, 0}, {37}, standard_plan(4)});
  cases.push_back({"T1_one_head_hs1", {1, 1, 1, 1, 0, 0}, {1}, standard_plan(1)});
  cases.push_back({"T1_B3", {3, 2, 8, 1, 0, 1}, {1}, standard_plan(2)});
  cases.push_back({"T2_B3", {3, 2, 8, 2, 0, 0}, {2}, standard_plan(2)});
  cases.push_back({"T3_one_head_hs32", {2, 1, 32, 3, 0, 0}, {3}, standard_plan(1)});
  cases.push_back({"T65_hs32_strided", {1, 2, 32, 65, 0, 3}, {65}, standard_plan(2)});
  cases.push_back({"T130_hs64", {1, 2, 64, 130, 0, 0}, {130}, standard_plan(2)});
  // SLA concat: heads 0, 1 attend over their own layer (buffer 0) and a preceding one (buffer 1)
  cases.push_back({"concat_T100_hs64",
                   {2, 3, 64, 100, 0, 0},
                   {100, 100},
                   {{{0, 0}, {1, 0}}, {{0, 1}, {1, 1}}, {{0, 2}}}});
  // SLA split: head 0 reads the preceding layer, the others their own
  cases.push_back({"split_T65", {2, 3, 8, 65, 0, 2}, {65, 65}, {{{1, 0}}, {{0, 1}}, {{0, 2}}}});
  // shortcuts-like: three sources on head 0, two on head 1 (different order), one on head 2
  cases.push_back({"three_sources_T130",
                   {1, 3, 16, 130, 0, 1},
                   {130, 130, 130},
                   {{{0, 0}, {1, 0}, {2, 0}}, {{2, 1}, {0, 1}}, {{1, 2}}}});
  // two heads read the same source (shared dk/dv): the backward runs heads serially
  cases.push_back({"shared_between_heads",
                   {2, 3, 8, 20, 0, 0},
                   {20, 20},
                   {{{0, 0}}, {{0, 0}, {1, 1}}, {{1, 2}}}});
  // KV-cache decode: one query at position 70, caches of capacity 100 (batch_stride > length)
  cases.push_back({"decode_Tq1", {2, 2, 32, 1, 70, 0}, {100, 90}, {{{0, 0}, {1, 0}}, {{0, 1}}}});
  // decode a chunk that crosses the 64-row tile boundary, buffers of different capacity
  cases.push_back({"decode_chunk", {3, 2, 8, 5, 60, 1}, {80, 65}, {{{0, 0}, {1, 0}}, {{1, 1}}}});
  // prefill continuation: 70 queries from position 74, keys up to 143
  cases.push_back({"q_pos_70_rows", {1, 1, 64, 70, 74, 0}, {150}, standard_plan(1)});
  return cases;
}

template <typename S>
void check_case_against_reference(const Case& c, std::uint64_t seed, bool prefill) {
  SCOPED_TRACE(c.name);
  const Shape& sh = c.sh;
  Rng rng(seed);
  std::vector<Buffer<S>> bufs = make_buffers<S>(sh, c.T, rng, prefill);
  std::vector<Buffer<S>> ref_bufs = bufs;
  Call<S> call(sh, rng, prefill);
  const Matrix<S> q = call.q();
  Matrix<S> ref_dq = call.dq();
  const Matrix<S> out_before = call.out_full, dq_before = call.dq_full;

  const AttentionSources<S> sources = build_sources(sh, bufs, c.plan);
  strata::attention_forward(call.out(), call.lse, call.q(), sources, sh.B, sh.q_pos);
  strata::attention_backward(call.dq(), call.dout, call.q(), call.out(), call.lse, sources, sh.B,
                             sh.q_pos);

  const auto plan = build_plan(sh, ref_bufs, c.plan);
  Matrix<S> ref_out, ref_lse;
  strata::reference::attention_forward(ref_out, ref_lse, q, plan, sh.B, sh.q_pos);
  strata::reference::attention_backward(ref_dq, call.dout, q, plan, sh.B, sh.q_pos);

  const double tol = tolerance<S>();
  EXPECT_LE(rel_err<S>(call.out(), ref_out), tol) << "out";
  EXPECT_LE(rel_err<S>(call.lse, ref_lse), tol) << "lse";
  EXPECT_LE(rel_err<S>(call.dq(), ref_dq), tol) << "dq";
  for (std::size_t i = 0; i < bufs.size(); ++i) {
    EXPECT_LE(rel_err<S>(bufs[i].dk, ref_bufs[i].dk), tol) << "dk of buffer " << i;
    EXPECT_LE(rel_err<S>(bufs[i].dv, ref_bufs[i].dv), tol) << "dv of buffer " << i;
  }
  // columns outside the q/out/dq blocks are untouched
  if (sh.pad > 0) {
    EXPECT_EQ(call.out_full.leftCols(sh.pad), out_before.leftCols(sh.pad));
    EXPECT_EQ(call.out_full.rightCols(sh.pad), out_before.rightCols(sh.pad));
    EXPECT_EQ(call.dq_full.leftCols(sh.pad), dq_before.leftCols(sh.pad));
    EXPECT_EQ(call.dq_full.rightCols(sh.pad), dq_before.rightCols(sh.pad));
  }
}

struct ScalarNames {
  template <typename T>
  static std::string GetName(int) {
    return std::is_same<T, float>::value ? "float" : "double";
  }
};

template <typename S>
class AttentionTyped : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(AttentionTyped, Scalars, ScalarNames);

/// Runs fn and checks that it throws strata::Error with exactly `message`.
void expect_error(const std::function<void()>& fn, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "no exception, expected: " << message;
  } catch (const strata::Error& e) {
    EXPECT_EQ(std::string(e.what()), message);
  } catch (...) {
    ADD_FAILURE() << "an exception other than strata::Error, expected: " << message;
  }
}

// ------------------------------------------------------------------------------------------------
// against the naive reference

TYPED_TEST(AttentionTyped, MatchesReference) {
  std::uint64_t seed = 100;
  for (const Case& c : reference_cases()) check_case_against_reference<TypeParam>(c, seed++, false);
}

TYPED_TEST(AttentionTyped, BackwardAccumulatesIntoPrefilledGradients) {
  // dq, dk, dv start with random values; the reference adds its gradients to the same values.
  std::uint64_t seed = 200;
  for (const Case& c : reference_cases()) check_case_against_reference<TypeParam>(c, seed++, true);
}

TYPED_TEST(AttentionTyped, SourceSharedAcrossCallsAccumulates) {
  // Layer A attends over its own K/V (buffer 0); layer B's head 0 attends over its own (buffer 1)
  // and layer A's (SLA concat), head 1 over its own. Buffer 0's dk/dv collect both backward calls.
  using S = TypeParam;
  const Shape sh{2, 2, 16, 70, 0, 0};
  const PlanSpec plan_a = standard_plan(2);
  const PlanSpec plan_b = {{{1, 0}, {0, 0}}, {{1, 1}}};
  Rng rng(7);
  std::vector<Buffer<S>> bufs = make_buffers<S>(sh, {70, 70}, rng, false);
  std::vector<Buffer<S>> ref_bufs = bufs;
  Call<S> a(sh, rng, false), b(sh, rng, false);
  const auto src_a = build_sources(sh, bufs, plan_a), src_b = build_sources(sh, bufs, plan_b);
  strata::attention_forward(a.out(), a.lse, a.q(), src_a, sh.B);
  strata::attention_forward(b.out(), b.lse, b.q(), src_b, sh.B);
  strata::attention_backward(b.dq(), b.dout, b.q(), b.out(), b.lse, src_b, sh.B);
  strata::attention_backward(a.dq(), a.dout, a.q(), a.out(), a.lse, src_a, sh.B);

  Matrix<S> dqa = Matrix<S>::Zero(sh.B * sh.Tq, sh.C()), dqb = dqa;
  strata::reference::attention_backward<S>(dqb, b.dout, b.q(), build_plan(sh, ref_bufs, plan_b),
                                           sh.B);
  strata::reference::attention_backward<S>(dqa, a.dout, a.q(), build_plan(sh, ref_bufs, plan_a),
                                           sh.B);
  const double tol = tolerance<S>();
  EXPECT_LE(rel_err<S>(a.dq(), dqa), tol);
  EXPECT_LE(rel_err<S>(b.dq(), dqb), tol);
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_LE(rel_err<S>(bufs[i].dk, ref_bufs[i].dk), tol) << "dk of buffer " << i;
    EXPECT_LE(rel_err<S>(bufs[i].dv, ref_bufs[i].dv), tol) << "dv of buffer " << i;
  }
}

// ------------------------------------------------------------------------------------------------
// finite differences (double)

/// loss = sum(W o out) for the current buffers and q.
double weighted_loss(Call<double>& call, const AttentionSources<double>& sources,
                     const Matrix<double>& w) {
  strata::attention_forward(call.out(), call.lse, call.q(), sources, call.sh.B, call.sh.q_pos);
  return (call.out().array() * w.array()).sum();
}

void check_finite_differences(const Shape& sh, const std::vector<Index>& T, const PlanSpec& plan,
                              std::uint64_t seed) {
  Rng rng(seed);
  std::vector<Buffer<double>> bufs = make_buffers<double>(sh, T, rng, false);
  Call<double> call(sh, rng, false);
  const AttentionSources<double> sources = build_sources(sh, bufs, plan);
  const Matrix<double> w = call.dout;  // dloss/dout
  weighted_loss(call, sources, w);
  strata::attention_backward(call.dq(), call.dout, call.q(), call.out(), call.lse, sources, sh.B,
                             sh.q_pos);

  const double eps = 1e-6;
  // central difference of every entry of x against the analytic gradient g (same layout)
  const auto check = [&](const char* name, double* x, const double* g, Index rows, Index cols,
                         Index stride) {
    double max_diff = 0, max_grad = 0;
    for (Index r = 0; r < rows; ++r)
      for (Index j = 0; j < cols; ++j) {
        double& xi = x[r * stride + j];
        const double saved = xi;
        xi = saved + eps;
        const double up = weighted_loss(call, sources, w);
        xi = saved - eps;
        const double down = weighted_loss(call, sources, w);
        xi = saved;
        const double fd = (up - down) / (2 * eps), an = g[r * stride + j];
        max_diff = std::max(max_diff, std::abs(fd - an));
        max_grad = std::max(max_grad, std::abs(an));
      }
    EXPECT_GT(max_grad, 0) << name;
    EXPECT_LT(max_diff / max_grad, 1e-6)
        << name << ": max diff " << max_diff << ", max |grad| " << max_grad;
  };
  check("q", call.q_full.data() + sh.pad, call.dq_full.data() + sh.pad, sh.B * sh.Tq, sh.C(),
        sh.W());
  for (std::size_t i = 0; i < bufs.size(); ++i) {
    const std::string k = "k of buffer " + std::to_string(i),
                      v = "v of buffer " + std::to_string(i);
    check(k.c_str(), bufs[i].k.data(), bufs[i].dk.data(), bufs[i].k.rows(), sh.W(), sh.W());
    check(v.c_str(), bufs[i].v.data(), bufs[i].dv.data(), bufs[i].v.rows(), sh.W(), sh.W());
  }
}

// exp_rows_masked exponentiates only each row's visible keys, up to the end of the packet that
// holds the last of them. Every value must be bit for bit what the whole row's exp followed by the
// mask gives (the kernel's results do not depend on where the diagonal crosses a tile), for masked
// scores of -inf (the forward pass) and of any size (the backward pass recomputes real scores).
template <typename S>
void check_visible_prefix_exp() {
  using Tile = strata::detail::ScoreTile<S>;
  Rng rng(29);
  long tiles = 0;
  for (Index tq : {Index(1), Index(3), Index(17), Index(64)})
    for (Index tk = 1; tk <= strata::detail::kAttentionTile; ++tk)
      for (Index diag = -tq - 1; diag <= tk + 1; ++diag)
        for (bool minus_inf : {true, false}) {
          Tile P(tq, tk);
          strata::detail::TileColumn<S> shift(tq);
          for (Index r = 0; r < tq; ++r) {
            shift(r) = S(3 * rng.normal());
            for (Index j = 0; j < tk; ++j) P(r, j) = S(40 * rng.normal());
          }
          if (minus_inf) strata::detail::causal_mask(P, diag, -std::numeric_limits<S>::infinity());
          Tile expected = P;
          const S c = S(0.3);
          for (Index r = 0; r < tq; ++r)
            expected.row(r).array() = (c * expected.row(r).array() - shift(r)).exp();
          strata::detail::causal_mask(expected, diag, S(0));
          strata::detail::exp_rows_masked(P, c, shift, diag);
          ASSERT_EQ(std::memcmp(P.data(), expected.data(), sizeof(S) * size_t(tq * tk)), 0)
              << "tile " << tq << " x " << tk << ", diagonal at " << diag
              << (minus_inf ? ", masked scores -inf" : ", masked scores finite");
          ++tiles;
        }
  EXPECT_GT(tiles, 20000);
}

TEST(AttentionTiles, VisiblePrefixExpIsBitForBitTheWholeRowsExp) {
  check_visible_prefix_exp<float>();
  check_visible_prefix_exp<double>();
}

TEST(AttentionGradcheck, MultiSourceFiniteDifferences) {
  // head 0: two sources; head 1: the same first source of head 0 (shared) and a third one
  check_finite_differences({2, 2, 4, 7, 0, 1}, {7, 7, 7}, {{{0, 0}, {1, 0}}, {{0, 0}, {2, 1}}}, 11);
}

TEST(AttentionGradcheck, DecodeChunkFiniteDifferences) {
  // queries at positions 66..69 over caches of capacity 72, keys crossing the tile boundary
  check_finite_differences({1, 2, 3, 4, 66, 0}, {72, 70}, {{{0, 0}, {1, 0}}, {{1, 1}}}, 12);
}

// ------------------------------------------------------------------------------------------------
// behaviour

TYPED_TEST(AttentionTyped, Causality) {
  // Changing key/value rows tau > cut of every source leaves out, lse and dq rows <= cut unchanged,
  // bit for bit.
  using S = TypeParam;
  const Shape sh{2, 2, 8, 100, 0, 0};
  const PlanSpec plan = {{{0, 0}, {1, 0}}, {{1, 1}}};
  for (Index cut : {0, 37, 63, 64, 98}) {
    SCOPED_TRACE(cut);
    Rng rng(21);
    std::vector<Buffer<S>> bufs = make_buffers<S>(sh, {100, 100}, rng, false);
    Call<S> call(sh, rng, false);
    const auto sources = build_sources(sh, bufs, plan);
    strata::attention_forward(call.out(), call.lse, call.q(), sources, sh.B);
    strata::attention_backward(call.dq(), call.dout, call.q(), call.out(), call.lse, sources, sh.B);
    const Matrix<S> out0 = call.out(), lse0 = call.lse, dq0 = call.dq();

    for (Buffer<S>& b : bufs)
      for (Index bb = 0; bb < sh.B; ++bb)
        for (Index tau = cut + 1; tau < b.T; ++tau) {
          b.k.row(bb * b.T + tau).setConstant(S(1000));
          b.v.row(bb * b.T + tau).setConstant(S(-3));
        }
    call.dq().setZero();
    strata::attention_forward(call.out(), call.lse, call.q(), sources, sh.B);
    strata::attention_backward(call.dq(), call.dout, call.q(), call.out(), call.lse, sources, sh.B);
    for (Index bb = 0; bb < sh.B; ++bb) {
      const Index r0 = bb * sh.Tq, n = cut + 1;
      EXPECT_EQ(Matrix<S>(call.out().middleRows(r0, n)), Matrix<S>(out0.middleRows(r0, n)));
      EXPECT_EQ(Matrix<S>(call.lse.middleRows(r0, n)), Matrix<S>(lse0.middleRows(r0, n)));
      EXPECT_EQ(Matrix<S>(call.dq().middleRows(r0, n)), Matrix<S>(dq0.middleRows(r0, n)));
      if (cut + 1 < sh.Tq) {  // and the change is seen after the cut
        EXPECT_NE(Matrix<S>(call.out().middleRows(r0 + n, 1)),
                  Matrix<S>(out0.middleRows(r0 + n, 1)));
      }
    }
  }
}

TYPED_TEST(AttentionTyped, SourceMassSumsToOneAndMatchesReference) {
  using S = TypeParam;
  const Shape sh{2, 3, 16, 70, 5, 0};
  const PlanSpec plan = {{{0, 0}, {1, 0}, {2, 0}}, {{1, 1}}, {{2, 2}, {0, 2}}};
  Rng rng(31);
  std::vector<Buffer<S>> bufs = make_buffers<S>(sh, {75, 80, 75}, rng, false);
  Call<S> call(sh, rng, false);
  const auto sources = build_sources(sh, bufs, plan);
  ASSERT_EQ(sources.max_count(), 3);
  strata::attention_forward(call.out(), call.lse, call.q(), sources, sh.B, sh.q_pos);
  Matrix<S> mass(sh.B * sh.Tq, sh.NH * 3);
  strata::attention_source_mass(mass, call.q(), call.lse, sources, sh.B, sh.q_pos);

  const double sum_tol = std::is_same<S, float>::value ? 1e-6 : 1e-12;
  for (Index h = 0; h < sh.NH; ++h) {
    const Matrix<S> sums = mass.middleCols(h * 3, 3).rowwise().sum();
    EXPECT_LE((sums.array() - S(1)).abs().maxCoeff(), sum_tol) << "head " << h;
  }
  EXPECT_EQ(mass.col(1 * 3 + 1).cwiseAbs().maxCoeff(), S(0));  // head 1 has one source
  EXPECT_EQ(mass.col(1 * 3 + 2).cwiseAbs().maxCoeff(), S(0));
  EXPECT_EQ(mass.col(2 * 3 + 2).cwiseAbs().maxCoeff(), S(0));  // head 2 has two

  Matrix<S> ref_mass;
  strata::reference::attention_source_mass<S>(ref_mass, call.q(), build_plan(sh, bufs, plan), sh.B,
                                              sh.q_pos);
  EXPECT_LE(rel_err<S>(mass, ref_mass), tolerance<S>());
}

TYPED_TEST(AttentionTyped, SingleSourceOverloadsMatchSources) {
  // q, k, v are column blocks of one [B*T, 3C] qkv buffer, gradients blocks of dqkv.
  using S = TypeParam;
  const Index B = 2, T = 67, NH = 3, hs = 16, C = NH * hs;
  Rng rng(41);
  const Matrix<S> qkv = random_matrix<S>(B * T, 3 * C, rng), dout = random_matrix<S>(B * T, C, rng);
  Matrix<S> out(B * T, C), lse(B * T, NH), dqkv = Matrix<S>::Zero(B * T, 3 * C);
  strata::attention_forward<S>(out, lse, qkv.leftCols(C), qkv.middleCols(C, C), qkv.rightCols(C),
                               NH, B);
  strata::attention_backward<S>(dqkv.leftCols(C), dqkv.middleCols(C, C), dqkv.rightCols(C), dout,
                                qkv.leftCols(C), qkv.middleCols(C, C), qkv.rightCols(C), out, lse,
                                NH, B);

  // the same through make_sources on plain matrices
  const Matrix<S> q = qkv.leftCols(C), k = qkv.middleCols(C, C), v = qkv.rightCols(C);
  Matrix<S> out2(B * T, C), lse2(B * T, NH), dq = Matrix<S>::Zero(B * T, C), dk = dq, dv = dq;
  const auto sources = strata::make_sources<S>({&k}, {&v}, NH, B, {&dk}, {&dv});
  strata::attention_forward(out2, lse2, q, sources, B);
  strata::attention_backward(dq, dout, q, out2, lse2, sources, B);
  EXPECT_EQ(out, out2);
  EXPECT_EQ(lse, lse2);
  EXPECT_EQ(Matrix<S>(dqkv.leftCols(C)), dq);
  EXPECT_EQ(Matrix<S>(dqkv.middleCols(C, C)), dk);
  EXPECT_EQ(Matrix<S>(dqkv.rightCols(C)), dv);

  // and against the reference
  Matrix<S> rk = k, rv = v, rdk = Matrix<S>::Zero(B * T, C), rdv = rdk, rdq = rdk, rout, rlse;
  strata::reference::Plan<S> plan(static_cast<std::size_t>(NH));
  for (Index h = 0; h < NH; ++h)
    plan[static_cast<std::size_t>(h)] = {{&rk, &rv, h * hs, T, &rdk, &rdv}};
  strata::reference::attention_forward(rout, rlse, q, plan, B);
  strata::reference::attention_backward(rdq, dout, q, plan, B);
  const double tol = tolerance<S>();
  EXPECT_LE(rel_err<S>(out, rout), tol);
  EXPECT_LE(rel_err<S>(lse, rlse), tol);
  EXPECT_LE(rel_err<S>(dq, rdq), tol);
  EXPECT_LE(rel_err<S>(dk, rdk), tol);
  EXPECT_LE(rel_err<S>(dv, rdv), tol);
}

TYPED_TEST(AttentionTyped, MakeSourcesLayout) {
  using S = TypeParam;
  const Index B = 2, NH = 2, hs = 3;
  Matrix<S> k0(B * 5, NH * hs), v0(B * 5, NH * hs), k1(B * 4, NH * hs), v1(B * 4, NH * hs);
  const auto fwd = strata::make_sources<S>({&k0, &k1}, {&v0, &v1}, NH, B);
  ASSERT_EQ(fwd.n_head(), NH);
  for (Index h = 0; h < NH; ++h) {
    ASSERT_EQ(fwd.count(h), 2);
    const KVSource<S>& a = fwd.source(h, 0);
    const KVSource<S>& b = fwd.source(h, 1);
    EXPECT_EQ(a.k, k0.data() + h * hs);
    EXPECT_EQ(a.v, v0.data() + h * hs);
    EXPECT_EQ(a.dk, nullptr);
    EXPECT_EQ(a.row_stride, NH * hs);
    EXPECT_EQ(a.batch_stride, 5 * NH * hs);
    EXPECT_EQ(a.length, 5);
    EXPECT_EQ(b.k, k1.data() + h * hs);
    EXPECT_EQ(b.batch_stride, 4 * NH * hs);
    EXPECT_EQ(b.length, 4);
  }
}

TEST(AttentionSourcesTest, InterleavedAddKeepsPerHeadOrderAndResetClears) {
  double x[8] = {};
  AttentionSources<double> s(3);
  const auto src = [&](int i) {
    KVSource<double> k;
    k.k = x + i;
    return k;
  };
  s.add(2, src(0));
  s.add(0, src(1));
  s.add(2, src(2));
  s.add(1, src(3));
  s.add(0, src(4));
  s.add(2, src(5));
  EXPECT_EQ(s.count(0), 2);
  EXPECT_EQ(s.count(1), 1);
  EXPECT_EQ(s.count(2), 3);
  EXPECT_EQ(s.max_count(), 3);
  EXPECT_EQ(s.source(0, 0).k, x + 1);
  EXPECT_EQ(s.source(0, 1).k, x + 4);
  EXPECT_EQ(s.source(1, 0).k, x + 3);
  EXPECT_EQ(s.source(2, 0).k, x + 0);
  EXPECT_EQ(s.source(2, 1).k, x + 2);
  EXPECT_EQ(s.source(2, 2).k, x + 5);
  s.reset(2);
  EXPECT_EQ(s.n_head(), 2);
  EXPECT_EQ(s.count(0), 0);
  EXPECT_EQ(s.count(1), 0);
  expect_error([&] { s.add(2, src(0)); },
               "AttentionSources::add: head 2 is out of range, expected 0 <= head < 2 (n_head)");
  expect_error(
      [&] { s.source(1, 0); },
      "AttentionSources::source: index 0 is out of range, expected 0 <= index < 0 (sources "
      "of head 1)");
}

TYPED_TEST(AttentionTyped, ThreadCountDoesNotChangeResults) {
  using S = TypeParam;
  const Case c{"threads",
               {3, 3, 16, 70, 0, 0},
               {70, 70},
               {{{0, 0}, {1, 0}}, {{0, 0}}, {{1, 2}}}};  // includes a head-shared source
  const int threads = strata::num_threads();
  std::vector<Matrix<S>> results[2];
  for (int run = 0; run < 2; ++run) {
    strata::set_num_threads(run == 0 ? 1 : 2);
    Rng rng(51);
    std::vector<Buffer<S>> bufs = make_buffers<S>(c.sh, c.T, rng, false);
    Call<S> call(c.sh, rng, false);
    const auto sources = build_sources(c.sh, bufs, c.plan);
    strata::attention_forward(call.out(), call.lse, call.q(), sources, c.sh.B);
    strata::attention_backward(call.dq(), call.dout, call.q(), call.out(), call.lse, sources,
                               c.sh.B);
    results[run] = {call.out(), call.lse,   call.dq(), bufs[0].dk,
                    bufs[0].dv, bufs[1].dk, bufs[1].dv};
  }
  strata::set_num_threads(threads);
  for (std::size_t i = 0; i < results[0].size(); ++i) EXPECT_EQ(results[0][i], results[1][i]) << i;
}

// ------------------------------------------------------------------------------------------------
// errors

TEST(AttentionErrors, ForwardValidation) {
  const Index B = 2, NH = 4, hs = 2, T = 3, C = NH * hs;
  Matrix<double> k = Matrix<double>::Zero(B * T, C), v = k, q = k, out = k;
  Matrix<double> lse(B * T, NH);
  const auto sources = strata::make_sources<double>({&k}, {&v}, NH, B);
  using strata::attention_forward;
  Matrix<double> lse_3(B * T, 3), lse_5(B * T - 1, NH), out_7(B * T, C - 1), out_8(B * T + 2, C);
  expect_error(
      [&] { attention_forward(out, lse_3, q, sources, B); },
      "attention_forward: lse has shape [6, 3], expected [6, 4] (rows as q, columns n_head)");
  expect_error(
      [&] { attention_forward(out, lse_5, q, sources, B); },
      "attention_forward: lse has shape [5, 4], expected [6, 4] (rows as q, columns n_head)");
  expect_error([&] { attention_forward(out_7, lse, q, sources, B); },
               "attention_forward: out has shape [6, 7], expected [6, 8] (rows and columns as q)");
  expect_error([&] { attention_forward(out_8, lse, q, sources, B); },
               "attention_forward: out has shape [8, 8], expected [6, 8] (rows and columns as q)");
  expect_error([&] { attention_forward(out, lse, Matrix<double>(B * T, 10), sources, B); },
               "attention_forward: q has 10 columns, expected a positive multiple of 4 (n_head)");
  expect_error([&] { attention_forward(out, lse, Matrix<double>(B * T, 0), sources, B); },
               "attention_forward: q has 0 columns, expected a positive multiple of 4 (n_head)");
  expect_error([&] { attention_forward(out, lse, Matrix<double>(7, C), sources, B); },
               "attention_forward: q has 7 rows, expected a multiple of 2 (B)");
  expect_error([&] { attention_forward(out, lse, q, sources, 0); },
               "attention_forward: B is 0, expected at least 1");
  expect_error([&] { attention_forward(out, lse, q, sources, B, -1); },
               "attention_forward: q_pos is -1, expected at least 0");
  expect_error([&] { attention_forward(out, lse, q, sources, B, 1); },
               "attention_forward: source 0 of head 0 has length 3, expected at least 4 (q_pos 1 + "
               "Tq 3)");
  expect_error(
      [&] {
        Matrix<double> wide(2, 4 * 257), wide_out(2, 4 * 257), wide_lse(2, 4);
        attention_forward(wide_out, wide_lse, wide, sources, 1);
      },
      "attention_forward: head_size is 257 (q has 1028 columns, n_head 4), expected at most 256");
  expect_error([&] { attention_forward(out, lse, q, AttentionSources<double>(0), B); },
               "attention_forward: sources has 0 heads, expected at least 1");

  AttentionSources<double> partial(NH);
  for (Index h = 0; h < NH; ++h)
    if (h != 2) partial.add(h, sources.source(h, 0));
  expect_error([&] { attention_forward(out, lse, q, partial, B); },
               "attention_forward: head 2 has no sources, expected at least 1");

  // sources where head `head` has an edited copy of its source at position `index` (0 or 1)
  const auto with = [&](Index head, Index index,
                        const std::function<void(KVSource<double>&)>& edit) {
    AttentionSources<double> s(NH);
    for (Index h = 0; h < NH; ++h) {
      KVSource<double> edited = sources.source(h, 0);
      edit(edited);
      if (h == head && index == 0) {
        s.add(h, edited);
      } else {
        s.add(h, sources.source(h, 0));
        if (h == head) s.add(h, edited);
      }
    }
    return s;
  };
  expect_error(
      [&] { attention_forward(out, lse, q, with(1, 1, [](auto& s) { s.k = nullptr; }), B); },
      "attention_forward: source 1 of head 1 has a null k");
  expect_error(
      [&] { attention_forward(out, lse, q, with(3, 1, [](auto& s) { s.v = nullptr; }), B); },
      "attention_forward: source 1 of head 3 has a null v");
  expect_error(
      [&] { attention_forward(out, lse, q, with(0, 0, [](auto& s) { s.row_stride = 0; }), B); },
      "attention_forward: source 0 of head 0 has row_stride 0, expected at least 2 (head_size)");
  expect_error(
      [&] { attention_forward(out, lse, q, with(2, 1, [](auto& s) { s.length = 2; }), B); },
      "attention_forward: source 1 of head 2 has length 2, expected at least 3 (q_pos 0 + Tq 3)");
  // forward does not need gradient destinations
  EXPECT_NO_THROW(attention_forward(out, lse, q, sources, B));
}

TEST(AttentionErrors, BackwardValidation) {
  const Index B = 1, NH = 2, hs = 3, T = 4, C = NH * hs;
  Matrix<double> k = Matrix<double>::Zero(B * T, C), v = k, dk = k, dv = k, q = k, out = k,
                 dout = k, dq = k;
  Matrix<double> lse = Matrix<double>::Zero(B * T, NH);
  const auto fwd_only = strata::make_sources<double>({&k}, {&v}, NH, B);
  const auto sources = strata::make_sources<double>({&k}, {&v}, NH, B, {&dk}, {&dv});
  using strata::attention_backward;
  expect_error(
      [&] { attention_backward(dq, dout, q, out, lse, fwd_only, B); },
      "attention_backward: source 0 of head 0 has a null dk (backward accumulates into it)");
  AttentionSources<double> no_dv(NH);
  for (Index h = 0; h < NH; ++h) {
    KVSource<double> s = sources.source(h, 0);
    if (h == 1) s.dv = nullptr;
    no_dv.add(h, s);
  }
  expect_error(
      [&] { attention_backward(dq, dout, q, out, lse, no_dv, B); },
      "attention_backward: source 0 of head 1 has a null dv (backward accumulates into it)");
  Matrix<double> dq_7(B * T, C + 1);
  expect_error([&] { attention_backward(dq_7, dout, q, out, lse, sources, B); },
               "attention_backward: dq has shape [4, 7], expected [4, 6] (rows and columns as q)");
  expect_error(
      [&] { attention_backward(dq, Matrix<double>(B * T + 1, C), q, out, lse, sources, B); },
      "attention_backward: dout has shape [5, 6], expected [4, 6] (rows and columns as q)");
  expect_error([&] { attention_backward(dq, dout, q, Matrix<double>(B * T, 2), lse, sources, B); },
               "attention_backward: out has shape [4, 2], expected [4, 6] (rows and columns as q)");
  expect_error(
      [&] { attention_backward(dq, dout, q, out, Matrix<double>(B * T, 1), sources, B); },
      "attention_backward: lse has shape [4, 1], expected [4, 2] (rows as q, columns n_head)");
  expect_error(
      [&] { attention_backward(dq, dout, Matrix<double>(B * T, 5), out, lse, sources, B); },
      "attention_backward: q has 5 columns, expected a positive multiple of 2 (n_head)");
  EXPECT_NO_THROW(attention_backward(dq, dout, q, out, lse, sources, B));
}

TEST(AttentionErrors, SourceMassValidation) {
  const Index B = 1, NH = 2, T = 4, C = 4;
  Matrix<double> k = Matrix<double>::Zero(B * T, C), v = k, q = k;
  Matrix<double> lse = Matrix<double>::Zero(B * T, NH);
  const auto sources = strata::make_sources<double>({&k, &k}, {&v, &v}, NH, B);
  Matrix<double> mass_3(B * T, 3), mass_34(3, 4), mass_44(4, 4);
  expect_error([&] { strata::attention_source_mass(mass_3, q, lse, sources, B); },
               "attention_source_mass: mass has shape [4, 3], expected [4, 4] (rows as q, columns "
               "n_head x max sources per head)");
  expect_error([&] { strata::attention_source_mass(mass_34, q, lse, sources, B); },
               "attention_source_mass: mass has shape [3, 4], expected [4, 4] (rows as q, columns "
               "n_head x max sources per head)");
  expect_error(
      [&] { strata::attention_source_mass(mass_44, q, Matrix<double>(4, 3), sources, B); },
      "attention_source_mass: lse has shape [4, 3], expected [4, 2] (rows as q, columns n_head)");
}

TEST(AttentionErrors, SingleSourceValidation) {
  const Index B = 2, NH = 2, T = 3, C = 4;
  Matrix<double> q = Matrix<double>::Zero(B * T, C), k = q, v = q, out = q, dq = q, dk = q, dv = q,
                 dout = q;
  Matrix<double> lse(B * T, NH);
  expect_error(
      [&] { strata::attention_forward<double>(out, lse, q, Matrix<double>(B * T, 2), v, NH, B); },
      "attention_forward: k has shape [6, 2], expected [6, 4] (rows and columns as q)");
  expect_error(
      [&] { strata::attention_forward<double>(out, lse, q, k, Matrix<double>(5, C), NH, B); },
      "attention_forward: v has shape [5, 4], expected [6, 4] (rows and columns as q)");
  expect_error([&] { strata::attention_forward<double>(out, lse, q, k, v, 0, B); },
               "attention_forward: n_head is 0, expected at least 1");
  expect_error([&] { strata::attention_forward<double>(out, lse, q, k, v, 3, B); },
               "attention_forward: q has 4 columns, expected a positive multiple of 3 (n_head)");
  expect_error(
      [&] {
        Matrix<double> dk_2(B * T, 2);
        strata::attention_backward<double>(dq, dk_2, dv, dout, q, k, v, out, lse, NH, B);
      },
      "attention_backward: dk has shape [6, 2], expected [6, 4] (rows and columns as q)");
  expect_error(
      [&] {
        strata::attention_backward<double>(dq, dk, dv, dout, q, k, v, out, Matrix<double>(B * T, 1),
                                           NH, B);
      },
      "attention_backward: lse has shape [6, 1], expected [6, 2] (rows as q, columns n_head)");
}

TEST(AttentionErrors, MakeSourcesValidation) {
  const Index B = 2;
  Matrix<double> k(6, 8), v(6, 8), k_odd(7, 8), k_narrow(6, 6), v_wrong(6, 6), dk(6, 8);
  using strata::make_sources;
  expect_error([&] { make_sources<double>({&k}, {&v}, 0, B); },
               "make_sources: n_head is 0, expected at least 1");
  expect_error([&] { make_sources<double>({&k}, {&v}, 4, 0); },
               "make_sources: B is 0, expected at least 1");
  expect_error([&] { make_sources<double>({}, {}, 4, B); },
               "make_sources: k is empty, expected at least 1 matrix");
  expect_error(
      [&] {
        make_sources<double>({&k, &k}, {&v}, 4, B);
      },
      "make_sources: v has 1 matrices, expected 2 (one per k)");
  expect_error(
      [&] {
        make_sources<double>({&k}, {&v}, 4, B, {&dk, &dk}, {&dk, &dk});
      },
      "make_sources: dk has 2 matrices, expected 1 (one per k) or 0");
  expect_error([&] { make_sources<double>({&k}, {&v}, 4, B, {&dk}, {}); },
               "make_sources: dv has 0 matrices, expected 1 (as dk)");
  expect_error([&] { make_sources<double>({&k}, {&v}, 3, B); },
               "make_sources: k[0] has 8 columns, expected a positive multiple of 3 (n_head)");
  expect_error(
      [&] {
        make_sources<double>({&k, &k_narrow}, {&v, &v_wrong}, 4, B);
      },
      "make_sources: k[1] has 6 columns, expected 8 (as k[0])");
  expect_error(
      [&] {
        make_sources<double>({&k, &k_odd}, {&v, &v}, 4, B);
      },
      "make_sources: k[1] has 7 rows, expected a multiple of 2 (B)");
  expect_error([&] { make_sources<double>({&k}, {&v_wrong}, 4, B); },
               "make_sources: v[0] has shape [6, 6], expected [6, 8] (as k[0])");
  expect_error([&] { make_sources<double>({&k}, {nullptr}, 4, B); }, "make_sources: v[0] is null");
  expect_error([&] { make_sources<double>({nullptr}, {&v}, 4, B); }, "make_sources: k[0] is null");
  expect_error([&] { make_sources<double>({&k}, {&v}, 4, B, {&dk}, {&v_wrong}); },
               "make_sources: dv[0] has shape [6, 6], expected [6, 8] (as k[0])");
}

// ------------------------------------------------------------------------------------------------
// no heap allocation inside the kernels

TEST(AttentionNoMalloc, RuntimeCheckIsLive) {
  // The mechanism itself: a dynamic matrix allocated while forbidden is reported.
  alloc_counter::eigen_assert_failures = 0;
  Eigen::internal::set_is_malloc_allowed(false);
  { Matrix<double> m(10, 10); }
  Eigen::internal::set_is_malloc_allowed(true);
  EXPECT_EQ(alloc_counter::eigen_assert_failures.load(), 1);
  alloc_counter::eigen_assert_failures = 0;
}

TYPED_TEST(AttentionTyped, NoHeapAllocationInKernels) {
  using S = TypeParam;
  struct Run {
    Shape sh;
    std::vector<Index> T;
    PlanSpec plan;
  };
  const std::vector<Run> runs = {
      {{2, 2, 256, 130, 0, 0}, {130, 130}, {{{0, 0}, {1, 0}}, {{1, 1}}}},  // largest head size
      {{2, 2, 64, 70, 0, 5}, {70}, {{{0, 0}}, {{0, 0}}}},                  // strided, shared
      {{2, 2, 256, 1, 100, 0}, {128, 101}, {{{0, 0}, {1, 0}}, {{0, 1}}}},  // decode one token
      {{1, 2, 32, 9, 60, 0}, {70}, {{{0, 0}}, {{0, 1}}}},                  // decode a chunk
  };
  for (const Run& run : runs) {
    SCOPED_TRACE(run.sh.hs);
    const Shape& sh = run.sh;
    Rng rng(61);
    std::vector<Buffer<S>> bufs = make_buffers<S>(sh, run.T, rng, false);
    Call<S> call(sh, rng, false);
    const auto sources = build_sources(sh, bufs, run.plan);
    Matrix<S> mass(sh.B * sh.Tq, sh.NH * sources.max_count());
    // Refs of the blocks are made before the check (binding a block to a Ref allocates nothing,
    // but the test should measure only the kernels).
    const Eigen::Ref<Matrix<S>> out = call.out(), dq = call.dq();
    const Eigen::Ref<const Matrix<S>> q = call.q();
    alloc_counter::eigen_assert_failures = 0;
    Eigen::internal::set_is_malloc_allowed(false);
    strata::attention_forward(out, call.lse, q, sources, sh.B, sh.q_pos);
    strata::attention_backward(dq, call.dout, q, out, call.lse, sources, sh.B, sh.q_pos);
    strata::attention_source_mass(mass, q, call.lse, sources, sh.B, sh.q_pos);
    Eigen::internal::set_is_malloc_allowed(true);
    EXPECT_EQ(alloc_counter::eigen_assert_failures.load(), 0);
    EXPECT_TRUE(call.out().allFinite());
  }
  // the single-source overloads
  const Index B = 2, T = 100, NH = 2, C = NH * 256;
  Rng rng(62);
  Matrix<S> qkv = random_matrix<S>(B * T, 3 * C, rng), dqkv = Matrix<S>::Zero(B * T, 3 * C);
  Matrix<S> out(B * T, C), lse(B * T, NH), dout = random_matrix<S>(B * T, C, rng);
  const Eigen::Ref<const Matrix<S>> q = qkv.leftCols(C), k = qkv.middleCols(C, C),
                                    v = qkv.rightCols(C);
  const Eigen::Ref<Matrix<S>> dq = dqkv.leftCols(C), dk = dqkv.middleCols(C, C),
                              dv = dqkv.rightCols(C);
  alloc_counter::eigen_assert_failures = 0;
  Eigen::internal::set_is_malloc_allowed(false);
  strata::attention_forward<S>(out, lse, q, k, v, NH, B);
  strata::attention_backward<S>(dq, dk, dv, dout, q, k, v, out, lse, NH, B);
  Eigen::internal::set_is_malloc_allowed(true);
  EXPECT_EQ(alloc_counter::eigen_assert_failures.load(), 0);
}

}  // namespace
