#pragma once
// The machine's floating-point peak, measured: every thread runs a loop of fused
// multiply-adds on kAccumulators independent vector registers (enough to hide the FMA
// latency on both FMA ports), float32, with the widest vectors the compiler was allowed to
// use (-march=native: AVX-512 on this project's machines). FLOPs = 2 per lane per FMA.
//
// Each thread's rate is taken over its own CPU time (not wall time), so the number is the
// peak of the cores even on a machine shared with other work; a benchmark's wall-clock
// GFLOP/s divided by it is its fraction of what the hardware could do.
//
// Used by bench/peak.cpp (prints it) and by every benchmark's peak_frac counter. bf16_loop
// measures the AVX512-BF16 dot-product peak (vdpbf16ps) the same way, where the CPU has it.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <thread>
#include <vector>

#if defined(__AVX512F__) || defined(__FMA__) || defined(__AVX__) || defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fma_peak {

constexpr int kAccumulators = 16;

// One vector register of floats, for the widest FMA the compiler may use.
#if defined(__AVX512F__)
using Vec = __m512;
constexpr int kLanes = 16;
inline const char* isa() { return "AVX-512 FMA, 16 x float32"; }
inline Vec vset1(float x) { return _mm512_set1_ps(x); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
#elif defined(__FMA__)
using Vec = __m256;
constexpr int kLanes = 8;
inline const char* isa() { return "AVX2 FMA, 8 x float32"; }
inline Vec vset1(float x) { return _mm256_set1_ps(x); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
#else
using Vec = float;
constexpr int kLanes = 1;
inline const char* isa() { return "scalar (no FMA instructions enabled at compile time: build with -march=native)"; }
inline Vec vset1(float x) { return x; }
inline Vec vfma(Vec a, Vec b, Vec c) { return a * b + c; }
#endif

/// The sum of every float lane of the kAccumulators vectors at acc (copied out through memory:
/// GCC 12 warns on _mm512_reduce_add_ps, PR 105593).
template <int Lanes, class V>
float sum_accumulators(const V* acc) {
  float total = 0.0f;
  for (int j = 0; j < kAccumulators; ++j) {
    float lanes[Lanes];
    std::memcpy(lanes, &acc[j], sizeof(lanes));
    for (float v : lanes) total += v;
  }
  return total;
}

/// Runs `iters` rounds of kAccumulators independent FMAs; returns a value depending on all
/// of them. acc * a + y with a slightly below 1 keeps the values bounded and normal.
inline float fma_loop(std::int64_t iters, float a, float y) {
  const Vec va = vset1(a), vy = vset1(y);
  Vec acc[kAccumulators];
  for (int j = 0; j < kAccumulators; ++j) acc[j] = vset1(float(j));
  for (std::int64_t i = 0; i < iters; ++i) {
    // Fully unrolled, so the accumulators stay in registers even at -O2.
#pragma GCC unroll 16
    for (int j = 0; j < kAccumulators; ++j) acc[j] = vfma(acc[j], va, vy);
  }
  return sum_accumulators<kLanes>(acc);
}

/// A peak loop: `run(iters, a, y)` runs `iters` rounds of `flops_per_iter` FLOPs.
struct Loop {
  float (*run)(std::int64_t iters, float a, float y);
  double flops_per_iter;
};

/// The float32 FMA loop above: 2 FLOPs per lane per FMA.
inline Loop fma() { return {fma_loop, 2.0 * kAccumulators * kLanes}; }

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FMA_PEAK_HAS_BF16 1
/// @brief The AVX512-BF16 loop: kAccumulators independent vdpbf16ps (each adds two bf16
/// products into each of 16 float lanes: 64 FLOPs), compiled for that extension whatever
/// the build's flags (run it only where bf16_supported()).
__attribute__((target("avx512f,avx512bf16"))) inline float bf16_loop(std::int64_t iters, float a, float y) {
  const __m512bh va = _mm512_cvtne2ps_pbh(_mm512_set1_ps(a), _mm512_set1_ps(a));
  const __m512bh vy = _mm512_cvtne2ps_pbh(_mm512_set1_ps(y), _mm512_set1_ps(y));
  __m512 acc[kAccumulators];
  for (int j = 0; j < kAccumulators; ++j) acc[j] = _mm512_set1_ps(float(j));
  for (std::int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kAccumulators; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], va, vy);
  }
  return sum_accumulators<16>(acc);
}
/// Whether this CPU (and OS) runs bf16_loop.
inline bool bf16_supported() { return __builtin_cpu_supports("avx512bf16"); }
/// The bf16 dot-product loop: 64 FLOPs per instruction.
inline Loop bf16() { return {bf16_loop, 64.0 * kAccumulators}; }
#else
#define FMA_PEAK_HAS_BF16 0
inline bool bf16_supported() { return false; }
#endif

/// Sink that keeps the loop results alive.
inline std::atomic<float>& sink() {
  static std::atomic<float> s{0.0f};
  return s;
}

/// Seconds of CPU time the calling thread has used (wall time where POSIX's per-thread clock
/// is missing).
inline double thread_seconds() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
#else
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
#endif
}

/// One run: `threads` threads start together and each runs `iters` rounds. Each thread's
/// rate is its FLOPs over its own CPU time, so time slices lost to other processes on a
/// shared machine do not count against the peak; returns the sum over threads (GFLOP/s).
inline double run_once(int threads, std::int64_t iters, Loop loop = fma()) {
  static volatile float a = 0.9999999f, y = 1e-7f;  // volatile: not constant-folded
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<double> rate(std::size_t(threads), 0.0);
  std::vector<std::thread> pool;
  pool.reserve(std::size_t(threads));
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      const float av = a, yv = y;
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      const double t0 = thread_seconds();
      const float r = loop.run(iters, av, yv);
      const double secs = thread_seconds() - t0;
      sink().store(r, std::memory_order_relaxed);
      rate[std::size_t(t)] = secs > 0.0 ? double(iters) * loop.flops_per_iter / secs * 1e-9 : 0.0;
    });
  while (ready.load() < threads) std::this_thread::yield();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  double total = 0.0;
  for (double r : rate) total += r;
  return total;
}

/// Best of `reps` runs of about `seconds` each of `loop` (the FMA loop by default), with
/// `threads` threads; GFLOP/s.
inline double measure_gflops(int threads, double seconds = 0.1, int reps = 5, Loop loop = fma()) {
  threads = std::max(threads, 1);
  // Calibrate on one short run (also warms up the vector units' clock).
  std::int64_t iters = 1 << 16;
  double rate = run_once(1, iters, loop);  // GFLOP/s of one thread
  iters = std::max<std::int64_t>(iters, std::int64_t(seconds * rate * 1e9 / loop.flops_per_iter));
  double best = 0.0;
  for (int r = 0; r < reps; ++r) best = std::max(best, run_once(threads, iters, loop));
  return best;
}

}  // namespace fma_peak
