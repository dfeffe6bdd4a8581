#pragma once
/// @file
/// @brief Generator: a seeded, counter-based source of random numbers, and the dropout rule
/// that reads it.
///
/// A random number is a pure function of (seed, stream, index): the same seed gives the
/// same numbers however the work is split between threads or blocks.

#include <cstdint>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Seeded source of random streams (dropout masks, default initialisation). Each
/// dropout application takes one stream key.
///
/// Not thread-safe by itself: use one Generator per concurrent forward call.
class Generator {
 public:
  /// A generator whose keys, and so every random number it leads to, depend on `seed` alone.
  explicit Generator(std::uint64_t seed) : seed_(seed) {}
  /// The seed it was made with.
  std::uint64_t seed() const { return seed_; }
  /// Key of the next dropout application (advances the generator).
  std::uint64_t next_key() { return mix(seed_ ^ mix(++counter_)); }

  /// SplitMix64 finaliser: a bijective 64-bit mix with good avalanche.
  static std::uint64_t mix(std::uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

 private:
  std::uint64_t seed_;
  std::uint64_t counter_ = 0;
};

namespace detail {

/// Uniform number in [0, 1) for element `index` of the stream `key` (53 random bits).
inline double uniform(std::uint64_t key, std::uint64_t index) {
  return static_cast<double>(Generator::mix(key ^ Generator::mix(index)) >> 11) * 0x1.0p-53;
}

/// Checks a dropout probability: p in [0, 1).
template <class T>
void check_dropout_p(T p, const char* where) {
  require(p >= T(0) && p < T(1), where, ": dropout probability must be in [0, 1), got ", p);
}

/// @brief The one dropout rule: element i of data (at data[i * stride]), which is element
/// first + i of stream `key`, is zeroed when its uniform number is below p, else scaled by
/// 1/(1-p).
template <class T>
void dropout_span(T* data, Index n, Index stride, T p, std::uint64_t key, std::uint64_t first) {
  const T scale = T(1) / (T(1) - p);
  for (Index i = 0; i < n; ++i) {
    T& x = data[i * stride];
    x = uniform(key, first + static_cast<std::uint64_t>(i)) < static_cast<double>(p) ? T(0) : x * scale;
  }
}

}  // namespace detail
}  // namespace attn
