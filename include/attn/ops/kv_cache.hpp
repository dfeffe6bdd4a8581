#pragma once
/// @file
/// @brief KVCache<T, S>: the keys and values of the tokens decoded so far, allocated once,
/// stored in T or in a smaller type S (bfloat16, half, int8).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"

namespace attn {

/// @brief The pool of a paged KVCache: `pages` pages of `page_size` positions each, shared by
/// every sequence of the cache.
struct KVPages {
  Index page_size = 0;  ///< positions per page (vLLM's block size)
  Index pages = 0;      ///< pages in the pool
};

/// @brief Keys and values (B, K, capacity, D) of an autoregressive decoder, appended a chunk
/// at a time (flash_attn_with_kvcache's cache, HF's past_key_values).
///
/// The memory is allocated once by the constructor; appending copies a chunk into place
/// and never reallocates. keys() and values() view the first length() positions as the
/// head-major (B, K, length, D) layout the attention kernels read.
///
/// Sequences may hold different lengths (a ragged batch: a server's requests, each at its
/// own position). truncate(b, n) shortens one sequence (n = 0 frees its slot for a new
/// request) and assign(b, other, c) copies sequence c of another cache (a prompt prefilled
/// alone) into slot b. Every append then writes each sequence's chunk at its own end;
/// length() is the longest, length(b) and position(b) each sequence's, and key_lengths()
/// tells attention (SdpaOptions::key_lengths) which keys each sequence holds, so that no
/// step computes on another sequence's padding.
///
/// A paged cache (constructed with KVPages, as vLLM's) keeps its positions in a pool of
/// pages of (K, page_size, D) shared by every sequence, with a block table per sequence: an
/// append takes pages from the pool as a sequence needs them, truncate(b, n) and pop return
/// them, and memory follows the positions actually held instead of batch x capacity.
/// fork(b, from) makes sequence b a copy of sequence `from` that shares its pages; the first
/// append to a shared page that is not full copies it first (copy on write), so a prompt
/// prefilled once serves many sequences. keys() and values() are then paged views
/// (HeadsView::pages), which the attention kernels read in place with the same bits as a
/// contiguous cache. Only a contiguous cache rolls.
///
/// A rolling cache (set_rolling_window(W), for layers with a sliding window of at most W
/// keys) never runs out: an append that would pass the capacity first drops the oldest
/// positions, keeping the last W - 1, which are all that a new query can still see. Memory
/// stays the capacity's; keys() then starts at position first(), and position() counts
/// every token appended (RoPE's position of the next one).
///
/// T is the type the layer computes in, S the type the cache stores (T by default):
/// - float, bfloat16 or half: each key and value is rounded to S once, when it is appended
///   (a bfloat16 or half cache holds half the bytes of a float one);
/// - std::int8_t: each row of D values (one token of one key/value head) is quantised
///   symmetrically once, when it is appended: scale = max|x| / 127 in float32 and
///   q = round-half-even(x / scale) (all zero when max|x| = 0), as torch.round would; the
///   scales are stored beside (key_scales(), value_scales()). A quarter of a float cache's
///   bytes, plus 4 bytes per row.
/// The attention kernels read every S in place, widening (and scaling) in registers; the
/// cache is never converted as a whole. S other than T needs T in float32 or 16 bits.
template <class T, class S = T>
class KVCache {
  static_assert(std::is_same<S, T>::value ||
                    (std::is_same<compute_t<T>, float>::value &&
                     (std::is_same<S, float>::value || detail::is_storage16<S>::value ||
                      std::is_same<S, std::int8_t>::value)),
                "KVCache<T, S>: S is T, or float, bfloat16, half or int8_t for a float32 or 16-bit T");

 public:
  /// Whether S is std::int8_t: rows stored with a scale each.
  static constexpr bool kQuantised = std::is_same<S, std::int8_t>::value;

  /// An empty cache of capacity 0.
  KVCache() = default;
  /// @param batch B; @param kv_heads K, the key/value heads; @param capacity the most
  /// positions it can hold; @param head_dim D
  /// @throws std::invalid_argument for negative sizes or an element count that overflows
  KVCache(Index batch, Index kv_heads, Index capacity, Index head_dim)
      : KVCache(batch, kv_heads, capacity, head_dim, batch, capacity, false) {}
  /// A paged cache (see the class) whose sequences hold at most `capacity` positions each,
  /// in a pool of pool.pages pages of pool.page_size positions.
  /// @param batch B; @param kv_heads K; @param capacity the most positions one sequence can
  /// hold; @param head_dim D; @param pool the pages
  /// @throws std::invalid_argument for negative sizes, a page size below 1, more than 2^31 - 1
  /// pages or an element count that overflows
  KVCache(Index batch, Index kv_heads, Index capacity, Index head_dim, KVPages pool)
      : KVCache(batch, kv_heads, capacity, head_dim, pool.pages, pool.page_size, true) {}

  Index batch() const { return batch_; }        ///< B
  Index kv_heads() const { return heads_; }     ///< K
  Index capacity() const { return capacity_; }  ///< the most positions it can hold
  Index head_dim() const { return head_dim_; }  ///< D
  Index length() const { return length_; }      ///< positions held (the longest sequence's)
  /// @brief The positions sequence b holds.
  /// @throws std::invalid_argument unless 0 <= b < batch()
  Index length(Index b) const { return static_cast<Index>(lengths_[checked_sequence("length", b)]); }
  /// Whether the sequences hold different lengths.
  bool ragged() const {
    return std::any_of(lengths_.begin(), lengths_.end(), [&](std::int64_t n) { return n != length_; });
  }
  /// (B) each sequence's length, as SdpaOptions::key_lengths takes it, when they differ
  /// (ragged()); else empty (every sequence holds length()). Valid until the next change.
  TensorView<const std::int64_t> key_lengths() const {
    return ragged() ? TensorView<const std::int64_t>(lengths_.data(), {batch_}) : TensorView<const std::int64_t>();
  }
  /// The position (counted from the first token appended) of the first position held: 0
  /// unless a rolling cache dropped some.
  Index first() const { return first_; }
  /// The position of the next token appended: first() + length().
  Index position() const { return first_ + length_; }
  /// The position of sequence b's next token: first() + length(b).
  Index position(Index b) const { return first_ + length(b); }
  /// W of a rolling cache, 0 for one that holds every position.
  Index rolling_window() const { return window_; }
  /// Bytes of keys and values allocated (the whole capacity, or pool), with int8's scales.
  std::size_t bytes() const { return page_bytes() * static_cast<std::size_t>(pages_); }
  /// Bytes of the pages sequences hold: bytes() for a contiguous cache (each sequence owns its
  /// capacity), the pages in use for a paged one.
  std::size_t bytes_in_use() const { return page_bytes() * static_cast<std::size_t>(pages_ - free_pages()); }
  /// Whether the cache is paged (constructed with KVPages).
  bool paged() const { return paged_; }
  /// Positions per page: the page size of a paged cache, the capacity of a contiguous one
  /// (whose sequence b owns page b).
  Index page_size() const { return page_size_; }
  /// Pages in the pool (a contiguous cache's: batch()).
  Index pages() const { return pages_; }
  /// Pages no sequence holds (a contiguous cache's: 0).
  Index free_pages() const { return static_cast<Index>(free_.size()); }

  /// @brief Checks that the cache suits a layer's call: `batch` sequences, `kv_heads` heads of
  /// `head_dim`, room for `more` positions, and, if the cache rolls, a layer whose queries
  /// see no further back than it keeps.
  /// @param where the caller's name, which starts the message
  /// @param batch B of the call; @param kv_heads K of the layer; @param head_dim D of the layer
  /// @param more positions the call will append
  /// @param sliding_window the layer's sliding window (keys), if it has one
  /// @throws std::invalid_argument naming both shapes, the length and capacity, or the windows
  void require_fits(const char* where, Index batch, Index kv_heads, Index head_dim, Index more,
                    std::optional<Index> sliding_window = std::nullopt) const {
    detail::require(batch_ == batch && heads_ == kv_heads && head_dim_ == head_dim, where, ": the cache is (batch ",
                    batch_, ", kv_heads ", heads_, ", head_dim ", head_dim_, "), the layer and input need (", batch,
                    ", ", kv_heads, ", ", head_dim, ")");
    detail::require(!window_ || (sliding_window && *sliding_window <= window_), where,
                    ": the cache rolls with a window of ", window_, " positions, the layer's sliding window is ",
                    sliding_window ? std::to_string(*sliding_window) : std::string("none (it sees every position)"));
    detail::require(more <= room(), where, ": ", more, " more tokens do not fit the cache (", fill(), ")");
  }

  /// @brief Makes the cache rolling for layers whose sliding window is at most `window` keys
  /// (see the class). With a capacity of 2 * window, the kept rows move once every
  /// window + 1 single-token steps; a chunk can have up to capacity - (window - 1) tokens.
  /// @throws std::invalid_argument, the cache unchanged, unless 1 <= window <= capacity(), or
  /// if the sequences are ragged (a rolling cache keeps one length for all) or the cache paged
  void set_rolling_window(Index window) {
    detail::require(window >= 1 && window <= capacity_, "attn::KVCache::set_rolling_window: window ", window,
                    " is not between 1 and the capacity ", capacity_);
    detail::require(!ragged(), "attn::KVCache::set_rolling_window: the sequences hold different lengths");
    detail::require(!paged_, "attn::KVCache::set_rolling_window: a paged cache does not roll");
    window_ = window;
  }

  /// The most positions one append (to every sequence) can take now: within the capacity,
  /// and for a paged cache within the free pages.
  Index room() const {
    const Index most = capacity_ - (window_ ? std::min(length_, window_ - 1) : length_);
    if (!paged_) return most;
    Index lo = 0, hi = most;  // pages_needed grows with the count: the largest count that fits
    while (lo < hi) {
      const Index mid = hi - (hi - lo) / 2;
      if (pages_needed(mid) <= free_pages())
        lo = mid;
      else
        hi = mid - 1;
    }
    return lo;
  }
  /// The positions held after appending `count` (a rolling cache may drop old ones first).
  Index length_after(Index count) const { return (needs_roll(count) ? window_ - 1 : length_) + count; }

  /// Forgets every position (the memory is kept, a paged cache's pages all free; position()
  /// starts again at 0).
  void reset() {
    for (Index b = 0; b < batch_; ++b) release(b, 0);
    length_ = first_ = 0;
  }
  /// @brief Forgets the positions from `length` on in every sequence (rolls back to a
  /// shorter cache).
  /// @throws std::invalid_argument if length is negative or beyond length()
  void truncate(Index length) {
    detail::require(length >= 0 && length <= length_, "attn::KVCache::truncate: length ", length,
                    " is not between 0 and the current length ", length_);
    for (Index b = 0; b < batch_; ++b) release(b, std::min<Index>(lengths_[std::size_t(b)], length));
    length_ = length;
  }
  /// @brief Forgets the positions of sequence b from `length` on; 0 frees the sequence's slot
  /// for a new one.
  /// @throws std::invalid_argument, the cache unchanged, for a b or length out of range, or
  /// a rolling cache
  void truncate(Index b, Index length) {
    checked_sequence("truncate", b);
    detail::require(length >= 0 && length <= lengths_[b], "attn::KVCache::truncate: length ", length,
                    " is not between 0 and sequence ", b, "'s length ", lengths_[b]);
    detail::require(!window_, "attn::KVCache::truncate: a rolling cache keeps one length for all sequences");
    release(b, length);
    set_length(b, length);
  }
  /// @brief Undoes the last append of `count` positions: every sequence forgets its last count.
  /// @throws std::invalid_argument unless 0 <= count <= every sequence's length
  void pop(Index count) {
    const Index shortest = lengths_.empty() ? length_ : *std::min_element(lengths_.begin(), lengths_.end());
    detail::require(count >= 0 && count <= shortest, "attn::KVCache::pop: ", count,
                    " positions are not between 0 and the shortest sequence's length ", shortest);
    for (Index b = 0; b < batch_; ++b) release(b, lengths_[std::size_t(b)] - count);
    length_ -= count;
  }
  /// @brief Sequence b becomes a copy of sequence `from` of `other` (its keys, values and
  /// length; a prompt prefilled alone joins a batch). Either cache may be paged.
  /// @throws std::invalid_argument, the cache unchanged, when the heads or head dims differ,
  /// b or from is out of range, the sequence does not fit the capacity (or the free pages), or
  /// either cache rolls
  void assign(Index b, const KVCache& other, Index from) {
    checked_sequence("assign", b);
    const Index n = other.length(from);
    if (&other == this && b == from) return;
    detail::require(other.kv_heads() == heads_ && other.head_dim() == head_dim_ && n <= capacity_ && !window_ &&
                        !other.rolling_window(),
                    "attn::KVCache::assign: sequence ", from, " of a cache of ", other.kv_heads(), " heads of ",
                    other.head_dim(), " (length ", n, ") does not fit this one of ", heads_, " heads of ", head_dim_,
                    " (capacity ", capacity_, "), or a cache rolls");
    if (paged_)
      detail::require(pages_for(n) <= free_pages() + pages_freed(b), "attn::KVCache::assign: sequence ", from,
                      " (length ", n, ") needs ", pages_for(n), " pages, the pool has ", free_pages(),
                      " free and sequence ", b, " frees ", pages_freed(b));
    release(b, 0);
    set_length(b, 0);
    make_room(b, n);
    for (Index h = 0; h < heads_; ++h)
      for (Index j = 0; j < n; ++j) {
        const Index r = row(b, h, j);
        const auto copy = [](const auto* src, auto* dst, Index width) { std::copy(src, src + width, dst); };
        copy(other.keys().row(from, h, j), keys_.data() + r * head_dim_, head_dim_);
        copy(other.values().row(from, h, j), values_.data() + r * head_dim_, head_dim_);
        if (kQuantised) {
          key_scales_[r] = *other.key_scales().row(from, h, j);
          value_scales_[r] = *other.value_scales().row(from, h, j);
        }
      }
    set_length(b, n);
  }

  /// @brief Sequence b becomes a copy of sequence `from` of this cache. A paged cache shares
  /// from's pages with b (a page both hold is copied when either first appends into it); a
  /// contiguous one copies them (assign). Prefix sharing: a prompt prefilled once, forked into
  /// the sequences that continue it.
  /// @throws std::invalid_argument, the cache unchanged, as assign
  void fork(Index b, Index from) {
    checked_sequence("fork", b);
    checked_sequence("fork", from);
    if (!paged_) return assign(b, *this, from);
    if (b == from) return;
    release(b, 0);
    const Index n = lengths_[std::size_t(from)];
    for (Index i = 0; i < pages_for(n); ++i) {
      const std::int32_t p = table_[std::size_t(from * width_ + i)];
      table_[std::size_t(b * width_ + i)] = p;
      ++refs_[std::size_t(p)];
    }
    set_length(b, n);
  }

  /// @brief Appends a chunk of C positions to every sequence, each at its own end, rounded
  /// or quantised to S.
  /// @param k (B, K, C, D) keys; @param v (B, K, C, D) values (any strides)
  /// @throws std::invalid_argument, the cache unchanged, when the shapes differ from the
  /// cache's or C is more than room()
  void append(const HeadsView<const T>& k, const HeadsView<const T>& v) {
    require_chunk("append", k.shape(), v.shape(), k.length);
    roll(k.length);
    for (Index b = 0; b < batch_; ++b) make_room(b, k.length);
    for (Index b = 0; b < batch_; ++b)
      for (Index h = 0; h < heads_; ++h)
        for (Index n = 0; n < k.length; ++n) {
          const Index r = row(b, h, lengths_[b] + n), at = r * head_dim_;
          store_row(k.row(b, h, n), keys_.data() + at, kQuantised ? key_scales_.data() + r : nullptr);
          store_row(v.row(b, h, n), values_.data() + at, kQuantised ? value_scales_.data() + r : nullptr);
        }
    grow(k.length);
  }

  /// @brief Appends `count` positions whose keys and values write(k, v) writes into two
  /// (B, K, count, D) views of T: the cache's own memory when S is T, the cache contiguous and
  /// the sequences share one length (a projection writes straight into the cache), else a
  /// buffer then appended
  /// (rounded or quantised, each sequence at its end). Nothing is
  /// appended if write throws (a rolling cache may have dropped positions that no new query
  /// can see).
  /// @throws std::invalid_argument, the cache unchanged, if count is more than room()
  template <class Write>
  void append_written(Index count, Write&& write) {
    checked_count(count);
    if constexpr (std::is_same<S, T>::value) {
      if (!ragged() && !paged_) {
        roll(count);
        write(view(keys_.data(), length_, count), view(values_.data(), length_, count));
        grow(count);
        return;
      }
    }
    const detail::WorkBuffer<T> k(batch_ * heads_ * count * head_dim_), v(k.size());
    const auto kh = HeadsView<T>::bhnd(k.data(), batch_, heads_, count, head_dim_),
               vh = HeadsView<T>::bhnd(v.data(), batch_, heads_, count, head_dim_);
    write(kh, vh);
    append(kh, vh);
  }

  /// The keys of the positions held: (B, K, length, D), in S (a paged view if the cache is).
  HeadsView<const S> keys() const { return view(keys_.data(), 0, length_); }
  /// The values of the positions held: (B, K, length, D), in S.
  HeadsView<const S> values() const { return view(values_.data(), 0, length_); }
  /// For int8: the scale of each key row (B, K, length) (paged as keys()), else empty.
  RowScales key_scales() const { return scales(key_scales_); }
  /// For int8: the scale of each value row (B, K, length), else empty.
  RowScales value_scales() const { return scales(value_scales_); }

 private:
  /// The constructors' common part: `pages` pages of (K, page_size, D); if paged, all free
  /// and a block table of ceil(capacity / page_size) pages per sequence.
  KVCache(Index batch, Index kv_heads, Index capacity, Index head_dim, Index pages, Index page_size, bool paged)
      : batch_(batch), heads_(kv_heads), capacity_(capacity), head_dim_(head_dim), pages_(pages),
        page_size_(page_size), paged_(paged) {
    detail::require(batch >= 0 && kv_heads >= 0 && capacity >= 0 && head_dim >= 0 && pages >= 0, "attn::KVCache: batch (",
                    batch, "), kv_heads (", kv_heads, "), capacity (", capacity, "), head_dim (", head_dim,
                    ") and pages (", pages, ") must be >= 0");
    detail::require(!paged || (page_size >= 1 && pages <= std::numeric_limits<std::int32_t>::max()),
                    "attn::KVCache: a paged cache needs pages of at least 1 position and at most 2^31 - 1 pages, got ",
                    pages, " pages of ", page_size);
    const Index n = detail::checked_numel({pages, kv_heads, page_size, head_dim}, "attn::KVCache");
    lengths_.assign(static_cast<std::size_t>(batch), 0);
    if (paged) {
      width_ = std::max<Index>(1, (capacity + page_size - 1) / page_size);
      table_.assign(static_cast<std::size_t>(detail::checked_numel({batch, width_}, "attn::KVCache")), 0);
      refs_.assign(static_cast<std::size_t>(pages), 0);
      for (Index p = pages; p-- > 0;) free_.push_back(static_cast<std::int32_t>(p));  // page 0 is taken first
    }
    keys_.resize(n);
    values_.resize(n);
    if (kQuantised) {
      key_scales_.setZero(pages * kv_heads * page_size);
      value_scales_.setZero(pages * kv_heads * page_size);
    }
  }

  /// Row (one token of one key/value head) n of sequence b, head h, in the pool of
  /// (pages, K, page_size) rows; its D values start at row * D.
  Index row(Index b, Index h, Index n) const {
    if (!paged_) return (b * heads_ + h) * page_size_ + n;
    return (table_[std::size_t(b * width_ + n / page_size_)] * heads_ + h) * page_size_ + n % page_size_;
  }

  /// Bytes of one page: its keys, values and int8 scales.
  std::size_t page_bytes() const {
    const std::size_t rows = static_cast<std::size_t>(heads_ * page_size_);
    return rows * (2 * sizeof(S) * static_cast<std::size_t>(head_dim_) + (kQuantised ? 2 * sizeof(float) : 0));
  }
  /// Pages that hold n positions (paged caches only: a contiguous one's page size may be 0).
  Index pages_for(Index n) const { return (n + page_size_ - 1) / page_size_; }
  /// Whether sequence b's last page is partly filled and shared with another sequence: an
  /// append to b copies it first.
  bool shared_tail(Index b) const {
    const Index n = lengths_[std::size_t(b)];
    return paged_ && n % page_size_ != 0 && refs_[std::size_t(table_[std::size_t(b * width_ + n / page_size_)])] > 1;
  }
  /// Pages an append of `count` positions to every sequence takes from the pool, at most (a
  /// shared tail counts for each sequence that copies it).
  Index pages_needed(Index count) const {
    if (!paged_ || count == 0) return 0;
    Index pages = 0;
    for (Index b = 0; b < batch_; ++b) {
      const Index n = lengths_[std::size_t(b)];
      pages += pages_for(n + count) - pages_for(n) + (shared_tail(b) ? 1 : 0);
    }
    return pages;
  }
  /// Pages that return to the pool if sequence b of a paged cache releases all of its own.
  Index pages_freed(Index b) const {
    Index pages = 0;
    for (Index i = 0; i < pages_for(lengths_[std::size_t(b)]); ++i)
      pages += refs_[std::size_t(table_[std::size_t(b * width_ + i)])] == 1;
    return pages;
  }
  /// Paged: sequence b gets the pages its next `count` positions need, its shared tail copied.
  void make_room(Index b, Index count) {
    if (!paged_ || count == 0) return;
    const Index n = lengths_[std::size_t(b)];
    std::int32_t* pages = table_.data() + b * width_;
    if (shared_tail(b)) {
      const std::int32_t shared = pages[n / page_size_], own = take_page();
      const Index rows = heads_ * page_size_;
      const auto copy = [&](auto& data, Index width) {
        std::copy(data.data() + shared * rows * width, data.data() + (shared + 1) * rows * width,
                  data.data() + own * rows * width);
      };
      copy(keys_, head_dim_);
      copy(values_, head_dim_);
      if (kQuantised) copy(key_scales_, 1), copy(value_scales_, 1);
      drop_page(shared);
      pages[n / page_size_] = own;
    }
    for (Index i = pages_for(n); i < pages_for(n + count); ++i) pages[i] = take_page();
  }
  /// Sequence b keeps its first n positions: a paged cache's pages past them return to the pool.
  void release(Index b, Index n) {
    if (paged_)
      for (Index i = pages_for(n); i < pages_for(lengths_[std::size_t(b)]); ++i) {
        drop_page(table_[std::size_t(b * width_ + i)]);
        table_[std::size_t(b * width_ + i)] = 0;
      }
    lengths_[std::size_t(b)] = n;
  }
  std::int32_t take_page() {
    const std::int32_t p = free_.back();
    free_.pop_back();
    refs_[std::size_t(p)] = 1;
    return p;
  }
  void drop_page(std::int32_t p) {
    if (--refs_[std::size_t(p)] == 0) free_.push_back(p);
  }
  /// What holds how much, for messages: the length and capacity, the window, the free pages.
  std::string fill() const {
    std::string s = "length " + std::to_string(length_) + ", capacity " + std::to_string(capacity_);
    if (window_) s += ", rolling window " + std::to_string(window_);
    if (paged_) s += ", " + std::to_string(free_.size()) + " free pages of " + std::to_string(page_size_) + " positions";
    return s;
  }

  bool needs_roll(Index count) const { return window_ && length_ + count > capacity_ && length_ > window_ - 1; }

  /// A rolling cache about to take `count` positions it has no room for: moves the last
  /// window - 1 rows of every (sequence, head) to the front and drops the others.
  void roll(Index count) {
    if (!needs_roll(count)) return;
    const Index keep = window_ - 1, drop = length_ - keep;
    const auto move = [keep](auto* data, Index to, Index from, Index width) {
      std::memmove(data + to * width, data + from * width, sizeof(*data) * std::size_t(keep * width));
    };
    for (Index b = 0; b < batch_; ++b)
      for (Index h = 0; h < heads_; ++h) {
        const Index to = row(b, h, 0), from = row(b, h, drop);
        move(keys_.data(), to, from, head_dim_);
        move(values_.data(), to, from, head_dim_);
        if (kQuantised) move(key_scales_.data(), to, from, 1), move(value_scales_.data(), to, from, 1);
      }
    first_ += drop;
    length_ = keep;
    std::fill(lengths_.begin(), lengths_.end(), keep);
  }

  /// Sequence b holds n positions; length_ follows.
  void set_length(Index b, Index n) {
    lengths_[static_cast<std::size_t>(b)] = n;
    length_ = *std::max_element(lengths_.begin(), lengths_.end());
  }

  /// Every sequence holds `count` more positions.
  void grow(Index count) {
    for (auto& n : lengths_) n += count;
    length_ += count;
  }

  Index checked_sequence(const char* what, Index b) const {
    detail::require(b >= 0 && b < batch_, "attn::KVCache::", what, ": sequence ", b, " is not between 0 and ",
                    batch_ - 1);
    return b;
  }

  RowScales scales(const Vector<float>& s) const {
    return s.size() ? RowScales{s.data(), heads_ * page_size_, page_size_, page_table()} : RowScales{};
  }
  PageTable page_table() const { return paged_ ? PageTable{table_.data(), page_size_, width_, pages_} : PageTable{}; }

  /// One row of D values to S: rounded, or for int8 quantised with its scale written to *scale.
  void store_row(const T* x, S* dst, float* scale) const {
    if constexpr (kQuantised) {
      float amax = 0;
      bool finite = true;
      for (Index d = 0; d < head_dim_; ++d) {
        const float a = std::abs(static_cast<float>(x[d]));
        finite = finite && std::isfinite(a);
        amax = std::max(amax, a);
      }
      // A row holding inf or NaN is stored as NaN (scale NaN), as attention over it would give.
      *scale = finite ? amax / 127.0f : std::numeric_limits<float>::quiet_NaN();
      for (Index d = 0; d < head_dim_; ++d)
        dst[d] = finite && amax > 0 ? static_cast<S>(std::nearbyint(static_cast<float>(x[d]) / *scale)) : S(0);
    } else {
      (void)scale;
      for (Index d = 0; d < head_dim_; ++d) dst[d] = static_cast<S>(static_cast<compute_t<T>>(x[d]));
    }
  }

  template <class P>
  HeadsView<P> view(P* data, Index first, Index count) const {
    return {data + first * head_dim_, batch_, heads_, count, head_dim_, heads_ * page_size_ * head_dim_,
            page_size_ * head_dim_, head_dim_, page_table()};
  }

  Index checked_count(Index count) const {
    detail::require(count >= 0 && count <= room(), "attn::KVCache: ", count, " more positions do not fit (", fill(),
                    ")");
    return count;
  }

  void require_chunk(const char* what, const Shape& k, const Shape& v, Index count) const {
    const Shape want{batch_, heads_, count, head_dim_};
    detail::require(k == want && v == want, "attn::KVCache::", what, ": k ", k, " and v ", v,
                    " must be (batch, kv_heads, chunk, head_dim) = ", want, " for this cache");
    checked_count(count);
  }

  Index batch_ = 0, heads_ = 0, capacity_ = 0, head_dim_ = 0, length_ = 0;
  Index first_ = 0, window_ = 0;  ///< rolling: positions dropped so far, and W (0: not rolling)
  Index pages_ = 0, page_size_ = 0;  ///< the pool: pages of (K, page_size, D); contiguous: B of capacity
  Index width_ = 1;                  ///< block table entries per sequence
  bool paged_ = false;
  std::vector<std::int64_t> lengths_;  ///< (B) each sequence's length; length_ is the longest
  std::vector<std::int32_t> table_;    ///< paged: (B, width_) each sequence's pages
  std::vector<std::int32_t> refs_;     ///< paged: the sequences holding each page
  std::vector<std::int32_t> free_;     ///< paged: the pages no sequence holds, taken from the back
  Vector<S> keys_, values_;                  ///< (pages, K, page_size, D) each
  Vector<float> key_scales_, value_scales_;  ///< int8: (pages, K, page_size) each
};

}  // namespace attn
