#pragma once
/// @file
/// @brief A tile of an attention call's logical (B, H, L, S) scores, and the rules that
/// depend only on where a tile is: which keys causal masking lets a query see, and which
/// element of the dropout stream a weight is. Not public API.

#include <algorithm>
#include <cstdint>

#include "attn/core/generator.hpp"
#include "attn/core/mask.hpp"
#include "attn/core/tensor.hpp"

namespace attn {
namespace detail {

/// The logical size of an attention call: B batch elements, H heads, L queries, S keys.
struct AttentionDims {
  Index batch = 0, heads = 0, len_q = 0, len_k = 0;
  Shape shape() const { return {batch, heads, len_q, len_k}; }
};

/// @brief Queries [i0, i0 + rows) and keys [j0, j0 + cols) of head h of batch element b,
/// which holds len_k keys: dims.len_k, or fewer in a ragged call (SdpaOptions::key_lengths),
/// its queries then aligned to the end of its own keys.
///
/// Kernels hold a tile's scores in memory with a query stride and a key stride of their
/// choosing (query-major, or key-major to vectorise across queries); the rules here only
/// depend on the coordinates.
struct Tile {
  AttentionDims dims;
  Index b = 0, h = 0, i0 = 0, rows = 0, j0 = 0, cols = 0;
  Index len_k;  ///< the keys batch element b holds (<= dims.len_k; no default: -Wextra flags a Tile that omits it)

  /// The same queries and head over keys [j0, j0 + cols).
  Tile keys(Index first, Index count) const {
    Tile t = *this;
    t.j0 = first;
    t.cols = count;
    return t;
  }
  /// The same queries and keys of head `head`.
  Tile head(Index head) const {
    Tile t = *this;
    t.h = head;
    return t;
  }

  /// @brief The diagonal of query i0 + r: the last key it may see under causal masking, before
  /// clamping to the keys there are. kTopLeft: i. kBottomRight (and a sliding window
  /// without causal masking): i + S - L, the last query's diagonal at the last key (S the
  /// keys b holds, len_k).
  Index diagonal(Causal causal, Index r) const {
    return i0 + r + (causal == Causal::kTopLeft ? 0 : len_k - dims.len_q);
  }
  /// The last key query i0 + r may see under `causal` (len_k - 1 without causal masking);
  /// negative when it sees none.
  Index last_key(Causal causal, Index r) const {
    return causal == Causal::kNone ? len_k - 1 : std::min(diagonal(causal, r), len_k - 1);
  }
  /// The first key query i0 + r may see in a sliding window of `window` keys (0: no window).
  Index first_key(Causal causal, Index window, Index r) const {
    return window > 0 ? std::max<Index>(diagonal(causal, r) - window + 1, 0) : 0;
  }
  /// Keys [key_begin, key_end) hold every key some query of the tile may see (kernels skip
  /// the rest: the first query sees the earliest keys, the last one the latest).
  Index key_begin(Causal causal, Index window) const { return first_key(causal, window, 0); }
  Index key_end(Causal causal) const { return std::max<Index>(last_key(causal, rows - 1) + 1, 0); }
  /// Whether causal or window masking, or the end of b's keys, hides some key of the tile
  /// from some of its queries.
  bool bounds_cut(Causal causal, Index window) const {
    return j0 + cols - 1 > last_key(causal, 0) || j0 < first_key(causal, window, rows - 1);
  }

  /// Element (b, h, i0 + r, j0 + c) of the logical (B, H, L, S) weights is element
  /// ((b*H + h)*L + i)*S + j of the dropout stream: the mask does not depend on tiling or threads.
  std::uint64_t dropout_index(Index r, Index c) const {
    return static_cast<std::uint64_t>(((b * dims.heads + h) * dims.len_q + i0 + r) * dims.len_k + j0 + c);
  }
};

/// @brief Inverted dropout of a tile's weights s (query stride qs, key stride ks): element
/// (r, c) is zeroed or scaled by 1/(1-p) by element tile.dropout_index(r, c) of stream `key`.
template <class T>
void dropout_tile(const Tile& tile, T p, std::uint64_t key, T* s, Index qs, Index ks) {
  for (Index r = 0; r < tile.rows; ++r) dropout_span(s + r * qs, tile.cols, ks, p, key, tile.dropout_index(r, 0));
}

}  // namespace detail
}  // namespace attn
