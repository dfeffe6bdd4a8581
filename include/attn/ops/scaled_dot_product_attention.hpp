#pragma once
/// @file
/// @brief Scaled dot-product attention: softmax(scale * q k^T + masks) v, per batch and head.

#include <cmath>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/attention_common.hpp"
#include "attn/ops/heads_view.hpp"
#include "attn/ops/softmax.hpp"

namespace attn {

/// @brief out = softmax(scale * q k^T + masks) v for every (batch, head), written into `out`.
///
/// Works on strided views, so q, k and v can be column blocks of a projection's output.
/// Scores are computed a block of query rows at a time: no (L, S) buffer per head is kept,
/// and no (B, H, L, S) buffer exists unless opt.attn_weights asks for one.
/// @param q (B, H, L, D); @param k (B, H, S, D); @param v (B, H, S, Dv)
/// @param out (B, H, L, Dv), must not overlap q, k or v
/// @param opt scale (default 1/sqrt(D)), masks, causal, dropout, optional weights output
/// @note The scale multiplies q before the product, as nn.MultiheadAttention and timm do.
/// A query row whose keys are all masked gets weights 0 and output 0 (PyTorch >= 2.5 SDPA
/// and ONNX behaviour; PyTorch 1.13 gives NaN).
/// @throws std::invalid_argument on mismatched shapes, masks, dropout p or a missing generator
template <class T>
void scaled_dot_product_attention(const HeadsView<const T>& q, const HeadsView<const T>& k,
                                  const HeadsView<const T>& v, const HeadsView<T>& out,
                                  const SdpaOptions<T>& opt = {}) {
  constexpr const char* where = "attn::scaled_dot_product_attention";
  detail::check_attention_args(where, q, k, v, out, opt);
  const Index nb = q.batch, nh = q.heads, len_q = q.length, len_k = k.length;
  const T scale = opt.scale ? *opt.scale : T(1) / std::sqrt(static_cast<T>(q.dim));
  const std::uint64_t key = opt.dropout_p > T(0) ? opt.generator->next_key() : 0;
  if (opt.attn_weights) *opt.attn_weights = Tensor<T>({nb, nh, len_q, len_k});

  const Index block = std::min(detail::kQueryBlock, len_q);
  RowMatrix<T> qs(block, q.dim), scores(block, len_k);
  for (Index b = 0; b < nb; ++b) {
    for (Index h = 0; h < nh; ++h) {
      const auto kh = k.head(b, h);
      const auto vh = v.head(b, h);
      auto oh = out.head(b, h);
      for (Index i0 = 0; i0 < len_q; i0 += block) {
        const Index rows = std::min(block, len_q - i0);
        auto qb = qs.topRows(rows);
        auto s = scores.topRows(rows);
        qb = q.head(b, h).middleRows(i0, rows) * scale;
        s.noalias() = qb * kh.transpose();
        detail::add_mask_bias(s, opt, b, h, nh, i0, len_q);
        softmax_rows_inplace(s);
        if (opt.dropout_p > T(0)) detail::dropout_rows(s, opt.dropout_p, key, b, h, nh, i0, len_q);
        if (opt.attn_weights)
          Eigen::Map<RowMatrix<T>>(opt.attn_weights->data() + ((b * nh + h) * len_q + i0) * len_k,
                                   rows, len_k) = s;
        oh.middleRows(i0, rows).noalias() = s * vh;
      }
    }
  }
}

/// @brief Tensor form, like torch.nn.functional.scaled_dot_product_attention.
/// @param q (B, H, L, D) or (B, L, D); @param k (B, H, S, D) or (B, S, D);
/// @param v (B, H, S, Dv) or (B, S, Dv)
/// @param opt masks as in the strided form: key_padding_mask (B, S), attn_mask (L, S) or
/// (B*H, L, S). PyTorch's other broadcastable mask shapes are rejected with an error.
/// @return (B, H, L, Dv) or (B, L, Dv)
template <class T>
Tensor<T> scaled_dot_product_attention(const TensorView<const T>& q, const TensorView<const T>& k,
                                       const TensorView<const T>& v, const SdpaOptions<T>& opt = {}) {
  constexpr const char* where = "attn::scaled_dot_product_attention";
  const Index rank = q.dim();
  detail::require((rank == 3 || rank == 4) && k.dim() == rank && v.dim() == rank, where,
                  ": q ", q.shape(), ", k ", k.shape(), " and v ", v.shape(),
                  " must all be (B, H, N, D) or all (B, N, D)");
  auto heads = [rank](const auto& t) {
    using P = std::remove_pointer_t<decltype(t.data())>;
    return rank == 4 ? HeadsView<P>::bhnd(t.data(), t.size(0), t.size(1), t.size(2), t.size(3))
                     : HeadsView<P>::bhnd(t.data(), t.size(0), 1, t.size(1), t.size(2));
  };
  Shape shape = q.shape();
  shape.back() = v.size(-1);
  Tensor<T> out(shape);
  scaled_dot_product_attention<T>(heads(q), heads(k), heads(v), heads(out.view()), opt);
  return out;
}

}  // namespace attn
