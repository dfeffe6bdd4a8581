#pragma once
/// @file
/// @brief Rotary position embedding (RoPE, Su et al. 2021), in place on strided head views.

#include <cmath>
#include <cstdint>

#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief How a rotary embedding rotates a head.
struct RotaryOptions {
  /// Dimensions rotated, from the first (partial rotary, as GPT-NeoX and Phi); the rest pass
  /// through. 0 means all of head_dim. Must be even and at most head_dim.
  Index rotary_dim = 0;
  /// Base of the frequencies: pair i turns by position * theta^(-2i / rotary_dim).
  double theta = 10000.0;
  /// Pairs (2i, 2i + 1) (GPT-J, Meta's original Llama) instead of (i, i + rotary_dim / 2)
  /// (HF Llama's rotate_half, GPT-NeoX).
  bool interleaved = false;
};

/// @brief The cos and sin of every (position, frequency) of one call, computed once and
/// applied to any number of head views (q and k, all heads).
///
/// Angles are computed in double (position * theta^(-2i / R)), then cos and sin rounded
/// to T: the rotation is as accurate as T allows at any position. (HF computes the angles in
/// float32, which at position 4096 is off by about 4e-4 radians.)
template <class T>
class RotaryTable {
 public:
  /// @param opt rotary_dim, theta, pairing
  /// @param head_dim the head dimension of the views it will rotate
  /// @param length the positions of a view's rows: position_offset + n for row n < length
  /// @param position_offset position of the first row (the length of a KV cache, decoding)
  /// @throws std::invalid_argument for a bad rotary_dim, theta or size
  RotaryTable(const RotaryOptions& opt, Index head_dim, Index length, Index position_offset = 0)
      : opt_(checked(opt, head_dim)), head_dim_(head_dim), length_(length), batch_(1) {
    detail::require(length >= 0 && position_offset >= 0, "attn::RotaryTable: length (", length,
                    ") and position_offset (", position_offset, ") must be >= 0");
    fill([&](Index, Index n) { return position_offset + n; });
  }

  /// @param opt rotary_dim, theta, pairing
  /// @param head_dim the head dimension of the views it will rotate
  /// @param positions (L) positions shared by the batch, or (B, L) per batch element (ragged
  /// prompts; HF's position_ids)
  /// @throws std::invalid_argument for a bad rotary_dim, theta or positions shape
  RotaryTable(const RotaryOptions& opt, Index head_dim, const TensorView<const std::int64_t>& positions)
      : opt_(checked(opt, head_dim)), head_dim_(head_dim) {
    detail::require(positions.dim() == 1 || positions.dim() == 2, "attn::RotaryTable: positions has shape ",
                    positions.shape(), ", expected (L) or (B, L)");
    batch_ = positions.dim() == 2 ? positions.size(0) : 1;
    length_ = positions.size(-1);
    fill([&](Index b, Index n) { return static_cast<Index>(positions.data()[b * length_ + n]); });
  }

  /// @brief Rotates every head of x in place.
  /// @param x (B, H, length, head_dim), any strides; B must be the table's batch when the
  /// table has per-batch positions
  void apply(const HeadsView<T>& x) const {
    detail::require(x.head_dim == head_dim_ && x.length == length_ && (batch_ == 1 || x.batch == batch_),
                    "attn::apply_rotary: view ", x.shape(), " does not fit the table's (batch ", batch_,
                    ", length ", length_, ", head_dim ", head_dim_, ")");
    const Index half = opt_.rotary_dim / 2;
    for (Index b = 0; b < x.batch; ++b)
      for (Index h = 0; h < x.heads; ++h)
        for (Index n = 0; n < x.length; ++n) {
          T* row = x.data + b * x.batch_stride + h * x.head_stride + n * x.row_stride;
          const T* c = cos_.data() + ((batch_ == 1 ? 0 : b) * length_ + n) * half;
          const T* s = sin_.data() + ((batch_ == 1 ? 0 : b) * length_ + n) * half;
          rotate(row, c, s, half);
        }
  }

 private:
  static RotaryOptions checked(RotaryOptions opt, Index head_dim) {
    if (opt.rotary_dim == 0) opt.rotary_dim = head_dim;
    detail::require(opt.rotary_dim > 0 && opt.rotary_dim % 2 == 0 && opt.rotary_dim <= head_dim,
                    "attn::RotaryOptions: rotary_dim (", opt.rotary_dim, ") must be even, positive and at most head_dim (",
                    head_dim, ")");
    detail::require(opt.theta > 0 && std::isfinite(opt.theta), "attn::RotaryOptions: theta must be > 0, got ",
                    opt.theta);
    return opt;
  }

  /// cos and sin of position(b, n) * inv_freq_i for every batch row b, position n, pair i.
  template <class Position>
  void fill(Position&& position) {
    const Index half = opt_.rotary_dim / 2;
    cos_.resize(batch_ * length_ * half);
    sin_.resize(batch_ * length_ * half);
    for (Index b = 0; b < batch_; ++b)
      for (Index n = 0; n < length_; ++n)
        for (Index i = 0; i < half; ++i) {
          const double angle = double(position(b, n)) * std::pow(opt_.theta, -2.0 * double(i) / double(opt_.rotary_dim));
          cos_[(b * length_ + n) * half + i] = static_cast<T>(std::cos(angle));
          sin_[(b * length_ + n) * half + i] = static_cast<T>(std::sin(angle));
        }
  }

  /// One row: pairs (i, i + half) or (2i, 2i + 1) turned by (cos_i, sin_i).
  void rotate(T* row, const T* c, const T* s, Index half) const {
    for (Index i = 0; i < half; ++i) {
      T& a = opt_.interleaved ? row[2 * i] : row[i];
      T& b = opt_.interleaved ? row[2 * i + 1] : row[i + half];
      const T x1 = a, x2 = b;
      a = x1 * c[i] - x2 * s[i];
      b = x2 * c[i] + x1 * s[i];
    }
  }

  RotaryOptions opt_;
  Index head_dim_, length_ = 0, batch_ = 1;
  Vector<T> cos_, sin_;
};

/// @brief Rotates every head of x in place: row n is at position position_offset + n.
/// @param x (B, H, L, D), any strides (e.g. q or k columns of a projection's output)
/// @param opt rotary_dim, theta, pairing
/// @param position_offset position of row 0 (the length of a KV cache, decoding)
template <class T>
void apply_rotary(const HeadsView<T>& x, const RotaryOptions& opt, Index position_offset = 0) {
  RotaryTable<T>(opt, x.head_dim, x.length, position_offset).apply(x);
}

/// @brief Tensor form: a rotated copy of x (B, H, L, D).
/// @param x (B, H, L, D)
/// @param opt rotary_dim, theta, pairing
/// @param position_offset position of row 0
template <class T>
Tensor<T> apply_rotary(const TensorView<const T>& x, const RotaryOptions& opt, Index position_offset = 0) {
  detail::require(x.dim() == 4, "attn::apply_rotary: x must be (B, H, L, D), got ", x.shape());
  Tensor<T> y(x);
  apply_rotary(HeadsView<T>::bhnd(y.data(), x.size(0), x.size(1), x.size(2), x.size(3)), opt, position_offset);
  return y;
}

}  // namespace attn
