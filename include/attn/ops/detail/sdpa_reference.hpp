#pragma once
/// @file
/// @brief The straightforward attention kernel: full score rows per block of queries,
/// softmax, dropout, P V. It materialises the attention weights when they are asked for,
/// and is the reference the tiled kernel is tested against. Not part of the public API.

#include <cstdint>
#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/attention_common.hpp"
#include "attn/ops/heads_view.hpp"

namespace attn {
namespace detail {

/// Softmax of every row of a row-major block, as softmax_rows_inplace (a row of -inf gives
/// 0, NaN propagates to its row) with the vectorised exp_shifted_inplace.
template <class Block>
void softmax_rows(Block&& s) {
  using T = typename std::decay_t<Block>::Scalar;
  for (Index r = 0; r < s.rows(); ++r) {
    auto row = s.row(r);
    const T mx = row.cols() > 0 ? row.template maxCoeff<Eigen::PropagateNaN>() : -std::numeric_limits<T>::infinity();
    if (mx == -std::numeric_limits<T>::infinity()) {
      row.setZero();
      continue;
    }
    row /= exp_shifted_inplace(row.data(), row.cols(), mx);
  }
}

/// @brief out = softmax(scale q k^T + masks) v per (batch, head), a block of kQueryBlock
/// query rows at a time, each block holding its full (rows, S) score rows.
///
/// Arguments must have been checked (check_attention_args). Threaded over (batch, head,
/// query block) items with parallel_for; bit-identical for every thread count.
/// @param scale multiplies q before the product
/// @param key dropout stream key (used when opt.dropout_p > 0)
/// @param weights if not null, (B, H, L, S) storage that receives the weights (after
/// dropout); the scores are then computed in place there
template <class T>
void sdpa_reference(const HeadsView<const T>& q, const HeadsView<const T>& k, const HeadsView<const T>& v,
                    const HeadsView<T>& out, const SdpaOptions<T>& opt, T scale, std::uint64_t key,
                    T* weights) {
  const Index nh = q.heads, len_q = q.length, len_k = k.length;
  if (q.batch == 0 || nh == 0 || len_q == 0 || (out.dim == 0 && weights == nullptr)) return;
  const Index block = std::min(kQueryBlock, len_q);
  const Index qblocks = (len_q + block - 1) / block;
  const WorkSplit split =
      WorkSplit::of(q.batch * nh * qblocks, static_cast<double>(block) * len_k * (q.dim + v.dim + 8));
  parallel_for(split.items(), [&](Index item) {
    RowMatrix<T> qs(block, q.dim), scratch(weights ? 0 : block, weights ? 0 : len_k);
    for (Index u = split.begin(item); u < split.end(item); ++u) {
      const Index bh = u / qblocks, b = bh / nh, h = bh % nh;
      const Index i0 = (u % qblocks) * block, rows = std::min(block, len_q - i0);
      auto run = [&](auto&& s) {
        auto qb = qs.topRows(rows);
        qb = q.head(b, h).middleRows(i0, rows) * scale;
        s.noalias() = qb * k.head(b, h).transpose();
        add_mask_bias(s, opt, b, h, nh, i0, len_q);
        softmax_rows(s);
        if (opt.dropout_p > T(0)) dropout_rows(s, opt.dropout_p, key, b, h, nh, i0, len_q);
        out.head(b, h).middleRows(i0, rows).noalias() = s * v.head(b, h);
      };
      if (weights)
        run(Eigen::Map<RowMatrix<T>>(weights + (bh * len_q + i0) * len_k, rows, len_k));
      else
        run(scratch.topRows(rows));
    }
  });
}

}  // namespace detail
}  // namespace attn
