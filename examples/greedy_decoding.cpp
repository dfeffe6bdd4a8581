// Greedy decoding with a small decoder-only language model built from attn pieces: a token
// embedding table, pre-norm layers (LayerNorm, GroupedQueryAttention with RoPE, LayerNorm,
// Linear-GELU-Linear), a final LayerNorm and an LM head. The weights are random, so the
// tokens mean nothing: this shows the mechanics of a KV cache and what it saves.
// The same tokens are generated twice, (a) with one KVCache per layer (the prompt prefilled
// in one chunk, then one token per step) and (b) recomputing the whole prefix every step
// with forward(x); the two must agree (exit 1 otherwise).
// It runs on all cores unless --threads says otherwise (a decoding step of this model is a
// fraction of a millisecond; attn's loops do not wait for a thread that a busy core holds
// back, so sharing the cores with other work costs their share, not a stall per step).
// Usage: greedy_decoding [--embed E] [--heads H] [--kv-heads K] [--layers N] [--ffn F]
//                        [--vocab V] [--prompt P] [--new-tokens T] [--threads N]
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "example_util.hpp"

namespace {

using attn::Index;
using Tokens = std::vector<Index>;

struct Config {
  Index embed = 256, heads = 8, kv_heads = 2, layers = 4, ffn = 1024, vocab = 1000, prompt = 16, new_tokens = 128;
  Index threads = 0;  // all cores (attn::set_num_threads(0))
};

/// Fills every weight matrix of `m` with U(-1/sqrt(in), 1/sqrt(in)) from its own seed (the
/// modules' default initialisation uses the same seeds in every layer).
void randomize(attn::Module<float>& m, std::uint64_t seed) {
  for (auto& slot : m.edit_parameters()) {  // the module repacks its weights when the edit ends
    if (slot.shape.size() != 2) continue;   // biases and norms keep their defaults
    const double bound = 1.0 / std::sqrt(double(slot.shape[1]));
    attn::fill_uniform(attn::TensorView<float>(slot.data, slot.shape), seed++, -bound, bound);
  }
}

/// One pre-norm decoder layer: x + attention(norm1(x)), then h + down(gelu(up(norm2(h)))).
class DecoderLayer {
 public:
  DecoderLayer(const Config& c, std::uint64_t seed)
      : norm1_(c.embed), norm2_(c.embed), attention_(c.embed, c.heads, c.kv_heads), up_(c.embed, c.ffn),
        down_(c.ffn, c.embed) {
    randomize(attention_, seed);
    randomize(up_, seed + 10);
    randomize(down_, seed + 20);
  }

  attn::KVCache<float> make_cache(Index capacity) const { return attention_.make_cache(1, capacity); }

  /// The whole sequence (causal).
  attn::Tensor<float> forward(const attn::Tensor<float>& x) const {
    return residuals(x, [&](const attn::Tensor<float>& z) { return attention_.forward(z); });
  }
  /// The next tokens, appended to `cache`.
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

/// Embedding, decoder layers, final norm, LM head; batch 1.
class TinyLm {
 public:
  explicit TinyLm(const Config& c)
      : table_(attn::random_uniform<float>({c.vocab, c.embed}, 1, -1.0, 1.0)), norm_(c.embed),
        lm_head_(c.embed, c.vocab, false) {
    for (Index i = 0; i < c.layers; ++i) layers_.emplace_back(c, 100 + 100 * std::uint64_t(i));
    randomize(lm_head_, 2);
  }

  Index vocab() const { return table_.size(0); }

  std::vector<attn::KVCache<float>> make_caches(Index capacity) const {
    std::vector<attn::KVCache<float>> caches;
    for (const auto& layer : layers_) caches.push_back(layer.make_cache(capacity));
    return caches;
  }

  /// Logits (vocab) of the next token after `tokens`, recomputing every position.
  attn::Tensor<float> next_logits(const Tokens& tokens) const {
    attn::Tensor<float> x = embed(tokens);
    for (const auto& layer : layers_) x = layer.forward(x);
    return logits(x);
  }
  /// The same after the tokens cached so far and `chunk`, which is appended to the caches.
  attn::Tensor<float> next_logits(const Tokens& chunk, std::vector<attn::KVCache<float>>& caches) const {
    attn::Tensor<float> x = embed(chunk);
    for (std::size_t i = 0; i < layers_.size(); ++i) x = layers_[i].forward(x, caches[i]);
    return logits(x);
  }

 private:
  attn::Tensor<float> embed(const Tokens& tokens) const {
    const Index e = table_.size(1);
    attn::Tensor<float> x({1, Index(tokens.size()), e});
    for (std::size_t i = 0; i < tokens.size(); ++i) x.matrix().row(Index(i)) = table_.matrix().row(tokens[i]);
    return x;
  }
  /// The LM head on the final norm of the last position only.
  attn::Tensor<float> logits(const attn::Tensor<float>& x) const {
    const Index e = x.size(2);
    const attn::TensorView<const float> last(x.data() + x.numel() - e, {1, e});
    return lm_head_.forward(norm_.forward(last));
  }

  attn::Tensor<float> table_;  // (vocab, E)
  std::vector<DecoderLayer> layers_;
  attn::LayerNorm<float> norm_;
  attn::Linear<float> lm_head_;
};

/// What one way of decoding produced.
struct Decoded {
  Tokens tokens;             // the new tokens only
  double ms = 0;             // all steps, the prefill included
  double min_margin = 1e30;  // smallest gap between the best and second-best logit
};

/// Greedy decoding: step(context, i) gives the logits after the prompt and the first i new tokens.
template <class Step>
Decoded generate(const Tokens& prompt, Index count, Step&& step) {
  Decoded d;
  Tokens context = prompt;
  d.ms = example::time_ms([&] {
    for (Index i = 0; i < count; ++i) {
      const attn::Tensor<float> logits = step(context, i);
      const float* p = logits.data();
      const Index best = Index(std::max_element(p, p + logits.numel()) - p);
      float second = -1e30f;
      for (Index v = 0; v < logits.numel(); ++v)
        if (v != best) second = std::max(second, p[v]);
      d.min_margin = std::min(d.min_margin, double(p[best] - second));
      d.tokens.push_back(best);
      context.push_back(best);
    }
  });
  return d;
}

void print_tokens(const char* label, const Tokens& tokens) {
  std::printf("%s:", label);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    std::printf("%s%lld", i % 20 == 0 ? "\n  " : " ", (long long)tokens[i]);
  std::printf("\n");
}

constexpr const char* kUsage =
    "usage: greedy_decoding [--embed E] [--heads H] [--kv-heads K] [--layers N] [--ffn F] [--vocab V] "
    "[--prompt P] [--new-tokens T] [--threads N]   (all positive integers)\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "greedy_decoding: %s\n%s", message.c_str(), kUsage);
  std::exit(2);
}

Config parse_args(int argc, char** argv) {
  Config c;
  const std::pair<const char*, Index*> options[] = {
      {"--embed", &c.embed}, {"--heads", &c.heads}, {"--kv-heads", &c.kv_heads}, {"--layers", &c.layers},
      {"--ffn", &c.ffn},     {"--vocab", &c.vocab}, {"--prompt", &c.prompt},     {"--new-tokens", &c.new_tokens},
      {"--threads", &c.threads}};
  for (int i = 1; i < argc; i += 2) {
    if (std::strcmp(argv[i], "--help") == 0) {
      std::printf("%s", kUsage);
      std::exit(0);
    }
    const auto* o = std::find_if(std::begin(options), std::end(options),
                                 [&](const auto& opt) { return std::strcmp(opt.first, argv[i]) == 0; });
    if (o == std::end(options)) usage_error(std::string("unknown argument '") + argv[i] + "'");
    if (i + 1 >= argc) usage_error(std::string(argv[i]) + " needs a value");
    char* end = nullptr;
    const long long v = std::strtoll(argv[i + 1], &end, 10);
    if (*argv[i + 1] == '\0' || *end != '\0' || v <= 0 || v > 100000)
      usage_error(std::string(argv[i]) + " must be an integer from 1 to 100000, got '" + argv[i + 1] + "'");
    *o->second = Index(v);
  }
  return c;
}

/// Decodes both ways, prints the tokens and the times; true if the two ways agree.
bool run(const Config& c) {
  attn::set_num_threads(int(c.threads));
  std::printf("decoder-only LM: vocab %lld, E %lld, %lld layers of GroupedQueryAttention (H %lld, K %lld, RoPE) + "
              "feed-forward %lld; prompt %lld tokens, %lld new tokens, greedy, batch 1, %d thread(s)\n",
              (long long)c.vocab, (long long)c.embed, (long long)c.layers, (long long)c.heads, (long long)c.kv_heads,
              (long long)c.ffn, (long long)c.prompt, (long long)c.new_tokens, attn::get_num_threads());
  std::printf("weights are random: the tokens are meaningless; this shows the mechanics and the speed\n");
  const TinyLm model(c);
  Tokens prompt;
  for (Index i = 0; i < c.prompt; ++i) prompt.push_back((i * 7919 + 13) % c.vocab);

  auto caches = model.make_caches(c.prompt + c.new_tokens);
  const Decoded cached = generate(prompt, c.new_tokens, [&](const Tokens& context, Index i) {
    return i == 0 ? model.next_logits(context, caches) : model.next_logits({context.back()}, caches);
  });
  const Decoded full =
      generate(prompt, c.new_tokens, [&](const Tokens& context, Index) { return model.next_logits(context); });

  print_tokens("(a) with KV caches", cached.tokens);
  print_tokens("(b) recomputing the prefix", full.tokens);
  const double n = double(c.new_tokens), a = cached.ms / n, b = full.ms / n;
  std::printf("(a) KV caches (%.1f KiB per layer): %.3f ms/token (%.1f ms in all, the prompt's prefill included)\n",
              double(caches[0].bytes()) / 1024.0, a, cached.ms);
  std::printf("(b) recomputing the prefix:       %.3f ms/token (%.1f ms in all)\n", b, full.ms);
  std::printf("speedup of the KV caches: %.1fx; smallest top-2 logit margin %.3g\n", b / a,
              std::min(cached.min_margin, full.min_margin));
  const bool same = cached.tokens == full.tokens;
  std::printf("%s\n", same ? "the two ways generated the same tokens"
                           : "MISMATCH: the two ways generated different tokens");
  return same;
}

}  // namespace

int main(int argc, char** argv) {
  const Config c = parse_args(argc, argv);
  try {
    return run(c) ? 0 : 1;
  } catch (const std::invalid_argument& e) {  // sizes that do not fit (e.g. heads not a multiple of kv-heads)
    usage_error(e.what());
  }
}
