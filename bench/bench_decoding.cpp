// Decoding benchmarks: a Llama-3-8B-shaped grouped-query attention layer (E 4096, H 32,
// K 8, D 128, RoPE) stepping one token at a time over a KV cache, its prefill, the
// attention core with grouped vs full key/value heads, and 256 decoded tokens with the
// cache vs recomputing the prefix. bench/README.md says what each counter means.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "bench_common.hpp"

namespace {

using attn::Index;
using attn_bench::run;

// ---- memory read bandwidth, measured here: the roof of a decode step ------------------------

/// GB/s of summing a 1 GiB buffer with all of attn's threads (best of 5 passes after one that
/// faults the pages in): the rate at which a decode step can stream weights and cache.
double read_bandwidth_gbs() {
  static const double gbs = [] {
    const Index n = Index(1) << 28;  // floats: 1 GiB
    std::vector<float> buffer(static_cast<std::size_t>(n), 1.0f);
    double best = 0.0, sink = 0.0;
    for (int pass = 0; pass < 6; ++pass) {
      const auto t0 = std::chrono::steady_clock::now();
      double sum = 0.0;
#pragma omp parallel for reduction(+ : sum) num_threads(attn_bench::setup().threads) schedule(static)
      for (Index c = 0; c < 64; ++c)
        sum += Eigen::Map<const Eigen::ArrayXf>(buffer.data() + c * (n / 64), n / 64).sum();
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      sink += sum;
      if (pass > 0) best = std::max(best, double(n) * sizeof(float) / secs * 1e-9);
    }
    benchmark::DoNotOptimize(sink);
    return best;
  }();
  return gbs;
}

void BM_ReadBandwidth(benchmark::State& state) {
  for (auto _ : state) state.SetIterationTime(1.0);
  state.counters["read_GB/s"] = read_bandwidth_gbs();
}
BENCHMARK(BM_ReadBandwidth)->Iterations(1)->UseManualTime();

// ---- the layer ----------------------------------------------------------------------------

struct LayerShape {
  Index e, h, k, d;
};

/// The layer of the benchmarks: GroupedQueryAttention(E, H, K, D), RoPE theta 500000 (Llama 3).
template <class T = float>
attn::GroupedQueryAttention<T> make_layer(const LayerShape& s) {
  attn::GqaOptions o;
  o.rotary.theta = 500000.0;
  return attn::GroupedQueryAttention<T>(s.e, s.h, s.k, s.d, o);
}

/// Bytes of the four projection weights in T.
template <class T>
double weight_bytes(const LayerShape& s) { return double(sizeof(T)) * double(s.e) * double((2 * s.h + 2 * s.k) * s.d); }

/// Bytes of `rows` cached rows of keys and values of D elements in S (int8: and a float scale each).
template <class S>
double cache_bytes(Index rows, Index d) {
  return 2.0 * double(rows) * (double(sizeof(S)) * double(d) + (std::is_same<S, std::int8_t>::value ? 4.0 : 0.0));
}

/// Fills the first `length` positions of a cache with deterministic values.
template <class T, class S>
void fill_cache(attn::KVCache<T, S>& cache, Index length) {
  cache.append_written(length, [](const attn::HeadsView<T>& k, const attn::HeadsView<T>& v) {
    for (Index b = 0; b < k.batch; ++b)
      for (Index h = 0; h < k.heads; ++h) {
        k.head(b, h).setRandom();
        v.head(b, h).setRandom();
      }
  });
}

/// The counters of a decode step that read `bytes` and yielded `tokens` in `secs`.
void step_counters(benchmark::State& state, double bytes, Index tokens, double secs) {
  if (secs <= 0.0) return;
  state.counters["ms/step"] = secs * 1e3;
  state.counters["tokens/s"] = double(tokens) / secs;
  state.counters["MB/step"] = bytes * 1e-6;
  state.counters["GB/s"] = bytes / secs * 1e-9;
  state.counters["bw_frac"] = bytes / secs * 1e-9 / read_bandwidth_gbs();
}

// ---- one decode step ----------------------------------------------------------------------

/// One new token per sequence at context `ctx` (the cache holds ctx positions; each step
/// appends one, then the cache is rolled back). Counters: ms per step (each step yields B
/// tokens), bytes read per step (weights + the cache's keys and values) / time, and that as a
/// fraction of the measured read bandwidth. In float32, in bfloat16 (weights, cache and
/// activations in 16 bits: half the bytes), and in float32 over a cache stored in S
/// (bfloat16 or int8: the cache's share of the bytes halved or quartered).
template <class T, class S = T>
void BM_DecodeStep(benchmark::State& state) {
  const LayerShape s{state.range(0), state.range(1), state.range(2), state.range(3)};
  const Index b = state.range(4), ctx = state.range(5);
  const auto layer = make_layer<T>(s);
  attn::KVCache<T, S> cache = layer.template make_cache<S>(b, ctx + 1);
  fill_cache(cache, ctx);
  const auto x = attn_bench::input<T>({b, 1, s.e});
  const double flops = attn_bench::linear_flops(b, s.e, double((2 * s.h + 2 * s.k) * s.d)) +
                       attn_bench::core_flops(b, s.h, 1, ctx + 1, s.d, s.d);
  const double secs = run(state, flops, [&] {
    cache.truncate(ctx);
    benchmark::DoNotOptimize(layer.forward(x, cache));
  });
  step_counters(state, weight_bytes<T>(s) + cache_bytes<S>(b * s.k * (ctx + 1), s.d), b, secs);
}
BENCHMARK_TEMPLATE(BM_DecodeStep, float)
    ->Name("BM_DecodeStep")
    ->ArgNames({"E", "H", "K", "D", "B", "ctx"})
    ->ArgsProduct({{4096}, {32}, {8}, {128}, {1, 8}, {512, 4096, 16384}})
    ->Args({256, 8, 2, 32, 1, 64})  // a small layer: the ctest smoke case
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_DecodeStep, attn::bfloat16)
    ->Name("BM_DecodeStep_bf16")
    ->ArgNames({"E", "H", "K", "D", "B", "ctx"})
    ->ArgsProduct({{4096}, {32}, {8}, {128}, {1}, {4096, 16384}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_DecodeStep, float, attn::bfloat16)
    ->Name("BM_DecodeStep_kv_bf16")
    ->ArgNames({"E", "H", "K", "D", "B", "ctx"})
    ->ArgsProduct({{4096}, {32}, {8}, {128}, {1}, {4096, 16384}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_DecodeStep, float, std::int8_t)
    ->Name("BM_DecodeStep_kv_int8")
    ->ArgNames({"E", "H", "K", "D", "B", "ctx"})
    ->ArgsProduct({{4096}, {32}, {8}, {128}, {1}, {4096, 16384}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// ---- prefill: the whole prompt in one causal pass ----------------------------------------

/// Causal attention computes about half of the (L x L) scores: FLOPs counted as L (L + 1) / 2 pairs.
double causal_core_flops(Index b, Index h, Index l, Index d) {
  return attn_bench::core_flops(b, h, l, double(l + 1) / 2.0, d, d);
}

void BM_GqaPrefill(benchmark::State& state) {
  const LayerShape s{state.range(0), state.range(1), state.range(2), state.range(3)};
  const Index b = state.range(4), len = state.range(5);
  const auto layer = make_layer(s);
  const auto x = attn_bench::input({b, len, s.e});
  run(state,
      attn_bench::linear_flops(b * len, s.e, double((2 * s.h + 2 * s.k) * s.d)) + causal_core_flops(b, s.h, len, s.d),
      [&] { benchmark::DoNotOptimize(layer.forward(x)); });
}
BENCHMARK(BM_GqaPrefill)
    ->ArgNames({"E", "H", "K", "D", "B", "L"})
    ->Args({4096, 32, 8, 128, 1, 2048})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

/// The causal attention core of that prefill, q (1, 32, L, 128) over k and v with K heads:
/// K = 8 (grouped, each key/value head read by 4 query heads) against K = 32 (MHA).
void BM_CausalCore(benchmark::State& state) {
  const Index h = state.range(0), k = state.range(1), len = state.range(2), d = state.range(3);
  const auto q = attn_bench::input({1, h, len, d}, 1), kk = attn_bench::input({1, k, len, d}, 2),
             v = attn_bench::input({1, k, len, d}, 3);
  attn::SdpaOptions<float> opt;
  opt.causal = attn::Causal::kBottomRight;
  run(state, causal_core_flops(1, h, len, d),
      [&] { benchmark::DoNotOptimize(attn::scaled_dot_product_attention<float>(q, kk, v, opt)); });
}
BENCHMARK(BM_CausalCore)
    ->ArgNames({"H", "K", "L", "D"})
    ->Args({32, 8, 2048, 128})
    ->Args({32, 32, 2048, 128})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

/// The attention core of one decode step: a query per head (1, 32, 1, 128) over a cache of
/// ctx keys and values with 8 heads; counters GB/s (the cache's bytes / time) and bw_frac.
/// In float32, and in bfloat16 (the decode tile widens k and v in registers: half the bytes);
/// BM_DecodeCore_kv_* in float32 over a KVCache stored in bfloat16 or int8.
template <class T>
void BM_DecodeCore(benchmark::State& state) {
  const Index h = state.range(0), k = state.range(1), ctx = state.range(2), d = state.range(3);
  const auto q = attn_bench::input<T>({1, h, 1, d}, 1), kk = attn_bench::input<T>({1, k, ctx, d}, 2),
             v = attn_bench::input<T>({1, k, ctx, d}, 3);
  const double secs = run(state, attn_bench::core_flops(1, h, 1, ctx, d, d),
                          [&] { benchmark::DoNotOptimize(attn::scaled_dot_product_attention<T>(q, kk, v)); });
  step_counters(state, 2.0 * sizeof(T) * double(k * ctx * d), 1, secs);
}
BENCHMARK_TEMPLATE(BM_DecodeCore, float)
    ->Name("BM_DecodeCore")
    ->ArgNames({"H", "K", "ctx", "D"})
    ->Args({32, 8, 16384, 128})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_DecodeCore, attn::bfloat16)
    ->Name("BM_DecodeCore_bf16")
    ->ArgNames({"H", "K", "ctx", "D"})
    ->Args({32, 8, 16384, 128})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

/// BM_DecodeCore for one sequence over few key/value heads (multi-query: K = 1) on `threads`
/// threads (the last argument; the others as BM_DecodeCore): with fewer (batch, key/value head)
/// units than threads, a step has to split its keys across threads to use them.
void BM_DecodeCoreThreads(benchmark::State& state) {
  const Index h = state.range(0), k = state.range(1), ctx = state.range(2), d = state.range(3);
  const auto q = attn_bench::input({1, h, 1, d}, 1), kk = attn_bench::input({1, k, ctx, d}, 2),
             v = attn_bench::input({1, k, ctx, d}, 3);
  attn::set_num_threads(static_cast<int>(state.range(4)));
  const double secs = run(state, attn_bench::core_flops(1, h, 1, ctx, d, d),
                          [&] { benchmark::DoNotOptimize(attn::scaled_dot_product_attention<float>(q, kk, v)); });
  attn::set_num_threads(attn_bench::setup().threads);
  step_counters(state, 2.0 * sizeof(float) * double(k * ctx * d), 1, secs);
  state.counters["threads"] = double(state.range(4));
}
BENCHMARK(BM_DecodeCoreThreads)
    ->ArgNames({"H", "K", "ctx", "D", "threads"})
    ->ArgsProduct({{4, 8}, {1}, {32768}, {128}, {1, 2}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

template <class S>
void BM_DecodeCoreStored(benchmark::State& state) {
  const Index h = state.range(0), k = state.range(1), ctx = state.range(2), d = state.range(3);
  const auto q = attn_bench::input<float>({1, h, 1, d}, 1);
  attn::KVCache<float, S> cache(1, k, ctx, d);
  fill_cache(cache, ctx);
  attn::Tensor<float> out({1, h, 1, d});
  const auto qh = attn::HeadsView<const float>::bhnd(q.data(), 1, h, 1, d);
  const auto oh = attn::HeadsView<float>::bhnd(out.data(), 1, h, 1, d);
  const double secs = run(state, attn_bench::core_flops(1, h, 1, ctx, d, d), [&] {
    attn::scaled_dot_product_attention<float>(qh, cache, oh);
    benchmark::DoNotOptimize(out.data());
  });
  step_counters(state, cache_bytes<S>(k * ctx, d), 1, secs);
}
BENCHMARK_TEMPLATE(BM_DecodeCoreStored, attn::bfloat16)
    ->Name("BM_DecodeCore_kv_bf16")
    ->ArgNames({"H", "K", "ctx", "D"})
    ->Args({32, 8, 16384, 128})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_DecodeCoreStored, std::int8_t)
    ->Name("BM_DecodeCore_kv_int8")
    ->ArgNames({"H", "K", "ctx", "D"})
    ->Args({32, 8, 16384, 128})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// ---- a ragged batch ------------------------------------------------------------------------

/// Context of sequence i of n spread geometrically over [lo, hi] (lo at i = 0, hi at n - 1):
/// a server's mix of short and long requests.
Index spread_context(Index i, Index n, Index lo, Index hi) {
  return static_cast<Index>(std::lround(double(lo) * std::pow(double(hi) / double(lo), double(i) / double(n - 1))));
}

/// One decode step of B sequences whose contexts spread over [lo, hi] (spread_context).
/// ragged = 1: one KVCache holds each sequence at its own length, and attention reads each
/// sequence's keys only (KVCache::key_lengths). ragged = 0: the batch padded to the longest,
/// every sequence at hi positions with a key padding mask over the padding (the way to batch
/// them without per-sequence lengths). MB/step, GB/s and bw_frac count the bytes each step
/// must read: the weights and the positions actually held (ragged's bound, in both).
void BM_RaggedDecodeStep(benchmark::State& state) {
  const LayerShape s{state.range(0), state.range(1), state.range(2), state.range(3)};
  const Index b = state.range(4), lo = state.range(5), hi = state.range(6);
  const bool ragged = state.range(7) != 0;
  const auto layer = make_layer(s);
  attn::KVCache<float> cache = layer.make_cache(b, hi + 1);
  fill_cache(cache, hi);
  Index held = 0;
  attn::Tensor<bool> padding({b, hi + 1});  // true: blocked
  for (Index i = 0; i < b; ++i) {
    const Index ctx = spread_context(i, b, lo, hi);
    held += ctx + 1;
    if (ragged) cache.truncate(i, ctx);
    for (Index j = ctx; j < hi; ++j) padding(i, j) = true;
  }
  attn::GqaArgs<float> args;
  if (!ragged) args.key_padding_mask = attn::Mask<float>::block_where_true(padding);
  const auto x = attn_bench::input({b, 1, s.e});
  const double secs = run(state, 0.0, [&] {
    benchmark::DoNotOptimize(layer.forward(x, cache, args));
    cache.pop(1);
  });
  step_counters(state, weight_bytes<float>(s) + cache_bytes<float>(s.k * held, s.d), b, secs);
}
BENCHMARK(BM_RaggedDecodeStep)
    ->ArgNames({"E", "H", "K", "D", "B", "lo", "hi", "ragged"})
    ->ArgsProduct({{4096}, {32}, {8}, {128}, {16}, {64}, {4096}, {1, 0}})
    ->Args({256, 8, 2, 32, 4, 8, 64, 1})  // a small layer: the ctest smoke case
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// ---- a paged cache --------------------------------------------------------------------------

/// The same work through a contiguous cache (page = 0) and a paged one (pages of `page`
/// positions, KVCache with KVPages): L = 1, one decode step at context ctx (the token is
/// popped after); ctx = 0, the prefill of L tokens into an empty cache (reset after). The
/// paged decode tile reads a run of keys per page; the paged prefill's tiled kernel packs k
/// and v, which the contiguous one reads in place.
void BM_PagedCache(benchmark::State& state) {
  const LayerShape s{state.range(0), state.range(1), state.range(2), state.range(3)};
  const Index b = state.range(4), ctx = state.range(5), len = state.range(6), page = state.range(7);
  const auto layer = make_layer(s);
  const Index capacity = ctx + len;
  attn::KVCache<float> cache = page ? layer.make_cache(b, capacity, attn::KVPages{page, b * ((capacity + page - 1) / page)})
                                    : layer.make_cache(b, capacity);
  fill_cache(cache, ctx);
  const auto x = attn_bench::input({b, len, s.e});
  const double flops = attn_bench::linear_flops(b * len, s.e, double((2 * s.h + 2 * s.k) * s.d)) +
                       (ctx ? attn_bench::core_flops(b, s.h, len, capacity, s.d, s.d) : causal_core_flops(b, s.h, len, s.d));
  run(state, flops, [&] {
    benchmark::DoNotOptimize(layer.forward(x, cache));
    cache.truncate(ctx);
  });
}
BENCHMARK(BM_PagedCache)
    ->ArgNames({"E", "H", "K", "D", "B", "ctx", "L", "page"})
    ->ArgsProduct({{4096}, {32}, {8}, {128}, {1, 8}, {4096}, {1}, {0, 16, 128}})
    ->ArgsProduct({{4096}, {32}, {8}, {128}, {1}, {0}, {2048}, {0, 16, 128}})
    ->Args({256, 8, 2, 32, 2, 64, 1, 16})  // a small layer: the ctest smoke case
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

/// The prefill of B prompts whose lengths spread over [lo, hi] (spread_context). packed = 1:
/// one (T, E) input with cu_seqlens, no padding computed. packed = 0: the prompts padded to
/// hi in one (B, hi, E) batch with a key padding mask (causal masking keeps each prompt's
/// tokens from seeing its padding). tokens/s counts the prompts' own tokens.
void BM_VarlenPrefill(benchmark::State& state) {
  const LayerShape s{state.range(0), state.range(1), state.range(2), state.range(3)};
  const Index b = state.range(4), lo = state.range(5), hi = state.range(6);
  const bool packed = state.range(7) != 0;
  const auto layer = make_layer(s);
  attn::Tensor<std::int64_t> cu({b + 1});
  attn::Tensor<bool> padding({b, hi});  // true: blocked
  for (Index i = 0; i < b; ++i) {
    const Index n = spread_context(i, b, lo, hi);
    cu(i + 1) = cu(i) + n;
    for (Index j = n; j < hi; ++j) padding(i, j) = true;
  }
  attn::GqaArgs<float> args;
  if (!packed) args.key_padding_mask = attn::Mask<float>::block_where_true(padding);
  const auto x = packed ? attn_bench::input({cu(b), s.e}) : attn_bench::input({b, hi, s.e});
  const double secs = run(state, 0.0, [&] {
    benchmark::DoNotOptimize(packed ? layer.forward(x, cu.view()) : layer.forward(x, args));
  });
  if (secs > 0) state.counters["tokens/s"] = double(cu(b)) / secs;
}
BENCHMARK(BM_VarlenPrefill)
    ->ArgNames({"E", "H", "K", "D", "B", "lo", "hi", "packed"})
    ->ArgsProduct({{4096}, {32}, {8}, {128}, {8}, {64}, {2048}, {1, 0}})
    ->Args({256, 8, 2, 32, 3, 4, 32, 1})  // a small layer: the ctest smoke case
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// ---- 256 tokens: KV cache vs recomputing the prefix ---------------------------------------

/// Decodes `count` tokens after a prompt of `ctx`: with a cache (the prompt in one chunk, then
/// one token per step) or recomputing the whole prefix at each token (forward over ctx + t
/// tokens). Both include the prompt's pass. The inputs are fixed rows (no sampling): the
/// layer's work is what is timed.
void BM_Decode256(benchmark::State& state) {
  const LayerShape s{state.range(0), state.range(1), state.range(2), state.range(3)};
  const Index ctx = state.range(4), count = state.range(5);
  const bool cached = state.range(6) != 0;
  const auto layer = make_layer(s);
  const auto x = attn_bench::input({1, ctx + count, s.e});
  const auto prefix = [&](Index begin, Index n) {
    return attn::TensorView<const float>(x.data() + begin * s.e, {1, n, s.e});
  };
  attn::KVCache<float> cache = layer.make_cache(1, ctx + count);
  const double secs = run(state, 0.0, [&] {
    if (cached) {
      cache.reset();
      benchmark::DoNotOptimize(layer.forward(prefix(0, ctx), cache));
      for (Index t = 1; t < count; ++t) benchmark::DoNotOptimize(layer.forward(prefix(ctx + t - 1, 1), cache));
    } else {
      for (Index t = 0; t < count; ++t) benchmark::DoNotOptimize(layer.forward(prefix(0, ctx + t)));
    }
  });
  state.counters["ms/token"] = secs * 1e3 / double(count);
}
BENCHMARK(BM_Decode256)
    ->ArgNames({"E", "H", "K", "D", "ctx", "tokens", "cache"})
    ->Args({512, 8, 2, 64, 2048, 256, 1})
    ->Args({512, 8, 2, 64, 2048, 256, 0})
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

ATTN_BENCHMARK_MAIN()
