// strata/model/kv_cache.hpp: keys and values kept for incremental decoding.
#pragma once

#include <vector>

#include "../core/types.hpp"

namespace strata {

template <typename Scalar>
class GPT;

/// Keys and values of every block and of every feature map of the plan, for incremental decoding.
/// Made by GPT::make_cache; holds `capacity` = context_length positions for `batch` sequences.
template <typename Scalar>
class KVCache {
 public:
  KVCache() = default;
  Index batch() const { return B_; }
  Index capacity() const { return capacity_; }
  /// Positions already in the cache (the absolute position of the next token).
  Index length() const { return length_; }
  /// Forgets the cached positions (keeps the memory).
  void clear() { length_ = 0; }
  /// Bytes held by the cache, all layers.
  Index bytes() const {
    Index n = 0;
    for (const auto& m : layer_kv_) n += m.size();
    for (const auto& m : feature_kv_) n += m.size();
    return n * Index(sizeof(Scalar));
  }

 private:
  friend class GPT<Scalar>;
  Index B_ = 0, capacity_ = 0, length_ = 0;
  std::vector<Matrix<Scalar>> layer_kv_;    ///< per block: [B*capacity, 2C], keys then values
  std::vector<Matrix<Scalar>> feature_kv_;  ///< per feature map of the plan: [B*capacity, 2C]
};

}  // namespace strata
