#pragma once
/// @file
/// @brief Numerically stable softmax over the last dimension.

#include <type_traits>

#include <Eigen/Core>

#include "attn/core/tensor.hpp"
#include "attn/ops/detail/kernels.hpp"

namespace attn {

/// @brief Softmax of every row, in place: exp(x - max) / sum.
///
/// Subtracting the row max keeps exp finite for any finite logits (logits of 1e4 are fine).
/// Every softmax in attn, the attention kernels' included, is built from the same online
/// softmax pieces (detail/online_softmax.hpp) and exp (detail/exp.hpp: within 1 ulp in float,
/// 2 ulp in double).
/// @note A row whose every entry is -inf (every key masked) becomes all zeros, not NaN:
/// PyTorch 1.13 returns NaN there, PyTorch >= 2.5's scaled_dot_product_attention and ONNX
/// return 0, which is what a caller can use. NaN in a row propagates to that row;
/// +inf gives NaN (inf - inf), as in PyTorch. A bfloat16 or half row is computed in float32
/// and rounded once.
/// @param m any writable row-major or column-major matrix expression; rows are normalised
template <class M>
void softmax_rows_inplace(M&& m) {
  detail::require_writable<M>();
  using T = typename std::decay_t<M>::Scalar;
  using C = compute_t<T>;
  using Row = std::decay_t<decltype(m.row(0))>;
  constexpr bool kDirect = std::is_same<T, C>::value && (int(Row::Flags) & Eigen::DirectAccessBit) != 0;
  Vector<C> buffer;  // a row that is not contiguous, or in 16 bits, is normalised in a float copy
  for (Index i = 0; i < m.rows(); ++i) {
    auto row = m.row(i);
    if constexpr (kDirect) {
      if (row.innerStride() == 1) {
        detail::softmax_rows(row.data(), 1, row.cols(), 0);
        continue;
      }
    }
    buffer = row.transpose().template cast<C>();
    detail::softmax_rows(buffer.data(), 1, buffer.size(), 0);
    row = buffer.transpose().template cast<T>();
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
