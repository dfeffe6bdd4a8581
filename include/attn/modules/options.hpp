#pragma once
/// @file
/// @brief The constructor options of every module, one struct per module with the names (and
/// defaults) of the PyTorch code it reproduces.

#include <optional>

#include "attn/core/tensor.hpp"
#include "attn/ops/activations.hpp"
#include "attn/ops/rotary.hpp"

namespace attn {

/// @brief Parameter names (and scale convention) of the PyTorch multi-head layers attn loads.
enum class MhaLayout {
  /// torch.nn.MultiheadAttention: in_proj_weight (or q/k/v_proj_weight when kdim or vdim
  /// differ from embed_dim), in_proj_bias, out_proj.*, bias_k, bias_v; q / sqrt(head_dim).
  kTorch,
  /// Separate Linear layers q, k, v, out (the tutorial MultiHeadAttention); scores / sqrt(head_dim)
  /// with the square root taken in float32 (torch.sqrt(torch.tensor(d, dtype=float32))).
  kSeparateLinears,
  /// MobileViT's MultiHeadAttention (ml-cvnets): qkv_proj, out_proj; q * head_dim**-0.5.
  /// Needs kdim == vdim == embed_dim.
  kFusedQkv,
};

/// @brief Constructor options, named after nn.MultiheadAttention's arguments.
struct MultiHeadAttentionOptions {
  double dropout = 0.0;        ///< dropout on the attention weights after the softmax (training only); in [0, 1)
  bool bias = true;            ///< in_proj_bias and out_proj.bias
  bool add_bias_kv = false;    ///< learned bias_k / bias_v appended as one more key / value
  bool add_zero_attn = false;  ///< a zero key / value appended after that
  Index kdim = 0;              ///< key features; 0 means embed_dim
  Index vdim = 0;              ///< value features; 0 means embed_dim
  MhaLayout layout = MhaLayout::kTorch;  ///< parameter names and scale; load_state_dict picks it from the names
};

/// @brief Constructor options of TalkingHeadsAttention, named after timm's TalkingHeadAttn.
struct TalkingHeadsOptions {
  bool qkv_bias = false;   ///< whether the fused qkv Linear(C, 3C) has a bias
  double attn_drop = 0.0;  ///< dropout on the attention weights, after proj_w and before they multiply v; in [0, 1)
  double proj_drop = 0.0;  ///< dropout on the output, after proj; in [0, 1)
};

/// @brief Constructor options of AttentionBlock: nn.MultiheadAttention's dropout and
/// nn.LayerNorm's eps.
struct AttentionBlockOptions {
  double dropout = 0.0;          ///< dropout on the attention weights (training mode only); in [0, 1)
  double layer_norm_eps = 1e-5;  ///< eps of the LayerNorm; >= 0
};

/// @brief Constructor options of MobileViTEncoderLayer, named after ml-cvnets' TransformerEncoder.
struct MobileViTEncoderLayerOptions {
  double attn_dropout = 0.0;  ///< dropout on the attention weights after the softmax; in [0, 1)
  double dropout = 0.0;       ///< dropout on each branch's output (attention, FFN), before its residual add
  double ffn_dropout = 0.0;   ///< dropout on the FFN's hidden activations, after SiLU
};

/// @brief Constructor options of TransformerEncoderLayer and TransformerDecoderLayer, with
/// torch.nn's names and defaults.
struct TransformerLayerOptions {
  Index dim_feedforward = 2048;                ///< hidden width of the feed-forward network
  double dropout = 0.1;                        ///< every dropout of the layer (training mode only)
  Activation activation = Activation::kRelu;  ///< of the feed-forward network: relu or (exact) gelu
  double layer_norm_eps = 1e-5;                ///< eps of every LayerNorm
  bool norm_first = false;                     ///< pre-norm (x + f(norm(x))) instead of post-norm (norm(x + f(x)))
};

/// @brief Constructor options of GroupedQueryAttention, named after HF's config fields.
struct GqaOptions {
  bool qkv_bias = false;                ///< q_proj / k_proj / v_proj biases (Qwen2: true; Llama, Mistral: false)
  bool rope = true;                     ///< rotary position embedding of q and k (false: none)
  RotaryOptions rotary;                 ///< rope_theta, partial rotary_dim, interleaved pairs
  std::optional<Index> sliding_window;  ///< Mistral's sliding_window (keys), if any; >= 1
  std::optional<double> softcap;        ///< attention logit soft-capping (Gemma 2), if any; > 0
  double dropout = 0.0;                 ///< attention_dropout on the weights (training mode only)
  /// gpt-oss attention sinks: a learnable logit per query head (parameter `sinks`, (H), zero
  /// at construction) in each softmax's denominator (SdpaOptions::sinks)
  bool sinks = false;
};

}  // namespace attn
