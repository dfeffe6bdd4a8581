#pragma once
/// @file
/// @brief KVCache<T>: the keys and values of the tokens decoded so far, allocated once.

#include <algorithm>
#include <cstddef>

#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Keys and values (B, K, capacity, D) of an autoregressive decoder, appended a chunk
/// at a time (flash_attn_with_kvcache's cache, HF's past_key_values).
///
/// The memory is allocated once by the constructor; appending copies a chunk into place
/// and never reallocates. keys() and values() view the first length() positions as the
/// head-major (B, K, length, D) layout the attention kernels read. Ragged prompts in one
/// batch share the length: mask the padding with a key padding mask.
template <class T>
class KVCache {
 public:
  /// An empty cache of capacity 0.
  KVCache() = default;
  /// @param batch B; @param kv_heads K, the key/value heads; @param capacity the most
  /// positions it can hold; @param head_dim D
  /// @throws std::invalid_argument for negative sizes or an element count that overflows
  KVCache(Index batch, Index kv_heads, Index capacity, Index head_dim)
      : batch_(batch), heads_(kv_heads), capacity_(capacity), head_dim_(head_dim) {
    detail::require(batch >= 0 && kv_heads >= 0 && capacity >= 0 && head_dim >= 0, "attn::KVCache: batch (", batch,
                    "), kv_heads (", kv_heads, "), capacity (", capacity, ") and head_dim (", head_dim,
                    ") must be >= 0");
    const Index n = detail::checked_numel({batch, kv_heads, capacity, head_dim}, "attn::KVCache");
    keys_.resize(n);
    values_.resize(n);
  }

  Index batch() const { return batch_; }        ///< B
  Index kv_heads() const { return heads_; }     ///< K
  Index capacity() const { return capacity_; }  ///< the most positions it can hold
  Index head_dim() const { return head_dim_; }  ///< D
  Index length() const { return length_; }      ///< positions held
  /// Bytes of keys and values allocated (the whole capacity).
  std::size_t bytes() const { return sizeof(T) * static_cast<std::size_t>(keys_.size() + values_.size()); }

  /// @brief Checks that the cache suits a layer's call: `batch` sequences, `kv_heads` heads of
  /// `head_dim`, and room for `more` positions.
  /// @param where the caller's name, which starts the message
  /// @param batch B of the call; @param kv_heads K of the layer; @param head_dim D of the layer
  /// @param more positions the call will append
  /// @throws std::invalid_argument naming both shapes, or the length and capacity
  void require_fits(const char* where, Index batch, Index kv_heads, Index head_dim, Index more) const {
    detail::require(batch_ == batch && heads_ == kv_heads && head_dim_ == head_dim, where, ": the cache is (batch ",
                    batch_, ", kv_heads ", heads_, ", head_dim ", head_dim_, "), the layer and input need (", batch,
                    ", ", kv_heads, ", ", head_dim, ")");
    detail::require(more <= capacity_ - length_, where, ": ", more, " more tokens do not fit the cache (length ",
                    length_, ", capacity ", capacity_, ")");
  }

  /// Forgets every position (the memory is kept).
  void reset() { length_ = 0; }
  /// @brief Forgets the positions from `length` on (rolls back to a shorter cache).
  /// @throws std::invalid_argument if length is negative or beyond length()
  void truncate(Index length) {
    detail::require(length >= 0 && length <= length_, "attn::KVCache::truncate: length ", length,
                    " is not between 0 and the current length ", length_);
    length_ = length;
  }

  /// @brief Appends a chunk of C positions.
  /// @param k (B, K, C, D) keys; @param v (B, K, C, D) values (any strides)
  /// @throws std::invalid_argument, the cache unchanged, when the shapes differ from the
  /// cache's or length() + C would pass the capacity
  void append(const HeadsView<const T>& k, const HeadsView<const T>& v) {
    require_chunk("append", k.shape(), v.shape(), k.length);
    for (Index b = 0; b < batch_; ++b)
      for (Index h = 0; h < heads_; ++h) {
        StridedMap<T>(keys_.data() + offset(b, h, length_), k.length, head_dim_, Eigen::OuterStride<>(head_dim_)) =
            k.head(b, h);
        StridedMap<T>(values_.data() + offset(b, h, length_), v.length, head_dim_, Eigen::OuterStride<>(head_dim_)) =
            v.head(b, h);
      }
    length_ += k.length;
  }

  /// The keys of the positions held: (B, K, length, D).
  HeadsView<const T> keys() const { return view(keys_.data(), 0, length_); }
  /// The values of the positions held: (B, K, length, D).
  HeadsView<const T> values() const { return view(values_.data(), 0, length_); }

  /// @brief The next C positions as writable views (B, K, C, D), for a projection that writes
  /// its keys and values in place; commit(C) then makes them part of the cache.
  /// @throws std::invalid_argument if length() + C would pass the capacity
  HeadsView<T> next_keys(Index count) { return view(keys_.data(), length_, checked_count(count)); }
  /// The values' counterpart of next_keys.
  HeadsView<T> next_values(Index count) { return view(values_.data(), length_, checked_count(count)); }
  /// Makes the next `count` positions, written through next_keys / next_values, part of the cache.
  void commit(Index count) { length_ += checked_count(count); }

 private:
  Index offset(Index b, Index h, Index n) const { return ((b * heads_ + h) * capacity_ + n) * head_dim_; }

  template <class P>
  HeadsView<P> view(P* data, Index first, Index count) const {
    return {data + first * head_dim_, batch_, heads_, count, head_dim_, heads_ * capacity_ * head_dim_,
            capacity_ * head_dim_, head_dim_};
  }

  Index checked_count(Index count) const {
    detail::require(count >= 0 && count <= capacity_ - length_, "attn::KVCache: ", count,
                    " more positions do not fit (length ", length_, ", capacity ", capacity_, ")");
    return count;
  }

  void require_chunk(const char* what, const Shape& k, const Shape& v, Index count) const {
    const Shape want{batch_, heads_, count, head_dim_};
    detail::require(k == want && v == want, "attn::KVCache::", what, ": k ", k, " and v ", v,
                    " must be (batch, kv_heads, chunk, head_dim) = ", want, " for this cache");
    checked_count(count);
  }

  Index batch_ = 0, heads_ = 0, capacity_ = 0, head_dim_ = 0, length_ = 0;
  Vector<T> keys_, values_;
};

}  // namespace attn
