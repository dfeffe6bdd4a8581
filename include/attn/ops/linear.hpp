#pragma once
/// @file
/// @brief Linear layer with PyTorch's layout: weight (out_features, in_features), y = x W^T + b.

#include <algorithm>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/work.hpp"

namespace attn {

namespace detail {

/// The most rows of one work item of linear().
constexpr Index kLinearMaxBlockRows = 256;

/// out = x W^T (+ bias), one Eigen GEMM per (row block, column block) item, threaded with
/// parallel_for. Eigen's own OpenMP threading of one big GEMM would pick its blocking from
/// the thread count (changing the last bits); these items, and so every output element's
/// GEMM, do not depend on it.
template <class X, class W, class B, class Out>
void linear_blocked(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<W>& weight, const B* bias, Out& out) {
  const Index rows = x.rows(), cols = weight.rows();
  // Items are fixed by the problem's size alone. Small products are one GEMM. Larger ones
  // take about an eighth of the rows (32 to 256, a multiple of 16) and all output features
  // (narrower column blocks make Eigen pack x again for each: ~8% slower); only when that
  // gives fewer than 8 items are the features split too, into blocks of at least 128.
  const bool small = static_cast<double>(rows) * cols * x.cols() < kMinParallelWork;
  const Index rb = small ? std::max<Index>(rows, 1)
                         : std::min(kLinearMaxBlockRows, std::max<Index>(32, ((rows + 127) / 128) * 16));
  const Index row_blocks = (rows + rb - 1) / rb;
  const Index splits = small || row_blocks >= 8 ? 1 : std::min((cols + 127) / 128, (8 + row_blocks - 1) / row_blocks);
  const Index cb = std::max<Index>(((cols + splits - 1) / splits + 15) / 16 * 16, 1);
  const Index col_blocks = (cols + cb - 1) / cb;
  parallel_for(row_blocks * col_blocks, [&](Index item) {
    const Index r0 = (item / col_blocks) * rb, c0 = (item % col_blocks) * cb;
    const Index nr = std::min(rb, rows - r0), nc = std::min(cb, cols - c0);
    auto o = out.block(r0, c0, nr, nc);
    o.noalias() = x.middleRows(r0, nr) * weight.middleRows(c0, nc).transpose();
    if (bias) o.rowwise() += bias->segment(c0, nc).transpose();
  });
}

}  // namespace detail

/// @brief out = x W^T, as torch.nn.functional.linear without bias.
///
/// Threaded over fixed (row, output feature) blocks with attn::set_num_threads' thread
/// count; the result is bit-identical for every thread count.
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
  detail::linear_blocked(x, weight, static_cast<const Vector<typename X::Scalar>*>(nullptr), out);
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
  detail::linear_blocked(x, weight, &bias, out);
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
