#pragma once
/// @file
/// @brief Linear<T> (torch.nn.Linear) and LayerNorm<T> (torch.nn.LayerNorm) modules.

#include <cmath>
#include <cstdint>
#include <utility>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/modules/module.hpp"
#include "attn/ops/layer_norm.hpp"
#include "attn/ops/linear.hpp"

namespace attn {

/// @brief y = x W^T + b with weight (out_features, in_features): torch.nn.Linear.
/// Parameters: `weight`, `bias` (if bias). Initialised like PyTorch's reset_parameters,
/// U(-1/sqrt(in), 1/sqrt(in)), from a fixed seed.
template <class T>
class Linear : public Module<T> {
 public:
  Linear(Index in_features, Index out_features, bool bias = true, std::uint64_t seed = 0) {
    detail::require(in_features > 0 && out_features > 0, "attn::Linear: in_features (",
                    in_features, ") and out_features (", out_features, ") must be positive");
    detail::checked_numel({out_features, in_features}, "attn::Linear");
    weight_.resize(out_features, in_features);
    bias_.resize(bias ? out_features : 0);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    detail::init_uniform(weight_.data(), weight_.size(), bound, seed);
    detail::init_uniform(bias_.data(), bias_.size(), bound, seed + 1);
  }

  Index in_features() const { return weight_.cols(); }
  Index out_features() const { return weight_.rows(); }
  bool has_bias() const { return bias_.size() > 0; }
  RowMatrix<T>& weight() { return weight_; }
  const RowMatrix<T>& weight() const { return weight_; }
  Vector<T>& bias() { return bias_; }
  const Vector<T>& bias() const { return bias_; }

  /// out = x W^T + b on matrices: x (rows, in), out (rows, out); out must not alias x.
  template <class X, class Out>
  void apply(const Eigen::MatrixBase<X>& x, Out&& out) const {
    if (has_bias())
      linear(x, weight_, bias_, std::forward<Out>(out));
    else
      linear(x, weight_, std::forward<Out>(out));
  }

  /// @param x (..., in_features) @return (..., out_features)
  Tensor<T> forward(const TensorView<const T>& x) const {
    return linear<T>(x, TensorView<const T>(weight_.data(), {out_features(), in_features()}),
                     has_bias() ? TensorView<const T>(bias_.data(), {out_features()})
                                : TensorView<const T>());
  }

  std::vector<ParameterSlot<T>> parameters() override {
    std::vector<ParameterSlot<T>> s{{"weight", weight_.data(), {out_features(), in_features()}}};
    if (has_bias()) s.push_back({"bias", bias_.data(), {out_features()}});
    return s;
  }

 protected:
  const char* type_name() const override { return "attn::Linear"; }

 private:
  RowMatrix<T> weight_;
  Vector<T> bias_;
};

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
    Tensor<T> y(x.shape());
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
