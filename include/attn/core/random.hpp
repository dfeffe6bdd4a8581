#pragma once
/// @file
/// @brief Seeded random tensors: the same values for the same seed on every machine and
/// thread count (attn's counter-based stream, not torch.rand's).

#include <cstdint>

#include "attn/core/generator.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Fills t with uniform values in [lo, hi): element i is lo + (hi - lo) * u_i, where
/// u_i is number i of the stream that Generator(seed) gives first.
/// @param t the tensor or buffer to fill (every element is written)
/// @param seed the stream's seed
/// @param lo smallest value; @param hi bound above the values
template <class T>
void fill_uniform(const TensorView<T>& t, std::uint64_t seed, double lo = 0.0, double hi = 1.0) {
  const std::uint64_t key = Generator(seed).next_key();
  for (Index i = 0; i < t.numel(); ++i)
    t.data()[i] = static_cast<T>(lo + (hi - lo) * detail::uniform(key, static_cast<std::uint64_t>(i)));
}

/// @brief A new tensor of the given shape filled by fill_uniform(t, seed, lo, hi).
template <class T>
Tensor<T> random_uniform(Shape shape, std::uint64_t seed, double lo = 0.0, double hi = 1.0) {
  auto t = Tensor<T>::uninitialized(std::move(shape));
  fill_uniform(t.view(), seed, lo, hi);
  return t;
}

}  // namespace attn
