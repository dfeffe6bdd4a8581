#pragma once
/// @file
/// @brief TransformerDecoderLayer<T>: torch.nn.TransformerDecoderLayer (batch_first), full
/// sequence and incremental (a self-attention KV cache and a cross-attention memory cache).

#include <cstdint>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/modules/attention_args.hpp"
#include "attn/modules/detail/transformer_blocks.hpp"
#include "attn/modules/layer_norm.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/module.hpp"
#include "attn/modules/multi_head_attention.hpp"
#include "attn/modules/options.hpp"
#include "attn/ops/kv_cache.hpp"

namespace attn {

/// @brief The masks and causal masking of a decoder's self-attention: tgt_mask (attn_mask),
/// tgt_key_padding_mask (key_padding_mask) and tgt_is_causal (causal).
template <class T>
struct DecoderSelfArgs : AttentionMasks<T> {
  /// tgt_is_causal. With a cache, causal masking counts positions from the start of the
  /// sequence (kTopLeft and kBottomRight alike); kNone lets a chunk see all of itself.
  Causal causal = Causal::kNone;
};

/// @brief The per-call arguments of TransformerDecoderLayer::forward.
template <class T>
struct DecoderArgs {
  /// Self-attention over tgt: tgt_mask, tgt_key_padding_mask, tgt_is_causal.
  DecoderSelfArgs<T> self;
  /// Cross-attention over memory: attn_mask = memory_mask, key_padding_mask =
  /// memory_key_padding_mask.
  AttentionMasks<T> memory;
  /// Dropout randomness of the whole layer; required in training mode when dropout > 0.
  Generator* generator = nullptr;
};

/// @brief The caches of incremental decoding: the self-attention keys and values of the
/// target tokens so far, and the cross-attention keys and values of the memory, stored in S
/// (see KVCache).
template <class T, class S = T>
struct DecoderCache {
  KVCache<T, S> self;    ///< (B, nhead, capacity, head_dim), grows by each chunk
  KVCache<T, S> memory;  ///< (B, nhead, memory length, head_dim), written once by encode_memory
};

/// @brief torch.nn.TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout,
/// activation, layer_norm_eps, batch_first=True, norm_first): post-norm x = norm1(x + sa(x));
/// x = norm2(x + mha(x, memory)); x = norm3(x + ff(x)), or pre-norm with the norms inside
/// (x = x + sa(norm1(x)) ...), each block followed by its dropout.
///
/// Parameters: self_attn.*, multihead_attn.* (nn.MultiheadAttention's names), linear1.*,
/// linear2.*, norm1.*, norm2.*, norm3.*. forward(tgt, memory) runs a whole target sequence;
/// with a DecoderCache, forward(tgt_chunk, cache) runs the next tokens only, and chunk by
/// chunk gives the outputs of the full pass (causal with args.self.causal).
template <class T>
class TransformerDecoderLayer : public Module<T> {
 public:
  /// @param d_model E; must be divisible by nhead
  /// @param nhead attention heads (of both attentions)
  /// @param options dim_feedforward (2048), dropout (0.1: attention weights of both
  /// attentions, the feed-forward dropout and dropout1..3), activation (relu),
  /// layer_norm_eps (1e-5), norm_first (false); the layer starts in eval mode
  /// @throws std::invalid_argument for sizes or options that do not fit
  TransformerDecoderLayer(Index d_model, Index nhead, const TransformerLayerOptions& options = {})
      : options_(validated(d_model, nhead, options)),
        self_attn_(d_model, nhead, detail::torch_layer_attention(options.dropout)),
        multihead_attn_(d_model, nhead, detail::torch_layer_attention(options.dropout)),
        linear1_(d_model, options.dim_feedforward, true, 61),
        linear2_(options.dim_feedforward, d_model, true, 63),
        norm1_(d_model, options.layer_norm_eps),
        norm2_(d_model, options.layer_norm_eps),
        norm3_(d_model, options.layer_norm_eps) {}

  Index d_model() const { return self_attn_.embed_dim(); }               ///< E
  Index nhead() const { return self_attn_.num_heads(); }                 ///< attention heads
  const TransformerLayerOptions& options() const { return options_; }   ///< as constructed

  /// @brief The whole target sequence.
  /// @param tgt (B, T, E); @param memory (B, S, E)
  /// @param args masks of both attentions (causal self-attention: args.self.causal), generator
  /// @return (B, T, E)
  Tensor<T> forward(const TensorView<const T>& tgt, const TensorView<const T>& memory,
                    const DecoderArgs<T>& args = {}) const {
    constexpr const char* where = "attn::TransformerDecoderLayer::forward";
    check(where, tgt, args);
    detail::check_sequence(where, "memory", memory.shape(), d_model());
    return layers(
        where, tgt, args, [&](const TensorView<const T>& z) { return self_attn_.forward(z, self_args(args)); },
        [&](const TensorView<const T>& z) { return multihead_attn_.forward(z, memory, memory, memory_args(args)); });
  }

  /// @brief Packed sequences of different lengths, none padded (varlen): target sequence b is
  /// rows [cu_seqlens[b], cu_seqlens[b + 1]) of tgt and its memory rows [cu_seqlens_memory[b],
  /// cu_seqlens_memory[b + 1]) of memory; each attends within itself (causal with
  /// args.self.causal) and to its own memory only (MultiHeadAttention's packed forward). Each
  /// sequence's outputs are those of forward on it alone.
  /// @param tgt (T, E); @param cu_seqlens (B + 1) from 0 to T (I64)
  /// @param memory (S, E); @param cu_seqlens_memory (B + 1) from 0 to S
  /// @param args args.self.causal and the generator (no masks)
  /// @return (T, E)
  /// @throws std::invalid_argument for shapes, bad cu_seqlens or masks
  Tensor<T> forward(const TensorView<const T>& tgt, const TensorView<const std::int64_t>& cu_seqlens,
                    const TensorView<const T>& memory, const TensorView<const std::int64_t>& cu_seqlens_memory,
                    const DecoderArgs<T>& args = {}) const {
    constexpr const char* where = "attn::TransformerDecoderLayer::forward";
    check(where, tgt, args);
    detail::check_sequence(where, "memory", memory.shape(), d_model());
    return layers(
        where, tgt, args,
        [&](const TensorView<const T>& z) { return self_attn_.forward(z, cu_seqlens, self_args(args)); },
        [&](const TensorView<const T>& z) {
          return multihead_attn_.forward(z, memory, memory, cu_seqlens, cu_seqlens_memory, memory_args(args));
        });
  }

  /// @brief Caches for incremental decoding of a batch of `batch`: up to `capacity` target
  /// tokens, a memory of memory_length tokens, stored in S.
  template <class S = T>
  DecoderCache<T, S> make_cache(Index batch, Index capacity, Index memory_length) const {
    return {self_attn_.template make_cache<S>(batch, capacity), multihead_attn_.template make_cache<S>(batch, memory_length)};
  }
  /// @brief make_cache with the target tokens' cache paged in `pool` (see KVCache); the
  /// memory's is contiguous.
  template <class S = T>
  DecoderCache<T, S> make_cache(Index batch, Index capacity, Index memory_length, KVPages pool) const {
    return {self_attn_.template make_cache<S>(batch, capacity, pool),
            multihead_attn_.template make_cache<S>(batch, memory_length)};
  }

  /// @brief Projects the memory's keys and values once into cache.memory (and empties
  /// cache.self): the start of decoding a new sequence.
  /// @param memory (B, S, E)
  /// @param cache make_cache(B, capacity, memory length >= S)
  /// @throws std::invalid_argument, the caches unchanged, for shapes that do not fit
  template <class S>
  void encode_memory(const TensorView<const T>& memory, DecoderCache<T, S>& cache) const {
    detail::prefix_errors("attn::TransformerDecoderLayer::encode_memory",
                          [&] { multihead_attn_.encode_memory(memory, cache.memory); });
    cache.self.reset();
  }

  /// @brief The next target tokens: self-attention over cache.self (the chunk's keys and
  /// values are appended) and cross-attention over cache.memory. With args.self.causal
  /// (tgt_is_causal, top-left or bottom-right alike) the token at position p sees the target
  /// tokens at positions <= p, so chunk by chunk gives the full causal pass's outputs.
  /// @param tgt_chunk (B, C, E); @param cache filled by encode_memory and earlier chunks
  /// @param args masks (args.self.key_padding_mask covers every cached target token), causal,
  /// generator
  /// @return (B, C, E)
  /// @throws std::invalid_argument, the caches unchanged, for shapes or masks that do not fit,
  /// or a cache whose memory was never encoded
  template <class S>
  Tensor<T> forward(const TensorView<const T>& tgt_chunk, DecoderCache<T, S>& cache,
                    const DecoderArgs<T>& args = {}) const {
    constexpr const char* where = "attn::TransformerDecoderLayer::forward";
    check(where, tgt_chunk, args);
    detail::require(cache.memory.length() > 0, where,
                    ": cache.memory holds no memory: call encode_memory(memory, cache) first");
    bool appended = false;
    try {
      return layers(
          where, tgt_chunk, args,
          [&](const TensorView<const T>& z) {
            auto y = self_attn_.forward(z, cache.self, self_args(args));
            appended = true;
            return y;
          },
          [&](const TensorView<const T>& z) {
            return multihead_attn_.forward_memory(z, cache.memory, memory_args(args));
          });
    } catch (...) {
      if (appended) cache.self.pop(tgt_chunk.size(1));  // e.g. a bad memory mask after the self-attention appended
      throw;
    }
  }

 protected:
  /// The parameters by PyTorch name, writable (see Module::slots).
  std::vector<ParameterSlot<T>> slots() override {
    std::vector<ParameterSlot<T>> s;
    this->append_child(s, self_attn_, "self_attn.");
    this->append_child(s, multihead_attn_, "multihead_attn.");
    this->append_child(s, linear1_, "linear1.");
    this->append_child(s, linear2_, "linear2.");
    this->append_child(s, norm1_, "norm1.");
    this->append_child(s, norm2_, "norm2.");
    this->append_child(s, norm3_, "norm3.");
    return s;
  }
  const char* type_name() const override { return "attn::TransformerDecoderLayer"; }
  std::vector<Module<T>*> children() override {
    return {&self_attn_, &multihead_attn_, &linear1_, &linear2_, &norm1_, &norm2_, &norm3_};
  }

 private:
  /// The three residual steps; self_attend(z) and cross_attend(z) give the attention blocks'
  /// outputs (their errors prefixed with `where`).
  template <class SelfAttend, class CrossAttend>
  Tensor<T> layers(const char* where, const TensorView<const T>& tgt, const DecoderArgs<T>& args,
                   SelfAttend&& self_attend, CrossAttend&& cross_attend) const {
    const detail::LayerContext<T> c{this->is_training(), options_.dropout, args.generator};
    Tensor<T> x(tgt);
    Eigen::Map<RowMatrix<T>> xm(x.data(), tgt.numel() / d_model(), d_model());
    const auto block = [&](auto&& attend) {
      return [&](const Eigen::Map<RowMatrix<T>>& z, Eigen::Map<RowMatrix<T>>& out) {
        out = detail::prefix_errors(where, [&] { return attend(TensorView<const T>(z.data(), tgt.shape())); })
                  .output.matrix();
      };
    };
    detail::residual_step(xm, norm1_, options_.norm_first, c, block(self_attend));
    detail::residual_step(xm, norm2_, options_.norm_first, c, block(cross_attend));
    detail::residual_step(xm, norm3_, options_.norm_first, c, [&](const auto& z, auto& out) {
      detail::feed_forward(linear1_, linear2_, options_.activation, c, z, out);
    });
    return x;
  }

  void check(const char* where, const TensorView<const T>& tgt, const DecoderArgs<T>& args) const {
    detail::check_sequence(where, "tgt", tgt.shape(), d_model());
    this->require_generator(args.generator, options_.dropout);
  }

  /// The self-attention's arguments, with the layer's generator.
  static MhaArgs<T> self_args(const DecoderArgs<T>& args) {
    MhaArgs<T> a;
    a.key_padding_mask = args.self.key_padding_mask;
    a.attn_mask = args.self.attn_mask;
    a.causal = args.self.causal;
    a.generator = args.generator;
    return a;
  }
  /// The cross-attention's arguments, with the layer's generator.
  static MhaArgs<T> memory_args(const DecoderArgs<T>& args) {
    MhaArgs<T> a;
    a.key_padding_mask = args.memory.key_padding_mask;
    a.attn_mask = args.memory.attn_mask;
    a.generator = args.generator;
    return a;
  }

  static TransformerLayerOptions validated(Index d_model, Index nhead, const TransformerLayerOptions& o) {
    detail::check_transformer_layer("attn::TransformerDecoderLayer", d_model, nhead, o);
    return o;
  }

  TransformerLayerOptions options_;
  MultiHeadAttention<T> self_attn_, multihead_attn_;
  Linear<T> linear1_, linear2_;
  LayerNorm<T> norm1_, norm2_, norm3_;
};

}  // namespace attn
