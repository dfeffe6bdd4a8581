#pragma once
/// @file
/// @brief Talking-heads attention core (Shazeer et al. 2020; timm's CaiT TalkingHeadAttn).

#include <cmath>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/attention_common.hpp"
#include "attn/ops/head_mixing.hpp"
#include "attn/ops/heads_view.hpp"
#include "attn/ops/softmax.hpp"

namespace attn {

/// @brief Parameters of the two head mixes, in PyTorch's Linear(H, H) layout.
template <class T>
struct TalkingHeadsMix {
  Eigen::Map<const RowMatrix<T>> logits_weight;  ///< proj_l.weight (H, H): before softmax
  Eigen::Map<const Vector<T>> logits_bias;       ///< proj_l.bias (H)
  Eigen::Map<const RowMatrix<T>> weights_weight; ///< proj_w.weight (H, H): after softmax
  Eigen::Map<const Vector<T>> weights_bias;      ///< proj_w.bias (H)
};

/// @brief out_f = (W_w softmax(W_l (scale q k^T) + b_l + masks) + b_w)_f v_f for all heads f.
///
/// Per (batch, block of query rows) all heads' scores are held together, so both head
/// mixes are one (H x H) GEMM each on the block; nothing of size (B, H, L, S) exists unless
/// opt.attn_weights asks for it.
/// @param q (B, H, L, D); @param k (B, H, S, D); @param v (B, H, S, Dv); @param out (B, H, L, Dv)
/// @param mix proj_l and proj_w parameters
/// @param opt scale (default 1/sqrt(D)), masks, causal, dropout, optional weights output
/// @note Masks apply to the mixed logits, after proj_l and before softmax, as in the paper;
/// a mask of shape (B*H, L, S) is indexed by the mixed head. A fully masked row has softmax 0
/// (not NaN), so after proj_w its weights are proj_w's bias. Dropout acts after proj_w, and
/// the weights returned are the ones that multiply v.
template <class T>
void talking_heads_attention(const HeadsView<const T>& q, const HeadsView<const T>& k,
                             const HeadsView<const T>& v, const HeadsView<T>& out,
                             const TalkingHeadsMix<T>& mix, const SdpaOptions<T>& opt = {}) {
  constexpr const char* where = "attn::talking_heads_attention";
  detail::check_attention_args(where, q, k, v, out, opt);
  const Index nb = q.batch, nh = q.heads, len_q = q.length, len_k = k.length;
  detail::require(mix.logits_weight.rows() == nh && mix.logits_weight.cols() == nh &&
                      mix.weights_weight.rows() == nh && mix.weights_weight.cols() == nh &&
                      mix.logits_bias.size() == nh && mix.weights_bias.size() == nh,
                  where, ": proj_l / proj_w must be Linear(", nh, ", ", nh, ") for ", nh, " heads");
  const T scale = opt.scale ? *opt.scale : T(1) / std::sqrt(static_cast<T>(q.dim));
  const std::uint64_t key = opt.dropout_p > T(0) ? opt.generator->next_key() : 0;
  if (opt.attn_weights) *opt.attn_weights = Tensor<T>({nb, nh, len_q, len_k});

  const Index block = std::min(detail::kQueryBlock, len_q);
  RowMatrix<T> qs(block, q.dim);
  RowMatrix<T> logits(nh, block * len_k), mixed(nh, block * len_k);
  using Rows = Eigen::Map<RowMatrix<T>>;
  for (Index b = 0; b < nb; ++b) {
    for (Index i0 = 0; i0 < len_q; i0 += block) {
      const Index rows = std::min(block, len_q - i0);
      const Index n = rows * len_k;
      for (Index h = 0; h < nh; ++h) {
        auto qb = qs.topRows(rows);
        qb = q.head(b, h).middleRows(i0, rows) * scale;
        Rows(logits.row(h).data(), rows, len_k).noalias() = qb * k.head(b, h).transpose();
      }
      mix_heads(mix.logits_weight, mix.logits_bias, logits.leftCols(n), mixed.leftCols(n));
      for (Index g = 0; g < nh; ++g) {
        Rows s(mixed.row(g).data(), rows, len_k);
        detail::add_mask_bias(s, opt, b, g, nh, i0, len_q);
        softmax_rows_inplace(s);
      }
      mix_heads(mix.weights_weight, mix.weights_bias, mixed.leftCols(n), logits.leftCols(n));
      for (Index f = 0; f < nh; ++f) {
        Rows p(logits.row(f).data(), rows, len_k);
        if (opt.dropout_p > T(0)) detail::dropout_rows(p, opt.dropout_p, key, b, f, nh, i0, len_q);
        if (opt.attn_weights)
          Rows(opt.attn_weights->data() + ((b * nh + f) * len_q + i0) * len_k, rows, len_k) = p;
        out.head(b, f).middleRows(i0, rows).noalias() = p * v.head(b, f);
      }
    }
  }
}

}  // namespace attn
