#pragma once
/// @file
/// @brief MobileViTEncoderLayer<T>: MobileViT's pre-norm transformer encoder layer (ml-cvnets).

#include <string>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"
#include "attn/modules/attention_args.hpp"
#include "attn/modules/layer_norm.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/module.hpp"
#include "attn/modules/multi_head_attention.hpp"
#include "attn/modules/options.hpp"
#include "attn/ops/activations.hpp"
#include "attn/ops/dropout.hpp"

namespace attn {

/// @brief x = x + Dropout(MHA(LayerNorm(x))); x = x + Dropout(W2 Dropout(SiLU(W1 LayerNorm(x)))).
///
/// Parameter names are exactly MobileViT's nn.Sequential ones, so a checkpoint maps one to
/// one: pre_norm_mha.0.{weight,bias} (LayerNorm), pre_norm_mha.1.qkv_proj.{weight,bias},
/// pre_norm_mha.1.out_proj.{weight,bias}, pre_norm_ffn.0.{weight,bias} (LayerNorm),
/// pre_norm_ffn.1.{weight,bias} (Linear(E, F)), pre_norm_ffn.4.{weight,bias} (Linear(F, E)).
template <class T>
class MobileViTEncoderLayer : public Module<T> {
 public:
  /// @brief ml-cvnets' TransformerEncoder(opts, embed_dim, ffn_latent_dim, num_heads, attn_dropout,
  /// dropout, ffn_dropout) with LayerNorm (eps 1e-5) and SiLU, same defaults.
  ///
  /// The attention is a MultiHeadAttention in the kFusedQkv layout (MobileViT's qkv_proj). The
  /// module starts in eval mode; in training mode with any dropout > 0, forward needs a
  /// Generator in its AttentionArgs.
  /// @param embed_dim E, the features of each token (input and output); must be > 0 and
  /// divisible by num_heads
  /// @param ffn_latent_dim F, the hidden width of the feed-forward network Linear(E, F),
  /// Linear(F, E); must be > 0
  /// @param num_heads attention heads (default 8); must be > 0
  /// @param options attn_dropout (on the attention weights after the softmax), dropout (on
  /// the attention branch's output and on the output of the FFN's second Linear, each
  /// before its residual add) and ffn_dropout (on the FFN's hidden activations, after SiLU),
  /// each in [0, 1), default 0
  /// @throws std::invalid_argument if any of these constraints fails
  MobileViTEncoderLayer(Index embed_dim, Index ffn_latent_dim, Index num_heads = 8,
                        const MobileViTEncoderLayerOptions& options = {})
      : options_(validated(embed_dim, ffn_latent_dim, num_heads, options)),  // checks run first
        norm_mha_(embed_dim),
        mha_(embed_dim, num_heads, mha_options(options.attn_dropout)),
        norm_ffn_(embed_dim),
        fc1_(embed_dim, ffn_latent_dim, true, 31),
        fc2_(ffn_latent_dim, embed_dim, true, 33) {}

  /// E, the features of each token.
  Index embed_dim() const { return mha_.embed_dim(); }
  /// F, the hidden width of the feed-forward network.
  Index ffn_latent_dim() const { return fc1_.out_features(); }
  /// The number of attention heads.
  Index num_heads() const { return mha_.num_heads(); }
  /// The attention submodule (parameters pre_norm_mha.1.*), read-only.
  const MultiHeadAttention<T>& mha() const { return mha_; }
  /// The constructor options.
  const MobileViTEncoderLayerOptions& options() const { return options_; }

  /// @param x (B, N, E) or (N, E) @param args optional masks, generator @return same shape
  Tensor<T> forward(const TensorView<const T>& x, const AttentionArgs<T>& args = {}) const {
    constexpr const char* where = "attn::MobileViTEncoderLayer::forward";
    const Index e = embed_dim();
    detail::check_sequence(where, "x", x.shape(), e);
    const bool training = this->is_training();
    this->require_generator(args.generator, std::max({options_.attn_dropout, options_.dropout, options_.ffn_dropout}));
    auto drop = [&](auto&& m, double p) {
      if (training && p > 0.0) dropout_inplace(m.data(), m.size(), static_cast<T>(p), *args.generator);
    };
    const Index rows = x.numel() / e;
    const detail::WorkBuffer<T> normed(x.numel());  // LayerNorm's output, then the FFN's
    Eigen::Map<RowMatrix<T>> h(normed.data(), rows, e);
    norm_mha_.apply(x.matrix(), h);
    const TensorView<const T> hv(normed.data(), x.shape());
    Tensor<T> y = detail::prefix_errors(where, [&] { return mha_.forward(hv, hv, hv, MhaArgs<T>(args)); }).output;
    drop(y.matrix(), options_.dropout);
    y.matrix() += x.matrix();  // y = x + attention branch
    norm_ffn_.apply(y.matrix(), h);
    const detail::WorkBuffer<T> hidden_buffer(rows * ffn_latent_dim());
    Eigen::Map<RowMatrix<T>> hidden(hidden_buffer.data(), rows, ffn_latent_dim());
    fc1_.apply(h, hidden);
    silu_inplace(hidden);
    drop(hidden, options_.ffn_dropout);
    fc2_.apply(hidden, h);
    drop(h, options_.dropout);
    y.matrix() += h;
    return y;
  }

 protected:
  /// The parameters by PyTorch name, writable (see Module::slots).
  std::vector<ParameterSlot<T>> slots() override {
    std::vector<ParameterSlot<T>> s;
    this->append_child(s, norm_mha_, "pre_norm_mha.0.");
    this->append_child(s, mha_, "pre_norm_mha.1.");
    this->append_child(s, norm_ffn_, "pre_norm_ffn.0.");
    this->append_child(s, fc1_, "pre_norm_ffn.1.");
    this->append_child(s, fc2_, "pre_norm_ffn.4.");
    return s;
  }
  const char* type_name() const override { return "attn::MobileViTEncoderLayer"; }
  std::vector<Module<T>*> children() override { return {&norm_mha_, &mha_, &norm_ffn_, &fc1_, &fc2_}; }

 private:
  static MultiHeadAttentionOptions mha_options(double attn_dropout) {
    MultiHeadAttentionOptions o;
    o.dropout = attn_dropout;
    o.layout = MhaLayout::kFusedQkv;
    return o;
  }

  /// Checks the constructor arguments before anything is allocated; returns the options.
  static MobileViTEncoderLayerOptions validated(Index embed_dim, Index ffn_latent_dim, Index num_heads,
                                                const MobileViTEncoderLayerOptions& o) {
    constexpr const char* where = "attn::MobileViTEncoderLayer";
    detail::require(embed_dim > 0 && ffn_latent_dim > 0 && num_heads > 0, where, ": embed_dim (", embed_dim,
                    "), ffn_latent_dim (", ffn_latent_dim, ") and num_heads (", num_heads, ") must be positive");
    detail::require(embed_dim % num_heads == 0, where, ": embed_dim (", embed_dim,
                    ") must be divisible by num_heads (", num_heads, ")");
    detail::check_dropout_p(o.attn_dropout, (std::string(where) + " (attn_dropout)").c_str());
    detail::check_dropout_p(o.dropout, (std::string(where) + " (dropout)").c_str());
    detail::check_dropout_p(o.ffn_dropout, (std::string(where) + " (ffn_dropout)").c_str());
    return o;
  }

  MobileViTEncoderLayerOptions options_;
  LayerNorm<T> norm_mha_;
  MultiHeadAttention<T> mha_;
  LayerNorm<T> norm_ffn_;
  Linear<T> fc1_, fc2_;
};

}  // namespace attn
