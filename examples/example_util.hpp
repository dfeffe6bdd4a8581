#pragma once
// Shared by the example programs: deterministic inputs, a checksum and a timer.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>

#include <attn/attn.hpp>

namespace example {

/// Uniform [0, 1) values from a seed, like torch.rand (not the same stream).
template <class T>
attn::Tensor<T> rand(attn::Shape shape, std::uint64_t seed) {
  return attn::random_uniform<T>(std::move(shape), seed);
}

/// Prints "name: input (..) -> output (..)  sum=..  mean|y|=..  time".
template <class T>
void report(const char* name, const attn::Shape& in, const attn::Tensor<T>& out, double ms) {
  double sum = 0, abs_sum = 0;
  for (attn::Index i = 0; i < out.numel(); ++i) sum += double(out[i]), abs_sum += std::abs(double(out[i]));
  std::printf("%s: input %s -> output %s  checksum sum=%.6f mean|y|=%.6f  (%.1f ms)\n", name, attn::to_string(in).c_str(),
              attn::to_string(out.shape()).c_str(), sum, out.numel() ? abs_sum / double(out.numel()) : 0.0, ms);
}

/// Milliseconds taken by f().
template <class F>
double time_ms(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

/// Parses "--name value" pairs into integers from 1 to 100000 (`options` maps each name to
/// where its value goes); prints `usage` for --help (exit 0) or after an error (exit 2).
inline void parse_options(int argc, char** argv, const char* program, const char* usage,
                          std::initializer_list<std::pair<const char*, attn::Index*>> options) {
  const auto fail = [&](const std::string& message) {
    std::fprintf(stderr, "%s: %s\n%s", program, message.c_str(), usage);
    std::exit(2);
  };
  for (int i = 1; i < argc; i += 2) {
    if (std::strcmp(argv[i], "--help") == 0) {
      std::printf("%s", usage);
      std::exit(0);
    }
    const auto* o = std::find_if(options.begin(), options.end(),
                                 [&](const auto& opt) { return std::strcmp(opt.first, argv[i]) == 0; });
    if (o == options.end()) fail(std::string("unknown argument '") + argv[i] + "'");
    if (i + 1 >= argc) fail(std::string(argv[i]) + " needs a value");
    char* end = nullptr;
    const long long v = std::strtoll(argv[i + 1], &end, 10);
    if (*argv[i + 1] == '\0' || *end != '\0' || v <= 0 || v > 100000)
      fail(std::string(argv[i]) + " must be an integer from 1 to 100000, got '" + argv[i + 1] + "'");
    *o->second = attn::Index(v);
  }
}

}  // namespace example
