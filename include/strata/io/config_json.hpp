// strata/io/config_json.hpp: the model configuration and attention plan as JSON (the
// `strata.config` metadata of a checkpoint, and the plan files of docs/plan_schema.md).
//
// A plan is stored as its resolved wiring plus the recipe that produced it:
//   {"recipe": {"kind": "shortcut", "depths": [1, 2], ...},       the recipe's settings
//    "label": "shortcut(depths=1,2,3, feature_width=16, ...)",    for people
//    "table": [[[{"layer": 0, "head": 0}], ...], ...],            sources per block and head
//    "features": [{"block": 3, "depth": 1, "width": 16}, ...]}     feature maps
// Loading builds the model from the table and feature maps alone; the recipe is kept when it
// resolves to exactly that wiring. Files of version 0.1.0 hold only the recipe object
// ({"kind": ...}); they still load.
#pragma once

#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../attention/plan.hpp"
#include "../core/error.hpp"
#include "../model/config.hpp"
#include "limits.hpp"

namespace strata::io {

namespace plan_json {

inline nlohmann::json recipe_to_json(const AttentionPlan& plan, Index n_layer, Index n_head) {
  const AttentionPlan::Recipe r = plan.recipe(n_layer, n_head);
  nlohmann::json j;
  j["kind"] = r.kind;
  if (r.distance) j["distance"] = *r.distance;
  if (r.heads) j["heads"] = *r.heads;
  if (r.mode) j["mode"] = to_string(*r.mode);
  if (r.depths) j["depths"] = *r.depths;
  if (r.feature_width) j["feature_width"] = *r.feature_width;
  if (r.include_embeddings) j["include_embeddings"] = *r.include_embeddings;
  return j;
}

inline std::string index_path(const std::string& name, std::initializer_list<size_t> at) {
  std::string s = name;
  for (size_t i : at) s += "[" + std::to_string(i) + "]";
  return s;
}

/// An integer field of a JSON object, or a strata::Error naming it and what was found.
inline Index integer_field(const nlohmann::json& o, const char* key, const std::string& where,
                           const std::string& path) {
  if (!o.contains(key)) fail(where, ": ", path, " has no '", key, "' (found ", o.dump(), ")");
  const nlohmann::json& v = o.at(key);
  if (!v.is_number_integer())
    fail(where, ": ", path, ".", key, " must be an integer, found ", v.dump());
  return v.get<Index>();
}

inline void only_keys(const nlohmann::json& o, std::initializer_list<const char*> keys,
                      const std::string& where, const std::string& path) {
  for (const auto& item : o.items()) {
    bool known = false;
    for (const char* k : keys) known = known || item.key() == k;
    if (!known) {
      std::string list;
      for (const char* k : keys) list += std::string(list.empty() ? "" : ", ") + k;
      fail(where, ": ", path, " has an unknown key '", item.key(), "' (expected: ", list, ")");
    }
  }
}

inline const nlohmann::json& array_field(const nlohmann::json& o, const char* key,
                                         const std::string& where, const std::string& path) {
  const nlohmann::json& v = o.at(key);
  if (!v.is_array()) fail(where, ": ", path, " must be an array, found ", v.dump());
  return v;
}

/// The table of a plan object: one array per block, of one array per head, of sources.
inline PlanTable table_from_json(const nlohmann::json& t, const std::string& where) {
  if (!t.is_array()) fail(where, ": 'table' must be an array of blocks, found ", t.dump());
  PlanTable table;
  for (size_t l = 0; l < t.size(); ++l) {
    const nlohmann::json& lj = t[l];
    if (!lj.is_array())
      fail(where, ": ", index_path("table", {l}), " must be an array of heads, found ", lj.dump());
    table.emplace_back();
    for (size_t h = 0; h < lj.size(); ++h) {
      const nlohmann::json& hj = lj[h];
      if (!hj.is_array())
        fail(where, ": ", index_path("table", {l, h}), " must be an array of sources, found ",
             hj.dump());
      table.back().emplace_back();
      for (size_t s = 0; s < hj.size(); ++s) {
        const nlohmann::json& sj = hj[s];
        const std::string path = index_path("table", {l, h, s});
        if (!sj.is_object() || sj.contains("layer") == sj.contains("feature"))
          fail(where, ": ", path,
               ": a source is {\"layer\": BLOCK, \"head\": HEAD} or {\"feature\": DEPTH, "
               "\"head\": HEAD}, found ",
               sj.dump());
        const bool layer = sj.contains("layer");
        only_keys(sj, {layer ? "layer" : "feature", "head"}, where, path);
        const Index index = integer_field(sj, layer ? "layer" : "feature", where, path);
        const Index head = integer_field(sj, "head", where, path);
        table.back().back().push_back(layer ? SourceRef::layer(index, head)
                                            : SourceRef::feature(index, head));
      }
    }
  }
  return table;
}

inline std::vector<FeatureMap> features_from_json(const nlohmann::json& f,
                                                  const std::string& where) {
  if (!f.is_array()) fail(where, ": 'features' must be an array, found ", f.dump());
  std::vector<FeatureMap> out;
  for (size_t i = 0; i < f.size(); ++i) {
    const std::string path = index_path("features", {i});
    if (!f[i].is_object())
      fail(where, ": ", path, " must be {\"block\": B, \"depth\": D, \"width\": W}, found ",
           f[i].dump());
    only_keys(f[i], {"block", "depth", "width"}, where, path);
    FeatureMap m;
    m.block = integer_field(f[i], "block", where, path);
    m.depth = integer_field(f[i], "depth", where, path);
    m.width = integer_field(f[i], "width", where, path);
    out.push_back(m);
  }
  return out;
}

/// An integer setting of a recipe, read with its type and range checked (a JSON float or a number
/// beyond the range is an error naming the key, never a silent cast).
inline Index recipe_int(const nlohmann::json& j, const char* key, Index lo,
                        const std::string& where) {
  return read_bounded(j, key, lo, ModelLimits::max_n_layer * ModelLimits::max_n_head, where,
                      "attention recipe");
}

inline Index recipe_width(const nlohmann::json& j, const std::string& where) {
  return read_bounded(j, "feature_width", 0, ModelLimits::max_feature_width, where,
                      "attention recipe");
}

inline bool recipe_bool(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_boolean())
    fail(where, ": attention recipe '", key, "' is ",
         it == j.end() ? std::string("missing") : detail::value_text(*it),
         ", expected true or false");
  return it->get<bool>();
}

inline std::string recipe_string(const nlohmann::json& j, const char* key,
                                 const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_string())
    fail(where, ": attention recipe '", key, "' is ",
         it == j.end() ? std::string("missing") : detail::value_text(*it), ", expected a string");
  return it->get<std::string>();
}

/// A recipe object {"kind": ..., settings}. Every setting is read with its type and range checked,
/// one key at a time, so the first missing or mistyped one is the one named.
inline AttentionPlan recipe_from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": an attention plan must be a JSON object, found ", j.dump());
  const std::string kind = recipe_string(j, "kind", where);
  if (kind == "standard") return AttentionPlan::standard();
  if (kind == "skip_layer") {
    const Index distance = recipe_int(j, "distance", 1, where);
    const Index heads = recipe_int(j, "heads", 0, where);
    const SkipMode mode = parse_skip_mode(recipe_string(j, "mode", where));
    return AttentionPlan::skip_layer(distance, heads, mode);
  }
  if (kind == "shortcut") {
    const auto d = j.find("depths");
    if (d == j.end() || !d->is_array())
      fail(where, ": attention recipe 'depths' is ",
           d == j.end() ? std::string("missing") : detail::value_text(*d),
           ", expected an array of depths (integers in [0, ", ModelLimits::max_n_layer, "])");
    std::vector<Index> depths;
    for (const nlohmann::json& v : *d) {
      if (!v.is_number_integer() || v.get<Index>() < 0 || v.get<Index>() > ModelLimits::max_n_layer)
        fail(where, ": attention recipe 'depths' holds ", detail::value_text(v),
             ", expected integers in [0, ", ModelLimits::max_n_layer, "]");
      depths.push_back(v.get<Index>());
    }
    const Index feature_width = recipe_width(j, where);
    const bool embeddings = recipe_bool(j, "include_embeddings", where);
    return AttentionPlan::shortcut(std::move(depths), feature_width, embeddings);
  }
  if (kind == "dense_shortcut") {
    const Index feature_width = recipe_width(j, where);
    const bool embeddings = recipe_bool(j, "include_embeddings", where);
    return AttentionPlan::dense_shortcut(feature_width, embeddings);
  }
  if (kind == "custom") {
    // version 0.1.0 stored custom tables as {"kind": "custom", "table": [[[{"layer", "head"}]]]}
    if (!j.contains("table"))
      fail(where, ": a custom plan needs a 'table' (see docs/plan_schema.md)");
    const Index feature_width = j.contains("feature_width") ? recipe_width(j, where) : 0;
    return AttentionPlan::custom(table_from_json(j.at("table"), where), feature_width);
  }
  fail(where, ": attention kind '", kind,
       "' is not one of: standard, skip_layer, shortcut, dense_shortcut, custom");
}

}  // namespace plan_json

/// The plan as JSON for a model of n_layer x n_head x n_embd: the recipe (with the numbers it
/// resolves to, so a checkpoint says exactly what ran), its label, the table and the feature maps.
inline nlohmann::json plan_to_json(const AttentionPlan& plan, Index n_layer, Index n_head,
                                   Index n_embd) {
  const ResolvedPlan r = plan.resolve(n_layer, n_head, n_embd);
  nlohmann::json table = nlohmann::json::array();
  for (const auto& layer : r.sources) {
    nlohmann::json lj = nlohmann::json::array();
    for (const auto& head : layer) {
      nlohmann::json hj = nlohmann::json::array();
      for (const SourceRef& s : head)
        hj.push_back({{s.is_layer() ? "layer" : "feature", s.index}, {"head", s.head}});
      lj.push_back(hj);
    }
    table.push_back(lj);
  }
  nlohmann::json features = nlohmann::json::array();
  for (const FeatureMap& f : r.features)
    features.push_back({{"block", f.block}, {"depth", f.depth}, {"width", f.width}});
  return {{"recipe", plan_json::recipe_to_json(plan, n_layer, n_head)},
          {"label", r.label},
          {"table", table},
          {"features", features}};
}

/// Reads a plan: what plan_to_json wrote; a bare recipe ({"kind": ...}, as version 0.1.0 wrote
/// and as plan files may hold); or a bare table ({"table": ..., optional "features",
/// "feature_width", "label"}). The schema is docs/plan_schema.md. `where` prefixes error
/// messages; every malformed entry is a strata::Error naming its place, what was expected and
/// what was found. Sizes (layer and head counts, causality) are checked when the plan is resolved
/// for a model (AttentionPlan::resolve, ModelConfig::validate). Safe on any JSON value. n_embd,
/// when known (> 0), is the model width that a recipe's feature width 0 stands for.
inline AttentionPlan plan_from_json(const nlohmann::json& j, const std::string& where,
                                    Index n_embd = 0);

namespace plan_json {
inline AttentionPlan plan_from_json_impl(const nlohmann::json& j, const std::string& where,
                                         Index n_embd) {
  if (!j.is_object()) fail(where, ": an attention plan must be a JSON object, found ", j.dump());
  if (!j.contains("table")) {
    if (!j.contains("kind"))
      fail(where,
           ": an attention plan needs 'kind' (a recipe) or 'table' (see docs/plan_schema.md)");
    return plan_json::recipe_from_json(j, where);
  }
  if (j.contains("kind")) return plan_json::recipe_from_json(j, where);  // 0.1.0 custom plans
  plan_json::only_keys(j, {"recipe", "label", "table", "features", "feature_width"}, where,
                       "the plan");
  ResolvedPlan r;
  r.sources = plan_json::table_from_json(j.at("table"), where);
  if (j.contains("label")) {
    if (!j.at("label").is_string())
      fail(where, ": 'label' must be a string, found ", j.at("label").dump());
    r.label = j.at("label").get<std::string>();
  }
  long width = 0;
  if (j.contains("feature_width")) {
    if (!j.at("feature_width").is_number_integer() || j.at("feature_width").get<long>() < 0)
      fail(where, ": 'feature_width' must be an integer >= 0 (0 = C), found ",
           j.at("feature_width").dump());
    width = j.at("feature_width").get<long>();
  }
  if (!j.contains("features")) {
    return AttentionPlan::custom(std::move(r.sources), width, r.label);
  }
  if (j.contains("feature_width"))
    fail(where, ": give either 'features' (with a width each) or 'feature_width', not both");
  r.features = plan_json::features_from_json(j.at("features"), where);
  r.n_layer = Index(r.sources.size());
  r.n_head = r.n_layer > 0 ? Index(r.sources[0].size()) : 0;
  const bool custom_recipe = j.contains("recipe") && j.at("recipe").is_object()
                          && j.at("recipe").contains("kind")
                          && j.at("recipe").at("kind") == nlohmann::json("custom");
  if (j.contains("recipe") && !custom_recipe) {
    // Keep the recipe (its kind and settings) when it wires exactly what the table and feature
    // maps say; otherwise, or when it does not fit these sizes, the table wins. A feature width of
    // 0 in the recipe means C: the model's n_embd when the caller knows it (a checkpoint), else
    // (a plan file) the width of the first listed map.
    const AttentionPlan recipe = plan_json::recipe_from_json(j.at("recipe"), where);
    const Index C = n_embd > 0 ? n_embd : r.features.empty() ? 1 : r.features[0].width;
    if (!recipe.is_custom() && r.n_head > 0) {
      try {
        if (same_wiring(recipe.resolve(r.n_layer, r.n_head, C), r)) return recipe;
      } catch (const Error&) {
      }
    }
  }
  return AttentionPlan::custom(r);
}
}  // namespace plan_json

inline AttentionPlan plan_from_json(const nlohmann::json& j, const std::string& where,
                                    Index n_embd) {
  try {
    return plan_json::plan_from_json_impl(j, where, n_embd);
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": malformed attention plan: ", e.what());
  }
}

/// plan_from_json of a JSON text (a plan file's contents); invalid JSON is a strata::Error too.
inline AttentionPlan plan_from_json_text(const std::string& text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": not valid JSON: ", e.what());
  }
  return plan_from_json(j, where);
}

/// Reads a plan file (docs/plan_schema.md); errors name the file.
inline AttentionPlan read_plan_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path, ": cannot open the plan file");
  std::stringstream text;
  text << in.rdbuf();
  return plan_from_json_text(text.str(), path);
}

inline nlohmann::json config_to_json(const ModelConfig& c) {
  return {{"vocab_size", c.vocab_size},
          {"context_length", c.context_length},
          {"n_layer", c.n_layer},
          {"n_head", c.n_head},
          {"n_embd", c.n_embd},
          {"mlp_ratio", c.mlp_ratio},
          {"seed", c.seed},
          {"attention", plan_to_json(c.attention, c.n_layer, c.n_head, c.n_embd)}};
}

/// Parses and validates a configuration; `where` prefixes error messages.
inline ModelConfig config_from_json(const nlohmann::json& j, const std::string& where) {
  ModelConfig c;
  read_model_sizes(j, c, where);  // types and fixed limits (limits.hpp), before any allocation
  if (!j.contains("attention")) fail(where, ": model configuration has no 'attention' plan");
  c.attention = plan_from_json(j.at("attention"), where, c.n_embd);
  try {
    c.validate();
  } catch (const Error& e) {
    fail(where, ": invalid model configuration: ", e.what());
  }
  return c;
}

}  // namespace strata::io
