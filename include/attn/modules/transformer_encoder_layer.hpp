#pragma once
/// @file
/// @brief TransformerEncoderLayer<T>: torch.nn.TransformerEncoderLayer (batch_first), and what
/// it shares with TransformerDecoderLayer (options, the feed-forward block, residual steps).

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"
#include "attn/modules/attention_args.hpp"
#include "attn/modules/layer_norm.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/module.hpp"
#include "attn/modules/multi_head_attention.hpp"
#include "attn/ops/activations.hpp"
#include "attn/ops/dropout.hpp"

namespace attn {

/// @brief Constructor options of TransformerEncoderLayer and TransformerDecoderLayer, with
/// torch.nn's names and defaults.
struct TransformerLayerOptions {
  Index dim_feedforward = 2048;                ///< hidden width of the feed-forward network
  double dropout = 0.1;                        ///< every dropout of the layer (training mode only)
  Activation activation = Activation::kRelu;  ///< of the feed-forward network: relu or (exact) gelu
  double layer_norm_eps = 1e-5;                ///< eps of every LayerNorm
  bool norm_first = false;                     ///< pre-norm (x + f(norm(x))) instead of post-norm (norm(x + f(x)))
};

namespace detail {

/// The pieces of a torch.nn transformer layer every block uses: training flag, dropout
/// probability, generator.
template <class T>
struct LayerContext {
  bool training;
  double p;
  Generator* generator;
  /// Dropout on m in training mode (nn.Dropout(p)).
  template <class M>
  void drop(M&& m) const {
    if (training && p > 0.0) dropout_inplace(m.data(), m.size(), static_cast<T>(p), *generator);
  }
};

/// @brief One residual step of a torch.nn transformer layer on x (rows, E), in place:
/// post-norm x = norm(x + drop(f(x))), pre-norm x = x + drop(f(norm(x))). f(z, out) writes
/// the block's output for input rows z.
template <class T, class F>
void residual_step(Eigen::Map<RowMatrix<T>> x, const LayerNorm<T>& norm, bool norm_first, const LayerContext<T>& c,
                   F&& f) {
  const WorkBuffer<T> in(x.size()), out(x.size());
  Eigen::Map<RowMatrix<T>> z(in.data(), x.rows(), x.cols()), y(out.data(), x.rows(), x.cols());
  if (norm_first)
    norm.apply(x, z);
  else
    z = x;
  f(z, y);
  c.drop(y);
  x += y;
  if (!norm_first) norm.apply(x, x);
}

/// The feed-forward block: linear2(dropout(activation(linear1(z)))) into out.
template <class T>
void feed_forward(const Linear<T>& linear1, const Linear<T>& linear2, Activation activation, const LayerContext<T>& c,
                  const Eigen::Map<RowMatrix<T>>& z, Eigen::Map<RowMatrix<T>>& out) {
  const WorkBuffer<T> buffer(z.rows() * linear1.out_features());
  Eigen::Map<RowMatrix<T>> hidden(buffer.data(), z.rows(), linear1.out_features());
  linear1.apply(z, hidden);
  activation_inplace(hidden, activation);
  c.drop(hidden);
  linear2.apply(hidden, out);
}

/// The attention of a torch.nn transformer layer: nn.MultiheadAttention with the layer's dropout.
inline MultiHeadAttentionOptions torch_layer_attention(double dropout) {
  MultiHeadAttentionOptions o;
  o.dropout = dropout;
  return o;
}

/// Checks the constructor arguments shared by the torch.nn layers.
inline void check_transformer_layer(const char* where, Index d_model, Index nhead, const TransformerLayerOptions& o) {
  require(d_model > 0 && nhead > 0 && o.dim_feedforward > 0, where, ": d_model (", d_model, "), nhead (", nhead,
          ") and dim_feedforward (", o.dim_feedforward, ") must be positive");
  require(d_model % nhead == 0, where, ": d_model (", d_model, ") must be divisible by nhead (", nhead, ")");
  check_dropout_p(o.dropout, where);
  require(o.layer_norm_eps >= 0, where, ": layer_norm_eps must be >= 0, got ", o.layer_norm_eps);
}

}  // namespace detail

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
      out = self_attn_.forward(TensorView<const T>(z.data(), src.shape()), MhaArgs<T>(args)).output.matrix();
    });
    detail::residual_step(xm, norm2_, options_.norm_first, c, [&](const auto& z, auto& out) {
      detail::feed_forward(linear1_, linear2_, options_.activation, c, z, out);
    });
    return x;
  }

  std::vector<ParameterSlot<T>> parameters() override {
    std::vector<ParameterSlot<T>> s;
    detail::append_prefixed(s, self_attn_.parameters(), "self_attn.");
    detail::append_prefixed(s, linear1_.parameters(), "linear1.");
    detail::append_prefixed(s, linear2_.parameters(), "linear2.");
    detail::append_prefixed(s, norm1_.parameters(), "norm1.");
    detail::append_prefixed(s, norm2_.parameters(), "norm2.");
    return s;
  }

 protected:
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
