#pragma once
/// @file
/// @brief SdpaOptions: everything about one attention kernel call besides q, k and v.

#include <cstdint>
#include <optional>

#include "attn/core/generator.hpp"
#include "attn/core/mask.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Everything about one attention call besides q, k, v.
///
/// The logits go through, in this order: scale, softcap, ALiBi, key_padding_mask, attn_mask,
/// causal and sliding-window masking, softmax (with the
/// sinks in its denominator), dropout.
template <class T>
struct SdpaOptions {
  /// Multiplies q k^T; default 1/sqrt(head_dim). (The scalars are in compute_t<T>: float32
  /// for bfloat16 and half.)
  std::optional<compute_t<T>> scale;
  /// (B, S): one entry per key of each batch element, the same for every head and query.
  Mask<T> key_padding_mask;
  /// Any shape that broadcasts to (B, H, L, S) (PyTorch's rule: (L, S), (B, 1, L, S), (H, L, S),
  /// (B, 1, 1, S) ...), or nn.MultiheadAttention's (B*H, L, S), batch-major.
  Mask<T> attn_mask;
  /// Causal masking (see Causal), applied after key_padding_mask and attn_mask; none by default.
  Causal causal = Causal::kNone;
  /// @brief A sliding window of W keys: query i sees key j only when diag(i) - W < j <=
  /// diag(i), its W most recent keys, itself included (Mistral's sliding_window;
  /// FlashAttention's window_size = (W - 1, 0)). diag(i) is causal masking's diagonal:
  /// i + S - L, or i with Causal::kTopLeft. A window implies causal masking (kNone is taken
  /// as kBottomRight). W must be >= 1.
  std::optional<Index> sliding_window;
  /// @brief Logit soft-capping: logits = c * tanh(logits / c) after the scale, before ALiBi
  /// and the masks (Gemma 2, Grok; FlashAttention's and ggml's softcap). c must be > 0.
  std::optional<compute_t<T>> softcap;
  /// @brief ALiBi: (H) per-head slopes; head h's logit (i, j) gets -slope_h * |i + S - L - j|
  /// (FlashAttention's alibi_slopes), after soft-capping, before the masks. Empty: none.
  TensorView<const T> alibi_slopes;
  /// @brief Attention sinks (gpt-oss): (H) per-head logits that join each query's softmax
  /// denominator as one more key with no value, so the weights may sum to less than 1. Not
  /// scaled, capped or masked; a query with every key masked gets output 0. Empty: none.
  TensorView<const T> sinks;
  /// @brief Ragged keys: (B) the keys each batch element holds. Batch element b attends to
  /// its first key_lengths[b] keys only (0 to S; the rest may hold anything), and its queries
  /// sit at the end of them: causal masking's and ALiBi's S is key_lengths[b] (FlashAttention's
  /// cache_seqlens; ONNX Runtime GroupQueryAttention's seqlens_k + 1). A KV cache whose
  /// sequences have different lengths passes its own. Empty: every element holds all S.
  TensorView<const std::int64_t> key_lengths;
  /// Dropout on the attention weights, applied when > 0 (callers pass 0 in eval mode).
  compute_t<T> dropout_p = 0;
  /// Source of the dropout mask; required when dropout_p > 0.
  Generator* generator = nullptr;
  /// If set, receives the attention weights (B, H, L, S), after dropout (what multiplies v,
  /// and what nn.MultiheadAttention returns). Materialising them costs B*H*L*S elements.
  Tensor<T>* attn_weights = nullptr;
  /// @brief If set, receives each query's log-sum-exp (B, H, L) in compute_t<T>: the log of
  /// its softmax's denominator, log(sum_j exp(logit_j) [+ exp(sink)]) over the logits after
  /// scale, softcap, ALiBi and masks (before dropout), so that output = sum_j exp(logit_j -
  /// lse) v_j. -inf for a query with every key masked (its sink without one is its lse), NaN
  /// for a NaN row. Attention states over disjoint keys merge with merge_attention_states.
  Tensor<compute_t<T>>* lse = nullptr;
};

}  // namespace attn
