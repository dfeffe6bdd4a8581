#pragma once
/// @file
/// @brief HeadsView: a (batch, heads, length, head_dim) view with arbitrary strides.
///
/// It lets attention run directly on a projection's output: for a fused qkv buffer of
/// shape (B*N, 3C), head h of q is the column block [h*d, (h+1)*d) of each row, i.e. a
/// view with row stride 3C. The caller needs no permute and no copy.

#include <type_traits>

#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Strided 4-D view (B, H, N, D) with unit stride along D. `T` may be const.
template <class T>
struct HeadsView {
  /// Element (b, h, n, d) is data[b * batch_stride + h * head_stride + n * row_stride + d].
  T* data = nullptr;
  /// @var batch
  /// @brief B, the batch size.
  /// @var heads
  /// @brief H, the number of heads.
  /// @var length
  /// @brief N, the sequence length (L for queries, S for keys and values).
  /// @var head_dim
  /// @brief D, the features per head (contiguous: unit stride).
  Index batch = 0, heads = 0, length = 0, head_dim = 0;
  /// @var batch_stride
  /// @brief Elements between batch element b and b + 1.
  /// @var head_stride
  /// @brief Elements between head h and h + 1.
  /// @var row_stride
  /// @brief Elements between sequence position n and n + 1 (at least head_dim).
  Index batch_stride = 0, head_stride = 0, row_stride = 0;

  /// Contiguous (B, H, N, D): PyTorch's layout for F.scaled_dot_product_attention.
  static HeadsView bhnd(T* data, Index b, Index h, Index n, Index d) {
    return {data, b, h, n, d, h * n * d, n * d, d};
  }
  /// Heads as column blocks of (B*N) rows: row r = (b, n) starts at data + r * row_stride
  /// and head h occupies columns [h*D, (h+1)*D). row_stride is H*D for a (B, N, H*D)
  /// tensor, 3*H*D for one third of a fused qkv buffer.
  static HeadsView bnhd(T* data, Index b, Index n, Index h, Index d, Index row_stride) {
    return {data, b, h, n, d, n * row_stride, d, row_stride};
  }

  /// Row n of head h of batch element b: the address of element (b, h, n, 0).
  T* row(Index b, Index h, Index n = 0) const { return data + b * batch_stride + h * head_stride + n * row_stride; }

  /// Head h of batch b as a (length, head_dim) row-major map with row stride row_stride.
  StridedMap<T> head(Index b, Index h) const {
    return StridedMap<T>(row(b, h), length, head_dim,
                         Eigen::OuterStride<>(row_stride));
  }

  /// A view of mutable data converts to a view of const data.
  template <class U = T, class = std::enable_if_t<!std::is_const<U>::value>>
  operator HeadsView<const U>() const {  // NOLINT(google-explicit-constructor)
    return {data, batch, heads, length, head_dim, batch_stride, head_stride, row_stride};
  }
  /// (B, H, N, D), as in error messages.
  Shape shape() const { return {batch, heads, length, head_dim}; }
};

/// @brief The float32 scale of each row (b, h, n) of an int8 HeadsView (a quantised KV
/// cache, KVCache<T, std::int8_t>): element (b, h, n, d) stands for q * scale(b, h, n).
/// Empty (data null) for the other element types, whose rows need no scale.
struct RowScales {
  /// The scale of row (b, h, n) is data[b * batch_stride + h * head_stride + n].
  const float* data = nullptr;
  /// @var batch_stride
  /// @brief Floats between the scales of batch element b and b + 1.
  /// @var head_stride
  /// @brief Floats between the scales of head h and h + 1.
  Index batch_stride = 0, head_stride = 0;
  /// The scales of head h of batch element b, one per row (null when empty).
  const float* row(Index b, Index h) const { return data ? data + b * batch_stride + h * head_stride : nullptr; }
  explicit operator bool() const { return data != nullptr; }  ///< whether there are scales
};

}  // namespace attn
