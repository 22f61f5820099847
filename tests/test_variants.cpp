// tests/test_variants.cpp: skip-layer attention (SPEC.md §2.2, split and concat), all-layer
// shortcuts (§2.3) and cross-layer KV sharing (§2.4) through the same GPT model — plan tables
// against SPEC, forward against the naive reference, finite-difference gradients through the
// cross-layer accumulation, bit-identical special cases, zero gradients of unused K/V rows,
// causality, KV-cache decoding and error messages.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include <strata/attention/plan.hpp>
#include <strata/model/config.hpp>
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
using strata::PlanTable;
using strata::Rng;
using strata::SkipMode;
using strata::SourceKind;
using strata::SourceRef;
using strata::Token;
using strata::TokenMatrix;
using strata::testing::random_tokens;
using strata::testing::rel_max_diff;

// ------------------------------------------------------------------------------------------------
// helpers

struct Case {
  std::string name;
  Index L, NH, C, V, ctx, B, T;
  AttentionPlan plan;
};

ModelConfig make_config(const Case& c, std::uint64_t seed = 7) {
  ModelConfig cfg;
  cfg.n_layer = c.L;
  cfg.n_head = c.NH;
  cfg.n_embd = c.C;
  cfg.vocab_size = c.V;
  cfg.context_length = c.ctx;
  cfg.seed = seed;
  cfg.attention = c.plan;
  return cfg;
}

Case with_plan(Case c, const AttentionPlan& plan, const std::string& name) {
  c.plan = plan;
  c.name = name;
  return c;
}

using strata::testing::bit_equal;
using strata::testing::expect_error;
using strata::testing::randomize;
using strata::testing::tolerance;

// The base sizes of most cases: L = 4, NH = 4, C = 16 (hs = 4), B = 2, T = 5.
const Case kBase{"", 4, 4, 16, 13, 8, 2, 5, AttentionPlan::standard()};
// Several attention tiles: T = 70 in a context of 80.
const Case kLong{"", 3, 2, 8, 11, 80, 2, 70, AttentionPlan::standard()};

PlanTable custom_mixed_table() {
  // L = 4, NH = 4: heads reading other heads and several earlier layers at once.
  PlanTable t(4, std::vector<std::vector<SourceRef>>(4));
  for (int l = 0; l < 4; ++l)
    for (int h = 0; h < 4; ++h) t[l][h] = {SourceRef{SourceKind::layer, l, h}};
  t[2][0] = {SourceRef{SourceKind::layer, 0, 3}};
  t[3][1] = {SourceRef{SourceKind::layer, 3, 1}, SourceRef{SourceKind::layer, 1, 2},
             SourceRef{SourceKind::layer, 0, 0}};
  t[3][2] = {SourceRef{SourceKind::layer, 2, 2}, SourceRef{SourceKind::layer, 2, 2}};
  return t;
}

PlanTable identity_table(int L, int NH) {
  PlanTable t(static_cast<size_t>(L), std::vector<std::vector<SourceRef>>(static_cast<size_t>(NH)));
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < NH; ++h) t[size_t(l)][size_t(h)] = {SourceRef::layer(l, h)};
  return t;
}

/// L = 4, NH = 4: shortcuts into the middle of the stack. Block 1 attends over a feature map of the
/// embeddings (heads 0, 1) and of its own input h_1 (head 2); block 3 reads features of depths 1
/// and 2. Depth 1 feeds blocks 1 and 3, each through its own feature map.
PlanTable mid_shortcut_table() {
  PlanTable t = identity_table(4, 4);
  t[1][0] = {SourceRef::feature(0, 0), SourceRef::layer(1, 0)};
  t[1][1] = {SourceRef::feature(0, 1), SourceRef::layer(1, 1)};
  t[1][2] = {SourceRef::feature(1, 2), SourceRef::layer(0, 2)};
  t[3][0] = {SourceRef::feature(1, 0), SourceRef::feature(2, 0), SourceRef::layer(3, 0)};
  t[3][3] = {SourceRef::feature(1, 3)};
  return t;
}

/// L = 4, NH = 4: skip heads that read two earlier layers in one softmax.
PlanTable multi_skip_table() {
  PlanTable t = identity_table(4, 4);
  for (int h = 0; h < 2; ++h) t[3][size_t(h)] = {SourceRef::layer(0, h), SourceRef::layer(1, h)};
  t[2][0] = {SourceRef::layer(0, 0), SourceRef::layer(1, 0), SourceRef::layer(2, 0)};
  return t;
}

/// Every variant the forward, causality and cache tests run.
std::vector<Case> variant_cases() {
  using P = AttentionPlan;
  return {
      with_plan(kBase, P::skip_layer(2, 2), "sla split d=2 n=2"),
      with_plan(kBase, P::skip_layer(2, 2, SkipMode::concat), "sla concat d=2 n=2"),
      with_plan(kBase, P::skip_layer(), "sla split defaults (d=3, n=3)"),
      with_plan(kBase, P::skip_layer(std::nullopt, std::nullopt, SkipMode::concat),
                "sla concat defaults"),
      with_plan(kBase, P::skip_layer(1, 4), "sla split d=1 n=NH"),
      with_plan(kBase, P::skip_layer(1, 4, SkipMode::concat), "sla concat d=1 n=NH"),
      with_plan(kLong, P::skip_layer(1, 1), "sla split, T=70"),
      with_plan(kLong, P::skip_layer(2, 2, SkipMode::concat), "sla concat, T=70"),
      with_plan(kBase, P::shortcut(), "shortcut default depths {1,2,3}"),
      with_plan(kBase, P::shortcut({1, 3}), "shortcut depths {1,3}"),
      with_plan(kBase, P::shortcut({2}), "shortcut depths {2} (no own K/V)"),
      with_plan(kBase, P::shortcut({}, 0, true), "shortcut all depths + embeddings"),
      with_plan(kBase, P::shortcut({3, 1}, 0, true), "shortcut {1,3} + embeddings"),
      with_plan(kBase, P::shortcut({}, 24), "shortcut feature_width 24"),
      with_plan(kBase, P::shortcut({1, 2}, 8, true), "shortcut feature_width 8 + embeddings"),
      with_plan(kLong, P::shortcut({}, 0, true), "shortcut + embeddings, T=70"),
      with_plan(kBase, P::cross_layer(4, 4), "cross_layer"),
      with_plan(kBase, P::custom(custom_mixed_table()), "custom mixed table"),
      with_plan(kLong, P::cross_layer(3, 2), "cross_layer, T=70"),
      with_plan(kBase, P::dense_shortcut(), "dense_shortcut with embeddings"),
      with_plan(kBase, P::dense_shortcut(8, false), "dense_shortcut Cf=8, no embeddings"),
      with_plan(kLong, P::dense_shortcut(), "dense_shortcut, T=70"),
      with_plan(kBase, P::custom(mid_shortcut_table(), 12), "custom mid-stack shortcuts"),
      with_plan(kBase, P::custom(multi_skip_table()), "custom multi-layer skip heads"),
  };
}

template <typename S>
class VariantsTyped : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(VariantsTyped, Scalars, ::testing::internal::DefaultNameGenerator);

// ------------------------------------------------------------------------------------------------
// the plan table against SPEC.md

TEST(VariantPlans, DescribeNamesTheSettingsAndResolvesDefaults) {
  using strata::AttentionPlan;
  using strata::SkipMode;
  EXPECT_EQ(AttentionPlan::standard().describe(), "standard");
  EXPECT_EQ(AttentionPlan::standard().describe(6, 8, 256), "standard");
  const AttentionPlan skip = AttentionPlan::skip_layer();
  EXPECT_EQ(skip.describe(), "skip_layer(distance=default, heads=default, mode=split)");
  EXPECT_EQ(skip.describe(4, 4, 128), "skip_layer(distance=3, heads=3, mode=split)");
  EXPECT_EQ(AttentionPlan::skip_layer(2, std::nullopt, SkipMode::concat).describe(12, 12, 768),
            "skip_layer(distance=2, heads=9, mode=concat)");
  const AttentionPlan cut = AttentionPlan::shortcut();
  EXPECT_EQ(cut.describe(), "shortcut(depths=all, feature_width=C, embeddings=no)");
  EXPECT_EQ(cut.describe(4, 4, 128), "shortcut(depths=1,2,3, feature_width=128, embeddings=no)");
  EXPECT_EQ(AttentionPlan::shortcut({2, 1}, 64, true).describe(4, 4, 128),
            "shortcut(depths=0,1,2, feature_width=64, embeddings=yes)");
  EXPECT_EQ(AttentionPlan::shortcut({2, 1}, 64, true).describe(),
            "shortcut(depths=2,1, feature_width=64, embeddings=yes)");
}

TEST(VariantPlans, TablesFollowTheSpec) {
  for (const Case& c : variant_cases()) {
    SCOPED_TRACE(c.name);
    const GPT<float> model(make_config(c));
    EXPECT_TRUE(model.plan_table() == strata::reference::spec_table(model.config()));
  }
  // the paper's setting on GPT-2 124M: L = NH = 12, defaults d = 9, n = 9
  ModelConfig paper;
  paper.n_layer = 12;
  paper.n_head = 12;
  paper.n_embd = 48;
  paper.attention = AttentionPlan::skip_layer();
  EXPECT_EQ(paper.attention.resolved_distance(12), 9);
  EXPECT_EQ(paper.attention.resolved_skip_heads(12), 9);
  const PlanTable t = paper.attention.table(12, 12);
  EXPECT_TRUE(t == strata::reference::spec_table(paper));
  EXPECT_TRUE(t[9][8] == (std::vector<SourceRef>{SourceRef{SourceKind::layer, 0, 8}}));
  EXPECT_TRUE(t[9][9] == (std::vector<SourceRef>{SourceRef{SourceKind::layer, 9, 9}}));
  EXPECT_TRUE(t[8][0] == (std::vector<SourceRef>{SourceRef{SourceKind::layer, 8, 0}}));
  // small models: the defaults never drop below 1
  EXPECT_EQ(AttentionPlan::skip_layer().resolved_distance(1), 1);
  EXPECT_EQ(AttentionPlan::skip_layer().resolved_skip_heads(1), 1);
  // concat keeps the head's own source first, then the earlier layer's
  const PlanTable tc = AttentionPlan::skip_layer(2, 2, SkipMode::concat).table(4, 4);
  EXPECT_TRUE(tc[3][1]
              == (std::vector<SourceRef>{SourceRef{SourceKind::layer, 3, 1},
                                         SourceRef{SourceKind::layer, 1, 1}}));
  // shortcut: features of depths 0, 1, 2 and the final block's own K/V for depth 3
  const PlanTable ts = AttentionPlan::shortcut({}, 0, true).table(4, 2);
  EXPECT_TRUE(ts[3][1]
              == (std::vector<SourceRef>{
                  SourceRef{SourceKind::feature, 0, 1}, SourceRef{SourceKind::feature, 1, 1},
                  SourceRef{SourceKind::feature, 2, 1}, SourceRef{SourceKind::layer, 3, 1}}));
  EXPECT_TRUE(ts[2][0] == (std::vector<SourceRef>{SourceRef{SourceKind::layer, 2, 0}}));
}

TEST(VariantPlans, ShortcutFeatureTensorsHaveTheCheckpointNames) {
  const GPT<float> model(make_config(with_plan(kBase, AttentionPlan::shortcut({}, 24, true), "")));
  const strata::ParameterLayout& layout = model.layout();
  for (const std::string p :
       {"transformer.shortcut.embed.", "transformer.shortcut.0.", "transformer.shortcut.1."}) {
    SCOPED_TRACE(p);
    EXPECT_EQ(layout.at(p + "ln.weight").shape(), std::vector<Index>{16});
    EXPECT_EQ(layout.at(p + "ln.bias").shape(), std::vector<Index>{16});
    EXPECT_EQ(layout.at(p + "fc.weight").shape(), (std::vector<Index>{24, 16}));
    EXPECT_EQ(layout.at(p + "fc.bias").shape(), std::vector<Index>{24});
    EXPECT_EQ(layout.at(p + "proj.weight").shape(), (std::vector<Index>{16, 24}));
    EXPECT_EQ(layout.at(p + "proj.bias").shape(), std::vector<Index>{16});
  }
  // depth L-1 = 3 is the identity map: no parameters
  EXPECT_FALSE(layout.contains("transformer.shortcut.2.ln.weight"));
  // the base model's tensors come first, so adding features never changes their initial values
  const GPT<float> standard(make_config(kBase));
  EXPECT_TRUE(bit_equal(standard.parameters(), model.parameters().head(standard.num_parameters())));
}

TEST(VariantPlans, ResolvedPlanListsEveryFeatureMap) {
  using strata::FeatureMap;
  // shortcut: the final block's maps, by depth (depth L-1 is its own K/V, no map)
  const strata::ResolvedPlan sc = AttentionPlan::shortcut({}, 24, true).resolve(4, 4, 16);
  EXPECT_EQ(sc.features, (std::vector<FeatureMap>{{0, 24, 3}, {1, 24, 3}, {2, 24, 3}}));
  EXPECT_EQ(sc.label, "shortcut(depths=0,1,2,3, feature_width=24, embeddings=yes)");
  // dense shortcuts: every block l >= 1 has maps of depths 0..l-1, width C by default
  const strata::ResolvedPlan dense = AttentionPlan::dense_shortcut().resolve(4, 2, 16);
  EXPECT_EQ(dense.features,
            (std::vector<FeatureMap>{
                {0, 16, 1}, {0, 16, 2}, {1, 16, 2}, {0, 16, 3}, {1, 16, 3}, {2, 16, 3}}));
  EXPECT_EQ(dense.label, "dense_shortcut(feature_width=16, embeddings=yes)");
  EXPECT_TRUE(dense.sources[2][1]
              == (std::vector<SourceRef>{SourceRef::feature(0, 1), SourceRef::feature(1, 1),
                                         SourceRef::layer(2, 1)}));
  EXPECT_TRUE(dense.sources[0][0] == (std::vector<SourceRef>{SourceRef::layer(0, 0)}));
  EXPECT_EQ(dense.features_of_block(2), (std::vector<Index>{1, 2}));
  EXPECT_EQ(dense.features_of_depth(0), (std::vector<Index>{0, 1, 3}));
  EXPECT_EQ(dense.feature_index(3, 2), 5);
  EXPECT_EQ(dense.feature_index(1, 1), -1);
  // a custom table: one map per (block, depth) it reads; depth 1 feeds blocks 1 and 3
  const strata::ResolvedPlan mid =
      AttentionPlan::custom(mid_shortcut_table(), 12).resolve(4, 4, 16);
  EXPECT_EQ(mid.features,
            (std::vector<FeatureMap>{{0, 12, 1}, {1, 12, 1}, {1, 12, 3}, {2, 12, 3}}));
  EXPECT_EQ(mid.label, "custom");
  // standard and skip-layer plans have none
  EXPECT_TRUE(AttentionPlan::skip_layer(1, 2).resolve(4, 4, 16).features.empty());
  // the depth <-> block numbering
  EXPECT_EQ(strata::input_depth(2), 2);
  EXPECT_EQ(strata::output_depth(2), 3);
  EXPECT_EQ(strata::block_writing(3), 2);
  EXPECT_EQ(strata::block_writing(0), -1);
  EXPECT_EQ(strata::source_depth(SourceRef::layer(2, 0)), 2);
  EXPECT_EQ(strata::source_depth(SourceRef::feature(1, 0)), 1);
}

TEST(VariantPlans, FeatureMapsOfMiddleBlocksHaveTheirBlockInTheName) {
  const GPT<float> model(
      make_config(with_plan(kBase, AttentionPlan::custom(mid_shortcut_table(), 12), "")));
  const strata::ParameterLayout& layout = model.layout();
  for (const std::string p : {"transformer.h.1.shortcut.embed.", "transformer.h.1.shortcut.0.",
                              "transformer.shortcut.0.", "transformer.shortcut.1."}) {
    SCOPED_TRACE(p);
    EXPECT_EQ(layout.at(p + "fc.weight").shape(), (std::vector<Index>{12, 16}));
    EXPECT_EQ(layout.at(p + "proj.weight").shape(), (std::vector<Index>{16, 12}));
    EXPECT_EQ(layout.at(p + "ln.weight").shape(), std::vector<Index>{16});
  }
  EXPECT_EQ(model.params().features.size(), 4u);
  EXPECT_EQ(model.source_depths(1), (std::vector<Index>{0, 1}));
  EXPECT_EQ(model.source_depths(3), (std::vector<Index>{1, 2, 3}));
}

// ------------------------------------------------------------------------------------------------
// forward against the naive reference

TYPED_TEST(VariantsTyped, ForwardMatchesReference) {
  using S = TypeParam;
  for (const Case& c : variant_cases()) {
    SCOPED_TRACE(c.name);
    GPT<S> model(make_config(c));
    randomize(model, 200);
    Rng rng(201);
    const TokenMatrix tokens = random_tokens(c.B, c.T, c.V, rng);
    const TokenMatrix targets = random_tokens(c.B, c.T, c.V, rng);
    const strata::reference::ModelOutput ref =
        strata::reference::model_forward(model, tokens, &targets);
    const Matrix<S> logits = model.forward(tokens);
    EXPECT_LT(rel_max_diff(logits, ref.logits), tolerance<S>());
    const double loss = double(model.loss(tokens, targets));
    EXPECT_LT(std::abs(loss - ref.loss) / std::max(1.0, ref.loss), tolerance<S>());
  }
}

TEST(VariantReference, VariantsReallyDifferFromStandard) {
  // Guards the reference comparison against a plan that is silently ignored: every variant case
  // with a non-trivial plan changes the logits of the same parameters.
  GPT<double> standard(make_config(kBase));
  randomize(standard, 202);
  Rng rng(203);
  const TokenMatrix tokens = random_tokens(kBase.B, kBase.T, kBase.V, rng);
  const Matrix<double> base = standard.forward(tokens);
  for (const Case& c : variant_cases()) {
    if (c.L != kBase.L || c.NH != kBase.NH) continue;
    SCOPED_TRACE(c.name);
    GPT<double> model(make_config(c));
    randomize(model, 202);  // the same base values (layout order), plus random feature maps
    ASSERT_TRUE(
        bit_equal(model.parameters().head(standard.num_parameters()), standard.parameters()));
    EXPECT_GT(rel_max_diff(model.forward(tokens), base), 1e-3);
  }
}

TEST(VariantReference, ShortcutDepthMassIsADistribution) {
  for (const AttentionPlan& plan :
       {AttentionPlan::shortcut(), AttentionPlan::shortcut({}, 0, true),
        AttentionPlan::shortcut({1, 3}), AttentionPlan::dense_shortcut()}) {
    GPT<double> model(make_config(with_plan(kBase, plan, "")));
    randomize(model, 204);
    Rng rng(205);
    const TokenMatrix tokens = random_tokens(kBase.B, kBase.T, kBase.V, rng);
    const strata::reference::ModelOutput ref = strata::reference::model_forward(model, tokens);
    const auto J = plan.resolved_depths(4);
    EXPECT_EQ(ref.depths, J);
    ASSERT_EQ(ref.depth_mass.rows(), kBase.B * kBase.T);
    ASSERT_EQ(ref.depth_mass.cols(), Index(J.size()));
    for (Index r = 0; r < ref.depth_mass.rows(); ++r) {
      EXPECT_NEAR(ref.depth_mass.row(r).sum(), 1.0, 1e-12);
      EXPECT_GT(ref.depth_mass.row(r).minCoeff(), 0.0);
    }
    // The library's map: same depths in the same order, same masses, rows summing to 1.
    EXPECT_EQ(model.shortcut_depths(), J);
    const Matrix<double> mass = model.attention_mass(tokens, 3);
    EXPECT_LT(rel_max_diff(mass, ref.depth_mass), 1e-12);
    for (Index r = 0; r < mass.rows(); ++r) EXPECT_NEAR(mass.row(r).sum(), 1.0, 1e-12);
  }
}

TEST(VariantReference, AttentionMassInFloatSumsToOne) {
  GPT<float> model(make_config(with_plan(kBase, AttentionPlan::shortcut({}, 0, true), "")));
  Rng rng(206);
  const TokenMatrix tokens = random_tokens(kBase.B, kBase.T, kBase.V, rng);
  const Matrix<float> mass = model.attention_mass(tokens, 3);
  ASSERT_EQ(mass.cols(), 4);  // embeddings and depths 1, 2, 3
  for (Index r = 0; r < mass.rows(); ++r) EXPECT_NEAR(mass.row(r).sum(), 1.0f, 1e-5f);
  EXPECT_THROW(model.attention_mass(tokens, 4), strata::Error);
  try {
    GPT<float> concat(make_config(
        with_plan(kBase, AttentionPlan::skip_layer(1, 2, strata::SkipMode::concat), "")));
    concat.attention_mass(tokens, 3);
    ADD_FAILURE() << "expected strata::Error";
  } catch (const strata::Error& e) {
    EXPECT_STREQ(e.what(),
                 "GPT::attention_mass: the heads of layer 3 have different numbers of sources "
                 "(head 0 has 2, head 2 has 1)");
  }
}

// ------------------------------------------------------------------------------------------------
// gradients by finite differences through the cross-layer accumulation

/// Worst entry of one tensor.
struct FdResult {
  double max_rel_error = 0;
  Index worst = -1;
  double analytic = 0, numeric = 0;
};

/// Finite differences of fourth order (the five-point stencil, Richardson on two central
/// differences): g ~ (8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h, truncation error
/// h^4 |f^(5)| / 30. tests/gradcheck.hpp has only the second-order central difference, whose
/// truncation error h^2 |f'''| / 6 reaches ~2e-6 relative on a few weights of these four-layer
/// models before rounding noise allows a smaller h. The five-point stencil with
/// h = 2e-4 * max(1, |x|) measures a worst relative error of ~3e-8 over every entry of the models
/// below. Relative error |g - n| / max(floor, |g| + |n|) as in gradcheck.hpp; the floor 1e-4 makes
/// it absolute (1e-10) for true gradients ~0 (key biases, rows of unused positions).
FdResult check_gradient_5pt(const std::function<double()>& loss, double* x, Index n,
                            const double* g, double h_rel, double floor = 1e-4) {
  FdResult r;
  for (Index j = 0; j < n; ++j) {
    const double x0 = x[j], h = h_rel * std::max(1.0, std::abs(x0));
    auto f = [&](double k) {
      x[j] = x0 + k * h;
      return loss();
    };
    const double numeric = (8.0 * (f(1) - f(-1)) - (f(2) - f(-2))) / (12.0 * h);
    x[j] = x0;
    double err = std::abs(g[j] - numeric) / std::max(floor, std::abs(g[j]) + std::abs(numeric));
    if (std::isnan(err)) err = std::numeric_limits<double>::infinity();
    if (r.worst < 0 || err > r.max_rel_error) r = {err, j, g[j], numeric};
  }
  return r;
}

/// Every entry of every tensor: loss() against forward_backward(), relative error < 1e-6.
void expect_model_gradients(GPT<double>& model, const TokenMatrix& tokens,
                            const TokenMatrix& targets) {
  model.forward_backward(tokens, targets);
  const strata::Vector<double> grad = model.gradients();
  auto loss = [&] { return model.loss(tokens, targets); };
  const double h_rel = 2e-4;
  for (const strata::TensorInfo& t : model.layout().tensors()) {
    const FdResult r = check_gradient_5pt(loss, model.parameters().data() + t.offset, t.size(),
                                          grad.data() + t.offset, h_rel);
    EXPECT_LT(r.max_rel_error, 1e-6) << t.name << ": entry " << r.worst << " of " << t.size()
                                     << ", analytic " << r.analytic << ", numeric " << r.numeric;
  }
  // the parameters were restored bit for bit
  model.forward_backward(tokens, targets);
  EXPECT_TRUE(model.gradients() == grad);
}

// L = 4, NH = 4, C = 8 (hs = 2), T = 5, B = 2; every shortcut model has |J| = 3 depths. One test
// per plan (ctest runs them in parallel: together they are the slowest test of the suite).
std::vector<Case> finite_difference_cases() {
  const Case small{"", 4, 4, 8, 11, 6, 2, 5, AttentionPlan::standard()};
  using P = AttentionPlan;
  return {
      with_plan(small, P::skip_layer(2, 2), "sla_split_d2_n2"),
      with_plan(small, P::skip_layer(2, 2, SkipMode::concat), "sla_concat_d2_n2"),
      with_plan(small, P::skip_layer(1, 4, SkipMode::concat), "sla_concat_d1_nNH"),
      with_plan(small, P::shortcut(), "shortcut_J123"),
      with_plan(small, P::shortcut({1, 2}, 12, true), "shortcut_J012_Cf12_no_own_kv"),
      with_plan(small, P::custom(custom_mixed_table()), "custom_mixed_table"),
      with_plan(small, P::dense_shortcut(), "dense_shortcut"),
      with_plan(small, P::custom(mid_shortcut_table(), 6), "custom_mid_stack_shortcuts_Cf6"),
      with_plan(small, P::custom(multi_skip_table()), "custom_multi_layer_skip_heads"),
  };
}

class VariantFiniteDifferences : public ::testing::TestWithParam<std::size_t> {};

TEST_P(VariantFiniteDifferences, MatchAnalyticGradients) {
  const Case c = finite_difference_cases().at(GetParam());
  GPT<double> model(make_config(c));
  randomize(model, 300);
  Rng rng(301);
  const TokenMatrix tokens = random_tokens(c.B, c.T, c.V, rng);
  const TokenMatrix targets = random_tokens(c.B, c.T, c.V, rng);
  expect_model_gradients(model, tokens, targets);
}

INSTANTIATE_TEST_SUITE_P(Plans, VariantFiniteDifferences,
                         ::testing::Range(std::size_t{0}, finite_difference_cases().size()),
                         [](const ::testing::TestParamInfo<std::size_t>& info) {
                           return finite_difference_cases().at(info.param).name;
                         });

// ------------------------------------------------------------------------------------------------
// special cases that must equal the standard model bit for bit

template <typename S>
void expect_bit_identical_to_standard(const Case& c) {
  SCOPED_TRACE(c.name);
  GPT<S> standard(make_config(with_plan(c, AttentionPlan::standard(), "standard")));
  GPT<S> variant(make_config(c));
  ASSERT_EQ(variant.num_parameters(), standard.num_parameters());
  ASSERT_TRUE(bit_equal(variant.parameters(), standard.parameters()));  // same seed, same values
  randomize(standard, 400);
  randomize(variant, 400);
  Rng rng(401);
  const TokenMatrix tokens = random_tokens(c.B, c.T, c.V, rng);
  const TokenMatrix targets = random_tokens(c.B, c.T, c.V, rng);
  EXPECT_TRUE(bit_equal(variant.forward(tokens), standard.forward(tokens)));
  const S lv = variant.forward_backward(tokens, targets);
  const S ls = standard.forward_backward(tokens, targets);
  EXPECT_TRUE(std::memcmp(&lv, &ls, sizeof(S)) == 0);
  EXPECT_TRUE(bit_equal(variant.gradients(), standard.gradients()));
  // and decoding
  strata::KVCache<S> cv = variant.make_cache(c.B), cs = standard.make_cache(c.B);
  EXPECT_TRUE(bit_equal(variant.forward_cached(tokens.leftCols(3), cv),
                        standard.forward_cached(tokens.leftCols(3), cs)));
  EXPECT_TRUE(bit_equal(variant.forward_cached(tokens.middleCols(3, 1), cv),
                        standard.forward_cached(tokens.middleCols(3, 1), cs)));
}

TYPED_TEST(VariantsTyped, DegenerateVariantsEqualStandardBitForBit) {
  using S = TypeParam;
  using P = AttentionPlan;
  for (const Case& base : {kBase, kLong}) {
    const int L = int(base.L);
    expect_bit_identical_to_standard<S>(with_plan(base, P::skip_layer(2, 0), "sla split n=0"));
    expect_bit_identical_to_standard<S>(
        with_plan(base, P::skip_layer(1, 0, SkipMode::concat), "sla concat n=0"));
    expect_bit_identical_to_standard<S>(with_plan(base, P::skip_layer(L, 2), "sla split d=L"));
    expect_bit_identical_to_standard<S>(
        with_plan(base, P::skip_layer(L + 3, 2, SkipMode::concat), "sla concat d>L"));
    expect_bit_identical_to_standard<S>(with_plan(base, P::shortcut({L - 1}), "shortcut J={L-1}"));
  }
  // two layers: the default depths are {1} = {L-1}
  expect_bit_identical_to_standard<S>(
      with_plan(Case{"", 2, 2, 8, 11, 8, 2, 5, P::standard()}, P::shortcut(), "shortcut L=2"));
  // dense shortcuts without the embeddings: block 1 has no earlier depth to read; one block none
  expect_bit_identical_to_standard<S>(with_plan(Case{"", 2, 2, 8, 11, 8, 2, 5, P::standard()},
                                                P::dense_shortcut(0, false), "dense L=2"));
  expect_bit_identical_to_standard<S>(
      with_plan(Case{"", 1, 2, 8, 11, 8, 2, 5, P::standard()}, P::dense_shortcut(), "dense L=1"));
}

// ------------------------------------------------------------------------------------------------
// split mode: the K/V rows of skip heads of skip layers are never used

TEST(VariantGradients, SplitSkipHeadsGetExactlyZeroKeyValueGradient) {
  for (SkipMode mode : {SkipMode::split, SkipMode::concat}) {
    const Case c = with_plan(kBase, AttentionPlan::skip_layer(2, 3, mode), "");
    SCOPED_TRACE(strata::to_string(mode));
    GPT<double> model(make_config(c));
    randomize(model, 500);
    Rng rng(501);
    const TokenMatrix tokens = random_tokens(c.B, c.T, c.V, rng);
    model.forward_backward(tokens, random_tokens(c.B, c.T, c.V, rng));
    const Index C = c.C, hs = c.C / c.NH;
    for (Index l = 0; l < c.L; ++l)
      for (Index h = 0; h < c.NH; ++h) {
        const auto& g = model.grads().blocks[size_t(l)];
        const bool unused = mode == SkipMode::split && l >= 2 && h < 3;
        for (Index part : {C, 2 * C}) {  // key rows, value rows
          const Index r0 = part + h * hs;
          const bool zero = (g.qkv_w.middleRows(r0, hs).array() == 0).all()
                         && (g.qkv_b.segment(r0, hs).array() == 0).all();
          EXPECT_EQ(zero, unused) << "block " << l << " head " << h
                                  << (part == C ? " keys" : " values");
        }
        // queries are always used
        EXPECT_FALSE((g.qkv_w.middleRows(h * hs, hs).array() == 0).all());
      }
  }
}

// ------------------------------------------------------------------------------------------------
// causality and KV-cache decoding

TYPED_TEST(VariantsTyped, Causality) {
  using S = TypeParam;
  for (const Case& c : variant_cases()) {
    SCOPED_TRACE(c.name);
    GPT<S> model(make_config(c));
    randomize(model, 600);
    Rng rng(601);
    const Index T = c.T == 5 ? 8 : c.T;  // a few more positions than the reference cases
    const TokenMatrix tokens = random_tokens(c.B, T, c.V, rng);
    const Matrix<S> base = model.forward(tokens);
    for (Index t : {Index(0), Index(2), T - 2}) {
      TokenMatrix changed = tokens;
      for (Index b = 0; b < c.B; ++b)
        for (Index u = t + 1; u < T; ++u) changed(b, u) = Token((tokens(b, u) + 1 + u) % c.V);
      const Matrix<S> logits = model.forward(changed);
      for (Index b = 0; b < c.B; ++b) {
        EXPECT_TRUE(bit_equal(logits.middleRows(b * T, t + 1), base.middleRows(b * T, t + 1)))
            << "batch " << b << ", positions <= " << t;
        EXPECT_FALSE(logits.row(b * T + t + 1) == base.row(b * T + t + 1));
      }
    }
  }
}

template <typename S>
void expect_cached_equals_full(GPT<S>& model, const TokenMatrix& tokens,
                               const std::vector<Index>& chunks) {
  const Index B = tokens.rows(), T = tokens.cols();
  const Matrix<S> full = model.forward(tokens);
  strata::KVCache<S> cache = model.make_cache(B);
  Index pos = 0;
  for (Index chunk : chunks) {
    const Matrix<S>& logits = model.forward_cached(tokens.middleCols(pos, chunk), cache);
    for (Index b = 0; b < B; ++b)
      EXPECT_LT(
          rel_max_diff(logits.middleRows(b * chunk, chunk), full.middleRows(b * T + pos, chunk)),
          tolerance<S>())
          << "batch " << b << ", positions " << pos << ".." << pos + chunk - 1;
    pos += chunk;
  }
  EXPECT_EQ(pos, T);
}

TYPED_TEST(VariantsTyped, KVCacheDecodingEqualsFullForward) {
  using S = TypeParam;
  for (const Case& c : variant_cases()) {
    SCOPED_TRACE(c.name);
    GPT<S> model(make_config(c));
    randomize(model, 700);
    Rng rng(701);
    const Index T = c.T == 5 ? c.ctx : c.T;  // fill the whole context of the small cases
    const TokenMatrix tokens = random_tokens(c.B, T, c.V, rng);
    expect_cached_equals_full(model, tokens, std::vector<Index>(size_t(T), 1));
    std::vector<Index> chunks{3};
    chunks.resize(size_t(T - 2), 1);
    expect_cached_equals_full(model, tokens, chunks);
  }
}

TEST(VariantKVCache, ShortcutCachesEveryFeatureDepth) {
  // SPEC §2.3: the final layer caches K_j, V_j for every j in J; SLA needs no extra cache.
  const auto bytes = [](const AttentionPlan& plan) {
    const GPT<float> model(make_config(with_plan(kBase, plan, "")));
    return model.make_cache(2).bytes();
  };
  const Index per_layer = 2 * kBase.ctx * 2 * kBase.C * Index(sizeof(float));
  EXPECT_EQ(bytes(AttentionPlan::standard()), kBase.L * per_layer);
  EXPECT_EQ(bytes(AttentionPlan::skip_layer(2, 2)), kBase.L * per_layer);
  EXPECT_EQ(bytes(AttentionPlan::skip_layer(2, 2, SkipMode::concat)), kBase.L * per_layer);
  EXPECT_EQ(bytes(AttentionPlan::shortcut()), (kBase.L + 2) * per_layer);
  EXPECT_EQ(bytes(AttentionPlan::shortcut({}, 0, true)), (kBase.L + 3) * per_layer);
  EXPECT_EQ(bytes(AttentionPlan::shortcut({3})), kBase.L * per_layer);
  // one cache per feature map: blocks 1, 2, 3 read 1, 2, 3 earlier depths
  EXPECT_EQ(bytes(AttentionPlan::dense_shortcut()), (kBase.L + 6) * per_layer);
  EXPECT_EQ(bytes(AttentionPlan::custom(mid_shortcut_table())), (kBase.L + 4) * per_layer);
}

// ------------------------------------------------------------------------------------------------
// invalid settings

TEST(VariantErrors, Messages) {
  using P = AttentionPlan;
  expect_error([] { P::skip_layer(0, 2); }, "skip_layer: distance 0 must be >= 1");
  expect_error([] { P::skip_layer(-2); }, "skip_layer: distance -2 must be >= 1");
  expect_error([] { P::skip_layer(2, -1); }, "skip_layer: heads -1 must be >= 0");
  expect_error([] { GPT<float> m(make_config(with_plan(kBase, P::skip_layer(2, 5), ""))); },
               "skip_layer: heads 5 exceeds n_head 4");
  expect_error([] { strata::parse_skip_mode("bogus"); },
               "skip-layer mode 'bogus' is not one of: split, concat");
  expect_error([] { strata::parse_skip_mode("Split"); },
               "skip-layer mode 'Split' is not one of: split, concat");
  EXPECT_EQ(strata::parse_skip_mode("split"), SkipMode::split);
  EXPECT_EQ(strata::parse_skip_mode("concat"), SkipMode::concat);
  EXPECT_EQ(strata::parse_skip_mode(strata::to_string(SkipMode::concat)), SkipMode::concat);

  const std::string range =
      " is out of range, expected 1..3 (depth 0, the embeddings, is "
      "selected with include_embeddings)";
  expect_error(
      [] {
        GPT<float> m(make_config(with_plan(kBase, P::shortcut({1, 4}), "")));
      },
      "shortcut: depth 4" + range);
  expect_error(
      [] {
        GPT<float> m(make_config(with_plan(kBase, P::shortcut({0, 2}), "")));
      },
      "shortcut: depth 0" + range);
  expect_error([] { GPT<float> m(make_config(with_plan(kBase, P::shortcut({-1}), ""))); },
               "shortcut: depth -1" + range);
  expect_error(
      [] {
        GPT<float> m(make_config(with_plan(kBase, P::shortcut({2, 1, 2}), "")));
      },
      "shortcut: depth 2 is listed twice");
  expect_error([] { P::shortcut({}, -8); }, "shortcut: feature_width -8 must be >= 0 (0 = C)");
  expect_error(
      [] {
        GPT<float> m(make_config(Case{"", 1, 2, 8, 11, 8, 1, 1, P::shortcut()}));
      },
      "shortcut: needs at least 2 layers (or include_embeddings), the model has 1");
  // the plan is checked by ModelConfig::validate too
  ModelConfig cfg = make_config(with_plan(kBase, P::shortcut({5}), ""));
  expect_error([&] { cfg.validate(); }, "shortcut: depth 5" + range);

  // custom tables
  PlanTable t = P::cross_layer(4, 4).custom_table();
  t[2][1] = {SourceRef{SourceKind::layer, 3, 1}};
  expect_error([&] { GPT<float> m(make_config(with_plan(kBase, P::custom(t), ""))); },
               "custom plan: layer 2 head 1 reads layer 3, expected 0..2 (a layer can only read "
               "itself or earlier layers)");
  t[2][1] = {SourceRef{SourceKind::layer, 1, 4}};
  expect_error([&] { GPT<float> m(make_config(with_plan(kBase, P::custom(t), ""))); },
               "custom plan: layer 2 head 1 reads head 4, expected 0..3");
  t[2][1] = {};
  expect_error([&] { GPT<float> m(make_config(with_plan(kBase, P::custom(t), ""))); },
               "custom plan: layer 2 head 1 has no source");
  // feature sources: any depth the block sees (0..l), not a later one
  t[2][1] = {SourceRef::feature(3, 1)};
  expect_error([&] { GPT<float> m(make_config(with_plan(kBase, P::custom(t), ""))); },
               "custom plan: layer 2 head 1 reads feature depth 3, expected 0..2 (block 2 sees "
               "the embeddings and the outputs of earlier blocks only)");
  t[2][1] = {SourceRef::feature(-1, 1)};
  expect_error([&] { GPT<float> m(make_config(with_plan(kBase, P::custom(t), ""))); },
               "custom plan: layer 2 head 1 reads feature depth -1, expected 0..2 (block 2 sees "
               "the embeddings and the outputs of earlier blocks only)");
  t[2][1] = {SourceRef::feature(2, 1), SourceRef::feature(0, 7)};
  expect_error([&] { GPT<float> m(make_config(with_plan(kBase, P::custom(t), ""))); },
               "custom plan: layer 2 head 1 reads head 7, expected 0..3");
  expect_error([] { P::custom({}, -3); }, "custom plan: feature_width -3 must be >= 0 (0 = C)");
  expect_error([] { P::dense_shortcut(-1); },
               "dense_shortcut: feature_width -1 must be >= 0 (0 = C)");
  expect_error([] { GPT<float> m(make_config(with_plan(kBase, P::cross_layer(3, 4), ""))); },
               "custom plan: table has 3 layers, expected 4");
  expect_error([] { GPT<float> m(make_config(with_plan(kBase, P::cross_layer(4, 2), ""))); },
               "custom plan: layer 0 has 2 heads, expected 4");
}

}  // namespace
