// Continuous batching: a server's loop over tiny_lm.hpp's decoder-only model. Requests with
// prompts of 8 to 64 tokens and 16 to 64 new tokens arrive two per step. Each step admits
// arrived requests into free slots (a request's prompt is prefilled alone, then
// KVCache::assign puts its keys and values in the slot), decodes one token of every live
// sequence in one batched call (each layer's cache holds every slot at its own length: a
// ragged batch), and retires the sequences that are done (KVCache::truncate(slot, 0) frees the
// slot). The same requests are then served one at a time; every request's tokens must be
// the same both ways (exit 1 otherwise). Prints tokens/s both ways and the caches' memory.
// Usage: continuous_batching [--slots S] [--requests R] [--threads N] [--embed E] [--heads H]
//                            [--kv-heads K] [--layers N] [--ffn F] [--vocab V]
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
  Index slots = 16, requests = 48;
  Index threads = 0;  // all cores
  example::LmShape shape;
};

struct Request {
  Index arrival;  // the step at which it arrives
  Tokens prompt;
  Index new_tokens;
};

/// R requests, two arriving per step, with prompts of 8 .. 64 tokens and 16 .. 64 new tokens.
std::vector<Request> make_requests(Index count, Index vocab) {
  std::vector<Request> requests;
  for (Index i = 0; i < count; ++i) {
    Tokens prompt(std::size_t(8 + (i * 37) % 57));
    for (std::size_t t = 0; t < prompt.size(); ++t) prompt[t] = (i * 7919 + Index(t) * 104729 + 13) % vocab;
    requests.push_back({i / 2, prompt, 16 + (i * 53) % 49});
  }
  return requests;
}

/// What serving produced: each request's new tokens, the smallest top-2 logit margin seen.
struct Served {
  std::vector<Tokens> tokens;
  double ms = 0, min_margin = 1e30;
  Index peak_held = 0;  // the most positions the caches held at once (per layer)
};

/// Prefills a request alone into batch-1 caches; returns its first new token.
Index prefill(const example::TinyLm& model, const Request& r, std::vector<attn::KVCache<float>>& caches,
              Served& s) {
  const attn::Tensor<float> logits = model.next_logits({r.prompt}, caches);
  const example::Choice c = example::greedy(logits.data(), model.vocab());
  s.min_margin = std::min(s.min_margin, c.margin);
  return c.token;
}

/// Every request alone, one after the other: prefill, then one token per step.
Served serve_alone(const example::TinyLm& model, const std::vector<Request>& requests) {
  Served s;
  s.ms = example::time_ms([&] {
    for (const Request& r : requests) {
      auto caches = model.make_caches(1, Index(r.prompt.size()) + r.new_tokens);
      Tokens out{prefill(model, r, caches, s)};
      while (Index(out.size()) < r.new_tokens) {
        const attn::Tensor<float> logits = model.next_logits({{out.back()}}, caches);
        const example::Choice c = example::greedy(logits.data(), model.vocab());
        s.min_margin = std::min(s.min_margin, c.margin);
        out.push_back(c.token);
      }
      s.peak_held = std::max(s.peak_held, caches[0].length());
      s.tokens.push_back(out);
    }
  });
  return s;
}

/// The server loop: admit, one batched decode step for every slot, retire.
Served serve_batched(const example::TinyLm& model, const std::vector<Request>& requests, Index slots,
                     Index capacity) {
  Served s;
  s.tokens.resize(requests.size());
  auto caches = model.make_caches(slots, capacity);
  std::vector<Index> owner(std::size_t(slots), -1);  // the request in each slot, -1: free
  std::size_t next = 0, done = 0;
  s.ms = example::time_ms([&] {
    for (Index step = 0; done < requests.size(); ++step) {
      for (Index slot = 0; slot < slots && next < requests.size() && requests[next].arrival <= step; ++slot) {
        if (owner[std::size_t(slot)] >= 0) continue;
        const Request& r = requests[next];
        auto alone = model.make_caches(1, Index(r.prompt.size()));
        s.tokens[next] = {prefill(model, r, alone, s)};
        for (std::size_t l = 0; l < caches.size(); ++l) caches[l].assign(slot, alone[l], 0);
        owner[std::size_t(slot)] = Index(next++);
      }
      std::vector<Tokens> chunk(std::size_t(slots), Tokens{0});  // free slots decode token 0, unread
      for (Index b = 0; b < slots; ++b)
        if (owner[std::size_t(b)] >= 0) chunk[std::size_t(b)] = {s.tokens[std::size_t(owner[std::size_t(b)])].back()};
      Index held = 0;
      for (Index b = 0; b < slots; ++b) held += caches[0].length(b);
      s.peak_held = std::max(s.peak_held, held);
      const attn::Tensor<float> logits = model.next_logits(chunk, caches);
      for (Index b = 0; b < slots; ++b) {
        const Index r = owner[std::size_t(b)];
        Tokens* out = r >= 0 ? &s.tokens[std::size_t(r)] : nullptr;
        if (out && Index(out->size()) < requests[std::size_t(r)].new_tokens) {
          const example::Choice c = example::greedy(logits.data() + b * model.vocab(), model.vocab());
          s.min_margin = std::min(s.min_margin, c.margin);
          out->push_back(c.token);
        }
        if (out && Index(out->size()) == requests[std::size_t(r)].new_tokens) owner[std::size_t(b)] = -1, ++done;
        if (owner[std::size_t(b)] < 0)
          for (auto& cache : caches) cache.truncate(b, 0);  // retired, or free: forget what it appended
      }
    }
  });
  return s;
}

constexpr const char* kUsage =
    "usage: continuous_batching [--slots S] [--requests R] [--threads N] [--embed E] [--heads H] [--kv-heads K] "
    "[--layers N] [--ffn F] [--vocab V]   (all positive integers)\n";

bool run(const Config& c) {
  attn::set_num_threads(int(c.threads));
  const example::LmShape& shape = c.shape;
  const example::TinyLm model(shape);
  const std::vector<Request> requests = make_requests(c.requests, model.vocab());
  Index capacity = 0, generated = 0;
  for (const Request& r : requests) {
    capacity = std::max(capacity, Index(r.prompt.size()) + r.new_tokens);
    generated += r.new_tokens;
  }
  std::printf("decoder-only LM (tiny_lm.hpp): vocab %lld, E %lld, %lld layers, GQA %lld/%lld heads; %lld requests "
              "(prompts 8-64, 16-64 new tokens, two arriving per step), %lld slots, %d thread(s)\n",
              (long long)shape.vocab, (long long)shape.embed, (long long)shape.layers, (long long)shape.heads,
              (long long)shape.kv_heads, (long long)c.requests, (long long)c.slots, attn::get_num_threads());
  const Served batched = serve_batched(model, requests, c.slots, capacity);
  const Served alone = serve_alone(model, requests);
  const double per_position = double(model.make_caches(1, 1)[0].bytes()) * double(shape.layers);
  std::printf("batched (continuous): %7.0f tokens/s  (%.1f ms for %lld tokens)\n", 1e3 * double(generated) / batched.ms,
              batched.ms, (long long)generated);
  std::printf("one request at a time: %6.0f tokens/s  (%.1f ms)\n", 1e3 * double(generated) / alone.ms, alone.ms);
  std::printf("throughput of continuous batching: %.1fx\n", alone.ms / batched.ms);
  std::printf("KV caches: %lld slots x %lld positions = %.2f MiB allocated; at most %lld positions (%.2f MiB) held at "
              "once\n",
              (long long)c.slots, (long long)capacity, per_position * double(c.slots * capacity) / 1048576.0,
              (long long)batched.peak_held, per_position * double(batched.peak_held) / 1048576.0);
  Index differ = 0;
  for (std::size_t i = 0; i < requests.size(); ++i) differ += batched.tokens[i] != alone.tokens[i];
  std::printf("smallest top-2 logit margin %.3g\n", std::min(batched.min_margin, alone.min_margin));
  std::printf(differ == 0 ? "every request generated the same tokens batched and alone\n"
                          : "MISMATCH: %lld requests generated other tokens batched than alone\n",
              (long long)differ);
  return differ == 0;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  example::parse_options(argc, argv, "continuous_batching", kUsage,
                         {{"--slots", &c.slots}, {"--requests", &c.requests}, {"--threads", &c.threads},
                          {"--embed", &c.shape.embed}, {"--heads", &c.shape.heads}, {"--kv-heads", &c.shape.kv_heads},
                          {"--layers", &c.shape.layers}, {"--ffn", &c.shape.ffn}, {"--vocab", &c.shape.vocab}});
  try {
    return run(c) ? 0 : 1;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "continuous_batching: %s\n", e.what());
    return 2;
  }
}
