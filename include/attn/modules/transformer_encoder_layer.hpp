#pragma once
/// @file
/// @brief TransformerEncoderLayer<T>: torch.nn.TransformerEncoderLayer (batch_first).

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/modules/attention_args.hpp"
#include "attn/modules/detail/transformer_blocks.hpp"
#include "attn/modules/layer_norm.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/module.hpp"
#include "attn/modules/multi_head_attention.hpp"
#include "attn/modules/options.hpp"

namespace attn {

/// @brief torch.nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
/// activation, layer_norm_eps, batch_first=True, norm_first):
/// post-norm x = norm1(x + sa(x)); x = norm2(x + ff(x)), or pre-norm x = x + sa(norm1(x));
/// x = x + ff(norm2(x)), with sa = dropout1(self_attn(x, x, x)) and ff =
/// dropout2(linear2(dropout(activation(linear1(x))))).
///
/// Parameters: self_attn.{in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias},
/// linear1.*, linear2.*, norm1.*, norm2.*, as PyTorch names them.
template <class T>
class TransformerEncoderLayer : public Module<T> {
 public:
  /// @param d_model E, the features of each token; must be divisible by nhead
  /// @param nhead attention heads
  /// @param options dim_feedforward (2048), dropout (0.1, for the attention weights and the
  /// three nn.Dropout of the layer), activation (relu), layer_norm_eps (1e-5), norm_first
  /// (false); the layer starts in eval mode, where dropout is off
  /// @throws std::invalid_argument for sizes or options that do not fit
  TransformerEncoderLayer(Index d_model, Index nhead, const TransformerLayerOptions& options = {})
      : options_(validated(d_model, nhead, options)),
        self_attn_(d_model, nhead, detail::torch_layer_attention(options.dropout)),
        linear1_(d_model, options.dim_feedforward, true, 51),
        linear2_(options.dim_feedforward, d_model, true, 53),
        norm1_(d_model, options.layer_norm_eps),
        norm2_(d_model, options.layer_norm_eps) {}

  Index d_model() const { return self_attn_.embed_dim(); }                ///< E
  Index nhead() const { return self_attn_.num_heads(); }                  ///< attention heads
  const TransformerLayerOptions& options() const { return options_; }    ///< as constructed

  /// @param src (B, N, E) or (N, E)
  /// @param args attn_mask = PyTorch's src_mask, key_padding_mask = src_key_padding_mask,
  /// causal = is_causal (with a mask of its own), generator (training with dropout)
  /// @return the same shape as src
  Tensor<T> forward(const TensorView<const T>& src, const AttentionArgs<T>& args = {}) const {
    constexpr const char* where = "attn::TransformerEncoderLayer::forward";
    detail::check_sequence(where, "src", src.shape(), d_model());
    this->require_generator(args.generator, options_.dropout);
    const detail::LayerContext<T> c{this->is_training(), options_.dropout, args.generator};
    Tensor<T> x(src);
    const Index rows = src.numel() / d_model();
    Eigen::Map<RowMatrix<T>> xm(x.data(), rows, d_model());
    detail::residual_step(xm, norm1_, options_.norm_first, c, [&](const auto& z, auto& out) {
      out = detail::prefix_errors(where, [&] {
              return self_attn_.forward(TensorView<const T>(z.data(), src.shape()), MhaArgs<T>(args));
            }).output.matrix();
    });
    detail::residual_step(xm, norm2_, options_.norm_first, c, [&](const auto& z, auto& out) {
      detail::feed_forward(linear1_, linear2_, options_.activation, c, z, out);
    });
    return x;
  }

 protected:
  /// The parameters by PyTorch name, writable (see Module::slots).
  std::vector<ParameterSlot<T>> slots() override {
    std::vector<ParameterSlot<T>> s;
    this->append_child(s, self_attn_, "self_attn.");
    this->append_child(s, linear1_, "linear1.");
    this->append_child(s, linear2_, "linear2.");
    this->append_child(s, norm1_, "norm1.");
    this->append_child(s, norm2_, "norm2.");
    return s;
  }
  const char* type_name() const override { return "attn::TransformerEncoderLayer"; }
  std::vector<Module<T>*> children() override { return {&self_attn_, &linear1_, &linear2_, &norm1_, &norm2_}; }

 private:
  static TransformerLayerOptions validated(Index d_model, Index nhead, const TransformerLayerOptions& o) {
    detail::check_transformer_layer("attn::TransformerEncoderLayer", d_model, nhead, o);
    return o;
  }

  TransformerLayerOptions options_;
  MultiHeadAttention<T> self_attn_;
  Linear<T> linear1_, linear2_;
  LayerNorm<T> norm1_, norm2_;
};

}  // namespace attn
