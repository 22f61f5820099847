// tests/plan_cases.hpp: the fixed plans, sizes, parameters and batch behind the checked-in files of
// tests/data/ (written by tests/data/make_test_data.cpp, read by tests/test_plan_data.cpp).
//
// - Goldens (tests/data/plan_golden.json): for every plan below, the logits and the gradient arena
//   of one fixed batch, in float and double, recorded as 64-bit FNV-1a hashes of their bytes plus
//   the loss and a few leading values (hex floats) for diagnosis. Bit patterns depend on the
//   product back end and the SIMD instruction set, so each build fingerprint has its own record.
// - Checkpoints (tests/data/v0_1_0_*.safetensors): one small model of each plan kind, saved by
//   strata 0.1.0 (before the plan metadata carried the resolved table); later versions must load
//   them. They are history: never regenerate them with a newer version.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <strata/attention/plan.hpp>
#include <strata/core/rng.hpp>
#include <strata/core/threading.hpp>
#include <strata/model/gpt.hpp>

#include "gradcheck.hpp"
#include "model_helpers.hpp"

namespace strata::testing {

struct PlanCase {
  std::string name;
  AttentionPlan plan;
};

/// L = 4, NH = 4: heads reading other heads and several earlier layers at once.
inline PlanTable golden_custom_table() {
  PlanTable t(4, std::vector<std::vector<SourceRef>>(4));
  for (int l = 0; l < 4; ++l)
    for (int h = 0; h < 4; ++h) t[l][h] = {SourceRef{SourceKind::layer, l, h}};
  t[2][0] = {SourceRef{SourceKind::layer, 0, 3}};
  t[3][1] = {SourceRef{SourceKind::layer, 3, 1}, SourceRef{SourceKind::layer, 1, 2},
             SourceRef{SourceKind::layer, 0, 0}};
  t[2][3] = {SourceRef{SourceKind::layer, 2, 3}, SourceRef{SourceKind::layer, 0, 2}};
  return t;
}

/// Every plan of the goldens (4 layers, 4 heads).
inline std::vector<PlanCase> golden_plans() {
  using P = AttentionPlan;
  return {
      {"standard", P::standard()},
      {"skip_split_d2_n2", P::skip_layer(2, 2)},
      {"skip_concat_d2_n2", P::skip_layer(2, 2, SkipMode::concat)},
      {"skip_split_defaults", P::skip_layer()},
      {"skip_concat_d1_n4", P::skip_layer(1, 4, SkipMode::concat)},
      {"shortcut_all", P::shortcut()},
      {"shortcut_1_3", P::shortcut({1, 3})},
      {"shortcut_2_only", P::shortcut({2})},
      {"shortcut_all_embeddings", P::shortcut({}, 0, true)},
      {"shortcut_1_2_width8_embeddings", P::shortcut({1, 2}, 8, true)},
      {"cross_layer", P::cross_layer(4, 4)},
      {"custom", P::custom(golden_custom_table())},
  };
}

/// The golden model: L = 4, NH = 4, C = 16, V = 13, context 8; parameters from randomize(seed 21).
inline ModelConfig golden_config(const AttentionPlan& plan) {
  ModelConfig cfg;
  cfg.n_layer = 4;
  cfg.n_head = 4;
  cfg.n_embd = 16;
  cfg.vocab_size = 13;
  cfg.context_length = 8;
  cfg.seed = 5;
  cfg.attention = plan;
  return cfg;
}

/// The fixed batch: tokens and targets [2, 7].
inline std::pair<TokenMatrix, TokenMatrix> golden_batch() {
  Rng rng(99);
  TokenMatrix tokens = random_tokens(2, 7, 13, rng);
  TokenMatrix targets = random_tokens(2, 7, 13, rng);
  return {tokens, targets};
}

/// What the build computes bit for bit depends on: the product back end and the SIMD set.
inline std::string build_fingerprint() {
  return product_backend() + " | " + Eigen::SimdInstructionSetsInUse();
}

inline std::string fnv1a_hex(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

/// A value as an exact hex float ("%a"), so the JSON record round-trips every bit.
inline std::string hex_float(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", x);
  return buf;
}

/// What one plan computes on the fixed batch in one precision (one thread, so that the record is
/// independent of the machine's core count).
struct GoldenRecord {
  std::string loss;                      ///< hex float
  std::string logits_hash, grads_hash;   ///< FNV-1a of the raw bytes
  std::vector<std::string> logits_head;  ///< first values, hex floats
  std::vector<std::string> grads_head;
  Index grads_size = 0;
};

template <typename S>
GoldenRecord golden_record(const AttentionPlan& plan) {
  set_num_threads(1);
  GPT<S> model(golden_config(plan));
  randomize(model, 21);
  const auto [tokens, targets] = golden_batch();
  GoldenRecord r;
  const S loss = model.forward_backward(tokens, targets);
  const Matrix<S> logits = model.forward(tokens);
  r.loss = hex_float(double(loss));
  r.logits_hash = fnv1a_hex(logits.data(), std::size_t(logits.size()) * sizeof(S));
  r.grads_hash =
      fnv1a_hex(model.gradients().data(), std::size_t(model.gradients().size()) * sizeof(S));
  r.grads_size = model.gradients().size();
  for (Index i = 0; i < 6; ++i) r.logits_head.push_back(hex_float(double(logits.data()[i])));
  // gradient entries spread over the arena (the last ones are feature maps when there are any)
  for (Index k = 0; k < 8; ++k)
    r.grads_head.push_back(hex_float(double(model.gradients()[k * (r.grads_size - 1) / 7])));
  return r;
}

/// The checkpoints of tests/data/: sizes L = 3, NH = 2, C = 8, V = 16, context 8, mlp_ratio 2,
/// parameters from randomize(seed 3).
inline ModelConfig checkpoint_config(const AttentionPlan& plan) {
  ModelConfig cfg;
  cfg.n_layer = 3;
  cfg.n_head = 2;
  cfg.n_embd = 8;
  cfg.vocab_size = 16;
  cfg.context_length = 8;
  cfg.mlp_ratio = 2;
  cfg.seed = 11;
  cfg.attention = plan;
  return cfg;
}

/// One checkpoint per plan kind of version 0.1.0: file stem and plan.
inline std::vector<PlanCase> checkpoint_plans() {
  using P = AttentionPlan;
  PlanTable t(3, std::vector<std::vector<SourceRef>>(2));
  for (int l = 0; l < 3; ++l)
    for (int h = 0; h < 2; ++h) t[l][h] = {SourceRef{SourceKind::layer, l, h}};
  t[2][0] = {SourceRef{SourceKind::layer, 2, 0}, SourceRef{SourceKind::layer, 0, 1}};
  t[1][1] = {SourceRef{SourceKind::layer, 0, 0}};
  return {
      {"v0_1_0_standard", P::standard()},
      {"v0_1_0_skip_split", P::skip_layer(1, 1)},
      {"v0_1_0_skip_concat", P::skip_layer(2, 2, SkipMode::concat)},
      {"v0_1_0_shortcut", P::shortcut({}, 4, true)},
      {"v0_1_0_cross_layer", P::cross_layer(3, 2)},
      {"v0_1_0_custom", P::custom(t)},
  };
}

}  // namespace strata::testing
