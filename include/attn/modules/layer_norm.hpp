#pragma once
/// @file
/// @brief LayerNorm<T>: torch.nn.LayerNorm over the last dimension.

#include <utility>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/modules/module.hpp"
#include "attn/ops/layer_norm.hpp"

namespace attn {

/// @brief Layer normalisation over the last dimension: torch.nn.LayerNorm(C, eps, affine).
/// Parameters: `weight` (ones) and `bias` (zeros) when elementwise_affine.
template <class T>
class LayerNorm : public Module<T> {
 public:
  /// @brief torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine) over the last dimension.
  /// @param normalized_shape C, the size of the last dimension that is normalised; must be > 0
  /// @param eps added to the variance before the square root (default 1e-5, as PyTorch); must be >= 0
  /// @param elementwise_affine whether the layer has `weight` (initialised to ones) and `bias`
  /// (zeros) parameters (default true); without them the output is only normalised
  /// @throws std::invalid_argument if normalized_shape <= 0 or eps < 0
  explicit LayerNorm(Index normalized_shape, double eps = 1e-5, bool elementwise_affine = true)
      : features_(normalized_shape), eps_(static_cast<compute_t<T>>(eps)) {
    detail::require(normalized_shape > 0, "attn::LayerNorm: normalized_shape must be positive, got ",
                    normalized_shape);
    detail::require(eps >= 0, "attn::LayerNorm: eps must be >= 0, got ", eps);
    weight_ = Vector<T>::Ones(elementwise_affine ? normalized_shape : 0);
    bias_ = Vector<T>::Zero(elementwise_affine ? normalized_shape : 0);
  }

  /// C, the size of the normalised last dimension.
  Index features() const { return features_; }
  /// The epsilon added to the variance, converted to compute_t<T> (T, or float32 for the 16-bit types).
  compute_t<T> eps() const { return eps_; }

  /// Normalises the rows of x (rows, C) into out; out may be x itself.
  template <class X, class Out>
  void apply(const Eigen::MatrixBase<X>& x, Out&& out) const {
    layer_norm(x, weight_, bias_, eps_, std::forward<Out>(out));
  }

  /// @param x (..., C) @return (..., C)
  Tensor<T> forward(const TensorView<const T>& x) const {
    detail::require(x.dim() >= 1 && x.size(-1) == features_, "attn::LayerNorm::forward: input has shape ",
                    x.shape(), ", expected (..., ", features_, ")");
    auto y = Tensor<T>::uninitialized(x.shape());
    apply(x.matrix(), y.matrix());
    return y;
  }

 protected:
  /// The parameters by PyTorch name, writable (see Module::slots).
  std::vector<ParameterSlot<T>> slots() override {
    if (weight_.size() == 0) return {};
    return {{"weight", weight_.data(), {features_}}, {"bias", bias_.data(), {features_}}};
  }
  const char* type_name() const override { return "attn::LayerNorm"; }

 private:
  Vector<T> weight_, bias_;
  Index features_;
  compute_t<T> eps_;
};

}  // namespace attn
