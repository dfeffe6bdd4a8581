// Greedy decoding with a small decoder-only language model built from attn pieces (tiny_lm.hpp:
// a token embedding table, pre-norm layers of GroupedQueryAttention with RoPE and a
// feed-forward, a final LayerNorm and an LM head). The weights are random, so the tokens
// mean nothing: this shows the mechanics of a KV cache and what it saves.
// The same tokens are generated twice, (a) with one KVCache per layer (the prompt prefilled
// in one chunk, then one token per step) and (b) recomputing the whole prefix every step
// with forward(x); the two must agree (exit 1 otherwise).
// It runs on all cores unless --threads says otherwise (a decoding step of this model is a
// fraction of a millisecond; attn's loops do not wait for a thread that a busy core holds
// back, so sharing the cores with other work costs their share, not a stall per step).
// Usage: greedy_decoding [--embed E] [--heads H] [--kv-heads K] [--layers N] [--ffn F]
//                        [--vocab V] [--prompt P] [--new-tokens T] [--threads N]
#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "example_util.hpp"
#include "tiny_lm.hpp"

namespace {

using attn::Index;
using example::Tokens;

struct Config {
  Index embed = 256, heads = 8, kv_heads = 2, layers = 4, ffn = 1024, vocab = 1000, prompt = 16, new_tokens = 128;
  Index threads = 0;  // all cores (attn::set_num_threads(0))
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
      const example::Choice choice = example::greedy(logits.data(), logits.numel());
      const Index best = choice.token;
      d.min_margin = std::min(d.min_margin, choice.margin);
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

Config parse_args(int argc, char** argv) {
  Config c;
  example::parse_options(argc, argv, "greedy_decoding", kUsage,
                         {{"--embed", &c.embed}, {"--heads", &c.heads}, {"--kv-heads", &c.kv_heads},
                          {"--layers", &c.layers}, {"--ffn", &c.ffn}, {"--vocab", &c.vocab}, {"--prompt", &c.prompt},
                          {"--new-tokens", &c.new_tokens}, {"--threads", &c.threads}});
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
  const example::TinyLm model({c.embed, c.heads, c.kv_heads, c.layers, c.ffn, c.vocab});
  Tokens prompt;
  for (Index i = 0; i < c.prompt; ++i) prompt.push_back((i * 7919 + 13) % c.vocab);

  auto caches = model.make_caches(1, c.prompt + c.new_tokens);
  const Decoded cached = generate(prompt, c.new_tokens, [&](const Tokens& context, Index i) {
    return model.next_logits({i == 0 ? context : Tokens{context.back()}}, caches);
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
    std::fprintf(stderr, "greedy_decoding: %s\n%s", e.what(), kUsage);
    return 2;
  }
}
