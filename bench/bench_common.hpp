#pragma once
// Shared pieces of attn's benchmarks: FLOP counts (defined in bench/README.md), the
// machine's FMA peak (measured at startup by fma_peak.hpp), the GFLOP/s and peak_frac
// counters, the thread setting and the main() every bench binary uses.
//
// Thread count: --threads=N on the command line, else the ATTN_NUM_THREADS environment
// variable, else attn's default (all cores). Peak: measured at startup for that many
// threads, unless ATTN_PEAK_GFLOPS=<GFLOP/s> gives it (to compare runs against one value).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include <attn/attn.hpp>

#include "fma_peak.hpp"

namespace attn_bench {

using attn::Index;

// ---------------------------------------------------------------------------------------
// FLOP counts per forward call. Only multiply-adds of GEMMs count (2 flops each); softmax,
// masks, LayerNorm, activations, bias adds and copies are not counted. See bench/README.md.
// ---------------------------------------------------------------------------------------

/// Attention core: q k^T (L x D by D x S) and weights v (L x S by S x Dv) per batch and head.
inline double core_flops(double b, double h, double l, double s, double d, double dv) {
  return 2.0 * b * h * l * s * (d + dv);
}
/// One Linear(in, out) applied to `tokens` rows.
inline double linear_flops(double tokens, double in, double out) { return 2.0 * tokens * in * out; }

/// Single-head SelfAttention(E): q, k, v Linear(E, E), one head of dim E, no output projection.
inline double self_attention_flops(double b, double n, double e) {
  return 3.0 * linear_flops(b * n, e, e) + core_flops(b, 1, n, n, e, e);
}
/// Multi-head self-attention (any MhaLayout): q, k, v and output Linear(E, E), H heads of E/H.
inline double mha_flops(double b, double n, double e, double h) {
  return 4.0 * linear_flops(b * n, e, e) + core_flops(b, h, n, n, e / h, e / h);
}
/// Talking-heads (timm CaiT): qkv Linear(C, 3C), proj Linear(C, C), core, and the two head
/// mixes proj_l / proj_w (an H x H matrix applied at each of the B*N*N (query, key) pairs).
inline double talking_heads_flops(double b, double n, double c, double h) {
  return linear_flops(b * n, c, 3 * c) + linear_flops(b * n, c, c) + core_flops(b, h, n, n, c / h, c / h) +
         2.0 * (2.0 * b * n * n * h * h);
}
/// MobileViT's pre-norm encoder layer: multi-head self-attention plus the FFN C -> F -> C.
inline double encoder_flops(double b, double n, double c, double f, double h) {
  return mha_flops(b, n, c, h) + linear_flops(b * n, c, f) + linear_flops(b * n, f, c);
}

// ---------------------------------------------------------------------------------------
// Setup: threads and peak.
// ---------------------------------------------------------------------------------------

struct Setup {
  int threads = 1;           // attn::get_num_threads() after applying the setting
  double peak_gflops = 0.0;  // FMA peak for `threads` threads
  double bf16_peak_gflops = 0.0;  // vdpbf16ps peak for `threads` threads (0 without AVX512-BF16)
};

inline Setup& setup() {
  static Setup s;
  return s;
}

/// Parses and removes --threads=N from argv and applies it (or ATTN_NUM_THREADS) with
/// attn::set_num_threads.
inline void init_threads(int* argc, char** argv) {
  auto parse = [](const char* text, const char* what) {
    char* end = nullptr;
    const long n = std::strtol(text, &end, 10);
    if (end == text || *end != '\0' || n < 0 || n > 4096) {
      std::fprintf(stderr, "attn bench: %s must be a thread count >= 0 (0 = all cores), got '%s'\n", what, text);
      std::exit(2);
    }
    return static_cast<int>(n);
  };
  int requested = -1;
  if (const char* env = std::getenv("ATTN_NUM_THREADS"); env && *env) requested = parse(env, "ATTN_NUM_THREADS");
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      requested = parse(argv[i] + 10, "--threads");
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  argv[out] = nullptr;
  if (requested >= 0) attn::set_num_threads(requested);
  setup().threads = attn::get_num_threads();
}

/// Measures the FMA peak for setup().threads threads (or reads ATTN_PEAK_GFLOPS) and records
/// threads and peak in the benchmark context (console header and JSON "context").
inline void init_peak() {
  Setup& s = setup();
  double peak = 0.0;
  if (const char* env = std::getenv("ATTN_PEAK_GFLOPS"); env && *env) peak = std::atof(env);
  if (peak <= 0.0) peak = fma_peak::measure_gflops(s.threads, 0.05, 3);
  s.peak_gflops = peak;
  if (fma_peak::bf16_supported()) s.bf16_peak_gflops = fma_peak::measure_gflops(s.threads, 0.05, 3, fma_peak::bf16());

  benchmark::AddCustomContext("attn_threads", std::to_string(s.threads));
  benchmark::AddCustomContext("peak_gflops", std::to_string(s.peak_gflops));
  benchmark::AddCustomContext("peak_isa", fma_peak::isa());
  benchmark::AddCustomContext("bf16_peak_gflops", std::to_string(s.bf16_peak_gflops));
  benchmark::AddCustomContext("flops", "GEMM multiply-adds x2, see bench/README.md");
}

// ---------------------------------------------------------------------------------------
// Timing and counters.
// ---------------------------------------------------------------------------------------

/// The peak a T computation is measured against: the bf16 dot-product peak for bfloat16 on
/// the avx512bf16 kernel path, else the FMA peak.
template <class T>
double peak_for() {
  const bool bf16 = std::is_same<T, attn::bfloat16>::value && attn::kernel_isa() == attn::KernelIsa::avx512bf16;
  return bf16 && setup().bf16_peak_gflops > 0.0 ? setup().bf16_peak_gflops : setup().peak_gflops;
}

/// Runs f once per iteration, timed by wall clock (attn threads with OpenMP, so the main
/// thread's CPU time would be wrong; register with ->UseManualTime()). Sets the counters
/// GFLOP/s (flops per call / wall time) and peak_frac (GFLOP/s / `peak`, by default the FMA
/// peak). Returns the mean wall time of a call in seconds.
template <class F>
double run(benchmark::State& state, double flops, F&& f, double peak = setup().peak_gflops) {
  using clock = std::chrono::steady_clock;
  double total = 0.0;
  for (auto _ : state) {
    const auto t0 = clock::now();
    f();
    const double secs = std::chrono::duration<double>(clock::now() - t0).count();
    state.SetIterationTime(secs);
    total += secs;
  }
  const double gflops = total > 0.0 ? flops * double(state.iterations()) / total * 1e-9 : 0.0;
  state.counters["GFLOP/s"] = gflops;
  state.counters["peak_frac"] = peak > 0.0 ? gflops / peak : 0.0;
  state.counters["threads"] = setup().threads;
  return state.iterations() > 0 ? total / double(state.iterations()) : 0.0;
}

/// Deterministic inputs in [0, 1), in T (float32 values rounded to a 16-bit T).
template <class T = float>
attn::Tensor<T> input(attn::Shape shape, std::uint64_t seed = 0) {
  attn::Tensor<float> x = attn::random_uniform<float>(std::move(shape), seed);
  if constexpr (std::is_same<T, float>::value) {
    return x;
  } else {
    auto y = attn::Tensor<T>::uninitialized(x.shape());
    for (attn::Index i = 0; i < x.numel(); ++i) y.data()[i] = T(x.data()[i]);
    return y;
  }
}

}  // namespace attn_bench

/// The main() of every attn benchmark binary: Google Benchmark's flags plus --threads=N.
#define ATTN_BENCHMARK_MAIN()                                               \
  int main(int argc, char** argv) {                                         \
    attn_bench::init_threads(&argc, argv);                                  \
    benchmark::Initialize(&argc, argv);                                     \
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;       \
    attn_bench::init_peak();                                                \
    benchmark::RunSpecifiedBenchmarks();                                    \
    benchmark::Shutdown();                                                  \
    return 0;                                                               \
  }
