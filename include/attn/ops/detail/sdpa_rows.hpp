#pragma once
/// @file
/// @brief The tile kernel for a few queries (decoding: one new token per sequence, or a
/// short chunk): query-major, vectorised across the head dimension. Not public API.

#include <algorithm>
#include <cmath>
#include <limits>

#include <Eigen/Core>

#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/checks.hpp"
#include "attn/ops/detail/exp.hpp"
#include "attn/ops/detail/packets.hpp"
#include "attn/ops/detail/tile.hpp"

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

/// @brief SdpaTiles' online softmax (sdpa_tiled.hpp describes it) for tiles of at most
/// kMaxRows queries, with the tile's scores query-major.
///
/// SdpaTiles vectorises across the queries of a block: with one query (a decode step) 15 of
/// 16 float lanes would be idle and every score would cost head_dim multiply-adds. Here each
/// score is a dot product over the head dimension and p v adds p_j v_j across it, so a few
/// queries stream k and v at the rate memory gives them. The masks, soft-capping, dropout
/// and exp are the tile rules SdpaTiles uses, with the scores' strides swapped.
template <class T>
struct SdpaRows {
  using P = Packet<T>;
  static constexpr int kP = kPacketSize<T>;
  static constexpr Index kMaxRows = 4;  ///< queries per tile at most
  static constexpr Index kKeys = 128;   ///< keys per score tile
  static constexpr Index kAhead = 16;    ///< rows of k and v prefetched ahead of their use

  /// One tile's buffers, query-major: q (rows, D) scaled, the scores (rows, kKeys), the
  /// accumulator (rows, Dv), and each query's running max and sum.
  struct Scratch {
    T *q, *s, *acc, *row_max, *row_sum;
    static Index size(Index dim, Index dim_v) { return kMaxRows * (dim + kKeys + dim_v + 2); }
    Scratch(T* base, Index dim, Index dim_v)
        : q(base), s(q + kMaxRows * dim), acc(s + kMaxRows * kKeys), row_max(acc + kMaxRows * dim_v),
          row_sum(row_max + kMaxRows) {}
  };

  /// @brief How many heads one tile takes: query heads that read the same key/value head
  /// (grouped-query attention) share the tile, so each key and value is loaded once for all
  /// of them; at most kMaxRows rows (heads x queries), a divisor of the group size.
  static Index heads_per_tile(const AttentionCall<T>& call) {
    const Index group = call.q.heads / call.k.heads, fit = std::max<Index>(1, kMaxRows / call.q.length);
    Index n = std::min(group, fit);
    while (group % n != 0) --n;
    return n;
  }

  /// @brief All queries of `heads` consecutive heads from tile.h (sharing one key/value
  /// head: k[j][d] at k[j * ks + d], v[j][c] at v[j * vs + c]) over every key they may see.
  /// Row r of the tile is query r % L of head tile.h + r / L.
  static void block(const AttentionCall<T>& call, const Tile& tile, Index heads, const T* k, Index ks, const T* v,
                    Index vs, const Scratch& w) {
    static_assert(kMaxRows == 4, "block() dispatches on 1 to 4 rows");
    switch (heads * tile.rows) {
      case 1: return block_rows<1>(call, tile, heads, k, ks, v, vs, w);
      case 2: return block_rows<2>(call, tile, heads, k, ks, v, vs, w);
      case 3: return block_rows<3>(call, tile, heads, k, ks, v, vs, w);
      default: return block_rows<4>(call, tile, heads, k, ks, v, vs, w);
    }
  }

 private:
  template <int R>
  static void block_rows(const AttentionCall<T>& call, const Tile& tile, Index heads, const T* k, Index ks,
                         const T* v, Index vs, const Scratch& w) {
    const Index dim_v = call.v.head_dim, key_end = tile.key_end(call.masks.causal);
    const Index key_begin = tile.key_begin(call.masks.causal, call.masks.window) / kKeys * kKeys;
    const Index per_head = tile.rows * kKeys;  // scores of one head's queries
    load_queries(call, tile, heads, w);
    for (Index j0 = key_begin; j0 < key_end; j0 += kKeys) {
      const Tile t = tile.keys(j0, std::min(kKeys, tile.dims.len_k - j0));
      scores<R>(t.cols, k + j0 * ks, ks, call.q.head_dim, w);
      if (call.softcap > T(0))
        for (Index r = 0; r < R; ++r) softcap_inplace(w.s + r * kKeys, t.cols, call.softcap);
      if (call.masks.touch(t))
        for (Index e = 0; e < heads; ++e) call.masks.apply(t.head(t.h + e), w.s + e * per_head, kKeys, 1);
      for (Index r = 0; r < R; ++r) softmax_step(t.cols, dim_v, r, w);
      if (call.dropout_p > T(0))
        for (Index e = 0; e < heads; ++e)
          dropout_tile(t.head(t.h + e), call.dropout_p, call.dropout_key, w.s + e * per_head, kKeys, 1);
      accumulate<R>(t.cols, v + j0 * vs, vs, dim_v, w);
    }
    store(call.out, tile, heads, w);
  }

  /// Row r of the tile: query tile.i0 + r % L of head tile.h + r / L, in a view of (B, H, L, D).
  template <class V>
  static auto* row_of(const V& x, const Tile& tile, Index r) {
    return x.data + tile.b * x.batch_stride + (tile.h + r / tile.rows) * x.head_stride +
           (tile.i0 + r % tile.rows) * x.row_stride;
  }

  static void load_queries(const AttentionCall<T>& call, const Tile& tile, Index heads, const Scratch& w) {
    const Index dim = call.q.head_dim, rows = heads * tile.rows;
    for (Index r = 0; r < rows; ++r) {
      const T* q = row_of(call.q, tile, r);
      for (Index d = 0; d < dim; ++d) w.q[r * dim + d] = q[d] * call.scale;
    }
    std::fill(w.acc, w.acc + rows * call.v.head_dim, T(0));
    std::fill(w.row_max, w.row_max + rows, -std::numeric_limits<T>::infinity());
    std::fill(w.row_sum, w.row_sum + rows, T(0));
  }

  /// s[r][j] = q_r . k_j for `cols` keys, four at a time (4 R independent sums), each key
  /// row loaded once for all R queries.
  template <int R>
  static void scores(Index cols, const T* k, Index ks, Index dim, const Scratch& w) {
    Index j = 0;
    for (; j + 4 <= cols; j += 4) dots<R, 4>(k + j * ks, ks, dim, w, j);
    for (; j < cols; ++j) dots<R, 1>(k + j * ks, ks, dim, w, j);
  }

  /// s[r][j + x] = q_r . k_x for the N keys k_x at k + x * ks.
  template <int R, int N>
  static EIGEN_ALWAYS_INLINE void dots(const T* k, Index ks, Index dim, const Scratch& w, Index j) {
    P acc[R][N];
    for (int r = 0; r < R; ++r)
      for (int x = 0; x < N; ++x) acc[r][x] = ei::pset1<P>(T(0));
    Index d = 0;
    for (; d + kP <= dim; d += kP)
      for (int x = 0; x < N; ++x) {
        prefetch(k + (x + kAhead) * ks + d);
        const P kd = ei::ploadu<P>(k + x * ks + d);
        for (int r = 0; r < R; ++r) acc[r][x] = ei::pmadd(ei::ploadu<P>(w.q + r * dim + d), kd, acc[r][x]);
      }
    for (int r = 0; r < R; ++r)
      for (int x = 0; x < N; ++x) {
        T tail = T(0);
        for (Index e = d; e < dim; ++e) tail += w.q[r * dim + e] * k[x * ks + e];
        w.s[r * kKeys + j + x] = sum_lanes(acc[r][x]) + tail;
      }
  }

  /// acc[r] += sum_j p[r][j] v_j over `cols` keys: the accumulator kept in registers for C
  /// packets of columns at a time, each v packet loaded once for all R queries.
  template <int R>
  static void accumulate(Index cols, const T* v, Index vs, Index dim_v, const Scratch& w) {
    Index c = 0;
    for (; c + 4 * kP <= dim_v; c += 4 * kP) accumulate_columns<R, 4>(cols, v + c, vs, dim_v, w.acc + c, w);
    for (; c + kP <= dim_v; c += kP) accumulate_columns<R, 1>(cols, v + c, vs, dim_v, w.acc + c, w);
    for (; c < dim_v; ++c)
      for (Index j = 0; j < cols; ++j)
        for (int r = 0; r < R; ++r) w.acc[r * dim_v + c] += w.s[r * kKeys + j] * v[j * vs + c];
  }

  template <int R, int C>
  static EIGEN_ALWAYS_INLINE void accumulate_columns(Index cols, const T* v, Index vs, Index dim_v, T* acc,
                                                     const Scratch& w) {
    P a[R][C];
    for (int r = 0; r < R; ++r)
      for (int x = 0; x < C; ++x) a[r][x] = ei::ploadu<P>(acc + r * dim_v + x * kP);
    for (Index j = 0; j < cols; ++j)
      for (int x = 0; x < C; ++x) {
        prefetch(v + (j + kAhead) * vs + x * kP);
        const P vp = ei::ploadu<P>(v + j * vs + x * kP);
        for (int r = 0; r < R; ++r) a[r][x] = ei::pmadd(ei::pset1<P>(w.s[r * kKeys + j]), vp, a[r][x]);
      }
    for (int r = 0; r < R; ++r)
      for (int x = 0; x < C; ++x) ei::pstoreu(acc + r * dim_v + x * kP, a[r][x]);
  }

  /// The online softmax step of query r over a tile of `cols` scores: new max, p = exp(s -
  /// max) in place, sum, and the accumulator rescaled by alpha = exp(old max - new max).
  static void softmax_step(Index cols, Index dim_v, Index r, const Scratch& w) {
    T* s = w.s + r * kKeys;
    T tile_max = -std::numeric_limits<T>::infinity();
    for (Index j = 0; j < cols; ++j) tile_max = std::max(tile_max, s[j]);
    const T old_max = w.row_max[r], new_max = std::max(old_max, tile_max);
    const T alpha = old_max == -std::numeric_limits<T>::infinity()
                        ? T(0)
                        : ei::pfirst(exp_nonpositive(ei::pset1<P>(old_max - new_max)));
    const T sum = exp_shifted_inplace(s, cols, ei::pfirst(softmax_shift(ei::pset1<P>(new_max))));
    w.row_max[r] = new_max;
    w.row_sum[r] = w.row_sum[r] * alpha + sum;
    if (alpha != T(1)) Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(w.acc + r * dim_v, dim_v) *= alpha;
  }

  /// out = acc / sum; 0 for a query that saw no key, NaN for one whose sum is NaN.
  static void store(const HeadsView<T>& out, const Tile& tile, Index heads, const Scratch& w) {
    for (Index r = 0; r < heads * tile.rows; ++r) {
      T* orow = row_of(out, tile, r);
      const T m = w.row_max[r], l = w.row_sum[r];
      const T* acc = w.acc + r * out.head_dim;
      if (std::isnan(l) || std::isnan(m))
        std::fill(orow, orow + out.head_dim, std::numeric_limits<T>::quiet_NaN());
      else if (m == -std::numeric_limits<T>::infinity())
        std::fill(orow, orow + out.head_dim, T(0));
      else
        for (Index c = 0; c < out.head_dim; ++c) orow[c] = acc[c] / l;
    }
  }
};

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
