// tests/test_model.cpp: the GPT model with the standard plan (SPEC.md §1, §2.1) — forward and loss
// against the naive reference (tests/reference/model_reference.hpp), finite-difference gradients of
// every parameter tensor, causality, KV-cache decoding, determinism, memory, error messages, and
// generation.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include <strata/model/config.hpp>
#include <strata/model/gpt.hpp>
#include <strata/model/sampling.hpp>

#include "gradcheck.hpp"
#include "model_helpers.hpp"
#include "reference/model_reference.hpp"

namespace {

using strata::GPT;
using strata::Index;
using strata::Matrix;
using strata::ModelConfig;
using strata::Rng;
using strata::Token;
using strata::TokenMatrix;
using strata::testing::random_tokens;
using strata::testing::rel_max_diff;

// ------------------------------------------------------------------------------------------------
// helpers

struct Sizes {
  Index L, NH, C, V, ctx, B, T;
};

std::string describe(const Sizes& s) {
  return "L=" + std::to_string(s.L) + " NH=" + std::to_string(s.NH) + " C=" + std::to_string(s.C)
       + " V=" + std::to_string(s.V) + " ctx=" + std::to_string(s.ctx) + " B=" + std::to_string(s.B)
       + " T=" + std::to_string(s.T);
}

ModelConfig make_config(const Sizes& s, std::uint64_t seed = 7) {
  ModelConfig cfg;
  cfg.n_layer = s.L;
  cfg.n_head = s.NH;
  cfg.n_embd = s.C;
  cfg.vocab_size = s.V;
  cfg.context_length = s.ctx;
  cfg.seed = seed;
  return cfg;
}

using strata::testing::bit_equal;
using strata::testing::expect_error;
using strata::testing::randomize;
using strata::testing::tolerance;

/// Checks forward() logits and loss() against the double reference on the same parameters.
template <typename S>
void expect_matches_reference(GPT<S>& model, const TokenMatrix& tokens, const TokenMatrix& targets,
                              double tol) {
  const strata::reference::ModelOutput ref =
      strata::reference::model_forward(model, tokens, &targets);
  const Matrix<S> logits = model.forward(tokens);
  EXPECT_LT(rel_max_diff(logits, ref.logits), tol);
  const double loss = double(model.loss(tokens, targets));
  EXPECT_LT(std::abs(loss - ref.loss) / std::max(1.0, std::abs(ref.loss)), tol)
      << "loss " << loss << " vs reference " << ref.loss;
}

/// The index of the largest entry of a row, lowest index on ties (the greedy sampler's rule).
template <typename Row>
Token argmax(const Row& row) {
  Index best = 0;
  for (Index i = 1; i < row.size(); ++i)
    if (row(i) > row(best)) best = i;
  return Token(best);
}

TokenMatrix as_row(const std::vector<Token>& seq) {
  TokenMatrix m(1, Index(seq.size()));
  for (size_t i = 0; i < seq.size(); ++i) m(0, Index(i)) = seq[i];
  return m;
}

template <typename S>
class ModelTyped : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ModelTyped, Scalars, ::testing::internal::DefaultNameGenerator);

// ------------------------------------------------------------------------------------------------
// forward and loss against the naive reference

// Sizes: T = 1, one head, B = 1..3, L = 1..3, T at, below and above the attention tile (64) and not
// a multiple of it (70 in a context of 80), a context longer than T.
const std::vector<Sizes> kReferenceSizes = {
    {1, 1, 8, 11, 8, 1, 1},   {1, 2, 8, 11, 8, 2, 5},    {2, 1, 12, 7, 16, 3, 16},
    {2, 2, 8, 11, 8, 2, 5},   {3, 4, 16, 13, 80, 1, 70}, {3, 2, 8, 5, 4, 3, 1},
    {2, 4, 16, 9, 66, 2, 65}, {1, 1, 4, 3, 64, 1, 64},
};

// Float: the library runs in float, the reference in double on the same (float) parameters, so
// the difference is only the library's float rounding through the whole model, measured against
// max(1, max |reference logit|). 1e-5 holds with margin: LayerNorm keeps activations of order 1,
// each sum is a few hundred terms at most, every softmax subtracts its maximum; the measured worst
// is 4e-7 for these sizes (6e-7 for L=4, C=64, T=128), so no looser float bound is needed.
TYPED_TEST(ModelTyped, ForwardMatchesReference) {
  using S = TypeParam;
  for (const Sizes& s : kReferenceSizes) {
    SCOPED_TRACE(describe(s));
    GPT<S> model(make_config(s));
    randomize(model, 100 + std::uint64_t(s.T));
    Rng rng(5);
    const TokenMatrix tokens = random_tokens(s.B, s.T, s.V, rng);
    const TokenMatrix targets = random_tokens(s.B, s.T, s.V, rng);
    expect_matches_reference(model, tokens, targets, tolerance<S>());
  }
}

TYPED_TEST(ModelTyped, ForwardMatchesReferenceWithGpt2Init) {
  using S = TypeParam;
  const Sizes s{2, 2, 16, 17, 12, 2, 9};
  GPT<S> model(make_config(s, 1337));  // the library's own initialisation, not randomize()
  Rng rng(6);
  const TokenMatrix tokens = random_tokens(s.B, s.T, s.V, rng);
  const TokenMatrix targets = random_tokens(s.B, s.T, s.V, rng);
  expect_matches_reference(model, tokens, targets, tolerance<S>());
  // With N(0, 0.02) weights the predictions are nearly uniform: loss close to log V.
  EXPECT_NEAR(double(model.loss(tokens, targets)), std::log(double(s.V)), 0.05);
}

TYPED_TEST(ModelTyped, ForwardBackwardLossEqualsLoss) {
  using S = TypeParam;
  const Sizes s{2, 2, 8, 11, 8, 2, 5};
  GPT<S> model(make_config(s));
  randomize(model, 3);
  Rng rng(8);
  const TokenMatrix tokens = random_tokens(s.B, s.T, s.V, rng);
  const TokenMatrix targets = random_tokens(s.B, s.T, s.V, rng);
  const S a = model.loss(tokens, targets);
  const S b = model.forward_backward(tokens, targets);
  EXPECT_EQ(a, b);  // same code path for the forward: bit-identical
  const Matrix<S> logits_after = model.forward(tokens);
  const strata::reference::ModelOutput ref =
      strata::reference::model_forward(model, tokens, &targets);
  EXPECT_LT(rel_max_diff(logits_after, ref.logits), tolerance<S>());
}

// ------------------------------------------------------------------------------------------------
// gradients by finite differences, every parameter tensor

TEST(ModelGradients, EveryTensorMatchesFiniteDifferences) {
  const Sizes s{2, 2, 8, 11, 8, 2, 5};
  GPT<double> model(make_config(s));
  randomize(model, 11);
  Rng rng(12);
  const TokenMatrix tokens = random_tokens(s.B, s.T, s.V, rng);
  const TokenMatrix targets = random_tokens(s.B, s.T, s.V, rng);
  model.forward_backward(tokens, targets);
  const strata::Vector<double> grad = model.gradients();
  auto loss = [&] { return model.loss(tokens, targets); };

  // Central differences, h = 2e-5 * max(1, |x|): the truncation error h^2 |f'''| / 6 and the
  // rounding error ~1e-16 |f| / h meet there (measured worst relative error ~1.5e-7, for entries
  // with gradients ~1e-4; at h = 1e-4 truncation alone reaches 1e-6). The denominator floor 1e-4
  // turns the check into an absolute one (1e-10) for entries whose true gradient is ~0, e.g. the
  // key biases (softmax is invariant to them) and position rows beyond T, where the numeric value
  // is pure rounding noise (~2e-11).
  strata::testing::GradCheckOptions options;
  options.eps = 2e-5;
  options.max_entries = 0;  // every entry: the model is small enough
  options.floor = 1e-4;
  Index checked = 0;
  for (const strata::TensorInfo& t : model.layout().tensors()) {
    options.seed = 1000 + std::uint64_t(t.offset);
    const strata::testing::GradCheckResult r =
        strata::testing::expect_gradient_close(t.name, loss, model.parameters().data() + t.offset,
                                               t.size(), grad.data() + t.offset, 1e-6, options);
    checked += r.checked;
  }
  EXPECT_EQ(model.layout().tensors().size(), size_t(2 + 12 * s.L + 2));
  EXPECT_EQ(checked, model.num_parameters());
  // the parameters were restored bit for bit: the gradient is unchanged
  model.forward_backward(tokens, targets);
  EXPECT_TRUE(model.gradients() == grad);
}

TEST(ModelGradients, PositionRowsBeyondTGetZeroGradient) {
  const Sizes s{2, 2, 8, 11, 8, 2, 5};
  GPT<double> model(make_config(s));
  randomize(model, 13);
  Rng rng(14);
  const TokenMatrix tokens = random_tokens(s.B, s.T, s.V, rng);
  const TokenMatrix targets = random_tokens(s.B, s.T, s.V, rng);
  model.forward_backward(tokens, targets);
  const auto& dwpe = model.grads().wpe;
  EXPECT_TRUE((dwpe.bottomRows(s.ctx - s.T).array() == 0).all());
  EXPECT_TRUE((dwpe.topRows(s.T).array() != 0).any());
}

// ------------------------------------------------------------------------------------------------
// causality

TYPED_TEST(ModelTyped, CausalityChangingLaterTokensLeavesEarlierLogitsBitIdentical) {
  using S = TypeParam;
  for (const Sizes& s : {Sizes{2, 2, 8, 11, 16, 2, 12}, Sizes{2, 4, 16, 13, 80, 2, 70}}) {
    SCOPED_TRACE(describe(s));
    GPT<S> model(make_config(s));
    randomize(model, 21);
    Rng rng(22);
    const TokenMatrix tokens = random_tokens(s.B, s.T, s.V, rng);
    const Matrix<S> base = model.forward(tokens);
    for (Index t : {Index(0), Index(3), s.T / 2, s.T - 2}) {
      TokenMatrix changed = tokens;
      for (Index b = 0; b < s.B; ++b)
        for (Index u = t + 1; u < s.T; ++u) changed(b, u) = Token((tokens(b, u) + 1 + u) % s.V);
      const Matrix<S> logits = model.forward(changed);
      for (Index b = 0; b < s.B; ++b) {
        const Index rows = t + 1;
        EXPECT_TRUE(std::memcmp(logits.data() + b * s.T * s.V, base.data() + b * s.T * s.V,
                                sizeof(S) * size_t(rows * s.V))
                    == 0)
            << "batch " << b << ", positions <= " << t;
        EXPECT_FALSE(logits.row(b * s.T + t + 1) == base.row(b * s.T + t + 1))
            << "the change at position " << t + 1 << " had no effect";
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// KV cache

template <typename S>
void expect_cached_equals_full(GPT<S>& model, const TokenMatrix& tokens,
                               const std::vector<Index>& chunks) {
  const Index B = tokens.rows(), T = tokens.cols(), V = model.config().vocab_size;
  const Matrix<S> full = model.forward(tokens);
  strata::KVCache<S> cache = model.make_cache(B);
  Index pos = 0;
  for (Index chunk : chunks) {
    const Matrix<S>& logits = model.forward_cached(tokens.middleCols(pos, chunk), cache);
    ASSERT_EQ(logits.rows(), B * chunk);
    ASSERT_EQ(logits.cols(), V);
    for (Index b = 0; b < B; ++b) {
      const Matrix<S> want = full.middleRows(b * T + pos, chunk);
      const Matrix<S> got = logits.middleRows(b * chunk, chunk);
      EXPECT_LT(rel_max_diff(got, want), tolerance<S>())
          << "batch " << b << ", positions " << pos << ".." << pos + chunk - 1;
    }
    pos += chunk;
    EXPECT_EQ(cache.length(), pos);
  }
  ASSERT_EQ(pos, T);
}

TYPED_TEST(ModelTyped, KVCacheDecodingEqualsFullForward) {
  using S = TypeParam;
  for (const Sizes& s : {Sizes{2, 2, 8, 11, 12, 2, 9}, Sizes{3, 1, 8, 11, 12, 1, 12},
                         Sizes{1, 4, 16, 7, 80, 2, 70}}) {
    SCOPED_TRACE(describe(s));
    GPT<S> model(make_config(s));
    randomize(model, 31);
    Rng rng(32);
    const TokenMatrix tokens = random_tokens(s.B, s.T, s.V, rng);
    {
      SCOPED_TRACE("one token at a time");
      expect_cached_equals_full(model, tokens, std::vector<Index>(size_t(s.T), 1));
    }
    {
      SCOPED_TRACE("prefill 3, then one at a time");
      std::vector<Index> chunks{3};
      chunks.resize(size_t(s.T - 2), 1);
      expect_cached_equals_full(model, tokens, chunks);
    }
    {
      SCOPED_TRACE("uneven chunks");
      std::vector<Index> chunks;
      for (Index left = s.T, c = 2; left > 0; left -= chunks.back(), c = c % 5 + 1)
        chunks.push_back(std::min(c, left));
      expect_cached_equals_full(model, tokens, chunks);
    }
  }
}

TYPED_TEST(ModelTyped, KVCacheClearRestartsAtPositionZero) {
  using S = TypeParam;
  const Sizes s{2, 2, 8, 11, 8, 1, 6};
  GPT<S> model(make_config(s));
  randomize(model, 33);
  Rng rng(34);
  const TokenMatrix a = random_tokens(1, 6, s.V, rng), b = random_tokens(1, 4, s.V, rng);
  strata::KVCache<S> cache = model.make_cache(1);
  EXPECT_EQ(cache.batch(), 1);
  EXPECT_EQ(cache.capacity(), s.ctx);
  EXPECT_EQ(cache.length(), 0);
  EXPECT_GT(cache.bytes(), 0);
  model.forward_cached(a, cache);
  cache.clear();
  EXPECT_EQ(cache.length(), 0);
  const Matrix<S> got = model.forward_cached(b, cache);
  const Matrix<S> want = model.forward(b);
  EXPECT_LT(rel_max_diff(got, want), tolerance<S>());
}

TEST(ModelKVCache, Errors) {
  const Sizes s{2, 2, 8, 11, 8, 2, 8};
  GPT<float> model(make_config(s));
  Rng rng(35);
  strata::KVCache<float> cache = model.make_cache(1);
  model.forward_cached(random_tokens(1, 8, s.V, rng), cache);
  expect_error([&] { model.forward_cached(random_tokens(1, 1, s.V, rng), cache); },
               "GPT::forward_cached: the cache holds 8 of 8 positions; 1 more tokens do not fit "
               "(clear the cache or start a shorter window)");
  cache.clear();
  model.forward_cached(random_tokens(1, 5, s.V, rng), cache);
  expect_error([&] { model.forward_cached(random_tokens(1, 4, s.V, rng), cache); },
               "GPT::forward_cached: the cache holds 5 of 8 positions; 4 more tokens do not fit "
               "(clear the cache or start a shorter window)");
  EXPECT_EQ(cache.length(), 5);  // a refused call changes nothing
  strata::KVCache<float> cache2 = model.make_cache(2);
  expect_error([&] { model.forward_cached(random_tokens(1, 2, s.V, rng), cache2); },
               "GPT::forward_cached: tokens have 1 rows, expected 2 (the cache's batch)");
  expect_error([&] { model.forward_cached(random_tokens(3, 2, s.V, rng), cache2); },
               "GPT::forward_cached: tokens have 3 rows, expected 2 (the cache's batch)");
  GPT<float> other(make_config({3, 2, 8, 11, 8, 1, 1}));
  strata::KVCache<float> foreign = other.make_cache(1);
  expect_error([&] { model.forward_cached(random_tokens(1, 1, s.V, rng), foreign); },
               "GPT::forward_cached: the cache was not made by a model of this configuration");
  expect_error([&] { model.make_cache(0); }, "GPT::make_cache: batch 0, expected >= 1");
  expect_error([&] { model.make_cache(1, 9); },
               "GPT::make_cache: capacity 9, expected 0 (the context length) to 8");

  // A smaller cache (what generate() makes for a short continuation) holds just that many
  // positions, decodes the same logits, and refuses the position after its last.
  strata::KVCache<float> small = model.make_cache(1, 3);
  EXPECT_EQ(small.capacity(), 3);
  EXPECT_EQ(small.bytes() * 8, model.make_cache(1).bytes() * 3);
  const strata::TokenMatrix three = random_tokens(1, 3, s.V, rng);
  cache.clear();
  const Matrix<float> full = model.forward_cached(three, cache);
  EXPECT_EQ(model.forward_cached(three, small), full);
  expect_error([&] { model.forward_cached(random_tokens(1, 1, s.V, rng), small); },
               "GPT::forward_cached: the cache holds 3 of 3 positions; 1 more tokens do not fit "
               "(clear the cache or start a shorter window)");
}

// ------------------------------------------------------------------------------------------------
// determinism

TYPED_TEST(ModelTyped, SameSeedSameParametersAndGradients) {
  using S = TypeParam;
  const Sizes s{2, 2, 8, 11, 8, 2, 5};
  GPT<S> a(make_config(s, 42)), b(make_config(s, 42)), c(make_config(s, 43));
  ASSERT_EQ(a.num_parameters(), b.num_parameters());
  EXPECT_TRUE(std::memcmp(a.parameters().data(), b.parameters().data(),
                          sizeof(S) * size_t(a.num_parameters()))
              == 0);
  EXPECT_FALSE(a.parameters() == c.parameters());
  // GPT-2 initialisation: LayerNorm 1/0, biases 0, weights with the documented spread
  EXPECT_TRUE((a.params().lnf_w.array() == S(1)).all());
  EXPECT_TRUE((a.params().blocks[1].qkv_b.array() == S(0)).all());
  const double sd = std::sqrt(a.params().wte.squaredNorm() / double(a.params().wte.size()));
  EXPECT_NEAR(sd, 0.02, 0.004);
  // re-initialising restores the seeded values exactly
  a.parameters().setZero();
  a.init_parameters();
  EXPECT_TRUE(a.parameters() == b.parameters());

  Rng rng(41);
  const TokenMatrix tokens = random_tokens(s.B, s.T, s.V, rng);
  const TokenMatrix targets = random_tokens(s.B, s.T, s.V, rng);
  const S la = a.forward_backward(tokens, targets);
  const strata::Vector<S> ga = a.gradients();
  const S la2 = a.forward_backward(tokens, targets);  // gradients are zeroed, not accumulated
  EXPECT_EQ(la, la2);
  EXPECT_TRUE(std::memcmp(ga.data(), a.gradients().data(), sizeof(S) * size_t(ga.size())) == 0);
  const S lb = b.forward_backward(tokens, targets);  // and equal across model instances
  EXPECT_EQ(la, lb);
  EXPECT_TRUE(std::memcmp(ga.data(), b.gradients().data(), sizeof(S) * size_t(ga.size())) == 0);
}

// ------------------------------------------------------------------------------------------------
// memory
// (No heap allocation in a training step: tests/test_cpu_caches.cpp, the one program built with
// Eigen's runtime allocation check, for every plan and under several CPUs' cache sizes.)

// The workspace grows linearly with the sequence length: no buffer is [T, T] (the attention keeps
// only its output and a log-sum-exp per query), so doubling T adds exactly what the previous
// doubling added, twice.
TEST(ModelMemory, WorkspaceIsLinearInSequenceLength) {
  std::vector<double> bytes;
  for (Index T : {64, 128, 256}) {
    GPT<float> model(make_config(Sizes{2, 4, 32, 37, 256, 2, T}));
    EXPECT_EQ(model.workspace_bytes(), 0u);
    Rng rng(61);
    model.forward_backward(random_tokens(2, T, 37, rng), random_tokens(2, T, 37, rng));
    bytes.push_back(double(model.workspace_bytes()));
    // every activation is [B T, something]: at least the logits and the residual stream
    EXPECT_GT(bytes.back(), double(2 * T * (37 + 32) * sizeof(float)));
  }
  EXPECT_EQ(bytes[2] - bytes[1], 2 * (bytes[1] - bytes[0]));
}

// ------------------------------------------------------------------------------------------------
// errors

TEST(ModelErrors, BadInputs) {
  const Sizes s{2, 2, 8, 11, 8, 2, 5};
  GPT<float> model(make_config(s));
  TokenMatrix tokens(2, 5);
  tokens << 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;
  TokenMatrix bad = tokens;
  bad(0, 2) = 11;
  expect_error([&] { model.forward(bad); },
               "GPT::forward: token 11 at [0, 2] is outside the vocabulary [0, 11)");
  bad(0, 2) = 3;
  bad(1, 4) = -1;
  expect_error([&] { model.forward_backward(bad, tokens); },
               "GPT::forward_backward: token -1 at [1, 4] is outside the vocabulary [0, 11)");
  expect_error([&] { model.forward_backward(tokens, bad); },
               "GPT::forward_backward: target -1 at [1, 4] is outside the vocabulary [0, 11)");
  expect_error([&] { model.forward(TokenMatrix::Zero(1, 9)); },
               "GPT::forward: sequence length 9 exceeds the context length 8");
  expect_error([&] { model.forward_backward(TokenMatrix::Zero(2, 9), TokenMatrix::Zero(2, 9)); },
               "GPT::forward_backward: sequence length 9 exceeds the context length 8");
  expect_error([&] { model.forward(TokenMatrix(0, 3)); },
               "GPT::forward: tokens have shape [0, 3], expected at least one row and one column");
  expect_error([&] { model.forward_backward(tokens, TokenMatrix::Zero(2, 4)); },
               "GPT::forward_backward: targets have shape [2, 4], expected [2, 5] (the shape of "
               "tokens)");
  expect_error([&] { model.loss(tokens, TokenMatrix::Zero(1, 5)); },
               "GPT::loss: targets have shape [1, 5], expected [2, 5] (the shape of tokens)");
  expect_error([&] { model.loss(tokens, TokenMatrix::Zero(5, 2)); },
               "GPT::loss: targets have shape [5, 2], expected [2, 5] (the shape of tokens)");
}

TEST(ModelErrors, BadConfigurations) {
  const Sizes s{2, 3, 10, 11, 8, 1, 1};
  expect_error([&] { GPT<float> m(make_config(s)); },
               "ModelConfig: n_embd 10 is not divisible by n_head 3");
  const std::vector<std::pair<Index ModelConfig::*, std::string>> fields = {
      {&ModelConfig::vocab_size, "vocab_size"}, {&ModelConfig::context_length, "context_length"},
      {&ModelConfig::n_layer, "n_layer"},       {&ModelConfig::n_head, "n_head"},
      {&ModelConfig::n_embd, "n_embd"},         {&ModelConfig::mlp_ratio, "mlp_ratio"},
  };
  for (const auto& [field, name] : fields) {
    ModelConfig cfg = make_config({2, 2, 8, 11, 8, 1, 1});
    cfg.*field = 0;
    expect_error([&] { GPT<double> m(cfg); }, "ModelConfig: " + name + " = 0, expected >= 1");
    cfg.*field = -3;
    expect_error([&] { cfg.validate(); }, "ModelConfig: " + name + " = -3, expected >= 1");
  }
}

// ------------------------------------------------------------------------------------------------
// generation

/// Greedy decoding by full forward passes over the growing sequence.
template <typename S>
std::vector<Token> greedy_by_full_forward(GPT<S>& model, std::vector<Token> seq, Index n) {
  std::vector<Token> out;
  for (Index i = 0; i < n; ++i) {
    const Matrix<S>& logits = model.forward(as_row(seq));
    const Token tok = argmax(logits.row(logits.rows() - 1));
    out.push_back(tok);
    seq.push_back(tok);
  }
  return out;
}

TYPED_TEST(ModelTyped, GreedyGenerationEqualsArgmaxOfForward) {
  using S = TypeParam;
  const Sizes s{2, 2, 16, 13, 16, 1, 1};
  GPT<S> model(make_config(s));
  randomize(model, 61);
  const std::vector<Token> prompt = {1, 5, 2};
  strata::Sampler greedy;
  greedy.temperature = 0;
  std::vector<Token> streamed;
  const std::vector<Token> a =
      strata::generate(model, prompt, 10, greedy, [&](Token t) { streamed.push_back(t); });
  const std::vector<Token> b = strata::generate(model, prompt, 10, greedy);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, streamed);
  EXPECT_EQ(a, greedy_by_full_forward(model, prompt, 10));
  EXPECT_TRUE(strata::generate(model, prompt, 0, greedy).empty());
  // sampling: the seed decides
  strata::Sampler warm;
  warm.temperature = 0.8;
  warm.top_k = 5;
  warm.seed = 3;
  EXPECT_EQ(strata::generate(model, prompt, 12, warm), strata::generate(model, prompt, 12, warm));
  for (Token t : strata::generate(model, prompt, 12, warm)) {
    EXPECT_GE(t, 0);
    EXPECT_LT(t, s.V);
  }
}

TYPED_TEST(ModelTyped, GenerationBeyondTheContextSlidesTheWindow) {
  using S = TypeParam;
  const Sizes s{2, 2, 8, 11, 8, 1, 1};
  GPT<S> model(make_config(s));
  randomize(model, 62);
  strata::Sampler greedy;
  greedy.temperature = 0;
  for (const std::vector<Token>& prompt :
       {std::vector<Token>{3, 1, 4}, std::vector<Token>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1}}) {
    const Index n = 30;
    const std::vector<Token> out = strata::generate(model, prompt, n, greedy);
    ASSERT_EQ(Index(out.size()), n);
    // The documented window: the cache starts with the last context-1 prompt tokens; whenever it
    // is full, it is refilled with the last context/2 tokens of the sequence. Replayed with full
    // forward passes over exactly those windows.
    const Index ctx = s.ctx, keep = std::max<Index>(1, ctx / 2);
    std::vector<Token> seq = prompt;
    std::vector<Token> window(seq.end() - std::min<Index>(Index(seq.size()), ctx - 1), seq.end());
    std::vector<Token> want;
    for (Index i = 0; i < n; ++i) {
      const Matrix<S>& logits = model.forward(as_row(window));
      const Token tok = argmax(logits.row(logits.rows() - 1));
      want.push_back(tok);
      seq.push_back(tok);
      if (Index(window.size()) >= ctx)
        window.assign(seq.end() - std::min<Index>(Index(seq.size()), keep), seq.end());
      else
        window.push_back(tok);
    }
    EXPECT_EQ(out, want);
  }
  // a context of one position still generates
  GPT<S> tiny(make_config({1, 1, 4, 5, 1, 1, 1}));
  EXPECT_EQ(strata::generate(tiny, {2}, 5, greedy).size(), 5u);
}

TEST(ModelGeneration, BadSettingsRaise) {
  GPT<float> model(make_config({1, 1, 8, 11, 8, 1, 1}));
  strata::Sampler bad;
  bad.temperature = -1;
  expect_error([&] { strata::generate(model, {1}, 3, bad); },
               "Sampler: temperature -1, expected a finite value >= 0 (0 = greedy)");
  bad.temperature = std::nan("");
  expect_error([&] { strata::generate(model, {1}, 3, bad); },
               "Sampler: temperature nan, expected a finite value >= 0 (0 = greedy)");
  bad.temperature = 1;
  bad.top_k = -2;
  expect_error([&] { strata::generate(model, {1}, 3, bad); },
               "Sampler: top_k -2, expected >= 0 (0 = all tokens)");
  expect_error([&] { strata::generate(model, {}, 3); },
               "generate: the prompt is empty; give at least one token");
  expect_error([&] { strata::generate(model, {1}, -1); }, "generate: new_tokens -1, expected >= 0");
  expect_error([&] { strata::generate(model, {11}, 3); },
               "GPT::forward_cached: token 11 at [0, 0] is outside the vocabulary [0, 11)");
}

}  // namespace
