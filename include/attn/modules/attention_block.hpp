#pragma once
/// @file
/// @brief AttentionBlock<T>: self-attention + residual + LayerNorm over CNN feature maps (N, C, L).

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"
#include "attn/modules/attention_args.hpp"
#include "attn/modules/layer_norm.hpp"
#include "attn/modules/module.hpp"
#include "attn/modules/multi_head_attention.hpp"
#include "attn/modules/options.hpp"

namespace attn {

/// @brief y = LayerNorm(x' + MHA(x', x', x')) with x' = x permuted from (N, C, L) to
/// (N, L, C), permuted back: attention over the L positions of CNN feature maps.
///
/// Parameters: mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.{weight,bias},
/// norm.{weight,bias} (nn.MultiheadAttention(batch_first=True) and nn.LayerNorm).
template <class T>
class AttentionBlock : public Module<T> {
 public:
  /// @brief nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True) followed by
  /// nn.LayerNorm(embed_dim, eps), with PyTorch's other defaults (bias=True).
  /// @param embed_dim C, the channels of the feature maps; must be > 0 and divisible by num_heads
  /// @param num_heads attention heads; must be > 0
  /// @param options dropout (on the attention weights, training mode only; in [0, 1), default
  /// 0) and layer_norm_eps (default 1e-5)
  /// @throws std::invalid_argument if a constraint fails
  AttentionBlock(Index embed_dim, Index num_heads, const AttentionBlockOptions& options = {})
      : mha_(detail::prefix_errors("attn::AttentionBlock",
                                   [&] { return MultiHeadAttention<T>(embed_dim, num_heads, mha_options(options)); })),
        norm_(detail::prefix_errors("attn::AttentionBlock",
                                    [&] { return LayerNorm<T>(embed_dim, options.layer_norm_eps); })) {}

  /// C, the channels of the feature maps.
  Index embed_dim() const { return mha_.embed_dim(); }
  /// The number of attention heads.
  Index num_heads() const { return mha_.num_heads(); }
  /// The attention submodule (parameters "mha.*").
  MultiHeadAttention<T>& mha() { return mha_; }
  /// The attention submodule, read-only.
  const MultiHeadAttention<T>& mha() const { return mha_; }

  /// @param x (N, C, L) feature maps (or (C, L)); @param args optional masks over the L
  /// positions, generator @return (N, C, L) (or (C, L))
  Tensor<T> forward(const TensorView<const T>& x, const AttentionArgs<T>& args = {}) const {
    constexpr const char* where = "attn::AttentionBlock::forward";
    const Index c = embed_dim();
    detail::require((x.dim() == 3 || x.dim() == 2) && x.size(-2) == c, where, ": x has shape ",
                    x.shape(), ", expected (N, C, L) or (C, L) with C = ", c);
    const Index nb = x.dim() == 3 ? x.size(0) : 1, len = x.size(-1);
    // (N, C, L) -> (N, L, C): the projections want one row per position.
    const detail::WorkBuffer<T> seq_buffer(x.numel());
    const TensorView<const T> seq(seq_buffer.data(), x.dim() == 3 ? Shape{nb, len, c} : Shape{len, c});
    for (Index b = 0; b < nb; ++b)
      Eigen::Map<RowMatrix<T>>(seq_buffer.data() + b * len * c, len, c) =
          Eigen::Map<const RowMatrix<T>>(x.data() + b * c * len, c, len).transpose();
    this->require_generator(args.generator, mha_.options().dropout);
    Tensor<T> y = detail::prefix_errors(where, [&] { return mha_.forward(seq, seq, seq, MhaArgs<T>(args)); }).output;
    y.matrix() += seq.matrix();
    norm_.apply(y.matrix(), y.matrix());
    auto out = Tensor<T>::uninitialized(x.shape());
    for (Index b = 0; b < nb; ++b)
      Eigen::Map<RowMatrix<T>>(out.data() + b * c * len, c, len) =
          Eigen::Map<const RowMatrix<T>>(y.data() + b * len * c, len, c).transpose();
    return out;
  }

 protected:
  /// The parameters by PyTorch name, writable (see Module::slots).
  std::vector<ParameterSlot<T>> slots() override {
    std::vector<ParameterSlot<T>> s;
    this->append_child(s, mha_, "mha.");
    this->append_child(s, norm_, "norm.");
    return s;
  }
  const char* type_name() const override { return "attn::AttentionBlock"; }
  std::vector<Module<T>*> children() override { return {&mha_, &norm_}; }

 private:
  static MultiHeadAttentionOptions mha_options(const AttentionBlockOptions& o) {
    MultiHeadAttentionOptions m;
    m.dropout = o.dropout;
    return m;
  }

  MultiHeadAttention<T> mha_;
  LayerNorm<T> norm_;
};

}  // namespace attn
