#pragma once
/// @file
/// @brief The straightforward attention kernel: full score rows per block of queries,
/// softmax, dropout, P V. It materialises the attention weights when they are asked for,
/// and is the reference the tiled kernel is tested against. Not public API.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <Eigen/Core>

#include "attn/core/tensor.hpp"
#include "attn/ops/detail/checks.hpp"
#include "attn/ops/detail/kernels.hpp"
#include "attn/ops/detail/tile.hpp"
#include "attn/ops/detail/work.hpp"

namespace attn {
namespace detail {

/// Query rows per block of the straightforward kernel: its (rows, S) score block stays
/// small whatever L is.
constexpr Index kReferenceQueryBlock = 64;

/// Head (b, h) of k or v as a matrix of C: the view itself, widened; int8 rows times their
/// scales (a copy).
template <class C, class S>
auto kv_head(const HeadsView<const S>& x, const RowScales& scales, Index b, Index h) {
  if constexpr (std::is_same<S, std::int8_t>::value) {
    return RowMatrix<C>(Eigen::Map<const Vector<float>>(scales.row(b, h), x.length).asDiagonal() *
                        x.head(b, h).template cast<C>());
  } else {
    (void)scales;
    return x.head(b, h).template cast<C>();
  }
}

/// The keys b holds of a paged k or v (with their int8 scales) copied into an unpaged (B, H,
/// S, D) view, the positions past them zero: for the straightforward kernel, which reads a
/// head as one matrix.
template <class S>
struct Unpaged {
  Vector<S> rows;
  Vector<float> scale_rows;
  HeadsView<const S> view;
  RowScales scales;
  template <class T>
  Unpaged(const AttentionCall<T, S>& call, const HeadsView<const S>& x, const RowScales& sc)
      : rows(Vector<S>::Zero(x.batch * x.heads * x.length * x.head_dim)),
        scale_rows(Vector<float>::Zero(sc ? x.batch * x.heads * x.length : 0)),
        view(HeadsView<const S>::bhnd(rows.data(), x.batch, x.heads, x.length, x.head_dim)),
        scales(sc ? RowScales{scale_rows.data(), x.heads * x.length, x.length} : RowScales{}) {
    for (Index b = 0; b < x.batch; ++b)
      for (Index h = 0; h < x.heads; ++h)
        for (Index j = 0; j < call.keys_of(b); ++j) {
          std::copy_n(x.row(b, h, j), x.head_dim, rows.data() + (view.row(b, h, j) - view.data));
          if (sc) scale_rows[(b * x.heads + h) * x.length + j] = *sc.row(b, h, j);
        }
  }
};

/// @brief out = softmax(scale q k^T + masks) v per (batch, head), a block of query rows at
/// a time, each block holding its full (rows, S) score rows (query-major).
///
/// Computes in C = compute_t<T>: 16-bit q, k and v are widened for the products (int8 k and
/// v times their rows' scales: kv_head), the weights and outputs rounded once. Paged k and v
/// are first copied (Unpaged). Threaded over (batch, head, query block) units with
/// for_each_block; bit-identical for every thread count.
/// @param weights if not null, (B, H, L, S) storage that receives the weights (after
/// dropout); where T is C the scores are computed in place there
template <class T, class S>
void sdpa_reference(const AttentionCall<T, S>& call, T* weights) {
  using C = compute_t<T>;
  if (call.k.pages || call.v.pages) {
    const Unpaged<S> k(call, call.k, call.k_scales), v(call, call.v, call.v_scales);
    AttentionCall<T, S> unpaged = call;
    unpaged.k = k.view, unpaged.k_scales = k.scales, unpaged.v = v.view, unpaged.v_scales = v.scales;
    return sdpa_reference(unpaged, weights);
  }
  constexpr bool in_place = std::is_same<T, C>::value;  // scores computed in the weights' storage
  const AttentionDims d = call.dims();
  if (d.batch == 0 || d.heads == 0 || d.len_q == 0 || (call.out.head_dim == 0 && weights == nullptr && !call.lse)) return;
  const Index dim = call.q.head_dim, rows_max = std::min(kReferenceQueryBlock, d.len_q);
  const QueryBlocks blocks{d.batch, d.heads, d.len_q, rows_max};
  const Index scratch = rows_max * (dim + (weights && in_place ? 0 : d.len_k));
  using Block = Eigen::Map<RowMatrix<C>>;
  for_each_block<C>(blocks, double(rows_max) * double(d.len_k) * double(dim + call.v.head_dim + 8), scratch,
                    [&](const QueryBlock& u, C* buffer) {
                      const Tile tile = call.tile(u.b, u.h, u.i0, blocks.rows_at(u.i0)).keys(0, d.len_k);
                      const Index kvh = call.kv_head(u.h), at = ((u.b * d.heads + u.h) * d.len_q + u.i0) * d.len_k;
                      load_scaled_queries(call.q, u.b, u.h, u.i0, tile.rows, tile.rows, call.scale, buffer, dim, 1);
                      C* s_data = buffer + tile.rows * dim;
                      if constexpr (in_place)
                        if (weights) s_data = weights + at;
                      Block s(s_data, tile.rows, d.len_k);
                      s.noalias() = Block(buffer, tile.rows, dim) * kv_head<C>(call.k, call.k_scales, u.b, kvh).transpose();
                      if (call.adjusts(tile)) call.adjust_logits(tile, s_data, d.len_k, 1);
                      softmax_rows(s_data, tile.rows, d.len_k, d.len_k, [&](Index r, C m, C l) {
                        return call.end_row(u.b, u.h, u.i0 + r, m, l);
                      });
                      if (call.dropout_p > C(0)) dropout_tile(tile, call.dropout_p, call.dropout_key, s.data(), d.len_k, 1);
                      if constexpr (!in_place)
                        if (weights) Eigen::Map<RowMatrix<T>>(weights + at, tile.rows, d.len_k) = s.template cast<T>();
                      call.out.head(u.b, u.h).middleRows(u.i0, tile.rows).noalias() =  // (b's keys only: ragged)
                          (s.leftCols(tile.len_k) * kv_head<C>(call.v, call.v_scales, u.b, kvh).topRows(tile.len_k))
                              .template cast<T>();
                    });
}

}  // namespace detail
}  // namespace attn
