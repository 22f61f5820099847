// strata/io/config_json.hpp: the model configuration and attention plan as JSON (the
// `strata.config` metadata of a checkpoint).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "../attention/plan.hpp"
#include "../core/error.hpp"
#include "../model/config.hpp"
#include "limits.hpp"

namespace strata::io {

/// The plan as JSON, with the numbers it resolves to for n_layer x n_head (so a checkpoint says
/// exactly what ran, even when the plan asked for defaults).
inline nlohmann::json plan_to_json(const AttentionPlan& plan, int n_layer, int n_head) {
  using K = AttentionPlan::Kind;
  nlohmann::json j;
  switch (plan.kind()) {
    case K::standard: j["kind"] = "standard"; break;
    case K::skip_layer:
      j["kind"] = "skip_layer";
      j["distance"] = plan.resolved_distance(n_layer);
      j["heads"] = plan.resolved_skip_heads(n_head);
      j["mode"] = to_string(plan.mode());
      break;
    case K::shortcut: {
      j["kind"] = "shortcut";
      std::vector<int> depths;
      for (int r : plan.resolved_depths(n_layer))
        if (r > 0) depths.push_back(r);
      j["depths"] = depths;
      j["feature_width"] = plan.feature_width();
      j["include_embeddings"] = plan.include_embeddings();
      break;
    }
    case K::custom: {
      j["kind"] = "custom";
      nlohmann::json t = nlohmann::json::array();
      for (const auto& layer : plan.custom_table()) {
        nlohmann::json lj = nlohmann::json::array();
        for (const auto& head : layer) {
          nlohmann::json hj = nlohmann::json::array();
          for (const SourceRef& s : head) hj.push_back({{"layer", s.index}, {"head", s.head}});
          lj.push_back(hj);
        }
        t.push_back(lj);
      }
      j["table"] = t;
      break;
    }
  }
  return j;
}

/// Parses what plan_to_json wrote; `where` prefixes error messages.
inline AttentionPlan plan_from_json(const nlohmann::json& j, const std::string& where) {
  try {
    const std::string kind = j.at("kind").get<std::string>();
    if (kind == "standard") return AttentionPlan::standard();
    // Keys are read one statement at a time, so the first missing one is the one named.
    if (kind == "skip_layer") {
      const int distance = j.at("distance").get<int>();
      const int heads = j.at("heads").get<int>();
      const SkipMode mode = parse_skip_mode(j.at("mode").get<std::string>());
      return AttentionPlan::skip_layer(distance, heads, mode);
    }
    if (kind == "shortcut") {
      std::vector<int> depths = j.at("depths").get<std::vector<int>>();
      const long feature_width = j.at("feature_width").get<long>();
      const bool embeddings = j.at("include_embeddings").get<bool>();
      return AttentionPlan::shortcut(std::move(depths), feature_width, embeddings);
    }
    if (kind == "custom") {
      PlanTable t;
      for (const auto& lj : j.at("table")) {
        t.emplace_back();
        for (const auto& hj : lj) {
          t.back().emplace_back();
          for (const auto& sj : hj)
            t.back().back().push_back(
                SourceRef{SourceKind::layer, sj.at("layer").get<int>(), sj.at("head").get<int>()});
        }
      }
      return AttentionPlan::custom(std::move(t));
    }
    fail(where, ": attention kind '", kind, "' is not one of: standard, skip_layer, shortcut, custom");
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": malformed attention plan: ", e.what());
  }
}

inline nlohmann::json config_to_json(const ModelConfig& c) {
  return {{"vocab_size", c.vocab_size},   {"context_length", c.context_length},
          {"n_layer", c.n_layer},         {"n_head", c.n_head},
          {"n_embd", c.n_embd},           {"mlp_ratio", c.mlp_ratio},
          {"seed", c.seed},
          {"attention", plan_to_json(c.attention, int(c.n_layer), int(c.n_head))}};
}

/// Parses and validates a configuration; `where` prefixes error messages.
inline ModelConfig config_from_json(const nlohmann::json& j, const std::string& where) {
  ModelConfig c;
  read_model_sizes(j, c, where);  // types and fixed limits (limits.hpp), before any allocation
  if (!j.contains("attention")) fail(where, ": model configuration has no 'attention' plan");
  c.attention = plan_from_json(j.at("attention"), where);
  try {
    c.validate();
  } catch (const Error& e) {
    fail(where, ": invalid model configuration: ", e.what());
  }
  return c;
}

}  // namespace strata::io
