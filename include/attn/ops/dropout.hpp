#pragma once
/// @file
/// @brief Inverted dropout driven by an explicit, counter-based random generator.
///
/// Whether element i of a dropout application is kept depends only on (seed, the number of
/// the application, i): never on how the work is split between threads or blocks. The same
/// seed therefore gives the same masks on any thread count, and `forward` stays const and
/// re-entrant because the generator is passed per call.

#include <cstdint>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Seeded source of dropout masks. Each dropout application takes one stream key.
///
/// Not thread-safe by itself: use one Generator per concurrent forward call.
class Generator {
 public:
  explicit Generator(std::uint64_t seed) : seed_(seed) {}
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

template <class T>
void check_dropout_p(T p, const char* where) {
  require(p >= T(0) && p < T(1), where, ": dropout probability must be in [0, 1), got ", p);
}

/// Applies dropout to `n` consecutive elements that are elements first..first+n-1 of stream `key`.
template <class T>
void dropout_span(T* data, Index n, T p, std::uint64_t key, std::uint64_t first) {
  const T scale = T(1) / (T(1) - p);
  for (Index i = 0; i < n; ++i)
    data[i] = uniform(key, first + static_cast<std::uint64_t>(i)) < static_cast<double>(p)
                  ? T(0)
                  : data[i] * scale;
}

}  // namespace detail

/// @brief Inverted dropout (torch.nn.functional.dropout): in training mode each element is
/// zeroed with probability p and the others are scaled by 1/(1-p); otherwise the identity.
/// @param p drop probability in [0, 1)
/// @param training false gives a copy of x
/// @param generator source of the mask; one key is taken per call
template <class T>
Tensor<T> dropout(const TensorView<const T>& x, T p, bool training, Generator& generator) {
  detail::check_dropout_p(p, "attn::dropout");
  Tensor<T> y(x);
  if (training && p > T(0)) detail::dropout_span(y.data(), y.numel(), p, generator.next_key(), 0);
  return y;
}

}  // namespace attn
