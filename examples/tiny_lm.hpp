#pragma once
// A small decoder-only language model built from attn pieces, shared by greedy_decoding and
// continuous_batching: a token embedding table, pre-norm layers (LayerNorm,
// GroupedQueryAttention with RoPE, LayerNorm, Linear-GELU-Linear), a final LayerNorm and an
// LM head. The weights are random, so the tokens mean nothing: the examples show mechanics
// and speed.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <attn/attn.hpp>

namespace example {

using attn::Index;
using Tokens = std::vector<Index>;

/// The model's sizes.
struct LmShape {
  Index embed = 256, heads = 8, kv_heads = 2, layers = 4, ffn = 1024, vocab = 1000;
};

/// Fills every weight matrix of `m` with U(-1/sqrt(in), 1/sqrt(in)) from its own seed (the
/// modules' default initialisation uses the same seeds in every layer).
inline void randomize(attn::Module<float>& m, std::uint64_t seed) {
  for (auto& slot : m.edit_parameters()) {  // the module repacks its weights when the edit ends
    if (slot.shape.size() != 2) continue;   // biases and norms keep their defaults
    const double bound = 1.0 / std::sqrt(double(slot.shape[1]));
    attn::fill_uniform(attn::TensorView<float>(slot.data, slot.shape), seed++, -bound, bound);
  }
}

/// One pre-norm decoder layer: x + attention(norm1(x)), then h + down(gelu(up(norm2(h)))).
class DecoderLayer {
 public:
  DecoderLayer(const LmShape& s, std::uint64_t seed)
      : norm1_(s.embed), norm2_(s.embed), attention_(s.embed, s.heads, s.kv_heads), up_(s.embed, s.ffn),
        down_(s.ffn, s.embed) {
    randomize(attention_, seed);
    randomize(up_, seed + 10);
    randomize(down_, seed + 20);
  }

  /// The layer's KV cache: contiguous, or paged in `pool` when one is given.
  template <class... Pool>
  attn::KVCache<float> make_cache(Index batch, Index capacity, Pool... pool) const {
    return attention_.make_cache(batch, capacity, pool...);
  }

  /// The whole sequence (causal).
  attn::Tensor<float> forward(const attn::Tensor<float>& x) const {
    return residuals(x, [&](const attn::Tensor<float>& z) { return attention_.forward(z); });
  }
  /// The next tokens of each sequence, appended to `cache` (each sequence at its own position).
  attn::Tensor<float> forward(const attn::Tensor<float>& x, attn::KVCache<float>& cache) const {
    return residuals(x, [&](const attn::Tensor<float>& z) { return attention_.forward(z, cache); });
  }

 private:
  template <class Attend>
  attn::Tensor<float> residuals(const attn::Tensor<float>& x, Attend&& attend) const {
    attn::Tensor<float> h(x);
    h.matrix() += attend(norm1_.forward(x)).matrix();
    attn::Tensor<float> hidden = up_.forward(norm2_.forward(h));
    attn::gelu_inplace(hidden.matrix());
    h.matrix() += down_.forward(hidden).matrix();
    return h;
  }

  attn::LayerNorm<float> norm1_, norm2_;
  attn::GroupedQueryAttention<float> attention_;
  attn::Linear<float> up_, down_;
};

/// Embedding, decoder layers, final norm, LM head.
class TinyLm {
 public:
  explicit TinyLm(const LmShape& s)
      : table_(attn::random_uniform<float>({s.vocab, s.embed}, 1, -1.0, 1.0)), norm_(s.embed),
        lm_head_(s.embed, s.vocab, false) {
    for (Index i = 0; i < s.layers; ++i) layers_.emplace_back(s, 100 + 100 * std::uint64_t(i));
    randomize(lm_head_, 2);
  }

  Index vocab() const { return table_.size(0); }

  /// One KV cache per layer, each of `batch` sequences of up to `capacity` positions:
  /// contiguous, or paged with a pool of its own per layer when `pool` (attn::KVPages) is given.
  template <class... Pool>
  std::vector<attn::KVCache<float>> make_caches(Index batch, Index capacity, Pool... pool) const {
    std::vector<attn::KVCache<float>> caches;
    for (const auto& layer : layers_) caches.push_back(layer.make_cache(batch, capacity, pool...));
    return caches;
  }

  /// Logits (1, vocab) of the next token after `tokens`, recomputing every position.
  attn::Tensor<float> next_logits(const Tokens& tokens) const {
    attn::Tensor<float> x = embed({tokens});
    for (const auto& layer : layers_) x = layer.forward(x);
    return logits(x);
  }
  /// Logits (B, vocab) of each sequence's next token after what the caches hold and its chunk
  /// (chunks[b], all of one length), which is appended to the caches.
  attn::Tensor<float> next_logits(const std::vector<Tokens>& chunks, std::vector<attn::KVCache<float>>& caches) const {
    attn::Tensor<float> x = embed(chunks);
    for (std::size_t i = 0; i < layers_.size(); ++i) x = layers_[i].forward(x, caches[i]);
    return logits(x);
  }

 private:
  /// (B, C, E) embeddings of B chunks of C tokens.
  attn::Tensor<float> embed(const std::vector<Tokens>& chunks) const {
    const Index e = table_.size(1), c = Index(chunks.front().size());
    attn::Tensor<float> x({Index(chunks.size()), c, e});
    for (std::size_t b = 0; b < chunks.size(); ++b)
      for (Index i = 0; i < c; ++i) x.matrix().row(Index(b) * c + i) = table_.matrix().row(chunks[b][std::size_t(i)]);
    return x;
  }
  /// The LM head on the final norm of each sequence's last position only.
  attn::Tensor<float> logits(const attn::Tensor<float>& x) const {
    const Index nb = x.size(0), c = x.size(1), e = x.size(2);
    attn::Tensor<float> last({nb, e});
    for (Index b = 0; b < nb; ++b) last.matrix().row(b) = x.matrix().row(b * c + c - 1);
    return lm_head_.forward(norm_.forward(last));
  }

  attn::Tensor<float> table_;  // (vocab, E)
  std::vector<DecoderLayer> layers_;
  attn::LayerNorm<float> norm_;
  attn::Linear<float> lm_head_;
};

/// The greedy choice among `vocab` logits, and by how much it beats the second best.
struct Choice {
  Index token = 0;
  double margin = 0;
};
inline Choice greedy(const float* logits, Index vocab) {
  const Index best = Index(std::max_element(logits, logits + vocab) - logits);
  float second = -1e30f;
  for (Index v = 0; v < vocab; ++v)
    if (v != best) second = std::max(second, logits[v]);
  return {best, double(logits[best] - second)};
}

}  // namespace example
