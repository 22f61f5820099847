// strata/model/sampling.hpp: picking the next token, and generation with a KV cache.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/types.hpp"
#include "gpt.hpp"

namespace strata {

/// How the next token is drawn from the logits.
struct Sampler {
  double temperature = 1.0;  ///< 0 = greedy (argmax); otherwise softmax(logits / temperature)
  Index top_k = 0;           ///< keep the k most likely tokens; 0 = all
  std::uint64_t seed = 0;    ///< seeds the draws of generate()

  void validate() const {
    if (!(temperature >= 0) || !std::isfinite(temperature))
      fail("Sampler: temperature ", temperature, ", expected a finite value >= 0 (0 = greedy)");
    if (top_k < 0) fail("Sampler: top_k ", top_k, ", expected >= 0 (0 = all tokens)");
  }
};

/// Draws one token id from a row of logits [V]. Ties in greedy mode go to the lowest id.
template <typename Derived>
Token sample_token(const Eigen::MatrixBase<Derived>& logits, const Sampler& sampler, Rng& rng) {
  sampler.validate();
  const Index V = logits.size();
  STRATA_CHECK(V > 0, "sample_token: empty logits");
  Index best = 0;
  for (Index i = 1; i < V; ++i)
    if (logits(i) > logits(best)) best = i;
  if (sampler.temperature == 0) return static_cast<Token>(best);
  // Probabilities in double, relative to the maximum; top-k keeps the k largest logits.
  std::vector<double> p(V);
  const double m = double(logits(best));
  for (Index i = 0; i < V; ++i) p[i] = std::exp((double(logits(i)) - m) / sampler.temperature);
  if (sampler.top_k > 0 && sampler.top_k < V) {
    std::vector<double> sorted = p;
    std::nth_element(sorted.begin(), sorted.begin() + (sampler.top_k - 1), sorted.end(),
                     std::greater<double>());
    const double kth = sorted[sampler.top_k - 1];
    for (double& x : p)
      if (x < kth) x = 0;
  }
  double total = 0;
  for (double x : p) total += x;
  double u = rng.uniform() * total;
  for (Index i = 0; i < V; ++i) {
    u -= p[i];
    if (u < 0) return static_cast<Token>(i);
  }
  return static_cast<Token>(best);  // rounding left u >= 0: fall back to the mode
}

/// Continues `prompt` by `new_tokens` tokens, sampling each from the model's next-token logits with
/// a KV cache (one token per step after the prompt). on_token, when given, sees each new token as
/// it is produced (for streaming output). When the sequence reaches the context length, the cache
/// is refilled from the last half-context of tokens and generation continues (positions are
/// absolute, so a sliding window needs that re-encoding). Returns only the new tokens.
template <typename Scalar>
std::vector<Token> generate(GPT<Scalar>& model, const std::vector<Token>& prompt, Index new_tokens,
                            const Sampler& sampler = {},
                            const std::function<void(Token)>& on_token = {}) {
  sampler.validate();
  if (prompt.empty()) fail("generate: the prompt is empty; give at least one token");
  if (new_tokens < 0) fail("generate: new_tokens ", new_tokens, ", expected >= 0");
  const Index context = model.config().context_length;
  const Index keep = std::max<Index>(1, context / 2);
  Rng rng(sampler.seed);
  // The cache holds at most the prompt (or its last context - 1 tokens) and the new tokens.
  const Index used =
      std::min<Index>(context, Index(prompt.size()) + std::max<Index>(new_tokens, 1));
  KVCache<Scalar> cache = model.make_cache(1, used);
  std::vector<Token> seq = prompt;
  std::vector<Token> out;
  out.reserve(static_cast<size_t>(new_tokens));

  // Encodes the last `n` tokens of seq from an empty cache and returns the last row's logits.
  auto refill = [&](Index n) {
    cache.clear();
    TokenMatrix window(1, n);
    for (Index i = 0; i < n; ++i) window(0, i) = seq[seq.size() - n + i];
    const Matrix<Scalar>& logits = model.forward_cached(window, cache);
    return Vector<Scalar>(logits.row(n - 1).transpose());
  };
  Vector<Scalar> next = refill(std::min<Index>(Index(seq.size()), context > 1 ? context - 1 : 1));
  TokenMatrix one(1, 1);
  for (Index i = 0; i < new_tokens; ++i) {
    const Token tok = sample_token(next, sampler, rng);
    out.push_back(tok);
    seq.push_back(tok);
    if (on_token) on_token(tok);
    if (i + 1 == new_tokens) break;
    if (cache.length() >= cache.capacity()) {  // only when the capacity is the whole context
      next = refill(std::min<Index>(Index(seq.size()), keep));
    } else {
      one(0, 0) = tok;
      const Matrix<Scalar>& logits = model.forward_cached(one, cache);
      next = logits.row(0).transpose();
    }
  }
  return out;
}

}  // namespace strata
