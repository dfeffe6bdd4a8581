// Prints this machine's measured FMA peak (GFLOP/s, float32) for 1 .. all hardware threads,
// and its bf16 dot-product peak (AVX512-BF16) where the CPU has it.
// The benchmarks measure the same loop at startup for their own thread count and report
// peak_frac = GFLOP/s / peak.
//
//   peak [--threads=1,2] [--seconds=0.2] [--reps=5] [--json]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "fma_peak.hpp"

namespace {

[[noreturn]] void usage(const char* bad) {
  std::fprintf(stderr, "peak: bad argument '%s'\nusage: peak [--threads=1,2] [--seconds=0.2] [--reps=5] [--json]\n",
               bad);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads;
  double seconds = 0.2;
  int reps = 5;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    char* end = nullptr;
    if (std::strncmp(a, "--threads=", 10) == 0) {
      const char* p = a + 10;
      while (*p) {
        const long n = std::strtol(p, &end, 10);
        if (end == p || n < 1 || n > 4096 || (*end != ',' && *end != '\0')) usage(a);
        threads.push_back(int(n));
        p = *end == ',' ? end + 1 : end;
      }
    } else if (std::strncmp(a, "--seconds=", 10) == 0) {
      seconds = std::strtod(a + 10, &end);
      if (end == a + 10 || *end != '\0' || !(seconds > 0.0)) usage(a);
    } else if (std::strncmp(a, "--reps=", 7) == 0) {
      reps = int(std::strtol(a + 7, &end, 10));
      if (end == a + 7 || *end != '\0' || reps < 1) usage(a);
    } else if (std::strcmp(a, "--json") == 0) {
      json = true;
    } else {
      usage(a);
    }
  }
  if (threads.empty()) {
    const int hw = std::max(1, int(std::thread::hardware_concurrency()));
    for (int t = 1; t <= hw; ++t) threads.push_back(t);
  }

  std::vector<double> gflops, bf16;
  for (int t : threads) gflops.push_back(fma_peak::measure_gflops(t, seconds, reps));
#if FMA_PEAK_HAS_BF16
  if (fma_peak::bf16_supported())
    for (int t : threads) bf16.push_back(fma_peak::measure_gflops(t, seconds, reps, fma_peak::bf16()));
#endif

  if (json) {
    std::printf("{\"isa\": \"%s\", \"accumulators\": %d, \"seconds\": %g, \"reps\": %d, \"peak\": [", fma_peak::isa(),
                fma_peak::kAccumulators, seconds, reps);
    for (std::size_t i = 0; i < threads.size(); ++i)
      std::printf("%s{\"threads\": %d, \"gflops\": %.2f}", i ? ", " : "", threads[i], gflops[i]);
    std::printf("], \"bf16_peak\": [");
    for (std::size_t i = 0; i < bf16.size(); ++i)
      std::printf("%s{\"threads\": %d, \"gflops\": %.2f}", i ? ", " : "", threads[i], bf16[i]);
    std::printf("]}\n");
  } else {
    std::printf("FMA peak: %s, %d independent accumulators, best of %d runs of %g s\n", fma_peak::isa(),
                fma_peak::kAccumulators, reps, seconds);
    std::printf("threads  GFLOP/s  per thread\n");
    for (std::size_t i = 0; i < threads.size(); ++i)
      std::printf("%7d  %7.1f  %10.1f\n", threads[i], gflops[i], gflops[i] / threads[i]);
    if (bf16.empty()) {
      std::printf("bf16 peak: this CPU has no AVX512-BF16\n");
    } else {
      std::printf("bf16 peak: AVX512-BF16 vdpbf16ps (64 FLOPs each), %d independent accumulators\n",
                  fma_peak::kAccumulators);
      std::printf("threads  GFLOP/s  per thread  vs float32 FMA\n");
      for (std::size_t i = 0; i < threads.size(); ++i)
        std::printf("%7d  %7.1f  %10.1f  %13.2fx\n", threads[i], bf16[i], bf16[i] / threads[i], bf16[i] / gflops[i]);
    }
  }
  return 0;
}
