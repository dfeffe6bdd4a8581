#pragma once
/// @file
/// @brief Layer normalisation over the last dimension (torch.nn.functional.layer_norm).

#include <cmath>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief y = (x - mean) / sqrt(var + eps) * weight + bias, row by row.
///
/// The variance is the biased one (divided by C), as in PyTorch. Mean and variance are
/// computed in two passes over the row for accuracy, in compute_t<T> (float32 for bfloat16
/// and half, whose outputs are rounded once).
/// @param x (rows, C); @param weight (C) or empty for no affine scale; @param bias (C) or empty
/// @param eps added to the variance before the square root; must be >= 0
/// @param out (rows, C), may alias x
/// @throws std::invalid_argument on mismatched sizes or eps < 0
template <class X, class Out>
void layer_norm(const Eigen::MatrixBase<X>& x, const Eigen::Ref<const Vector<typename X::Scalar>>& weight,
                const Eigen::Ref<const Vector<typename X::Scalar>>& bias, compute_t<typename X::Scalar> eps,
                Out&& out) {
  detail::require_writable<Out>();
  using T = typename X::Scalar;
  using C = compute_t<T>;
  const Index c = x.cols();
  detail::require(weight.size() == 0 || weight.size() == c, "attn::layer_norm: weight has ",
                  weight.size(), " elements but the input rows have ", c);
  detail::require(bias.size() == 0 || bias.size() == c, "attn::layer_norm: bias has ", bias.size(),
                  " elements but the input rows have ", c);
  detail::require(out.rows() == x.rows() && out.cols() == c,
                  "attn::layer_norm: output shape does not match the input");
  detail::require(eps >= C(0), "attn::layer_norm: eps must be >= 0, got ", eps);
  Vector<C> row(c);  // one row in C (out may alias x)
  for (Index i = 0; i < x.rows(); ++i) {
    row = x.row(i).transpose().template cast<C>();
    const C mean = row.mean();
    const C var = (row.array() - mean).square().mean();
    const C rstd = C(1) / std::sqrt(var + eps);
    row = (row.array() - mean) * rstd;
    if (weight.size() > 0) row.array() *= weight.array().template cast<C>();
    if (bias.size() > 0) row += bias.template cast<C>();
    out.row(i) = row.transpose().template cast<T>();
  }
}

/// @brief LayerNorm over the last dimension of a tensor of any rank >= 1
/// (F.layer_norm(x, (C,), weight, bias, eps)).
/// @param x (..., C)
/// @param weight (C), or the default (empty) view for no scale; @param bias likewise
/// @param eps added to the variance before the square root (default 1e-5, as PyTorch); >= 0
/// @return (..., C)
/// @throws std::invalid_argument on a rank-0 input, mismatched weight / bias or eps < 0
template <class T>
Tensor<T> layer_norm(const TensorView<const T>& x, const TensorView<const T>& weight,
                     const TensorView<const T>& bias, compute_t<T> eps = compute_t<T>(1e-5)) {
  detail::require(x.dim() >= 1, "attn::layer_norm: input must have at least one dimension");
  for (const auto* p : {&weight, &bias})
    detail::require(p->data() == nullptr || p->shape() == Shape{x.size(-1)}, "attn::layer_norm: ",
                    p == &weight ? "weight" : "bias", " has shape ", p->shape(), " but the input ", x.shape(),
                    " needs (", x.size(-1), ")");
  auto y = Tensor<T>::uninitialized(x.shape());
  layer_norm(x.matrix(), Eigen::Map<const Vector<T>>(weight.data(), weight.numel()),
             Eigen::Map<const Vector<T>>(bias.data(), bias.numel()), eps, y.matrix());
  return y;
}

}  // namespace attn
