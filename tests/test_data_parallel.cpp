// Tests for the pieces of data-parallel training that need no MPI: the model's gradient-ready hook
// (ranges that are final when reported, disjoint, covering the arena) and the batch loader's shards
// (disjoint rows of the one global batch, one position for all ranks). The MPI runs themselves are
// in tests/mpi/ (built with STRATA_USE_MPI=ON).
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "model_helpers.hpp"
#include "strata/strata.hpp"

namespace {

using strata::AttentionPlan;
using strata::BatchLoader;
using strata::GPT;
using strata::Index;
using strata::ModelConfig;
using strata::Token;
using strata::TokenMatrix;

ModelConfig small_config(AttentionPlan plan) {
  ModelConfig cfg;
  cfg.vocab_size = 40;
  cfg.context_length = 8;
  cfg.n_layer = 4;
  cfg.n_head = 2;
  cfg.n_embd = 16;
  cfg.attention = std::move(plan);
  return cfg;
}

TokenMatrix random_tokens(Index B, Index T, Index V, std::uint64_t seed) {
  strata::Rng rng(seed);
  TokenMatrix m(B, T);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = Token(rng.below(std::uint64_t(V)));
  return m;
}

struct Reported {
  Index begin, end;
  std::vector<float> values;  // the gradients of [begin, end) when the hook ran
};

class GradientHook : public ::testing::TestWithParam<int> {};

// Each reported range must already hold its final gradient: a communicator sends it as soon as it
// is reported, while the backward pass goes on with the other ranges.
TEST_P(GradientHook, RangesAreFinalDisjointAndCoverTheArena) {
  const AttentionPlan plans[] = {AttentionPlan::standard(), AttentionPlan::skip_layer(2, 1),
                                 AttentionPlan::shortcut({}, 0, true),
                                 AttentionPlan::dense_shortcut()};
  GPT<float> model(small_config(plans[GetParam()]));
  const Index L = model.config().n_layer, total = model.num_parameters();
  // The top range starts at the lowest block that reads a feature map (block 1 in a dense
  // shortcut model: its maps follow the blocks in the arena and are final only after it).
  Index top = L - 1;
  for (Index b = 0; b < L - 1; ++b)
    if (model.layout().contains("transformer.h." + std::to_string(b)
                                + ".shortcut.embed.ln.weight")) {
      top = b;
      break;
    }
  strata::testing::randomize(model, 5);
  std::vector<Reported> reported;
  model.set_gradient_ready_hook([&](Index begin, Index end) {
    const float* g = model.gradients().data();
    reported.push_back({begin, end, std::vector<float>(g + begin, g + end)});
  });
  const TokenMatrix x = random_tokens(3, 8, 40, 1), y = random_tokens(3, 8, 40, 2);
  model.forward_backward(x, y);

  ASSERT_EQ(Index(reported.size()), top + 2);
  // Final block (with ln_f and features) first, then the earlier blocks, the embeddings last: the
  // ranges tile the arena from its end down to 0.
  Index expected_end = total;
  for (const Reported& r : reported) {
    EXPECT_EQ(r.end, expected_end);
    EXPECT_LT(r.begin, r.end);
    expected_end = r.begin;
  }
  EXPECT_EQ(expected_end, 0);
  EXPECT_EQ(reported.back().end, model.layout().at("transformer.h.0.ln_1.weight").offset);
  EXPECT_EQ(reported.front().begin,
            model.layout().at("transformer.h." + std::to_string(top) + ".ln_1.weight").offset);
  // Nothing changed after it was reported, and the gradients are not all zero.
  const float* g = model.gradients().data();
  for (const Reported& r : reported) {
    bool nonzero = false;
    for (Index i = r.begin; i < r.end; ++i) {
      ASSERT_EQ(g[i], r.values[size_t(i - r.begin)])
          << "element " << i << " changed after its range [" << r.begin << ", " << r.end
          << ") was reported";
      nonzero = nonzero || g[i] != 0;
    }
    EXPECT_TRUE(nonzero) << "range [" << r.begin << ", " << r.end << ")";
  }
  // Removing the hook stops the calls.
  model.set_gradient_ready_hook({});
  model.forward_backward(x, y);
  EXPECT_EQ(Index(reported.size()), top + 2);
}

std::string plan_name(const ::testing::TestParamInfo<int>& info) {
  const char* names[] = {"standard", "skip_layer", "shortcut", "dense_shortcut"};
  return names[info.param];
}
INSTANTIATE_TEST_SUITE_P(Plans, GradientHook, ::testing::Values(0, 1, 2, 3), plan_name);

std::vector<Token> corpus(Index n) {
  std::vector<Token> t(size_t(n), 0);
  for (Index i = 0; i < n; ++i) t[size_t(i)] = Token(i % 251);
  return t;
}

TEST(ShardedLoader, ShardsAreTheRowsOfTheGlobalBatchInRankOrder) {
  const std::vector<Token> tokens = corpus(5000);
  const Index B = 6, T = 5, world = 3;
  BatchLoader whole(tokens, B, T, 42);
  std::vector<BatchLoader> shards;
  for (Index r = 0; r < world; ++r) {
    shards.emplace_back(tokens, B, T, 42);
    shards.back().set_shard(r, world);
    EXPECT_EQ(shards.back().rows(), B / world);
  }
  EXPECT_EQ(whole.rows(), B);
  TokenMatrix x, y, xs, ys;
  for (int step = 0; step < 4; ++step) {
    whole.next(x, y);
    for (Index r = 0; r < world; ++r) {
      shards[size_t(r)].next(xs, ys);
      ASSERT_EQ(xs.rows(), B / world);
      ASSERT_EQ(xs.cols(), T);
      EXPECT_TRUE(xs == x.middleRows(r * (B / world), B / world))
          << "step " << step << " rank " << r;
      EXPECT_TRUE(ys == y.middleRows(r * (B / world), B / world))
          << "step " << step << " rank " << r;
      // Every shard is at the position of the unsharded loader (what a checkpoint saves).
      EXPECT_EQ(shards[size_t(r)].rng_state(), whole.rng_state());
      EXPECT_EQ(shards[size_t(r)].batches_drawn(), whole.batches_drawn());
    }
  }
}

TEST(ShardedLoader, RejectsABatchThatDoesNotSplit) {
  const std::vector<Token> tokens = corpus(100);
  BatchLoader loader(tokens, 6, 5, 1);
  strata::testing::expect_error(
      [&] { loader.set_shard(0, 4); },
      "BatchLoader: batch 6 is not divisible by 4 ranks (every rank takes "
      "batch / ranks sequences)");
  strata::testing::expect_error([&] { loader.set_shard(2, 2); },
                                "BatchLoader: rank 2 of 2 ranks, expected 0 <= rank < ranks");
}

}  // namespace
