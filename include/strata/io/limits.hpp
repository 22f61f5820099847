// strata/io/limits.hpp: what a checkpoint's metadata may say before anything is allocated for it.
//
// A checkpoint is untrusted input: its `strata.config` decides how much memory a model takes, so
// every size is read with its JSON type checked, held to a fixed sane range, and then compared with
// the tensors the file really holds (names and shapes) before a model is built. A file therefore
// cannot make strata allocate more than a small multiple of its own size (parameters, gradients
// and one copy while loading, each the size of the file's data, or twice that for a float file
// loaded into a double model). The same holds for the `strata.train` numbers (steps, batch sizes),
// and every parameter and optimizer moment must be finite.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../model/config.hpp"
#include "../model/parameters.hpp"
#include "safetensors.hpp"

namespace strata::io {

/// The fixed ranges a checkpoint's model configuration must fall in (far beyond any model this
/// CPU library trains, far below what would overflow an index or exhaust memory by itself).
struct ModelLimits {
  static constexpr Index max_vocab_size = Index(1) << 24;
  static constexpr Index max_context_length = Index(1) << 20;
  static constexpr Index max_n_layer = 1024;
  static constexpr Index max_n_head = 1024;
  static constexpr Index max_n_embd = Index(1) << 16;
  static constexpr Index max_mlp_ratio = 64;
  static constexpr Index max_feature_width = Index(1) << 16;
  /// Steps, batches and other counters of a training checkpoint.
  static constexpr Index max_count = Index(1) << 50;
};

namespace detail {
/// A JSON value for a message: its text (cut short if long) and, for a wrong type, its type.
inline std::string value_text(const nlohmann::json& v) {
  return brief(v) + (v.is_number() ? std::string() : " (" + json_type(v) + ")");
}
}  // namespace detail

/// Reads j[key] as an integer in [lo, hi]. Errors name the key, the value and the range:
/// "<where>: model configuration 'n_layer' is 100000000, expected an integer in [1, 1024]".
/// `what` names the object ("model configuration", "training state").
inline Index read_bounded(const nlohmann::json& j, const std::string& key, Index lo, Index hi,
                          const std::string& where, const std::string& what) {
  const std::string expected =
      "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  if (!j.is_object())
    fail(where, ": ", what, " is ", detail::value_text(j), ", expected an object");
  const auto it = j.find(key);
  if (it == j.end()) fail(where, ": ", what, " has no '", key, "' (expected ", expected, ")");
  const nlohmann::json& v = *it;
  bool ok = false;
  Index value = 0;
  if (v.is_number_unsigned()) {
    const std::uint64_t u = v.get<std::uint64_t>();
    ok = u <= static_cast<std::uint64_t>(hi) && static_cast<Index>(u) >= lo;
    value = static_cast<Index>(u);
  } else if (v.is_number_integer()) {
    value = v.get<std::int64_t>();
    ok = value >= lo && value <= hi;
  }
  if (!ok)
    fail(where, ": ", what, " '", key, "' is ", detail::value_text(v), ", expected ", expected);
  return value;
}

/// Reads j[key] as an unsigned 64-bit integer (a seed), with the same kind of errors.
inline std::uint64_t read_unsigned(const nlohmann::json& j, const std::string& key,
                                   const std::string& where, const std::string& what) {
  const std::string expected = "an unsigned 64-bit integer";
  const auto it = j.find(key);
  if (it == j.end()) fail(where, ": ", what, " has no '", key, "' (expected ", expected, ")");
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<std::int64_t>() >= 0))
    fail(where, ": ", what, " '", key, "' is ", detail::value_text(*it), ", expected ", expected);
  return it->get<std::uint64_t>();
}

/// Reads j[key] as a finite number.
inline double read_finite(const nlohmann::json& j, const std::string& key, const std::string& where,
                          const std::string& what) {
  const auto it = j.find(key);
  if (it == j.end()) fail(where, ": ", what, " has no '", key, "' (expected a finite number)");
  if (!it->is_number() || !std::isfinite(it->get<double>()))
    fail(where, ": ", what, " '", key, "' is ", detail::value_text(*it),
         ", expected a finite number");
  return it->get<double>();
}

/// Reads the sizes and seed of a model configuration (not its plan), each checked against
/// ModelLimits, so that nothing sized by them can be huge.
inline void read_model_sizes(const nlohmann::json& j, ModelConfig& c, const std::string& where) {
  const std::string what = "model configuration";
  if (!j.is_object())
    fail(where, ": ", what, " is ", detail::value_text(j), ", expected an object");
  using L = ModelLimits;
  c.vocab_size = read_bounded(j, "vocab_size", 1, L::max_vocab_size, where, what);
  c.context_length = read_bounded(j, "context_length", 1, L::max_context_length, where, what);
  c.n_layer = read_bounded(j, "n_layer", 1, L::max_n_layer, where, what);
  c.n_head = read_bounded(j, "n_head", 1, L::max_n_head, where, what);
  c.n_embd = read_bounded(j, "n_embd", 1, L::max_n_embd, where, what);
  c.mlp_ratio = read_bounded(j, "mlp_ratio", 1, L::max_mlp_ratio, where, what);
  c.seed = read_unsigned(j, "seed", where, what);
}

/// A lower bound of the parameter count of every model with c's sizes, whatever its plan: the
/// embeddings and each block's four weight matrices. Sizes within ModelLimits cannot overflow it.
inline Index min_parameter_count(const ModelConfig& c) {
  const Index C = c.n_embd, H = c.mlp_ratio * C;
  return (c.vocab_size + c.context_length) * C + c.n_layer * (4 * C * C + 2 * H * C);
}

/// Checks that the file holds at least as many tensor elements as a model of c's sizes has
/// parameters, before the plan is resolved or anything is sized by the configuration: a small
/// file cannot describe a large model. (check_tensors_match later checks names and shapes.)
inline void check_sizes_fit_file(const SafetensorsFile& file, const ModelConfig& c,
                                 const std::string& where) {
  Index held = 0;  // each shape was checked against the file's byte range when it was read
  for (const std::string& name : file.names()) {
    Index n = 1;
    for (const Index d : file.shape(name)) n *= d;
    held += n;
  }
  const Index need = min_parameter_count(c);
  if (need > held)
    fail(where, ": model configuration (vocab_size ", c.vocab_size, ", context_length ",
         c.context_length, ", n_layer ", c.n_layer, ", n_embd ", c.n_embd, ", mlp_ratio ",
         c.mlp_ratio, ") needs at least ", need, " parameters, but the file holds ", held,
         " tensor elements in all");
}

/// Checks, before a model is built, that the file holds exactly the parameter tensors of cfg with
/// their shapes (plus optimizer moments, "optimizer.m./v." + a parameter name, when present).
/// Messages match those of the copy that follows: "has no tensor 'x'", "unexpected tensor 'x'",
/// "tensor 'x' has shape [a, b], expected [c, d]".
inline void check_tensors_match(const SafetensorsFile& file, const ModelConfig& cfg) {
  const std::string where = "checkpoint " + file.path() + ": ";
  // The feature maps' widths size tensors too: bounded before the layout is built.
  const ResolvedPlan plan = cfg.attention.resolve(cfg.n_layer, cfg.n_head, cfg.n_embd);
  for (const FeatureMap& f : plan.features)
    if (f.width < 1 || f.width > ModelLimits::max_feature_width)
      fail(where, "model configuration: shortcut feature width ", f.width,
           ", expected an integer in [1, ", ModelLimits::max_feature_width, "]");
  const ParameterLayout layout(cfg);  // names and shapes only: no arena yet
  for (const TensorInfo& t : layout.tensors()) {
    if (!file.contains(t.name)) fail(where, "has no tensor '", t.name, "'");
    if (file.shape(t.name) != t.shape())
      fail(where, "tensor '", t.name, "' has shape ", shape_string(file.shape(t.name)),
           ", expected ", shape_string(t.shape()));
  }
  for (const std::string& name : file.names()) {
    std::string base = name;
    for (const char* prefix : {"optimizer.m.", "optimizer.v."})
      if (name.rfind(prefix, 0) == 0) base = name.substr(std::char_traits<char>::length(prefix));
    if (!layout.contains(base))
      fail(where, "unexpected tensor '", name, "' (not a parameter of this model)");
    if (base != name && file.shape(name) != layout.at(base).shape())
      fail(where, "tensor '", name, "' has shape ", shape_string(file.shape(name)), ", expected ",
           shape_string(layout.at(base).shape()));
  }
}

/// Throws when an arena holds a value that is not finite (or, with non_negative, below zero),
/// naming the tensor and the index within it: "checkpoint f: tensor 'transformer.wte.weight'
/// holds nan at index 17 (element [0, 17] of [50, 16]); expected finite values".
template <typename Scalar>
void check_finite(const Scalar* data, const ParameterLayout& layout, const std::string& prefix,
                  const std::string& where, bool non_negative = false) {
  const Index n = layout.total_size();
  // Eigen's vectorised tests first; the index search runs only when one fails.
  const Eigen::Map<const Vector<Scalar>> all(data, n);
  if (all.allFinite() && !(non_negative && (all.array() < Scalar(0)).any())) return;
  Index bad = -1;
  for (Index i = 0; i < n; ++i)
    if (!std::isfinite(data[i]) || (non_negative && data[i] < Scalar(0))) {
      bad = i;
      break;
    }
  if (bad < 0) return;
  for (const TensorInfo& t : layout.tensors()) {
    if (bad < t.offset || bad >= t.offset + t.size()) continue;
    const Index k = bad - t.offset;
    std::ostringstream element;
    if (t.ndim == 2)
      element << " (element [" << k / t.cols << ", " << k % t.cols << "] of "
              << shape_string(t.shape()) << ")";
    fail(where, "tensor '", prefix, t.name, "' holds ", data[bad], " at index ", k, element.str(),
         non_negative ? "; expected finite values >= 0" : "; expected finite values");
  }
}

}  // namespace strata::io
