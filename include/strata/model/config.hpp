// strata/model/config.hpp: the model configuration, validated before anything is allocated.
#pragma once

#include <cstdint>

#include "../attention/plan.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"

namespace strata {

/// Sizes, seed and attention plan of a GPT-style decoder (SPEC.md §1). The defaults are the tiny
/// model: byte vocabulary, 4 layers, 4 heads, width 128, context 128.
struct ModelConfig {
  Index vocab_size = 256;      ///< V
  Index context_length = 128;  ///< maximum T (rows of the position table)
  Index n_layer = 4;           ///< L
  Index n_head = 4;            ///< NH
  Index n_embd = 128;          ///< C
  Index mlp_ratio = 4;         ///< hidden width of the MLP = mlp_ratio * C
  std::uint64_t seed = 1337;   ///< initialisation seed
  AttentionPlan attention = AttentionPlan::standard();

  Index head_size() const { return n_embd / n_head; }
  Index mlp_width() const { return mlp_ratio * n_embd; }

  /// Shortcut feature width Cf (C unless the plan says otherwise).
  Index feature_width() const {
    return attention.feature_width() > 0 ? attention.feature_width() : n_embd;
  }

  /// Throws strata::Error naming the first setting that is out of range, then checks the plan.
  void validate() const {
    auto positive = [](const char* name, Index v) {
      if (v < 1) fail("ModelConfig: ", name, " = ", v, ", expected >= 1");
    };
    positive("vocab_size", vocab_size);
    positive("context_length", context_length);
    positive("n_layer", n_layer);
    positive("n_head", n_head);
    positive("n_embd", n_embd);
    positive("mlp_ratio", mlp_ratio);
    if (n_embd % n_head != 0)
      fail("ModelConfig: n_embd ", n_embd, " is not divisible by n_head ", n_head);
    if (vocab_size > (Index(1) << 31) - 1)
      fail("ModelConfig: vocab_size ", vocab_size, " does not fit a 32-bit token id");
    (void)attention.table(static_cast<int>(n_layer), static_cast<int>(n_head));
  }
};

}  // namespace strata
