// strata/attention/plan.hpp: the attention plan, i.e. for every layer and head, the list of
// key/value sources that head attends over with one joint softmax (SPEC.md §2).
//
// Standard attention, skip-layer attention (split and concat), all-layer shortcuts, dense
// shortcuts, cross-layer sharing and custom tables are recipes. A recipe resolves, for a model's
// sizes, into one ResolvedPlan: the sources of every head plus the feature maps that produce the
// feature sources. The model reads only the ResolvedPlan and never asks which recipe it runs.
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace strata {

// ---- residual depth <-> block numbering (defined here, and only here) -----------------------
// The residual stream has depths 0..L: depth 0 is the embeddings h_0, depth r the output of block
// r - 1 (0-based blocks). Block l reads depth l and writes depth l + 1.

/// The depth block `block` reads (its input h_block).
inline Index input_depth(Index block) { return block; }
/// The depth block `block` writes.
inline Index output_depth(Index block) { return block + 1; }
/// The block whose output is `depth`; -1 for the embeddings (depth 0).
inline Index block_writing(Index depth) { return depth - 1; }

/// Where a head's keys and values come from.
enum class SourceKind {
  /// The K/V that block `index` (0-based) computed for its head `head` from its own input.
  layer,
  /// The feature map of residual depth `index` (0 = embeddings, r = output of block r-1) that
  /// belongs to the block whose table lists this source: LayerNorm, MLP, then that block's Wk/Wv,
  /// head `head`. Several blocks may read the same depth, each through its own feature map.
  feature,
};

/// One key/value source of one head.
struct SourceRef {
  SourceKind kind = SourceKind::layer;
  Index index = 0;
  Index head = 0;
  /// Head `head` of the K/V block `block` computed from its own input.
  static SourceRef layer(Index block, Index head) { return {SourceKind::layer, block, head}; }
  /// Head `head` of the feature map of residual depth `depth` (owned by the reading block).
  static SourceRef feature(Index depth, Index head) { return {SourceKind::feature, depth, head}; }
  bool is_layer() const { return kind == SourceKind::layer; }
  bool is_feature() const { return kind == SourceKind::feature; }
  friend bool operator==(const SourceRef& a, const SourceRef& b) {
    return a.kind == b.kind && a.index == b.index && a.head == b.head;
  }
};

/// table[l][h] = the sources of head h of block l (0-based).
using PlanTable = std::vector<std::vector<std::vector<SourceRef>>>;

/// The residual depth a source reads: its own block's input for a layer source, the mapped depth
/// for a feature source.
inline Index source_depth(const SourceRef& s) {
  return s.kind == SourceKind::layer ? input_depth(s.index) : s.index;
}

/// A shortcut feature map: z = Linear(width, C)(GELU(Linear(C, width)(LayerNorm(h_depth)))), whose
/// keys and values are z Wk + bk, z Wv + bv with the Wk/Wv of the consuming `block`.
struct FeatureMap {
  Index depth = 0;  ///< residual depth it maps (0 = embeddings)
  Index width = 0;  ///< hidden width Cf
  Index block = 0;  ///< the block that attends over it (0-based)
  friend bool operator==(const FeatureMap& a, const FeatureMap& b) {
    return a.depth == b.depth && a.width == b.width && a.block == b.block;
  }
};

/// A plan resolved for a model's sizes: the whole attention wiring. The parameter layout, the
/// workspace, the KV cache, forward, backward, attention maps and generation read only this.
struct ResolvedPlan {
  Index n_layer = 0, n_head = 0;
  PlanTable sources;                 ///< sources[l][h]: the sources of head h of block l
  std::vector<FeatureMap> features;  ///< ordered by block, then depth; one per (block, depth)
  std::string label;                 ///< the recipe, for people ("shortcut(depths=1,2,3, ...)")

  /// Position in `features` of block's feature map of `depth`, -1 when the block has none.
  Index feature_index(Index block, Index depth) const {
    for (size_t f = 0; f < features.size(); ++f)
      if (features[f].block == block && features[f].depth == depth) return Index(f);
    return -1;
  }
  /// Positions in `features` of the maps block `block` attends over, by increasing depth.
  std::vector<Index> features_of_block(Index block) const {
    std::vector<Index> out;
    for (size_t f = 0; f < features.size(); ++f)
      if (features[f].block == block) out.push_back(Index(f));
    return out;
  }
  /// Positions in `features` of the maps that read `depth`.
  std::vector<Index> features_of_depth(Index depth) const {
    std::vector<Index> out;
    for (size_t f = 0; f < features.size(); ++f)
      if (features[f].depth == depth) out.push_back(Index(f));
    return out;
  }
  /// The wiring is equal (the label is not compared).
  friend bool same_wiring(const ResolvedPlan& a, const ResolvedPlan& b) {
    return a.n_layer == b.n_layer && a.n_head == b.n_head && a.sources == b.sources
        && a.features == b.features;
  }
};

/// How the skip heads of a skip-layer plan use the earlier layer.
enum class SkipMode {
  split,   ///< skip heads read only the source layer's K/V (no extra compute; the default)
  concat,  ///< skip heads attend jointly over their own and the source layer's K/V
};

inline std::string to_string(SkipMode mode) { return mode == SkipMode::split ? "split" : "concat"; }

/// Parses "split" or "concat"; anything else is a strata::Error naming the choices.
inline SkipMode parse_skip_mode(const std::string& name) {
  if (name == "split") return SkipMode::split;
  if (name == "concat") return SkipMode::concat;
  fail("skip-layer mode '", name, "' is not one of: split, concat");
}

/// An attention plan: a named recipe (standard, skip_layer, shortcut, dense_shortcut, cross_layer)
/// or an explicit table (custom), resolved against a model's sizes by resolve().
class AttentionPlan {
 public:
  enum class Kind { standard, skip_layer, shortcut, dense_shortcut, custom };

  /// Every head of block l reads its own K/V (SPEC §2.1).
  static AttentionPlan standard() { return AttentionPlan(Kind::standard); }

  /// Skip-layer attention (SPEC §2.2): in every block l >= distance (0-based), heads h < heads
  /// read the K/V that block l - distance computed for head h (split) or attend over both that
  /// and their own (concat). Unset numbers take the defaults round(3L/4) and round(3NH/4), at
  /// least 1, once the model's sizes are known.
  static AttentionPlan skip_layer(std::optional<Index> distance = std::nullopt,
                                  std::optional<Index> heads = std::nullopt,
                                  SkipMode mode = SkipMode::split) {
    AttentionPlan p(Kind::skip_layer);
    if (distance && *distance < 1) fail("skip_layer: distance ", *distance, " must be >= 1");
    if (heads && *heads < 0) fail("skip_layer: heads ", *heads, " must be >= 0");
    p.distance_ = distance;
    p.skip_heads_ = heads;
    p.mode_ = mode;
    return p;
  }

  /// All-layer attention shortcuts (SPEC §2.3): the final block attends over the features of the
  /// residual-stream depths in `depths` (1..L-1, the outputs of blocks 1..L-1 in SPEC's 1-based
  /// numbering; empty = all of them), plus the embeddings (depth 0) when include_embeddings.
  /// feature_width Cf = 0 means C.
  static AttentionPlan shortcut(std::vector<Index> depths = {}, Index feature_width = 0,
                                bool include_embeddings = false) {
    AttentionPlan p(Kind::shortcut);
    if (feature_width < 0) fail("shortcut: feature_width ", feature_width, " must be >= 0 (0 = C)");
    p.depths_ = std::move(depths);
    p.feature_width_ = feature_width;
    p.include_embeddings_ = include_embeddings;
    return p;
  }

  /// Dense shortcuts: the shortcut idea at every depth. Every block l >= 1 (0-based) attends, with
  /// one joint softmax per head, over its own K/V and the features of every earlier depth
  /// 1..l-1, plus the embeddings (depth 0) when include_embeddings; each (block, depth) pair has
  /// its own feature map, projected with that block's Wk/Wv. feature_width Cf = 0 means C.
  static AttentionPlan dense_shortcut(Index feature_width = 0, bool include_embeddings = true) {
    AttentionPlan p(Kind::dense_shortcut);
    if (feature_width < 0)
      fail("dense_shortcut: feature_width ", feature_width, " must be >= 0 (0 = C)");
    p.feature_width_ = feature_width;
    p.include_embeddings_ = include_embeddings;
    return p;
  }

  /// An explicit table of sources, layer and feature, e.g. cross-layer KV sharing (SPEC §2.4) or
  /// a shortcut into a middle block. Feature maps get width feature_width (0 = C). Validated
  /// against the model's sizes by resolve().
  /// `label` names the plan in logs (default "custom").
  static AttentionPlan custom(PlanTable table, Index feature_width = 0, std::string label = {}) {
    AttentionPlan p(Kind::custom);
    if (feature_width < 0)
      fail("custom plan: feature_width ", feature_width, " must be >= 0 (0 = C)");
    p.custom_ = std::move(table);
    p.feature_width_ = feature_width;
    p.label_ = std::move(label);
    return p;
  }

  /// A resolved plan as a custom plan (checkpoints store this): the same table, feature maps of
  /// the given widths, and `label` as its description.
  static AttentionPlan custom(const ResolvedPlan& resolved) {
    AttentionPlan p(Kind::custom);
    p.custom_ = resolved.sources;
    p.feature_maps_ = resolved.features;
    p.label_ = resolved.label;
    return p;
  }

  /// Cross-layer attention (CLA): every odd block (0-based) reuses all heads of the block below.
  static AttentionPlan cross_layer(Index n_layer, Index n_head) {
    PlanTable t(static_cast<size_t>(n_layer),
                std::vector<std::vector<SourceRef>>(static_cast<size_t>(n_head)));
    for (Index l = 0; l < n_layer; ++l)
      for (Index h = 0; h < n_head; ++h)
        t[size_t(l)][size_t(h)] = {SourceRef{SourceKind::layer, (l % 2 == 1) ? l - 1 : l, h}};
    return custom(std::move(t));
  }

  Kind kind() const { return kind_; }
  /// An explicit table (custom(), cross_layer() or a plan read from a checkpoint).
  bool is_custom() const { return kind_ == Kind::custom; }
  std::optional<Index> distance() const { return distance_; }
  std::optional<Index> skip_heads() const { return skip_heads_; }
  SkipMode mode() const { return mode_; }
  const std::vector<Index>& depths() const { return depths_; }
  Index feature_width() const { return feature_width_; }
  bool include_embeddings() const { return include_embeddings_; }
  const PlanTable& custom_table() const { return custom_; }

  /// The skip distance and head count this plan uses in a model of n_layer x n_head.
  Index resolved_distance(Index n_layer) const {
    return distance_ ? *distance_ : std::max(Index(1), Index(std::lround(0.75 * double(n_layer))));
  }
  Index resolved_skip_heads(Index n_head) const {
    return skip_heads_ ? *skip_heads_
                       : std::max(Index(1), Index(std::lround(0.75 * double(n_head))));
  }

  /// The shortcut depths (sorted, residual-stream numbering, 0 = embeddings) for n_layer blocks.
  std::vector<Index> resolved_depths(Index n_layer) const {
    std::vector<Index> d = depths_;
    if (d.empty())
      for (Index r = 1; r < n_layer; ++r) d.push_back(r);
    if (include_embeddings_) d.push_back(0);
    std::sort(d.begin(), d.end());
    return d;
  }

  /// The recipe as a name and the settings of that kind, resolved for n_layer x n_head: the
  /// readable label a checkpoint keeps beside the table (io/config_json.hpp writes it as JSON).
  struct Recipe {
    std::string kind;  ///< standard, skip_layer, shortcut, dense_shortcut or custom
    std::optional<Index> distance, heads;
    std::optional<SkipMode> mode;
    std::optional<std::vector<Index>> depths;  ///< shortcut depths >= 1 (0: include_embeddings)
    std::optional<Index> feature_width;
    std::optional<bool> include_embeddings;
  };
  Recipe recipe(Index n_layer, Index n_head) const {
    Recipe r;
    switch (kind_) {
      case Kind::standard: r.kind = "standard"; break;
      case Kind::skip_layer:
        r.kind = "skip_layer";
        r.distance = resolved_distance(n_layer);
        r.heads = resolved_skip_heads(n_head);
        r.mode = mode_;
        break;
      case Kind::shortcut:
        r.kind = "shortcut";
        r.depths.emplace();
        for (Index d : resolved_depths(n_layer))
          if (d > 0) r.depths->push_back(d);
        r.feature_width = feature_width_;
        r.include_embeddings = include_embeddings_;
        break;
      case Kind::dense_shortcut:
        r.kind = "dense_shortcut";
        r.feature_width = feature_width_;
        r.include_embeddings = include_embeddings_;
        break;
      case Kind::custom: r.kind = "custom"; break;
    }
    return r;
  }

  /// The source table for a model with n_layer blocks of n_head heads; throws strata::Error for
  /// settings that do not fit (a head count above n_head, a depth out of range, ...).
  PlanTable table(Index n_layer, Index n_head) const { return resolve_table(n_layer, n_head); }

  /// The whole wiring for a model of n_layer blocks, n_head heads and width n_embd: the table,
  /// the feature maps it needs (one per block and feature depth it reads) and the label.
  ResolvedPlan resolve(Index n_layer, Index n_head, Index n_embd) const {
    ResolvedPlan r;
    r.n_layer = n_layer;
    r.n_head = n_head;
    r.sources = resolve_table(n_layer, n_head);
    for (Index l = 0; l < n_layer; ++l) {
      std::vector<Index> depths;
      for (const auto& head : r.sources[size_t(l)])
        for (const SourceRef& s : head)
          if (s.kind == SourceKind::feature) depths.push_back(s.index);
      std::sort(depths.begin(), depths.end());
      depths.erase(std::unique(depths.begin(), depths.end()), depths.end());
      for (Index d : depths)
        r.features.push_back(FeatureMap{d, feature_width_for(l, d, n_embd), l});
    }
    if (!feature_maps_.empty() && !(r.features == feature_maps_))
      fail("custom plan: the feature maps listed (", feature_maps_.size(),
           ") are not the ones its table reads (", r.features.size(),
           "; one per block and feature depth)");
    r.label = describe(n_layer, n_head, n_embd);
    return r;
  }

  /// One line for logs: "skip_layer(distance=default, heads=3, mode=split)"; unset settings read
  /// "default" (depths "all", feature width "C").
  std::string describe() const { return describe_impl(0, 0, 0); }

  /// The same with every default resolved for a model of n_layer blocks of n_head heads and width
  /// n_embd: "skip_layer(distance=3, heads=3, mode=split)", "shortcut(depths=1,2,3,
  /// feature_width=128, embeddings=no)".
  std::string describe(Index n_layer, Index n_head, Index n_embd) const {
    return describe_impl(n_layer, n_head, n_embd);
  }

 private:
  Index feature_width_for(Index block, Index depth, Index n_embd) const {
    for (const FeatureMap& f : feature_maps_)
      if (f.block == block && f.depth == depth) {
        if (f.width < 1)
          fail("custom plan: feature map of depth ", depth, " for block ", block, " has width ",
               f.width, ", expected >= 1");
        return f.width;
      }
    return feature_width_ > 0 ? Index(feature_width_) : n_embd;
  }

  PlanTable resolve_table(Index n_layer, Index n_head) const {
    const size_t L = size_t(n_layer), NH = size_t(n_head);
    PlanTable t(L, std::vector<std::vector<SourceRef>>(NH));
    for (Index l = 0; l < n_layer; ++l)
      for (Index h = 0; h < n_head; ++h)
        t[size_t(l)][size_t(h)] = {SourceRef{SourceKind::layer, l, h}};
    switch (kind_) {
      case Kind::standard: break;
      case Kind::skip_layer: {
        const Index d = resolved_distance(n_layer), n = resolved_skip_heads(n_head);
        if (n > n_head) fail("skip_layer: heads ", n, " exceeds n_head ", n_head);
        for (Index l = d; l < n_layer; ++l)
          for (Index h = 0; h < n; ++h) {
            const SourceRef src{SourceKind::layer, l - d, h};
            if (mode_ == SkipMode::split)
              t[size_t(l)][size_t(h)] = {src};
            else
              t[size_t(l)][size_t(h)].push_back(src);
          }
        break;
      }
      case Kind::shortcut: {
        if (n_layer < 2 && !include_embeddings_)
          fail("shortcut: needs at least 2 layers (or include_embeddings), the model has ",
               n_layer);
        std::vector<Index> d = depths_;
        std::sort(d.begin(), d.end());
        for (size_t i = 0; i < d.size(); ++i) {
          if (d[i] < 1 || d[i] > n_layer - 1)
            fail("shortcut: depth ", d[i], " is out of range, expected 1..", n_layer - 1,
                 " (depth 0, the embeddings, is selected with include_embeddings)");
          if (i > 0 && d[i] == d[i - 1]) fail("shortcut: depth ", d[i], " is listed twice");
        }
        const Index last = n_layer - 1;
        for (Index h = 0; h < n_head; ++h) {
          std::vector<SourceRef> s;
          for (Index r : resolved_depths(n_layer))
            s.push_back(r == input_depth(last) ? SourceRef{SourceKind::layer, last, h}
                                               : SourceRef{SourceKind::feature, r, h});
          t[size_t(last)][size_t(h)] = std::move(s);
        }
        break;
      }
      case Kind::dense_shortcut: {
        // block l: features of depths first..l-1 (ascending), then its own K/V (depth l)
        const Index first = include_embeddings_ ? 0 : 1;
        for (Index l = 1; l < n_layer; ++l)
          for (Index h = 0; h < n_head; ++h) {
            std::vector<SourceRef> s;
            for (Index r = first; r < input_depth(l); ++r) s.push_back({SourceKind::feature, r, h});
            s.push_back({SourceKind::layer, l, h});
            t[size_t(l)][size_t(h)] = std::move(s);
          }
        break;
      }
      case Kind::custom: {
        if (Index(custom_.size()) != n_layer)
          fail("custom plan: table has ", custom_.size(), " layers, expected ", n_layer);
        for (Index l = 0; l < n_layer; ++l) {
          const auto& layer = custom_[size_t(l)];
          if (Index(layer.size()) != n_head)
            fail("custom plan: layer ", l, " has ", layer.size(), " heads, expected ", n_head);
          for (Index h = 0; h < n_head; ++h) {
            const auto& head = layer[size_t(h)];
            if (head.empty()) fail("custom plan: layer ", l, " head ", h, " has no source");
            for (const SourceRef& s : head) {
              if (s.kind == SourceKind::layer && (s.index < 0 || s.index > l))
                fail("custom plan: layer ", l, " head ", h, " reads layer ", s.index,
                     ", expected 0..", l, " (a layer can only read itself or earlier layers)");
              if (s.kind == SourceKind::feature && (s.index < 0 || s.index > input_depth(l)))
                fail("custom plan: layer ", l, " head ", h, " reads feature depth ", s.index,
                     ", expected 0..", input_depth(l), " (block ", l,
                     " sees the embeddings and the outputs of earlier blocks only)");
              if (s.head < 0 || s.head >= n_head)
                fail("custom plan: layer ", l, " head ", h, " reads head ", s.head,
                     ", expected 0..", n_head - 1);
            }
          }
        }
        t = custom_;
        break;
      }
    }
    return t;
  }

  std::string describe_impl(Index n_layer, Index n_head, Index n_embd) const {
    const bool resolve = n_layer > 0;
    std::ostringstream os;
    switch (kind_) {
      case Kind::standard: os << "standard"; break;
      case Kind::skip_layer:
        os << "skip_layer(distance="
           << (resolve     ? std::to_string(resolved_distance(n_layer))
               : distance_ ? std::to_string(*distance_)
                           : "default")
           << ", heads="
           << (resolve       ? std::to_string(resolved_skip_heads(n_head))
               : skip_heads_ ? std::to_string(*skip_heads_)
                             : "default")
           << ", mode=" << to_string(mode_) << ")";
        break;
      case Kind::shortcut: {
        os << "shortcut(depths=";
        const std::vector<Index> d = resolve ? resolved_depths(n_layer) : depths_;
        if (d.empty()) os << "all";
        for (size_t i = 0; i < d.size(); ++i) os << (i ? "," : "") << d[i];
        os << ", feature_width=" << width_text(resolve, n_embd)
           << ", embeddings=" << (include_embeddings_ ? "yes" : "no") << ")";
        break;
      }
      case Kind::dense_shortcut:
        os << "dense_shortcut(feature_width=" << width_text(resolve, n_embd)
           << ", embeddings=" << (include_embeddings_ ? "yes" : "no") << ")";
        break;
      case Kind::custom: os << (label_.empty() ? "custom" : label_); break;
    }
    return os.str();
  }
  std::string width_text(bool resolve, Index n_embd) const {
    return feature_width_ ? std::to_string(feature_width_) : resolve ? std::to_string(n_embd) : "C";
  }

  explicit AttentionPlan(Kind kind) : kind_(kind) {}
  Kind kind_ = Kind::standard;
  std::optional<Index> distance_, skip_heads_;
  SkipMode mode_ = SkipMode::split;
  std::vector<Index> depths_;
  Index feature_width_ = 0;
  bool include_embeddings_ = false;
  PlanTable custom_;
  std::vector<FeatureMap> feature_maps_;  // custom plans read from a checkpoint: exact widths
  std::string label_;                     // custom plans read from a checkpoint: the recipe
};

}  // namespace strata
