#pragma once
/// @file
/// @brief Element-wise activations: ReLU, SiLU and GELU (exact and tanh approximation). On
/// bfloat16 and half each value is computed in float32 and rounded once.

#include <cmath>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "attn/core/tensor.hpp"

namespace attn {

/// @brief ReLU, in place: max(x, 0) (torch.nn.ReLU); NaN stays NaN.
template <class M>
void relu_inplace(M&& m) {
  detail::require_writable<M>();
  using T = typename std::decay_t<M>::Scalar;
  m = m.unaryExpr([](T v) { return v < T(0) ? T(0) : v; });
}

/// @brief SiLU (swish), in place: x * sigmoid(x) (torch.nn.SiLU).
template <class M>
void silu_inplace(M&& m) {
  detail::require_writable<M>();
  using T = typename std::decay_t<M>::Scalar;
  using C = compute_t<T>;
  m = m.unaryExpr([](T v) {
    const C x = static_cast<C>(v);
    return T(x / (C(1) + std::exp(-x)));
  });
}

/// GELU variant: torch.nn.GELU(approximate='none') or approximate='tanh'.
enum class GeluApproximation {
  kNone,  ///< exact: 0.5 x (1 + erf(x / sqrt 2))
  kTanh   ///< tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
};

/// @brief GELU, in place. kNone: 0.5 x (1 + erf(x / sqrt 2)); kTanh:
/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class M>
void gelu_inplace(M&& m, GeluApproximation approximate = GeluApproximation::kNone) {
  detail::require_writable<M>();
  using T = typename std::decay_t<M>::Scalar;
  using C = compute_t<T>;
  if (approximate == GeluApproximation::kNone) {
    m = m.unaryExpr([](T v) {
      const C x = static_cast<C>(v);
      return T(C(0.5) * x * (C(1) + std::erf(x * C(0.70710678118654752440))));
    });
  } else {
    const C k = C(0.79788456080286535588);  // sqrt(2 / pi)
    m = m.unaryExpr([k](T v) {
      const C x = static_cast<C>(v);
      return T(C(0.5) * x * (C(1) + std::tanh(k * (x + C(0.044715) * x * x * x))));
    });
  }
}

/// @brief ReLU of a tensor.
template <class T>
Tensor<T> relu(const TensorView<const T>& x) {
  Tensor<T> y(x);
  relu_inplace(y.flat());
  return y;
}

/// @brief The activation of a feed-forward network, by name (torch.nn.Transformer*Layer's
/// `activation`: "relu" or "gelu", the exact erf GELU).
enum class Activation {
  kRelu,  ///< max(x, 0)
  kGelu,  ///< 0.5 x (1 + erf(x / sqrt 2))
};

/// @brief The activation `a`, in place.
template <class M>
void activation_inplace(M&& m, Activation a) {
  if (a == Activation::kRelu)
    relu_inplace(std::forward<M>(m));
  else
    gelu_inplace(std::forward<M>(m));
}

/// @brief SiLU of a tensor.
template <class T>
Tensor<T> silu(const TensorView<const T>& x) {
  Tensor<T> y(x);
  silu_inplace(y.flat());
  return y;
}

/// @brief GELU of a tensor.
template <class T>
Tensor<T> gelu(const TensorView<const T>& x, GeluApproximation approximate = GeluApproximation::kNone) {
  Tensor<T> y(x);
  gelu_inplace(y.flat(), approximate);
  return y;
}

}  // namespace attn
