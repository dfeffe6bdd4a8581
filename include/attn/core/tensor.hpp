#pragma once
/// @file
/// @brief Tensor<T> (owning, contiguous, row-major) and TensorView<T> (non-owning).
///
/// Memory order is that of a contiguous PyTorch tensor: the last dimension varies
/// fastest. A (B, N, C) activation is therefore a (B*N, C) row-major matrix, which is
/// how the modules feed it to one GEMM without copying.

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "attn/core/error.hpp"

namespace attn {

/// @brief bfloat16 (the top 16 bits of a float32; torch.bfloat16), a tensor element type
/// for weights and activations stored in 16 bits (Eigen's type: arithmetic goes through
/// float). safetensors BF16 tensors load into it and save from it bit for bit.
using bfloat16 = Eigen::bfloat16;
/// @brief IEEE 754 half precision (torch.float16), Eigen's type; safetensors F16 tensors
/// load into it and save from it bit for bit.
using half = Eigen::half;

namespace detail {
/// The 16-bit storage types: stored in 16 bits, computed in float32.
template <class T>
struct is_storage16 : std::integral_constant<bool, std::is_same<T, bfloat16>::value || std::is_same<T, half>::value> {};
}  // namespace detail

/// @brief The type attn computes a T in: float32 for bfloat16 and half (and for the int8
/// elements of a quantised KV cache), else T itself. The kernels' sums and softmax statistics
/// are in it, and so are the scalars of an attention call (SdpaOptions' scale, softcap and
/// dropout probability), which 16 bits would round.
template <class T>
using compute_t =
    std::conditional_t<detail::is_storage16<T>::value || std::is_same<T, std::int8_t>::value, float, T>;

/// Dynamic row-major matrix (PyTorch's memory order).
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Dynamic column vector.
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
/// Map of a row-major matrix whose rows are `stride` elements apart (a strided view).
template <class T>
using StridedMap = Eigen::Map<std::conditional_t<std::is_const<T>::value,
                                                 const RowMatrix<std::remove_const_t<T>>,
                                                 RowMatrix<T>>,
                              Eigen::Unaligned, Eigen::OuterStride<>>;

/// @brief Non-owning view of a contiguous row-major tensor. `T` may be const.
///
/// A `const Tensor<T>&` converts to `TensorView<const T>` implicitly, so module
/// functions take views and accept tensors, raw buffers and Eigen storage alike.
template <class T>
class TensorView {
 public:
  /// The element type without const.
  using Scalar = std::remove_const_t<T>;

  /// An empty view: shape (0), no data (also what "no tensor", e.g. no bias, looks like).
  TensorView() = default;
  /// @param data pointer to numel(shape) elements in row-major order (may be null if empty)
  /// @param shape the dimensions, outermost first
  /// @throws std::invalid_argument for a negative dimension, an element count that overflows
  /// Index, or null data with a non-empty shape (a rank-0 shape () holds one element)
  TensorView(T* data, Shape shape) : data_(data), shape_(std::move(shape)) {
    numel_ = detail::checked_numel(shape_, "attn::TensorView");
    detail::require(data_ != nullptr || numel_ == 0,
                    "attn::TensorView: null data for non-empty shape ", shape_);
  }
  /// A view of mutable data converts to a view of const data.
  template <class U, class = std::enable_if_t<std::is_same<const U, T>::value &&
                                              !std::is_same<U, T>::value>>
  TensorView(const TensorView<U>& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), shape_(other.shape()), numel_(other.numel()) {}

  /// Pointer to the first element (null for the default empty view).
  T* data() const { return data_; }
  /// The dimensions, outermost first.
  const Shape& shape() const { return shape_; }
  /// Number of dimensions (the rank).
  Index dim() const { return static_cast<Index>(shape_.size()); }
  /// Size of dimension i; negative i counts from the end as in PyTorch.
  /// @throws std::out_of_range if i is not in [-dim(), dim())
  Index size(Index i) const { return shape_.at(static_cast<std::size_t>(i < 0 ? i + dim() : i)); }
  /// Number of elements: the product of the dimensions.
  Index numel() const { return numel_; }
  /// Whether the view has no elements.
  bool empty() const { return numel_ == 0; }

  /// The tensor as a (product of the leading dims, last dim) row-major matrix map; a
  /// (B, L, 0) tensor is a (B*L, 0) matrix.
  Eigen::Map<std::conditional_t<std::is_const<T>::value, const RowMatrix<Scalar>, RowMatrix<Scalar>>>
  matrix() const {
    Index rows = 1;
    for (std::size_t i = 0; i + 1 < shape_.size(); ++i) rows *= shape_[i];
    return {data_, rows, shape_.empty() ? 1 : shape_.back()};
  }

 private:
  T* data_ = nullptr;
  Shape shape_{0};
  Index numel_ = 0;
};

/// @brief Owning, contiguous, row-major tensor (a shape and an aligned buffer).
template <class T>
class Tensor {
 public:
  /// The element type.
  using Scalar = T;

  /// An empty tensor: shape (0), no elements, no data (as the default TensorView).
  Tensor() = default;
  /// Zero-filled tensor of the given shape.
  /// @throws std::invalid_argument for a negative dimension or an element count that overflows
  explicit Tensor(Shape shape) : Tensor(std::move(shape), T(0)) {}
  /// Tensor of the given shape, every element equal to `fill`.
  /// @throws std::invalid_argument for a negative dimension or an element count that overflows
  Tensor(Shape shape, T fill) : shape_(std::move(shape)) {
    storage_.setConstant(detail::checked_numel(shape_, "attn::Tensor"), fill);
  }
  /// Tensor of the given shape holding a copy of `values` (row-major order).
  /// @throws std::invalid_argument if `values` does not have numel(shape) elements
  Tensor(Shape shape, std::initializer_list<T> values) : shape_(std::move(shape)) {
    const Index n = detail::checked_numel(shape_, "attn::Tensor");
    detail::require(n == static_cast<Index>(values.size()), "attn::Tensor: shape ", shape_,
                    " holds ", n, " elements but ", values.size(), " values were given");
    storage_.resize(n);
    std::copy(values.begin(), values.end(), storage_.data());
  }
  /// Copy of a view's data.
  explicit Tensor(const TensorView<const T>& view) : shape_(view.shape()) {
    storage_.resize(view.numel());
    std::copy(view.data(), view.data() + view.numel(), storage_.data());
  }
  /// @brief A tensor of the given shape whose elements are not initialised (torch.empty),
  /// for outputs that are written in full.
  static Tensor uninitialized(Shape shape) {
    Tensor t;
    t.storage_.resize(detail::checked_numel(shape, "attn::Tensor"));
    t.shape_ = std::move(shape);
    return t;
  }
  /// Copy of `numel(shape)` elements at `data`.
  static Tensor from_data(Shape shape, const T* data) {
    return Tensor(TensorView<const T>(data, std::move(shape)));
  }

  /// Pointer to the first element (row-major, aligned; null when there are no elements).
  T* data() { return storage_.data(); }
  /// Pointer to the first element, read-only.
  const T* data() const { return storage_.data(); }
  /// The dimensions, outermost first.
  const Shape& shape() const { return shape_; }
  /// Number of dimensions (the rank).
  Index dim() const { return static_cast<Index>(shape_.size()); }
  /// Size of dimension i; negative i counts from the end as in PyTorch.
  /// @throws std::out_of_range if i is not in [-dim(), dim())
  Index size(Index i) const { return shape_.at(static_cast<std::size_t>(i < 0 ? i + dim() : i)); }
  /// Number of elements held.
  Index numel() const { return storage_.size(); }
  /// Whether the tensor holds no elements.
  bool empty() const { return storage_.size() == 0; }

  /// Element by flat (row-major) index.
  T& operator[](Index i) { return storage_[i]; }
  /// Element by flat (row-major) index, read-only.
  const T& operator[](Index i) const { return storage_[i]; }
  /// Element by multi-index, e.g. t(b, n, c); bounds are asserted in debug builds.
  template <class... I>
  T& operator()(I... idx) { return storage_[offset({static_cast<Index>(idx)...})]; }
  /// Element by multi-index, read-only.
  template <class... I>
  const T& operator()(I... idx) const { return storage_[offset({static_cast<Index>(idx)...})]; }

  /// A mutable view of the whole tensor (valid until the tensor is destroyed or assigned to).
  TensorView<T> view() { return {data(), shape_}; }
  /// A read-only view of the whole tensor.
  TensorView<const T> view() const { return {data(), shape_}; }
  /// Implicit view(), so a tensor can be passed where a read-only view is taken.
  operator TensorView<const T>() const { return view(); }  // NOLINT(google-explicit-constructor)
  /// Implicit view(), so a tensor can be passed where a mutable view is taken.
  operator TensorView<T>() { return view(); }              // NOLINT(google-explicit-constructor)

  /// The tensor as a (product of the leading dims, last dim) row-major matrix map.
  Eigen::Map<RowMatrix<T>> matrix() { return view().matrix(); }
  /// The tensor as a read-only (product of the leading dims, last dim) matrix map.
  Eigen::Map<const RowMatrix<T>> matrix() const { return view().matrix(); }
  /// The flat data as an Eigen vector map.
  Eigen::Map<Vector<T>> flat() { return {data(), numel()}; }
  /// The flat data as a read-only Eigen vector map.
  Eigen::Map<const Vector<T>> flat() const { return {data(), numel()}; }

  /// Same data, new shape with the same element count (the tensor is moved from).
  /// @throws std::invalid_argument if the element counts differ
  Tensor reshaped(Shape shape) && {
    detail::require(detail::checked_numel(shape, "attn::Tensor::reshaped") == numel(),
                    "attn::Tensor::reshaped: cannot view shape ", shape_, " as ", shape);
    shape_ = std::move(shape);
    return std::move(*this);
  }

 private:
  Index offset(std::initializer_list<Index> idx) const {
    assert(idx.size() == shape_.size() && "attn::Tensor: wrong number of indices");
    Index off = 0;
    std::size_t d = 0;
    for (Index i : idx) {
      assert(i >= 0 && i < shape_[d] && "attn::Tensor: index out of range");
      off = off * shape_[d++] + i;
    }
    return off;
  }

  Shape shape_{0};  // an empty tensor is (0), as an empty TensorView
  Eigen::Matrix<T, Eigen::Dynamic, 1> storage_;
};

namespace detail {

/// Output arguments are forwarding references, so lvalue matrices and temporary Maps or
/// Blocks are both accepted; a const one fails to compile instead of being written through.
template <class Out>
constexpr void require_writable() {
  static_assert(!std::is_const<std::remove_reference_t<Out>>::value, "attn: the output argument must be writable");
}

}  // namespace detail

/// @brief A rank-2 view of a row-major Eigen matrix, e.g. one (N, C) sequence.
template <class Derived>
auto as_view(const Eigen::PlainObjectBase<Derived>& m) {
  using S = typename Derived::Scalar;
  static_assert(Derived::IsRowMajor || Derived::ColsAtCompileTime == 1,
                "attn::as_view needs row-major storage (attn::RowMatrix<T>)");
  return TensorView<const S>(m.data(), Shape{m.rows(), m.cols()});
}
/// A view of a temporary would dangle.
template <class Derived>
void as_view(Eigen::PlainObjectBase<Derived>&&) = delete;

}  // namespace attn
