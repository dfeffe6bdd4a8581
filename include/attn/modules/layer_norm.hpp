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
  explicit LayerNorm(Index normalized_shape, double eps = 1e-5, bool elementwise_affine = true)
      : features_(normalized_shape), eps_(static_cast<T>(eps)) {
    detail::require(normalized_shape > 0, "attn::LayerNorm: normalized_shape must be positive, got ",
                    normalized_shape);
    detail::require(eps >= 0, "attn::LayerNorm: eps must be >= 0, got ", eps);
    weight_ = Vector<T>::Ones(elementwise_affine ? normalized_shape : 0);
    bias_ = Vector<T>::Zero(elementwise_affine ? normalized_shape : 0);
  }

  Index features() const { return features_; }
  T eps() const { return eps_; }

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

  std::vector<ParameterSlot<T>> parameters() override {
    if (weight_.size() == 0) return {};
    return {{"weight", weight_.data(), {features_}}, {"bias", bias_.data(), {features_}}};
  }

 protected:
  const char* type_name() const override { return "attn::LayerNorm"; }

 private:
  Vector<T> weight_, bias_;
  Index features_;
  T eps_;
};

}  // namespace attn
