// Every module at the shape of its upstream demo and the workloads of the speed targets, float32
// (and the GEMM, MHA and attention core in bfloat16 and half too), one forward call per
// iteration, wall-clock time.
// Counters: GFLOP/s (FLOPs as defined in bench/README.md), peak_frac (of the FMA peak
// measured at startup for the same thread count), threads.
//
//   bench_modules [--threads=N] [Google Benchmark flags, e.g. --benchmark_format=json]
#include "bench_common.hpp"

namespace {

using attn::Index;
using attn_bench::input;
using attn_bench::run;

// ---- demo shapes ------------------------------------------------------------------------

// Single-head SelfAttention(4) on (2, 3, 4).
void BM_SelfAttention(benchmark::State& state) {
  const Index b = state.range(0), n = state.range(1), e = state.range(2);
  attn::SelfAttention<float> m(e);
  const auto x = input({b, n, e});
  run(state, attn_bench::self_attention_flops(b, n, e), [&] { benchmark::DoNotOptimize(m.forward(x)); });
}
BENCHMARK(BM_SelfAttention)->ArgNames({"B", "N", "E"})->Args({2, 3, 4})->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// MultiHeadAttention(128, 8) with separate q, k, v, out Linears on (64, 10, 128).
void BM_MhaSeparateLinears(benchmark::State& state) {
  const Index b = state.range(0), n = state.range(1), e = state.range(2), h = state.range(3);
  attn::MultiHeadAttentionOptions opt;
  opt.layout = attn::MhaLayout::kSeparateLinears;
  attn::MultiHeadAttention<float> m(e, h, opt);
  const auto x = input({b, n, e});
  run(state, attn_bench::mha_flops(b, n, e, h), [&] { benchmark::DoNotOptimize(m.forward(x, x, x)); });
}
BENCHMARK(BM_MhaSeparateLinears)->ArgNames({"B", "N", "E", "H"})->Args({64, 10, 128, 8})->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// timm CaiT TalkingHeadAttn(dim=128) (8 heads) on (32, 784, 128).
void BM_TalkingHeadsCaiT(benchmark::State& state) {
  const Index b = state.range(0), n = state.range(1), c = state.range(2), h = state.range(3);
  attn::TalkingHeadsAttention<float> m(c, h);
  const auto x = input({b, n, c});
  run(state, attn_bench::talking_heads_flops(b, n, c, h), [&] { benchmark::DoNotOptimize(m.forward(x)); });
}
BENCHMARK(BM_TalkingHeadsCaiT)->ArgNames({"B", "N", "C", "H"})->Args({32, 784, 128, 8})->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// AttentionBlock(64, 8) on (N, C, L) = (32, 64, 1024): multi-head attention over
// (32, 1024, 64), residual, LayerNorm.
void BM_AttentionBlock(benchmark::State& state) {
  const Index b = state.range(0), c = state.range(1), l = state.range(2), h = state.range(3);
  attn::AttentionBlock<float> m(c, h);
  const auto x = input({b, c, l});
  run(state, attn_bench::mha_flops(b, l, c, h), [&] { benchmark::DoNotOptimize(m.forward(x)); });
}
BENCHMARK(BM_AttentionBlock)->ArgNames({"B", "C", "L", "H"})->Args({32, 64, 1024, 8})->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// MobileViT's MultiHeadAttention (fused qkv_proj) and TransformerEncoder(64, 128)
// (8 heads) on (2, 14, 64).
void BM_MobileViTAttention(benchmark::State& state) {
  const Index b = state.range(0), n = state.range(1), e = state.range(2), h = state.range(3);
  attn::MultiHeadAttentionOptions opt;
  opt.layout = attn::MhaLayout::kFusedQkv;
  attn::MultiHeadAttention<float> m(e, h, opt);
  const auto x = input({b, n, e});
  run(state, attn_bench::mha_flops(b, n, e, h), [&] { benchmark::DoNotOptimize(m.forward(x, x, x)); });
}
BENCHMARK(BM_MobileViTAttention)->ArgNames({"B", "N", "E", "H"})->Args({2, 14, 64, 8})->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_MobileViTEncoderLayer(benchmark::State& state) {
  const Index b = state.range(0), n = state.range(1), c = state.range(2), f = state.range(3), h = state.range(4);
  attn::MobileViTEncoderLayer<float> m(c, f, h);
  const auto x = input({b, n, c});
  run(state, attn_bench::encoder_flops(b, n, c, f, h), [&] { benchmark::DoNotOptimize(m.forward(x)); });
}
BENCHMARK(BM_MobileViTEncoderLayer)->ArgNames({"B", "N", "C", "F", "H"})->Args({2, 14, 64, 128, 8})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);

// ---- speed-target workloads: nn.MultiheadAttention(E, H, batch_first=True), self ---------

// (32, 1024, 64) h8 (head_dim 8); (1, 2048, 512) h8 (head_dim 64); the demo shape
// (64, 10, 128) h8. Self-attention at N = 16384 is in bench_sweep (BM_Mha_N).
// BM_Mha_bf16: (1, 2048, 512) in bfloat16 (projections and attention tiles on vdpbf16ps where
// the CPU has AVX512-BF16).
template <class T>
void BM_Mha(benchmark::State& state) {
  const Index b = state.range(0), n = state.range(1), e = state.range(2), h = state.range(3);
  attn::MultiHeadAttention<T> m(e, h);
  const auto x = input<T>({b, n, e});
  run(state, attn_bench::mha_flops(b, n, e, h), [&] { benchmark::DoNotOptimize(m.forward(x, x, x)); });
}
BENCHMARK_TEMPLATE(BM_Mha, float)->Name("BM_Mha")->ArgNames({"B", "N", "E", "H"})
    ->Args({32, 1024, 64, 8})->Args({1, 2048, 512, 8})->Args({64, 10, 128, 8})
    ->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Mha, attn::bfloat16)->Name("BM_Mha_bf16")->ArgNames({"B", "N", "E", "H"})
    ->Args({1, 2048, 512, 8})->UseManualTime()->Unit(benchmark::kMillisecond);

// ---- the attention core (1, 8, 2048, 64) in float32, bfloat16 and half -------------------
// The 16-bit types' q, k, v and output are 16-bit. bfloat16 on avx512bf16 multiplies on
// vdpbf16ps (peak_frac of that peak); elsewhere, and half, the tiles compute in float32 (k and
// v widened once, when they are packed: the FMA peak).

template <class T>
void BM_Core(benchmark::State& state) {
  const Index b = state.range(0), h = state.range(1), n = state.range(2), d = state.range(3);
  const auto q = input<T>({b, h, n, d}, 1), k = input<T>({b, h, n, d}, 2), v = input<T>({b, h, n, d}, 3);
  run(state, attn_bench::core_flops(b, h, n, n, d, d),
      [&] { benchmark::DoNotOptimize(attn::scaled_dot_product_attention<T>(q, k, v)); }, attn_bench::peak_for<T>());
}
BENCHMARK_TEMPLATE(BM_Core, float)->ArgNames({"B", "H", "N", "D"})->Args({1, 8, 2048, 64})->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Core, attn::bfloat16)->ArgNames({"B", "H", "N", "D"})->Args({1, 8, 2048, 64})->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Core, attn::half)->ArgNames({"B", "H", "N", "D"})->Args({1, 8, 2048, 64})->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Core, float)->Name("BM_Core_D128")->ArgNames({"B", "H", "N", "D"})->Args({1, 8, 2048, 128})->UseManualTime()->Unit(benchmark::kMillisecond);

// ---- the attention core's backward pass: dq, dk, dv from the forward's output and lse -----
// FLOPs counted as FlashAttention-2 counts a backward pass: 2.5 times the forward's (five
// matrix products against two); compare its time with BM_Core's of the same shape.

void BM_CoreBackward(benchmark::State& state) {
  const Index b = state.range(0), h = state.range(1), n = state.range(2), d = state.range(3);
  const auto q = input({b, h, n, d}, 1), k = input({b, h, n, d}, 2), v = input({b, h, n, d}, 3),
             grad_out = input({b, h, n, d}, 4);
  attn::Tensor<float> lse;
  attn::SdpaOptions<float> opt;
  opt.lse = &lse;
  const attn::Tensor<float> out = attn::scaled_dot_product_attention<float>(q, k, v, opt);
  run(state, 2.5 * attn_bench::core_flops(b, h, n, n, d, d), [&] {
    benchmark::DoNotOptimize(attn::scaled_dot_product_attention_backward<float>(q, k, v, out, grad_out, lse));
  });
}
BENCHMARK(BM_CoreBackward)->ArgNames({"B", "H", "N", "D"})->Args({1, 8, 2048, 64})->Args({1, 8, 2048, 128})->UseManualTime()->Unit(benchmark::kMillisecond);

// ---- the projection GEMM: Linear(512, 1536) (a fused qkv projection) on 2048 rows -------
// In float32, and in bfloat16 and half (16-bit weights, inputs and outputs, float32 sums):
// vdpbf16ps where the CPU has AVX512-BF16, else tiles converted to float32.

template <class T>
void BM_Linear(benchmark::State& state) {
  const Index rows = state.range(0), in = state.range(1), out = state.range(2);
  attn::Linear<T> m(in, out);
  const attn::RowMatrix<T> x = input({rows, in}).matrix().template cast<T>();
  attn::RowMatrix<T> y(rows, out);
  run(state, attn_bench::linear_flops(rows, in, out), [&] {
    m.apply(x, y);
    benchmark::DoNotOptimize(y.data());
  }, attn_bench::peak_for<T>());
}
BENCHMARK_TEMPLATE(BM_Linear, float)->ArgNames({"M", "K", "N"})->Args({2048, 512, 1536})->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Linear, attn::bfloat16)->ArgNames({"M", "K", "N"})->Args({2048, 512, 1536})->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Linear, attn::half)->ArgNames({"M", "K", "N"})->Args({2048, 512, 1536})->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

ATTN_BENCHMARK_MAIN()
