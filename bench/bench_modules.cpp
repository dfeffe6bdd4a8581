// Google Benchmark suite: every module at its seed demo shape (float, single call per
// iteration). Issue "Fast attention on the CPU" extends this with sweeps and the PyTorch
// comparison; these are the baselines.
#include <benchmark/benchmark.h>

#include <attn/attn.hpp>

namespace {

attn::Tensor<float> input(attn::Shape shape) {
  attn::Tensor<float> t(std::move(shape));
  const std::uint64_t key = attn::Generator(0).next_key();
  for (attn::Index i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(attn::detail::uniform(key, std::uint64_t(i)));
  return t;
}

void BM_SelfAttention_2x3x4(benchmark::State& state) {
  attn::SelfAttention<float> m(4);
  const auto x = input({2, 3, 4});
  for (auto _ : state) benchmark::DoNotOptimize(m.forward(x));
}
BENCHMARK(BM_SelfAttention_2x3x4);

void BM_MultiHeadAttention_64x10x128_h8(benchmark::State& state) {
  attn::MultiHeadAttention<float> m(128, 8);
  const auto x = input({64, 10, 128});
  for (auto _ : state) benchmark::DoNotOptimize(m.forward(x, x, x));
}
BENCHMARK(BM_MultiHeadAttention_64x10x128_h8)->Unit(benchmark::kMillisecond);

void BM_MultiHeadAttention_1x2048x512_h8(benchmark::State& state) {
  attn::MultiHeadAttention<float> m(512, 8);
  const auto x = input({1, 2048, 512});
  for (auto _ : state) benchmark::DoNotOptimize(m.forward(x, x, x));
}
BENCHMARK(BM_MultiHeadAttention_1x2048x512_h8)->Unit(benchmark::kMillisecond);

void BM_TalkingHeads_32x784x128_h8(benchmark::State& state) {
  attn::TalkingHeadsAttention<float> m(128, 8);
  const auto x = input({32, 784, 128});
  for (auto _ : state) benchmark::DoNotOptimize(m.forward(x));
}
BENCHMARK(BM_TalkingHeads_32x784x128_h8)->Unit(benchmark::kMillisecond)->Iterations(2);

void BM_AttentionBlock_32x64x1024_h8(benchmark::State& state) {
  attn::AttentionBlock<float> m(64, 8);
  const auto x = input({32, 64, 1024});
  for (auto _ : state) benchmark::DoNotOptimize(m.forward(x));
}
BENCHMARK(BM_AttentionBlock_32x64x1024_h8)->Unit(benchmark::kMillisecond)->Iterations(2);

void BM_TransformerEncoderLayer_2x14x64(benchmark::State& state) {
  attn::TransformerEncoderLayer<float> m(64, 128, 8);
  const auto x = input({2, 14, 64});
  for (auto _ : state) benchmark::DoNotOptimize(m.forward(x));
}
BENCHMARK(BM_TransformerEncoderLayer_2x14x64)->Unit(benchmark::kMicrosecond);

}  // namespace
