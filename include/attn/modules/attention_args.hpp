#pragma once
/// @file
/// @brief Per-call arguments of the attention modules' forward passes.

#include <stdexcept>
#include <string>

#include "attn/core/attention_options.hpp"
#include "attn/core/generator.hpp"
#include "attn/core/mask.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/scaled_dot_product_attention.hpp"

namespace attn {

/// @brief The masks of one attention: nn.MultiheadAttention's key_padding_mask and attn_mask.
template <class T>
struct AttentionMasks {
  /// (B, S), one entry per key; e.g. Mask<T>::block_where_true(padding) with
  /// nn.MultiheadAttention's meaning (true = ignore this key). Unbatched input: (S).
  Mask<T> key_padding_mask;
  /// Any shape that broadcasts to (B, num_heads, L, S) (PyTorch's rule: (L, S), (B, 1, L, S),
  /// (B, 1, 1, S) ...), or nn.MultiheadAttention's (B * num_heads, L, S); bool or additive.
  Mask<T> attn_mask;
};

/// @brief Masks, causal masking and randomness for one forward call (the module's own state
/// stays const).
template <class T>
struct AttentionArgs : AttentionMasks<T> {
  /// Causal masking (top-left as PyTorch's is_causal, or bottom-right), on top of the masks.
  Causal causal = Causal::kNone;
  /// Dropout randomness; required in training mode when a dropout probability is > 0.
  Generator* generator = nullptr;
};

/// @brief The per-call arguments of GroupedQueryAttention, whose attention is always causal
/// (HF's is_causal): masks and randomness, and no causal flag to be ignored.
template <class T>
struct GqaArgs : AttentionMasks<T> {
  /// Dropout randomness; required in training mode when the dropout probability is > 0.
  Generator* generator = nullptr;
};

/// @brief AttentionArgs plus nn.MultiheadAttention's need_weights / average_attn_weights.
template <class T>
struct MhaArgs : AttentionArgs<T> {
  /// No masks, no causal masking, no generator, no weights.
  MhaArgs() = default;
  /// The masks, causal flag and generator of `args`, without weights (what the blocks
  /// built on MultiHeadAttention pass it).
  explicit MhaArgs(const AttentionArgs<T>& args) : AttentionArgs<T>(args) {}

  /// Also return the attention weights. Off by default (PyTorch's default is on): the
  /// weights cost B*H*L*S elements, and the fast path never needs them.
  bool need_weights = false;
  /// Weights averaged over heads (B, L, S), or per head (B, H, L, S).
  bool average_attn_weights = true;
};

/// @brief What MultiHeadAttention::forward returns, like PyTorch's (attn_output, attn_weights).
template <class T>
struct MhaOutput {
  Tensor<T> output;        ///< (B, L, E), or (L, E) for unbatched input
  Tensor<T> attn_weights;  ///< empty unless need_weights
};

namespace detail {

/// @brief The kernel options of one module call: scale and masks (an unbatched call's (S)
/// key padding mask seen as (1, S), as PyTorch does). The module sets causal masking,
/// dropout and its generator itself, then check_options.
template <class T>
SdpaOptions<T> sdpa_options(const char* where, const AttentionMasks<T>& masks, compute_t<T> scale, bool unbatched,
                            Index len_k) {
  SdpaOptions<T> opt;
  opt.scale = scale;
  opt.key_padding_mask = masks.key_padding_mask;
  if (unbatched && !opt.key_padding_mask.empty() && opt.key_padding_mask.shape().size() == 1) {
    require(opt.key_padding_mask.shape() == Shape{len_k}, where, ": key_padding_mask has shape ",
            opt.key_padding_mask.shape(), ", expected (keys) = ", Shape{len_k}, " for unbatched input");
    opt.key_padding_mask = opt.key_padding_mask.reshaped({1, len_k});
  }
  opt.attn_mask = masks.attn_mask;
  return opt;
}

/// Runs f and returns its result, prefixing the message of a std::invalid_argument it throws
/// with `where` (the function the user called, when the error comes from a kernel or a
/// submodule).
template <class F>
auto prefix_errors(const char* where, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::invalid_argument& err) {
    throw std::invalid_argument(std::string(where) + ": " + err.what());
  }
}

/// @brief Checks a module call's kernel options against its size (batch x heads x len_q
/// queries over len_k keys) before the module computes anything; errors start with `where`.
template <class T>
void check_options(const char* where, const SdpaOptions<T>& opt, Index batch, Index heads, Index len_q, Index len_k) {
  prefix_errors(where, [&] { check_sdpa_options(opt, batch, heads, len_q, len_k); });
}

}  // namespace detail
}  // namespace attn
