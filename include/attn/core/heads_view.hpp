#pragma once
/// @file
/// @brief HeadsView: a (batch, heads, length, head_dim) view with arbitrary strides.
///
/// It lets attention run directly on a projection's output: for a fused qkv buffer of
/// shape (B*N, 3C), head h of q is the column block [h*d, (h+1)*d) of each row, i.e. a
/// view with row stride 3C. The caller needs no permute and no copy.

#include <cstdint>
#include <type_traits>

#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Where the rows of a paged view lie (vLLM's block table, flash_attn_with_kvcache's
/// block_table): position n of batch element b is row n % page_size of page
/// table[b * stride + n / page_size]. Empty (table null) for an unpaged view.
struct PageTable {
  const std::int32_t* table = nullptr;  ///< (B, stride) page numbers
  /// @var page_size
  /// @brief Positions (rows) per page.
  /// @var stride
  /// @brief Entries between batch element b's and b + 1's (the most pages a sequence holds).
  /// @var pages
  /// @brief Pages in the pool: every entry a view reads is in [0, pages).
  Index page_size = 0, stride = 0, pages = 0;
  explicit operator bool() const { return table != nullptr; }  ///< whether the view is paged
  /// The page holding position n of batch element b.
  Index page(Index b, Index n) const { return table[b * stride + n / page_size]; }
};

/// @brief Strided 4-D view (B, H, N, D) with unit stride along D. `T` may be const.
///
/// A paged view (`pages` set: a paged KVCache's keys() and values()) keeps its rows in pages
/// of (H, page_size, D): batch_stride is then the distance between pages, and position n of
/// batch element b is in page pages.page(b, n). The attention kernels read k and v paged in
/// place (a page's run of rows at a time); head() and anything else that treats the rows of a
/// head as one strided matrix take unpaged views only.
template <class T>
struct HeadsView {
  /// Element (b, h, n, d) is data[b * batch_stride + h * head_stride + n * row_stride + d]
  /// (paged: data[pages.page(b, n) * batch_stride + h * head_stride + (n % page_size) *
  /// row_stride + d]).
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
  /// The page table of a paged view; empty for a strided one.
  PageTable pages;

  /// An empty view.
  HeadsView() = default;
  /// @brief A view of (batch, heads, length, head_dim) with the given strides (see the members).
  HeadsView(T* data_, Index batch_, Index heads_, Index length_, Index head_dim_, Index batch_stride_,
            Index head_stride_, Index row_stride_, PageTable pages_ = {})
      : data(data_), batch(batch_), heads(heads_), length(length_), head_dim(head_dim_), batch_stride(batch_stride_),
        head_stride(head_stride_), row_stride(row_stride_), pages(pages_) {}

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
  T* row(Index b, Index h, Index n = 0) const {
    if (pages) return page_row(b, h, n / pages.page_size, n % pages.page_size);
    return data + b * batch_stride + h * head_stride + n * row_stride;
  }
  /// Of a paged view: row `offset` of head h in batch element b's page number i (its
  /// positions i * page_size ...).
  T* page_row(Index b, Index h, Index i, Index offset) const {
    return data + pages.table[b * pages.stride + i] * batch_stride + h * head_stride + offset * row_stride;
  }

  /// Head h of batch b as a (length, head_dim) row-major map with row stride row_stride
  /// (an unpaged view's).
  StridedMap<T> head(Index b, Index h) const {
    return StridedMap<T>(row(b, h), length, head_dim,
                         Eigen::OuterStride<>(row_stride));
  }

  /// A view of mutable data converts to a view of const data.
  template <class U = T, class = std::enable_if_t<!std::is_const<U>::value>>
  operator HeadsView<const U>() const {  // NOLINT(google-explicit-constructor)
    return {data, batch, heads, length, head_dim, batch_stride, head_stride, row_stride, pages};
  }
  /// (B, H, N, D), as in error messages.
  Shape shape() const { return {batch, heads, length, head_dim}; }
};

/// @brief The float32 scale of each row (b, h, n) of an int8 HeadsView (a quantised KV
/// cache, KVCache<T, std::int8_t>): element (b, h, n, d) stands for q * scale(b, h, n).
/// Empty (data null) for the other element types, whose rows need no scale.
struct RowScales {
  /// The scale of row (b, h, n) is data[b * batch_stride + h * head_stride + n] (paged, as
  /// its HeadsView: data[pages.page(b, n) * batch_stride + h * head_stride + n % page_size]).
  const float* data = nullptr;
  /// @var batch_stride
  /// @brief Floats between the scales of batch element b and b + 1 (paged: of two pages).
  /// @var head_stride
  /// @brief Floats between the scales of head h and h + 1.
  Index batch_stride = 0, head_stride = 0;
  PageTable pages;  ///< the page table of a paged cache's scales, else empty

  /// No scales.
  RowScales() = default;
  /// @brief Scales at data with the given strides (see the members).
  RowScales(const float* data_, Index batch_stride_, Index head_stride_, PageTable pages_ = {})
      : data(data_), batch_stride(batch_stride_), head_stride(head_stride_), pages(pages_) {}
  /// The scale of row n of head h of batch element b, followed by those of the next rows (to
  /// the end of its page, if paged); null when empty.
  const float* row(Index b, Index h, Index n = 0) const {
    if (!data) return nullptr;
    if (pages) return page_row(b, h, n / pages.page_size, n % pages.page_size);
    return data + b * batch_stride + h * head_stride + n;
  }
  /// Of paged scales: the scale of row `offset` of head h in batch element b's page number i.
  const float* page_row(Index b, Index h, Index i, Index offset) const {
    return data ? data + pages.table[b * pages.stride + i] * batch_stride + h * head_stride + offset : nullptr;
  }
  explicit operator bool() const { return data != nullptr; }  ///< whether there are scales
};

}  // namespace attn
