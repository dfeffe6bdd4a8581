#pragma once
/// @file
/// @brief Talking-heads head mixing: a Linear(H, H) applied across the heads dimension.

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief out[g] = sum_h weight[g, h] * in[h] + bias[g], one GEMM.
///
/// This is `proj(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)` of timm's
/// TalkingHeadAttn, for a block whose row h holds all scores of head h.
/// @param weight (H, H) in PyTorch's Linear layout (out, in)
/// @param bias (H)
/// @param in (H, X), one row per head; @param out (H, X), must not alias in
template <class W, class B, class In, class Out>
void mix_heads(const Eigen::MatrixBase<W>& weight, const Eigen::MatrixBase<B>& bias,
               const Eigen::MatrixBase<In>& in, Out&& out) {
  detail::require_writable<Out>();
  const Index h = in.rows();
  detail::require(weight.rows() == h && weight.cols() == h && bias.size() == h &&
                      out.rows() == h && out.cols() == in.cols(),
                  "attn::mix_heads: weight (", weight.rows(), ", ", weight.cols(), ") and bias (",
                  bias.size(), ") must be (H, H) and (H) for ", h, " heads");
  out.noalias() = weight * in;
  out.colwise() += bias;
}

/// @brief Mixes the heads of a (B, H, L, S) tensor of scores or probabilities.
template <class T>
Tensor<T> mix_heads(const TensorView<const T>& x, const TensorView<const T>& weight,
                    const TensorView<const T>& bias) {
  detail::require(x.dim() == 4, "attn::mix_heads: input must be (B, H, L, S), got ", x.shape());
  const Index nb = x.size(0), nh = x.size(1), per_head = x.size(2) * x.size(3);
  detail::require(weight.shape() == Shape{nh, nh} && bias.shape() == Shape{nh},
                  "attn::mix_heads: weight ", weight.shape(), " and bias ", bias.shape(),
                  " must be (H, H) and (H) for input ", x.shape());
  auto y = Tensor<T>::uninitialized(x.shape());
  for (Index b = 0; b < nb; ++b) {
    using Block = Eigen::Map<const RowMatrix<T>>;
    mix_heads(weight.matrix(), Eigen::Map<const Vector<T>>(bias.data(), nh),
              Block(x.data() + b * nh * per_head, nh, per_head),
              Eigen::Map<RowMatrix<T>>(y.data() + b * nh * per_head, nh, per_head));
  }
  return y;
}

}  // namespace attn
