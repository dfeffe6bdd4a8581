#pragma once
// Shared by the example programs: deterministic inputs, a checksum and a timer.

#include <chrono>
#include <cstdio>
#include <string>

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

}  // namespace example
