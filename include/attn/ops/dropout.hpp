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
#include "attn/core/generator.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

namespace detail {

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
