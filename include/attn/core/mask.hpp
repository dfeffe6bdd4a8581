#pragma once
/// @file
/// @brief Attention masks whose polarity is part of how they are made.
///
/// PyTorch uses two opposite meanings for a boolean mask: nn.MultiheadAttention's
/// True = "masked out", F.scaled_dot_product_attention's True = "may attend". attn never
/// guesses: a boolean mask is made with Mask<T>::block_where_true (MHA's meaning) or
/// Mask<T>::keep_where_true (SDPA's meaning); a float mask with Mask<T>::additive is added
/// to the logits (-inf blocks). A mask is a view: the caller keeps the data alive.

#include <algorithm>
#include <utility>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// Causal masking. kTopLeft: query i sees keys j <= i (PyTorch's is_causal). kBottomRight:
/// query i sees keys j <= i + S - L, the diagonal aligned to the last key (PyTorch's
/// causal_lower_right; the same as kTopLeft when L == S). A query row that sees no key
/// (bottom-right with L > S) gets zero weights.
enum class Causal {
  kNone,        ///< no causal masking
  kTopLeft,     ///< query i sees keys j <= i (is_causal=True)
  kBottomRight  ///< query i sees keys j <= i + S - L (causal_lower_right)
};

/// @brief A boolean or additive attention mask (a non-owning view).
template <class T>
class Mask {
 public:
  /// How the mask's entries are read.
  enum class Kind {
    kNone,            ///< no mask
    kBlockWhereTrue,  ///< boolean, true = masked out (block_where_true)
    kKeepWhereTrue,   ///< boolean, true = may be attended (keep_where_true)
    kAdditive         ///< values of type T added to the logits (additive)
  };

  /// No mask.
  Mask() = default;
  /// Boolean mask, true = this position is masked out (nn.MultiheadAttention's meaning).
  static Mask block_where_true(const TensorView<const bool>& m) { return Mask(Kind::kBlockWhereTrue, m, {}); }
  /// Boolean mask, true = this position may be attended (F.scaled_dot_product_attention's meaning).
  static Mask keep_where_true(const TensorView<const bool>& m) { return Mask(Kind::kKeepWhereTrue, m, {}); }
  /// Float mask added to the logits; -inf masks a position out.
  static Mask additive(const TensorView<const T>& m) { return Mask(Kind::kAdditive, {}, m); }
  // A mask is a view: making one from a temporary tensor would leave it dangling.
  static Mask block_where_true(Tensor<bool>&&) = delete;
  static Mask keep_where_true(Tensor<bool>&&) = delete;
  static Mask additive(Tensor<T>&&) = delete;

  /// How the entries are read; Kind::kNone for no mask.
  Kind kind() const { return kind_; }
  /// Whether this is no mask (Kind::kNone).
  bool empty() const { return kind_ == Kind::kNone; }
  /// Shape of the viewed data; (0) when there is no mask.
  const Shape& shape() const { return kind_ == Kind::kAdditive ? additive_.shape() : bool_.shape(); }
  /// The boolean entries, row-major; null for an additive mask or no mask.
  const bool* bool_data() const { return bool_.data(); }
  /// The additive entries, row-major; null for a boolean mask or no mask.
  const T* additive_data() const { return additive_.data(); }

  /// The same data seen with another shape of the same element count (e.g. (S) as (1, S)).
  Mask reshaped(Shape shape) const {
    if (kind_ == Kind::kNone) return *this;
    detail::require(detail::checked_numel(shape, "attn::Mask::reshaped") == detail::checked_numel(this->shape(), "attn::Mask"),
                    "attn::Mask::reshaped: a mask of shape ", this->shape(), " cannot be seen as ", shape);
    if (kind_ == Kind::kAdditive) return Mask(kind_, {}, TensorView<const T>(additive_.data(), std::move(shape)));
    return Mask(kind_, TensorView<const bool>(bool_.data(), std::move(shape)), {});
  }

 private:
  Mask(Kind kind, TensorView<const bool> b, TensorView<const T> a)
      : kind_(kind), bool_(std::move(b)), additive_(std::move(a)) {}

  Kind kind_ = Kind::kNone;
  TensorView<const bool> bool_;
  TensorView<const T> additive_;
};
}  // namespace attn
