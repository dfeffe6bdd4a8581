#pragma once
/// @file
/// @brief Numerically stable softmax over the last dimension.

#include <cmath>
#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Softmax of every row, in place: exp(x - max) / sum.
///
/// Subtracting the row max keeps exp finite for any finite logits (logits of 1e4 are fine).
/// @note A row whose every entry is -inf (every key masked) becomes all zeros, not NaN:
/// PyTorch 1.13 returns NaN there, PyTorch >= 2.5's scaled_dot_product_attention and ONNX
/// return 0, which is what a caller can use. NaN in a row propagates to that row;
/// +inf gives NaN (inf - inf), as in PyTorch.
/// @param m any writable row-major or column-major matrix expression; rows are normalised
template <class M>
void softmax_rows_inplace(M&& m) {
  detail::require_writable<M>();
  using T = typename std::decay_t<M>::Scalar;
  for (Index i = 0; i < m.rows(); ++i) {
    auto row = m.row(i);
    const T mx = row.cols() > 0 ? row.template maxCoeff<Eigen::PropagateNaN>() : -std::numeric_limits<T>::infinity();
    if (mx == -std::numeric_limits<T>::infinity()) {
      row.setZero();
      continue;
    }
    // Eigen's vectorised exp clamps its argument, so exp(-inf) would be ~1e-39, not 0:
    // masked entries are selected to exactly 0.
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    row = (row.array() == kNegInf).select(T(0), (row.array() - mx).exp()).matrix();
    row /= row.sum();
  }
}

/// @brief Softmax over the last dimension of a tensor (torch.softmax(x, dim=-1)).
template <class T>
Tensor<T> softmax(const TensorView<const T>& x) {
  Tensor<T> y(x);
  softmax_rows_inplace(y.matrix());
  return y;
}

}  // namespace attn
