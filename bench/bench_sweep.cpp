// Sweeps over the sequence length N (128, 256, ..., 16384) and the head dim D (8 ... 128),
// float32, one call per iteration, wall-clock time. Counters as in bench_modules: GFLOP/s
// (FLOPs defined in bench/README.md), peak_frac (of the FMA peak), threads.
//
//   BM_Sdpa_N / BM_Sdpa_D   attention core attn::scaled_dot_product_attention on (B, H, N, D)
//   BM_Mha_N / BM_Mha_D     nn.MultiheadAttention(E, H) self-attention on (B, N, E), D = E / H
//   BM_TalkingHeads_N       timm CaiT TalkingHeadAttn(C, H) on (B, N, C), N <= 4096
//
// A case runs until --benchmark_min_time (0.5 s) has passed, and at least once: the largest
// N take one call each (seconds). Select with e.g. --benchmark_filter='BM_Sdpa_N' or
// --benchmark_filter='N:(128|256|512|1024)/'.
//
//   bench_sweep [--threads=N] [Google Benchmark flags, e.g. --benchmark_out=sweep.json]
#include <vector>

#include "bench_common.hpp"

namespace {

using attn::Index;
using attn_bench::input;
using attn_bench::run;

/// Registers `args` once per N = 128, 256, ..., max_n, with N at position n_pos.
void sweep_n(benchmark::internal::Benchmark* bm, std::vector<std::int64_t> args, std::size_t n_pos,
             std::int64_t max_n) {
  for (std::int64_t n = 128; n <= max_n; n *= 2) {
    args[n_pos] = n;
    bm->Args(args);
  }
}

/// Registers `args` once per head dim D = 8, 16, 32, 64, 128, with D (times `mult`) at d_pos.
void sweep_d(benchmark::internal::Benchmark* bm, std::vector<std::int64_t> args, std::size_t d_pos,
             std::int64_t mult) {
  for (std::int64_t d = 8; d <= 128; d *= 2) {
    args[d_pos] = d * mult;
    bm->Args(args);
  }
}

// ---- attention core: q, k, v (B, H, N, D), no masks, default scale ---------------------

void BM_Sdpa(benchmark::State& state) {
  const Index b = state.range(0), h = state.range(1), n = state.range(2), d = state.range(3);
  const auto q = input({b, h, n, d}, 1), k = input({b, h, n, d}, 2), v = input({b, h, n, d}, 3);
  run(state, attn_bench::core_flops(b, h, n, n, d, d),
      [&] { benchmark::DoNotOptimize(attn::scaled_dot_product_attention<float>(q, k, v)); });
}
BENCHMARK(BM_Sdpa)->Name("BM_Sdpa_N")->ArgNames({"B", "H", "N", "D"})
    ->Apply([](benchmark::internal::Benchmark* bm) { sweep_n(bm, {1, 8, 0, 64}, 2, 16384); })
    ->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Sdpa)->Name("BM_Sdpa_D")->ArgNames({"B", "H", "N", "D"})
    ->Apply([](benchmark::internal::Benchmark* bm) { sweep_d(bm, {1, 8, 1024, 0}, 3, 1); sweep_d(bm, {1, 8, 4096, 0}, 3, 1); })
    ->UseManualTime()->Unit(benchmark::kMillisecond);

// ---- multi-head self-attention: nn.MultiheadAttention(E, H, batch_first=True) ------------

void BM_Mha(benchmark::State& state) {
  const Index b = state.range(0), n = state.range(1), e = state.range(2), h = state.range(3);
  attn::MultiHeadAttention<float> m(e, h);
  const auto x = input({b, n, e});
  run(state, attn_bench::mha_flops(b, n, e, h), [&] { benchmark::DoNotOptimize(m.forward(x, x, x)); });
}
// E = 512, 8 heads (head_dim 64); N = 16384 is the peak-memory target workload.
BENCHMARK(BM_Mha)->Name("BM_Mha_N")->ArgNames({"B", "N", "E", "H"})
    ->Apply([](benchmark::internal::Benchmark* bm) { sweep_n(bm, {1, 0, 512, 8}, 1, 16384); })
    ->UseManualTime()->Unit(benchmark::kMillisecond);
// 8 heads of D = 8 ... 128 (E = 8 D) at N = 1024.
BENCHMARK(BM_Mha)->Name("BM_Mha_D")->ArgNames({"B", "N", "E", "H"})
    ->Apply([](benchmark::internal::Benchmark* bm) { sweep_d(bm, {1, 1024, 0, 8}, 2, 8); })
    ->UseManualTime()->Unit(benchmark::kMillisecond);

// ---- talking heads: the head mixes need all heads' logits of a query row at once ---------

void BM_TalkingHeads(benchmark::State& state) {
  const Index b = state.range(0), n = state.range(1), c = state.range(2), h = state.range(3);
  attn::TalkingHeadsAttention<float> m(c, h);
  const auto x = input({b, n, c});
  run(state, attn_bench::talking_heads_flops(b, n, c, h), [&] { benchmark::DoNotOptimize(m.forward(x)); });
}
// C = 512, 8 heads (head_dim 64), N <= 4096 (a (H, N, N) float buffer is 0.5 GB there).
BENCHMARK(BM_TalkingHeads)->Name("BM_TalkingHeads_N")->ArgNames({"B", "N", "C", "H"})
    ->Apply([](benchmark::internal::Benchmark* bm) { sweep_n(bm, {1, 0, 512, 8}, 1, 4096); })
    ->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

ATTN_BENCHMARK_MAIN()
