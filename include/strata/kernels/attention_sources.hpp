// strata/kernels/attention_sources.hpp: where the keys and values of each head of the attention
// kernel come from (kernels/attention.hpp): one KVSource per head and source, listed per head.
#pragma once

#include <cstddef>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace strata {

/// Keys and values of ONE head of ONE source, for all batch elements.
/// Key row tau of batch element b starts at k + b*batch_stride + tau*row_stride and holds head_size
/// contiguous scalars; same layout for v, dk, dv. dk/dv are gradient destinations (accumulated,
/// +=), required (non-null) only by attention_backward.
template <typename Scalar>
struct KVSource {
  const Scalar* k = nullptr;
  const Scalar* v = nullptr;
  Scalar* dk = nullptr;
  Scalar* dv = nullptr;
  Index row_stride = 0;
  Index batch_stride = 0;
  Index length = 0;  // key rows available per batch element
};

/// For each head, the list of sources it attends over with ONE joint softmax. Flat storage (one
/// vector of sources plus per-head offsets): building it once and reusing it allocates nothing per
/// step. Sources of a head keep their order of insertion; heads may be filled in any interleaving.
template <typename Scalar>
class AttentionSources {
 public:
  explicit AttentionSources(Index n_head = 0) { reset(n_head); }

  Index n_head() const { return static_cast<Index>(offsets_.size()) - 1; }

  /// Appends a source to the list of `head`.
  void add(Index head, const KVSource<Scalar>& source) {
    check_head("add", head);
    sources_.insert(sources_.begin() + offsets_[at(head + 1)], source);
    for (Index h = head + 1; h <= n_head(); ++h) ++offsets_[at(h)];
  }

  /// Number of sources of `head`.
  Index count(Index head) const {
    check_head("count", head);
    return offsets_[at(head + 1)] - offsets_[at(head)];
  }

  /// Source i of `head`, in order of insertion.
  const KVSource<Scalar>& source(Index head, Index i) const {
    const Index n = count(head);
    STRATA_CHECK(0 <= i && i < n, "AttentionSources::source: index ", i,
                 " is out of range, expected 0 <= index < ", n, " (sources of head ", head, ")");
    return sources_[at(offsets_[at(head)] + i)];
  }

  /// The largest count over heads (the S of attention_source_mass).
  Index max_count() const {
    Index s = 0;
    for (Index h = 0; h < n_head(); ++h) s = std::max(s, count(h));
    return s;
  }

  /// Removes every source and sets the number of heads; keeps the capacity.
  void reset(Index n_head) {
    STRATA_CHECK(n_head >= 0, "AttentionSources: n_head is ", n_head, ", expected >= 0");
    sources_.clear();
    offsets_.assign(at(n_head + 1), 0);
  }

 private:
  static std::size_t at(Index i) { return static_cast<std::size_t>(i); }
  void check_head(const char* method, Index head) const {
    STRATA_CHECK(0 <= head && head < n_head(), "AttentionSources::", method, ": head ", head,
                 " is out of range, expected 0 <= head < ", n_head(), " (n_head)");
  }

  std::vector<KVSource<Scalar>> sources_;
  std::vector<Index> offsets_;  // sources of head h: sources_[offsets_[h] .. offsets_[h+1])
};

}  // namespace strata
