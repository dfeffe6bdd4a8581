#pragma once
/// @file
/// @brief The backward pass of scaled dot-product attention (FlashAttention-2's): the
/// weights recomputed a tile at a time from q, k and the forward's log-sum-exp, so no (L, S)
/// buffer is ever held. Not public API.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include "attn/core/heads_view.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/checks.hpp"
#include "attn/ops/detail/online_softmax.hpp"
#include "attn/ops/detail/tile.hpp"
#include "attn/ops/detail/work.hpp"

namespace attn {
namespace detail {

/// @brief What the backward pass reads besides the forward call: grad_out (dO), the
/// forward's output O and log-sum-exp, and delta = rowsum(dO * O) per query (B, H, L).
template <class T>
struct BackwardCall {
  using C = compute_t<T>;
  AttentionCall<T> forward;  ///< q, k, v, the masks, scale, softcap and dropout of the forward
  HeadsView<const T> grad_out;
  const C* lse;    ///< (B, H, L)
  const C* delta;  ///< (B, H, L)
};

/// @brief dq, dk and dv of softmax(scale q k^T + masks) v, in C = compute_t<T>.
///
/// For one tile of queries i and keys j (Tile), with s the logits as the forward makes them
/// (AttentionCall::softcap_logits, then mask_logits):
///   p = exp(s - lse_i)                    (0 where s = -inf, and in a row whose lse is -inf);
///   dv_j += sum_i p'_ij dO_i              (p' = p with the forward's dropout: dropout_tile);
///   dp_ij = dO_i . v_j                    (times the same dropout mask);
///   ds_ij = p_ij (dp_ij - delta_i)        (times 1 - (capped_ij / cap)^2 under soft-capping);
///   dq_i += scale sum_j ds_ij k_j;   dk_j += scale sum_i ds_ij q_i.
/// Two passes, each over work items that write disjoint outputs, so every thread count gives
/// the same bits: (batch, key/value head, key block) items accumulate dk and dv over every
/// query of the heads that read the key/value head (grouped-query attention sums them),
/// then (batch, head, query block) items accumulate dq over the keys. Each recomputes the
/// tile's weights.
template <class T>
struct SdpaBackward {
  using C = compute_t<T>;
  using Matrix = RowMatrix<C>;
  static constexpr Index kRows = 64;  ///< queries per tile
  static constexpr Index kCols = 64;  ///< keys per tile

  /// One tile's weights p (with dropout: p') and ds, rows x cols, from q (rows, D) already
  /// scaled and the tile's k (cols, D), v (cols, Dv) and dO (rows, Dv).
  struct TileGrads {
    Matrix p, ds;
  };

  static void run(const BackwardCall<T>& g, const HeadsView<T>& dq, const HeadsView<T>& dk, const HeadsView<T>& dv) {
    const AttentionCall<T>& f = g.forward;
    const AttentionDims d = f.dims();
    const Index group = d.heads / f.k.heads, key_blocks = (d.len_k + kCols - 1) / kCols;
    parallel_for(d.batch * f.k.heads * key_blocks, [&](Index item) {
      const Index b = item / (f.k.heads * key_blocks), kvh = item / key_blocks % f.k.heads;
      const Index j0 = item % key_blocks * kCols, cols = std::min(kCols, d.len_k - j0);
      const Matrix k = rows(f.k, b, kvh, j0, cols), v = rows(f.v, b, kvh, j0, cols);
      Matrix dk_acc = Matrix::Zero(cols, f.k.head_dim), dv_acc = Matrix::Zero(cols, f.v.head_dim);
      for (Index h = kvh * group; h < (kvh + 1) * group; ++h)
        for (Index i0 = 0; i0 < d.len_q; i0 += kRows) {
          const Tile t = f.tile(b, h, i0, std::min(kRows, d.len_q - i0)).keys(j0, cols);
          if (!sees(f, t)) continue;
          const Matrix q = scaled_queries(f, t), dout = rows(g.grad_out, b, h, i0, t.rows);
          const TileGrads tg = tile_grads(g, t, q, k, v, dout);
          dv_acc.noalias() += tg.p.transpose() * dout;
          dk_acc.noalias() += tg.ds.transpose() * q;
        }
      store(dk_acc, dk, b, kvh, j0);
      store(dv_acc, dv, b, kvh, j0);
    });
    parallel_for(d.batch * d.heads * ((d.len_q + kRows - 1) / kRows), [&](Index item) {
      const Index blocks = (d.len_q + kRows - 1) / kRows;
      const Index b = item / (d.heads * blocks), h = item / blocks % d.heads, i0 = item % blocks * kRows;
      const Tile rows_tile = f.tile(b, h, i0, std::min(kRows, d.len_q - i0));
      const Matrix q = scaled_queries(f, rows_tile), dout = rows(g.grad_out, b, h, i0, rows_tile.rows);
      Matrix dq_acc = Matrix::Zero(rows_tile.rows, f.q.head_dim);
      for (Index j0 = 0; j0 < rows_tile.len_k; j0 += kCols) {
        const Tile t = rows_tile.keys(j0, std::min(kCols, rows_tile.len_k - j0));
        if (!sees(f, t)) continue;
        const Index kvh = f.kv_head(h);
        const Matrix k = rows(f.k, b, kvh, j0, t.cols), v = rows(f.v, b, kvh, j0, t.cols);
        dq_acc.noalias() += tile_grads(g, t, q, k, v, dout).ds * k;
      }
      dq_acc *= f.scale;
      store(dq_acc, dq, b, h, i0);
    });
  }

 private:
  /// Whether some query of tile t may see some of its keys (causal, window, the keys b holds).
  static bool sees(const AttentionCall<T>& f, const Tile& t) {
    return t.j0 < std::min(t.key_end(f.masks.causal), t.len_k) && t.j0 + t.cols > t.key_begin(f.masks.causal, f.masks.window);
  }

  /// Rows [n0, n0 + count) of head h of batch element b of x, widened to C.
  static Matrix rows(const HeadsView<const T>& x, Index b, Index h, Index n0, Index count) {
    Matrix m(count, x.head_dim);
    for (Index n = 0; n < count; ++n)
      for (Index c = 0; c < x.head_dim; ++c) m(n, c) = C(x.row(b, h, n0 + n)[c]);
    return m;
  }
  /// The tile's queries times the scale, as the forward multiplies them.
  static Matrix scaled_queries(const AttentionCall<T>& f, const Tile& t) {
    return rows(f.q, t.b, t.h, t.i0, t.rows) * f.scale;
  }
  /// out rows [n0, n0 + m.rows()) of head h of batch element b = m, rounded to T.
  static void store(const Matrix& m, const HeadsView<T>& out, Index b, Index h, Index n0) {
    for (Index n = 0; n < m.rows(); ++n)
      for (Index c = 0; c < m.cols(); ++c) out.row(b, h, n0 + n)[c] = T(m(n, c));
  }

  /// The weights and ds of tile t (see the struct): q scaled (rows, D), k (cols, D), v (cols,
  /// Dv), dout (rows, Dv).
  static TileGrads tile_grads(const BackwardCall<T>& g, const Tile& t, const Matrix& q, const Matrix& k,
                              const Matrix& v, const Matrix& dout) {
    const AttentionCall<T>& f = g.forward;
    Matrix s = q * k.transpose();
    f.softcap_logits(t, s.data(), t.cols, 1);
    const Matrix capped = f.softcap > C(0) ? s : Matrix();
    f.mask_logits(t, s.data(), t.cols, 1);
    const Index at = (t.b * t.dims.heads + t.h) * t.dims.len_q + t.i0;  // the tile's first query in (B, H, L)
    for (Index r = 0; r < t.rows; ++r) {
      C* row = s.data() + r * t.cols;
      if (g.lse[at + r] == -std::numeric_limits<C>::infinity())
        std::fill(row, row + t.cols, C(0));  // every key masked: the output was 0, nothing flows back
      else
        baseline::exp_shifted_inplace(row, t.cols, g.lse[at + r]);
    }
    Matrix dp = dout * v.transpose();
    TileGrads tg{s, Matrix()};
    if (f.dropout_p > C(0)) {
      dropout_tile(t, f.dropout_p, f.dropout_key, tg.p.data(), t.cols, 1);
      dropout_tile(t, f.dropout_p, f.dropout_key, dp.data(), t.cols, 1);
    }
    tg.ds = s.array() * (dp.colwise() - Eigen::Map<const Vector<C>>(g.delta + at, t.rows)).array();
    if (f.softcap > C(0)) tg.ds.array() *= C(1) - (capped.array() / f.softcap).square();
    return tg;
  }
};

}  // namespace detail
}  // namespace attn
