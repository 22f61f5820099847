// strata/attention/plan.hpp: the attention plan, i.e. for every layer and head, the list of
// key/value sources that head attends over with one joint softmax (SPEC.md §2).
//
// Standard attention, skip-layer attention (split and concat) and all-layer shortcuts are three
// constructors of the same table; the model reads the table and never asks which variant it runs.
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../core/error.hpp"

namespace strata {

/// Where a head's keys and values come from.
enum class SourceKind {
  /// The K/V that block `index` (0-based) computed for its head `head` from its own input.
  layer,
  /// Shortcut depth `index` (residual-stream depth: 0 = embeddings, r = output of block r-1),
  /// mapped by its feature network and projected with the *consuming* block's Wk/Wv, head `head`.
  feature,
};

/// One key/value source of one head.
struct SourceRef {
  SourceKind kind = SourceKind::layer;
  int index = 0;
  int head = 0;
  friend bool operator==(const SourceRef& a, const SourceRef& b) {
    return a.kind == b.kind && a.index == b.index && a.head == b.head;
  }
};

/// table[l][h] = the sources of head h of block l (0-based).
using PlanTable = std::vector<std::vector<std::vector<SourceRef>>>;

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

/// An attention plan: a named recipe (standard, skip_layer, shortcut) or an explicit table,
/// resolved against a model's layer and head counts by table().
class AttentionPlan {
 public:
  enum class Kind { standard, skip_layer, shortcut, custom };

  /// Every head of block l reads its own K/V (SPEC §2.1).
  static AttentionPlan standard() { return AttentionPlan(Kind::standard); }

  /// Skip-layer attention (SPEC §2.2): in every block l >= distance (0-based), heads h < heads
  /// read the K/V that block l - distance computed for head h (split) or attend over both that
  /// and their own (concat). Unset numbers take the defaults round(3L/4) and round(3NH/4), at
  /// least 1, once the model's sizes are known.
  static AttentionPlan skip_layer(std::optional<int> distance = std::nullopt,
                                  std::optional<int> heads = std::nullopt,
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
  static AttentionPlan shortcut(std::vector<int> depths = {}, long feature_width = 0,
                                bool include_embeddings = false) {
    AttentionPlan p(Kind::shortcut);
    if (feature_width < 0) fail("shortcut: feature_width ", feature_width, " must be >= 0 (0 = C)");
    p.depths_ = std::move(depths);
    p.feature_width_ = feature_width;
    p.include_embeddings_ = include_embeddings;
    return p;
  }

  /// An explicit table of layer sources, e.g. cross-layer KV sharing (SPEC §2.4). Validated
  /// against the model's sizes by table().
  static AttentionPlan custom(PlanTable table) {
    AttentionPlan p(Kind::custom);
    p.custom_ = std::move(table);
    return p;
  }

  /// Cross-layer attention (CLA): every odd block (0-based) reuses all heads of the block below.
  static AttentionPlan cross_layer(int n_layer, int n_head) {
    PlanTable t(n_layer, std::vector<std::vector<SourceRef>>(n_head));
    for (int l = 0; l < n_layer; ++l)
      for (int h = 0; h < n_head; ++h)
        t[l][h] = {SourceRef{SourceKind::layer, (l % 2 == 1) ? l - 1 : l, h}};
    return custom(std::move(t));
  }

  Kind kind() const { return kind_; }
  std::optional<int> distance() const { return distance_; }
  std::optional<int> skip_heads() const { return skip_heads_; }
  SkipMode mode() const { return mode_; }
  const std::vector<int>& depths() const { return depths_; }
  long feature_width() const { return feature_width_; }
  bool include_embeddings() const { return include_embeddings_; }
  const PlanTable& custom_table() const { return custom_; }

  /// The skip distance and head count this plan uses in a model of n_layer x n_head.
  int resolved_distance(int n_layer) const {
    return distance_ ? *distance_ : std::max(1, static_cast<int>(std::lround(0.75 * n_layer)));
  }
  int resolved_skip_heads(int n_head) const {
    return skip_heads_ ? *skip_heads_ : std::max(1, static_cast<int>(std::lround(0.75 * n_head)));
  }

  /// The shortcut depths (sorted, residual-stream numbering, 0 = embeddings) for n_layer blocks.
  std::vector<int> resolved_depths(int n_layer) const {
    std::vector<int> d = depths_;
    if (d.empty())
      for (int r = 1; r < n_layer; ++r) d.push_back(r);
    if (include_embeddings_) d.push_back(0);
    std::sort(d.begin(), d.end());
    return d;
  }

  /// Resolves the plan for a model with n_layer blocks of n_head heads; throws strata::Error for
  /// settings that do not fit (a head count above n_head, a depth out of range, ...).
  PlanTable table(int n_layer, int n_head) const {
    PlanTable t(n_layer, std::vector<std::vector<SourceRef>>(n_head));
    for (int l = 0; l < n_layer; ++l)
      for (int h = 0; h < n_head; ++h) t[l][h] = {SourceRef{SourceKind::layer, l, h}};
    switch (kind_) {
      case Kind::standard:
        break;
      case Kind::skip_layer: {
        const int d = resolved_distance(n_layer), n = resolved_skip_heads(n_head);
        if (n > n_head) fail("skip_layer: heads ", n, " exceeds n_head ", n_head);
        for (int l = d; l < n_layer; ++l)
          for (int h = 0; h < n; ++h) {
            const SourceRef src{SourceKind::layer, l - d, h};
            if (mode_ == SkipMode::split)
              t[l][h] = {src};
            else
              t[l][h].push_back(src);
          }
        break;
      }
      case Kind::shortcut: {
        if (n_layer < 2 && !include_embeddings_)
          fail("shortcut: needs at least 2 layers (or include_embeddings), the model has ", n_layer);
        std::vector<int> d = depths_;
        std::sort(d.begin(), d.end());
        for (size_t i = 0; i < d.size(); ++i) {
          if (d[i] < 1 || d[i] > n_layer - 1)
            fail("shortcut: depth ", d[i], " is out of range, expected 1..", n_layer - 1,
                 " (depth 0, the embeddings, is selected with include_embeddings)");
          if (i > 0 && d[i] == d[i - 1]) fail("shortcut: depth ", d[i], " is listed twice");
        }
        const int last = n_layer - 1;
        for (int h = 0; h < n_head; ++h) {
          std::vector<SourceRef> s;
          for (int r : resolved_depths(n_layer))
            s.push_back(r == last ? SourceRef{SourceKind::layer, last, h}
                                  : SourceRef{SourceKind::feature, r, h});
          t[last][h] = std::move(s);
        }
        break;
      }
      case Kind::custom: {
        if (static_cast<int>(custom_.size()) != n_layer)
          fail("custom plan: table has ", custom_.size(), " layers, expected ", n_layer);
        for (int l = 0; l < n_layer; ++l) {
          if (static_cast<int>(custom_[l].size()) != n_head)
            fail("custom plan: layer ", l, " has ", custom_[l].size(), " heads, expected ", n_head);
          for (int h = 0; h < n_head; ++h) {
            if (custom_[l][h].empty()) fail("custom plan: layer ", l, " head ", h, " has no source");
            for (const SourceRef& s : custom_[l][h]) {
              if (s.kind != SourceKind::layer)
                fail("custom plan: layer ", l, " head ", h,
                     ": feature sources exist only in shortcut plans");
              if (s.index < 0 || s.index > l)
                fail("custom plan: layer ", l, " head ", h, " reads layer ", s.index,
                     ", expected 0..", l, " (a layer can only read itself or earlier layers)");
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

  /// One line for logs: "skip_layer(distance=default, heads=3, mode=split)"; unset settings read
  /// "default" (depths "all", feature width "C").
  std::string describe() const { return describe_impl(0, 0, 0); }

  /// The same with every default resolved for a model of n_layer blocks of n_head heads and width
  /// n_embd: "skip_layer(distance=3, heads=3, mode=split)", "shortcut(depths=1,2,3,
  /// feature_width=128, embeddings=no)".
  std::string describe(int n_layer, int n_head, long n_embd) const {
    return describe_impl(n_layer, n_head, n_embd);
  }

 private:
  std::string describe_impl(int n_layer, int n_head, long n_embd) const {
    const bool resolve = n_layer > 0;
    std::ostringstream os;
    switch (kind_) {
      case Kind::standard: os << "standard"; break;
      case Kind::skip_layer:
        os << "skip_layer(distance="
           << (resolve ? std::to_string(resolved_distance(n_layer))
                       : distance_ ? std::to_string(*distance_) : "default")
           << ", heads="
           << (resolve ? std::to_string(resolved_skip_heads(n_head))
                       : skip_heads_ ? std::to_string(*skip_heads_) : "default")
           << ", mode=" << to_string(mode_) << ")";
        break;
      case Kind::shortcut: {
        os << "shortcut(depths=";
        const std::vector<int> d = resolve ? resolved_depths(n_layer) : depths_;
        if (d.empty()) os << "all";
        for (size_t i = 0; i < d.size(); ++i) os << (i ? "," : "") << d[i];
        os << ", feature_width="
           << (feature_width_ ? std::to_string(feature_width_)
                              : resolve ? std::to_string(n_embd) : "C")
           << ", embeddings=" << (include_embeddings_ ? "yes" : "no") << ")";
        break;
      }
      case Kind::custom: os << "custom"; break;
    }
    return os.str();
  }

  explicit AttentionPlan(Kind kind) : kind_(kind) {}
  Kind kind_ = Kind::standard;
  std::optional<int> distance_, skip_heads_;
  SkipMode mode_ = SkipMode::split;
  std::vector<int> depths_;
  long feature_width_ = 0;
  bool include_embeddings_ = false;
  PlanTable custom_;
};

}  // namespace strata
