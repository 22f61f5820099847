// tests/model_helpers.hpp: helpers shared by the whole-model tests (test_model, test_variants).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include <gtest/gtest.h>

#include <strata/model/gpt.hpp>

namespace strata::testing {

/// Replaces GPT-2's initialisation (zero biases, unit LayerNorm) by random values of a size that
/// makes every term matter: weights N(0, 1/fan_in) (attention scores and logits of order 1),
/// biases N(0, 0.1^2), LayerNorm weights 1 + N(0, 0.1^2). A wrong bias, transposition or
/// LayerNorm affine would be invisible with the default zeros and ones. Tensor by tensor in layout
/// order, so two models whose layouts agree on a prefix get identical values there.
template <typename S>
void randomize(GPT<S>& model, std::uint64_t seed) {
  Rng rng(seed);
  for (const TensorInfo& t : model.layout().tensors()) {
    S* x = model.parameters().data() + t.offset;
    const bool layernorm_weight = t.ndim == 1 && t.init_value == 1.0;
    for (Index i = 0; i < t.size(); ++i) {
      const double z = rng.normal();
      if (t.ndim == 2)
        x[i] = S(z / std::sqrt(double(t.cols)));
      else
        x[i] = S((layernorm_weight ? 1.0 : 0.0) + 0.1 * z);
    }
  }
}

/// Agreement with the double-precision reference: float 1e-5 relative to the largest reference
/// logit, double 1e-12.
template <typename S>
double tolerance() {
  return std::is_same<S, float>::value ? 1e-5 : 1e-12;
}

/// EXPECT_THROW of strata::Error with exactly this message.
template <typename F>
void expect_error(F&& f, const std::string& message) {
  EXPECT_THROW(
      {
        try {
          f();
        } catch (const Error& e) {
          EXPECT_EQ(std::string(e.what()), message);
          throw;
        }
      },
      Error);
}

}  // namespace strata::testing
