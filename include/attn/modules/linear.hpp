#pragma once
/// @file
/// @brief Linear<T>: torch.nn.Linear.

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/modules/module.hpp"
#include "attn/ops/linear.hpp"

namespace attn {

/// @brief y = x W^T + b with weight (out_features, in_features): torch.nn.Linear.
/// Parameters: `weight`, `bias` (if bias). Initialised like PyTorch's reset_parameters,
/// U(-1/sqrt(in), 1/sqrt(in)), from a fixed seed. T is float, double, attn::bfloat16 or
/// attn::half; in the 16-bit types the weights, inputs and outputs are 16-bit, the products
/// are summed in float32 and each output is rounded once (attn/ops/linear.hpp).
template <class T>
class Linear : public Module<T> {
 public:
  /// @brief torch.nn.Linear(in_features, out_features, bias), initialised from `seed`.
  /// @param in_features size of each input row (the last dimension of x); must be > 0
  /// @param out_features size of each output row; must be > 0
  /// @param bias whether the layer has a `bias` parameter (default true, as PyTorch)
  /// @param seed seed of the initial values (default 0): the weight is drawn from stream `seed`,
  /// the bias from `seed + 1`, both U(-1/sqrt(in_features), 1/sqrt(in_features))
  /// @throws std::invalid_argument if a size is not positive or the weight's element count overflows
  Linear(Index in_features, Index out_features, bool bias = true, std::uint64_t seed = 0) {
    detail::require(in_features > 0 && out_features > 0, "attn::Linear: in_features (",
                    in_features, ") and out_features (", out_features, ") must be positive");
    detail::checked_numel({out_features, in_features}, "attn::Linear");
    weight_.resize(out_features, in_features);
    bias_.resize(bias ? out_features : 0);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    detail::init_uniform(weight_.data(), weight_.size(), bound, seed);
    detail::init_uniform(bias_.data(), bias_.size(), bound, seed + 1);
    repack();
  }

  /// Input features (columns of the weight).
  Index in_features() const { return weight_.cols(); }
  /// Output features (rows of the weight).
  Index out_features() const { return weight_.rows(); }
  /// Whether the layer has a bias.
  bool has_bias() const { return bias_.size() > 0; }
  /// The weight (out_features, in_features), PyTorch's layout.
  const RowMatrix<T>& weight() const { return weight_; }
  /// The bias (out_features), or an empty vector without bias.
  const Vector<T>& bias() const { return bias_; }

  /// @brief Replaces the weight and the bias (load_state_dict does the same by name).
  /// @param weight (out_features, in_features)
  /// @param bias (out_features), or empty for a layer without bias
  /// @throws std::invalid_argument if a shape differs from the layer's; nothing changes then
  void set_parameters(const RowMatrix<T>& weight, const Vector<T>& bias) {
    detail::require(weight.rows() == out_features() && weight.cols() == in_features() && bias.size() == bias_.size(),
                    "attn::Linear::set_parameters: weight (", weight.rows(), ", ", weight.cols(), ") and bias (",
                    bias.size(), ") must be (", out_features(), ", ", in_features(), ") and (", bias_.size(), ")");
    weight_ = weight;
    bias_ = bias;
    repack();
  }

  /// @brief out = x W^T + b on matrices, with attn's GEMM (the weight was packed for it when
  /// it was set): x (rows, in_features), out (rows, out_features), both row-major with unit
  /// column stride (other expressions are copied); out must not alias x.
  template <class X, class Out>
  void apply(const Eigen::MatrixBase<X>& x, Out&& out) const {
    detail::require_writable<Out>();
    detail::require(x.cols() == in_features() && out.rows() == x.rows() && out.cols() == out_features(),
                    "attn::Linear::apply: input (", x.rows(), ", ", x.cols(), ") and output (", out.rows(), ", ",
                    out.cols(), ") do not fit Linear(", in_features(), ", ", out_features(), ")");
    const Eigen::Ref<const RowMatrix<T>, 0, Eigen::OuterStride<>> xr(x);
    Eigen::Ref<RowMatrix<T>, 0, Eigen::OuterStride<>> o(out);
    packed_.apply(xr.data(), xr.rows(), xr.outerStride(), o.data(), o.outerStride());
  }

  /// @brief x W^T + b on a (..., in_features) input, written into several places by one GEMM:
  /// each output receives its range of output features in its own layout (rows of a matrix,
  /// or head-major (B, H, S, D) as the attention kernels read k and v; see LinearOutput).
  void apply(const TensorView<const T>& x, std::initializer_list<LinearOutput<T>> outputs) const {
    detail::require(x.dim() >= 1 && x.size(-1) == in_features(), "attn::Linear::apply: input of shape ", x.shape(),
                    " does not fit Linear(", in_features(), ", ", out_features(), ")");
    packed_.apply(x, outputs);
  }

  /// @param x (..., in_features) @return (..., out_features)
  Tensor<T> forward(const TensorView<const T>& x) const {
    detail::require(x.dim() >= 1 && x.size(-1) == in_features(), "attn::Linear::forward: input of shape ", x.shape(),
                    " does not fit Linear(", in_features(), ", ", out_features(), ")");
    Shape shape = x.shape();
    shape.back() = out_features();
    auto y = Tensor<T>::uninitialized(shape);
    apply(x.matrix(), y.matrix());
    return y;
  }

 protected:
  /// The parameters by PyTorch name, writable (see Module::slots).
  std::vector<ParameterSlot<T>> slots() override {
    std::vector<ParameterSlot<T>> s{{"weight", weight_.data(), {out_features(), in_features()}}};
    if (has_bias()) s.push_back({"bias", bias_.data(), {out_features()}});
    return s;
  }
  const char* type_name() const override { return "attn::Linear"; }
  void on_parameters_changed() override { repack(); }

 private:
  void repack() { packed_.pack(weight_.data(), out_features(), in_features(), in_features(), has_bias() ? bias_.data() : nullptr); }

  RowMatrix<T> weight_;
  Vector<T> bias_;
  PackedLinear<T> packed_;  // weight_ and bias_ in the GEMM's panel layout
};

}  // namespace attn
