#pragma once
/// @file
/// @brief Linear layer with PyTorch's layout: weight (out_features, in_features), y = x W^T + b.
///
/// The element type is float, double, attn::bfloat16 or attn::half. In the 16-bit types the
/// weight is packed in 16 bits and the products are summed in float32; the bias is added in
/// float32 and each output rounded once, to nearest even, as PyTorch's bfloat16 nn.Linear
/// does. bfloat16 runs on AVX512-BF16's vdpbf16ps on the avx512bf16 kernel path
/// (attn/core/isa.hpp); elsewhere tiles are converted to float32.

#include <algorithm>
#include <initializer_list>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/kernels.hpp"

namespace attn {

/// @brief Where a linear layer writes a range of its output features: features [first, first +
/// target.heads * target.head_dim) go into target, whose (batch, length) enumerate the input
/// rows and whose (head, column) the features. A (rows, n) matrix is one head of n columns
/// (HeadsView::bnhd(data, 1, rows, 1, n, ld)); the attention kernels' k and v are head-major
/// (HeadsView::bhnd), or a KV cache's next positions. (The GEMM's own type, so that applying
/// a layer copies nothing.)
template <class T>
using LinearOutput = detail::GemmOutput<T>;

/// @brief A linear layer's weight (out_features, in_features) and bias, packed once into the
/// panel layout of attn's GEMM, so that applying it packs only the input. What the modules
/// keep for their projections.
template <class T>
class PackedLinear {
 public:
  /// An empty layer (no features).
  PackedLinear() = default;
  /// Packs weight (out_features rows of in_features values, rows `ld` apart) and bias
  /// (out_features values, or null).
  PackedLinear(const T* weight, Index out_features, Index in_features, Index ld, const T* bias) {
    pack(weight, out_features, in_features, ld, bias);
  }
  /// Packs new values (reusing the memory when the sizes are unchanged).
  void pack(const T* weight, Index out_features, Index in_features, Index ld, const T* bias) {
    packed_.pack(weight, out_features, in_features, ld, bias);
  }

  Index out_features() const { return packed_.rows(); }  ///< n, features of each output row
  Index in_features() const { return packed_.cols(); }   ///< k, features of each input row

  /// @brief out (rows, count) = x W[first : first + count]^T + b[first : first + count] for x
  /// (rows, in_features); x rows ldx apart, out rows ldo apart; all features by default.
  void apply(const T* x, Index rows, Index ldx, T* out, Index ldo, Index first = 0, Index count = -1) const {
    detail::gemm(x, rows, ldx, packed_, out, ldo, first, count);
  }
  /// @brief x W^T + b for the rows of x (..., in_features), each output range written where its
  /// LinearOutput says (ranges must not share features): one pass over x for all of them.
  void apply(const TensorView<const T>& x, std::initializer_list<LinearOutput<T>> outputs) const {
    apply(x, outputs.begin(), Index(outputs.size()));
  }
  /// The same with `count` outputs at `outputs`.
  void apply(const TensorView<const T>& x, const LinearOutput<T>* outputs, Index count) const {
    detail::gemm(x.data(), x.numel() / in_features(), in_features(), packed_, outputs, count);
  }

 private:
  detail::PackedWeight<T> packed_;
};

namespace detail {

/// out = x W^T (+ bias) with attn's GEMM (detail/gemm.hpp), the weight packed for this call.
/// Threaded over fixed (row, column) blocks; bit-identical for every thread count.
template <class X, class W, class Out>
void linear_packed(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<W>& weight, const typename X::Scalar* bias,
                   Out& out) {
  using T = typename X::Scalar;
  const Eigen::Ref<const RowMatrix<T>, 0, Eigen::OuterStride<>> xr(x), wr(weight);
  Eigen::Ref<RowMatrix<T>, 0, Eigen::OuterStride<>> o(out);
  const PackedLinear<T> packed(wr.data(), wr.rows(), wr.cols(), wr.outerStride(), bias);
  packed.apply(xr.data(), xr.rows(), xr.outerStride(), o.data(), o.outerStride());
}

}  // namespace detail

/// @brief out = x W^T, as torch.nn.functional.linear without bias.
///
/// attn's GEMM (the weight is packed for the call; the modules pack theirs once), threaded
/// over fixed (row, output feature) blocks with attn::set_num_threads' thread count; the
/// result is bit-identical for every thread count.
/// @param x (rows, in_features)
/// @param weight (out_features, in_features)
/// @param out (rows, out_features), written in place (any writable Eigen expression); must
/// not alias x
/// @throws std::invalid_argument if the sizes do not fit
template <class X, class W, class Out>
void linear(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<W>& weight, Out&& out) {
  detail::require_writable<Out>();
  detail::require(x.cols() == weight.cols() && out.rows() == x.rows() && out.cols() == weight.rows(),
                  "attn::linear: input (", x.rows(), ", ", x.cols(), "), weight (", weight.rows(),
                  ", ", weight.cols(), ") and output (", out.rows(), ", ", out.cols(),
                  ") do not fit y = x W^T");
  detail::linear_packed(x, weight, static_cast<const typename X::Scalar*>(nullptr), out);
}

/// @brief out = x W^T + b, as torch.nn.functional.linear.
///
/// Threaded and bit-identical for every thread count, as the form without bias.
/// @param x (rows, in_features)
/// @param weight (out_features, in_features)
/// @param bias (out_features) column vector
/// @param out (rows, out_features), written in place (any writable Eigen expression); must
/// not alias x
/// @throws std::invalid_argument if the sizes do not fit
template <class X, class W, class B, class Out>
void linear(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<W>& weight,
            const Eigen::MatrixBase<B>& bias, Out&& out) {
  detail::require_writable<Out>();
  detail::require(bias.size() == weight.rows(), "attn::linear: bias has ", bias.size(),
                  " elements but weight has ", weight.rows(), " rows");
  detail::require(x.cols() == weight.cols() && out.rows() == x.rows() && out.cols() == weight.rows(),
                  "attn::linear: input (", x.rows(), ", ", x.cols(), "), weight (", weight.rows(),
                  ", ", weight.cols(), ") and output (", out.rows(), ", ", out.cols(),
                  ") do not fit y = x W^T");
  const Eigen::Ref<const Vector<typename X::Scalar>> b(bias);
  detail::linear_packed(x, weight, b.data(), out);
}

/// @brief y = x W^T + b on the last dimension of a tensor of any rank >= 1.
/// @param x (..., in_features)
/// @param weight (out_features, in_features)
/// @param bias (out_features), or the default (empty, data-less) view for no bias
/// @return (..., out_features)
/// @throws std::invalid_argument if the shapes do not fit
template <class T>
Tensor<T> linear(const TensorView<const T>& x, const TensorView<const T>& weight,
                 const TensorView<const T>& bias = {}) {
  detail::require(x.dim() >= 1 && weight.dim() == 2 && x.size(-1) == weight.size(1),
                  "attn::linear: input of shape ", x.shape(), " does not fit weight of shape ",
                  weight.shape(), " (expected input (..., ", weight.dim() == 2 ? weight.size(1) : -1,
                  "))");
  const bool has_bias = bias.data() != nullptr;
  detail::require(!has_bias || bias.shape() == Shape{weight.size(0)},
                  "attn::linear: bias of shape ", bias.shape(), " does not fit weight of shape ",
                  weight.shape());
  Shape shape = x.shape();
  shape.back() = weight.size(0);
  auto y = Tensor<T>::uninitialized(shape);
  if (!has_bias)
    linear(x.matrix(), weight.matrix(), y.matrix());
  else
    linear(x.matrix(), weight.matrix(), Eigen::Map<const Vector<T>>(bias.data(), bias.numel()),
           y.matrix());
  return y;
}

}  // namespace attn
