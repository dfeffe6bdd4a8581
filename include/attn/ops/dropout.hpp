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

#include "attn/core/generator.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Inverted dropout in place on n elements: each is zeroed with probability p, the
/// others scaled by 1/(1-p). Takes one key from the generator when p > 0.
/// @throws std::invalid_argument unless p is in [0, 1)
template <class T>
void dropout_inplace(T* data, Index n, T p, Generator& generator) {
  detail::check_dropout_p(p, "attn::dropout");
  if (p > T(0)) detail::dropout_span(data, n, 1, p, generator.next_key(), 0);
}

/// @brief Inverted dropout (torch.nn.functional.dropout): in training mode each element is
/// zeroed with probability p and the others are scaled by 1/(1-p); otherwise the identity.
/// @param x the input, any shape
/// @param p drop probability in [0, 1)
/// @param training false gives a copy of x
/// @param generator source of the mask; one key is taken per call in training mode with p > 0
/// @return a new tensor of x's shape
/// @throws std::invalid_argument unless p is in [0, 1) (checked in either mode)
template <class T>
Tensor<T> dropout(const TensorView<const T>& x, T p, bool training, Generator& generator) {
  detail::check_dropout_p(p, "attn::dropout");
  Tensor<T> y(x);
  if (training) dropout_inplace(y.data(), y.numel(), p, generator);
  return y;
}

}  // namespace attn
