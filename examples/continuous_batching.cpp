// Continuous batching: a server's loop over tiny_lm.hpp's decoder-only model. Requests with
// prompts of 8 to 64 tokens and 16 to 64 new tokens arrive two per step. Each layer's KV
// cache is paged (KVCache with KVPages: a pool of pages of --page-size positions shared by
// the slots), so memory follows the tokens held rather than slots x the longest request.
// Each step admits arrived requests into free slots while the pool can hold them to the end
// (a request's prompt is prefilled alone, then KVCache::assign copies its keys and values
// into the slot's pages), decodes one token of every live sequence in one batched call (each
// slot at its own length: a ragged batch), and retires the sequences that are done
// (KVCache::truncate(slot, 0) returns their pages). The same requests are then served one at a
// time; every request's tokens must be the same both ways (exit 1 otherwise). Prints tokens/s
// both ways and the caches' memory.
// Usage: continuous_batching [--slots S] [--requests R] [--page-size P] [--pages N] [--threads N]
//                            [--embed E] [--heads H] [--kv-heads K] [--layers N] [--ffn F] [--vocab V]
//        --pages N: the pool of each layer (default: 3/4 of the pages slots x the longest
//        request would take)
#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "example_util.hpp"
#include "tiny_lm.hpp"

namespace {

using attn::Index;
using example::Tokens;

struct Config {
  Index slots = 16, requests = 48, page_size = 16, pages = 0;
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
  Index peak_held = 0;   // the most positions the caches held at once (per layer)
  Index peak_pages = 0;  // the most pages a layer's pool lent at once
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

/// Pages of `page` positions that `n` positions take.
Index pages_for(Index n, Index page) { return (n + page - 1) / page; }

/// The server loop: admit, one batched decode step for every slot, retire.
Served serve_batched(const example::TinyLm& model, const std::vector<Request>& requests, const Config& c,
                     Index capacity) {
  Served s;
  s.tokens.resize(requests.size());
  auto caches = model.make_caches(c.slots, capacity, attn::KVPages{c.page_size, c.pages});
  std::vector<Index> owner(std::size_t(c.slots), -1);  // the request in each slot, -1: free
  std::size_t next = 0, done = 0;
  // Pages the live requests will still take until they end, and one per free slot (whose
  // unread token takes a page until the slot is truncated): a request is admitted only if the
  // pool holds it to its end on top of these, so no append ever runs out of pages.
  const auto pages_promised = [&] {
    Index pages = 0;
    for (Index b = 0; b < c.slots; ++b) {
      const Index r = owner[std::size_t(b)];
      const Index end = r < 0 ? 1 : Index(requests[std::size_t(r)].prompt.size()) + requests[std::size_t(r)].new_tokens;
      pages += pages_for(end, c.page_size) - pages_for(caches[0].length(b), c.page_size);
    }
    return pages;
  };
  s.ms = example::time_ms([&] {
    for (Index step = 0; done < requests.size(); ++step) {
      for (Index slot = 0; slot < c.slots && next < requests.size() && requests[next].arrival <= step; ++slot) {
        if (owner[std::size_t(slot)] >= 0) continue;
        const Request& r = requests[next];
        const Index need = pages_for(Index(r.prompt.size()) + r.new_tokens, c.page_size) - 1;  // (its slot's page counted)
        if (caches[0].free_pages() < pages_promised() + need) break;  // wait for pages

        auto alone = model.make_caches(1, Index(r.prompt.size()));
        s.tokens[next] = {prefill(model, r, alone, s)};
        for (std::size_t l = 0; l < caches.size(); ++l) caches[l].assign(slot, alone[l], 0);
        owner[std::size_t(slot)] = Index(next++);
      }
      std::vector<Tokens> chunk(std::size_t(c.slots), Tokens{0});  // free slots decode token 0, unread
      for (Index b = 0; b < c.slots; ++b)
        if (owner[std::size_t(b)] >= 0) chunk[std::size_t(b)] = {s.tokens[std::size_t(owner[std::size_t(b)])].back()};
      Index held = 0;
      for (Index b = 0; b < c.slots; ++b) held += caches[0].length(b);
      s.peak_held = std::max(s.peak_held, held);
      const attn::Tensor<float> logits = model.next_logits(chunk, caches);
      s.peak_pages = std::max(s.peak_pages, caches[0].pages() - caches[0].free_pages());
      for (Index b = 0; b < c.slots; ++b) {
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
    "usage: continuous_batching [--slots S] [--requests R] [--page-size P] [--pages N] [--threads N] [--embed E] "
    "[--heads H] [--kv-heads K] [--layers N] [--ffn F] [--vocab V]   (all positive integers)\n";

bool run(Config c) {
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
  if (c.pages == 0) c.pages = pages_for(c.slots * pages_for(capacity, c.page_size) * 3, 4);
  const Index longest = pages_for(capacity, c.page_size);
  if (c.pages < longest + c.slots)
    throw std::invalid_argument("--pages " + std::to_string(c.pages) + ": the pool must hold the longest request (" +
                                std::to_string(longest) + " pages) and a page for every other slot");
  const Served batched = serve_batched(model, requests, c, capacity);
  const Served alone = serve_alone(model, requests);
  const double per_position = double(model.make_caches(1, 1)[0].bytes()) * double(shape.layers);
  std::printf("batched (continuous): %7.0f tokens/s  (%.1f ms for %lld tokens)\n", 1e3 * double(generated) / batched.ms,
              batched.ms, (long long)generated);
  std::printf("one request at a time: %6.0f tokens/s  (%.1f ms)\n", 1e3 * double(generated) / alone.ms, alone.ms);
  std::printf("throughput of continuous batching: %.1fx\n", alone.ms / batched.ms);
  const double mib = per_position / 1048576.0;
  std::printf("KV caches: paged, %lld pages of %lld positions = %.2f MiB allocated (contiguous slots would take %lld "
              "x %lld positions = %.2f MiB); at most %lld pages (%.2f MiB) lent and %lld positions held at once\n",
              (long long)c.pages, (long long)c.page_size, mib * double(c.pages * c.page_size), (long long)c.slots,
              (long long)capacity, mib * double(c.slots * capacity), (long long)batched.peak_pages,
              mib * double(batched.peak_pages * c.page_size), (long long)batched.peak_held);
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
                         {{"--slots", &c.slots}, {"--requests", &c.requests}, {"--page-size", &c.page_size},
                          {"--pages", &c.pages}, {"--threads", &c.threads},
                          {"--embed", &c.shape.embed}, {"--heads", &c.shape.heads}, {"--kv-heads", &c.shape.kv_heads},
                          {"--layers", &c.shape.layers}, {"--ffn", &c.shape.ffn}, {"--vocab", &c.shape.vocab}});
  try {
    return run(c) ? 0 : 1;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "continuous_batching: %s\n", e.what());
    return 2;
  }
}
