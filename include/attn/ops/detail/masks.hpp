#pragma once
/// @file
/// @brief Masks as the kernels see them: a Mask viewed as a (B, H, L, S) tensor through
/// four strides (0 on broadcast dimensions), the one routine that turns a mask's entries
/// into logit biases, and the order in which a call's masks reach a tile. Not public API.

#include <cmath>
#include <limits>
#include <string>

#include "attn/core/error.hpp"
#include "attn/core/mask.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/packets.hpp"
#include "attn/ops/detail/tile.hpp"

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

/// @brief A mask seen as a logical (B, H, L, S) tensor: entry (b, h, i, j) is at flat
/// offset b*sb + h*sh + i*si + j*sj of its data (a stride is 0 where the mask broadcasts).
template <class T>
struct BroadcastMask {
  const Mask<T>* mask = nullptr;  ///< the caller's mask (it outlives the call), or none
  Index sb = 0, sh = 0, si = 0, sj = 0;

  bool empty() const { return mask == nullptr || mask->empty(); }

  /// @brief dst[c * dst_stride] += the logit bias of entry (b, h, i, j0 + c), c < n: -inf
  /// where a boolean mask blocks (true for block_where_true, false for keep_where_true),
  /// else 0; an additive mask's value. The one place where a mask's polarity is read. dst is
  /// in the kernel's compute type C (float32 for a 16-bit T).
  template <class C>
  void add(Index b, Index h, Index i, Index j0, Index n, C* dst, Index dst_stride) const {
    using Kind = typename Mask<T>::Kind;
    const Index at = b * sb + h * sh + i * si + j0 * sj;
    if (empty()) return;
    if (mask->kind() == Kind::kAdditive) {
      const T* src = mask->additive_data() + at;
      for (Index c = 0; c < n; ++c) dst[c * dst_stride] += static_cast<C>(src[c * sj]);
    } else {
      constexpr C kBlocked = -std::numeric_limits<C>::infinity();
      const bool* src = mask->bool_data() + at;
      const bool blocked_if = mask->kind() == Kind::kBlockWhereTrue;
      for (Index c = 0; c < n; ++c) dst[c * dst_stride] += src[c * sj] == blocked_if ? kBlocked : C(0);
    }
  }
};

/// @brief The attention mask `m` (kept by address: it must outlive the result) of a call of
/// size d, with PyTorch's broadcasting: its
/// shape, aligned to the right of (B, H, L, S), has each dimension equal to d's or 1
/// ((L, S), (B, 1, L, S), (H, L, S), (B, 1, 1, S) ...). A 3-D mask whose first dimension is
/// B*H is nn.MultiheadAttention's (B*H, L, S), batch-major. Anything else is a
/// std::invalid_argument naming both shapes.
template <class T>
BroadcastMask<T> broadcast_attn_mask(const char* where, const Mask<T>& m, const AttentionDims& d) {
  BroadcastMask<T> out{&m};
  if (m.empty()) return out;
  const Shape& s = m.shape();
  const Shape full = d.shape();
  const auto rank = s.size();
  const auto fail = [&] {
    throw std::invalid_argument(message(where, ": attn_mask of shape ", s, " does not broadcast to (B, H, L, S) = ",
                                        full, " (nor is it (B*H, L, S) = ", Shape{d.batch * d.heads, d.len_q, d.len_k},
                                        ")"));
  };
  if (rank < 1 || rank > 4) fail();
  Index strides[4] = {0, 0, 0, 0}, stride = 1;
  bool ok = true;
  for (std::size_t k = 0; k < rank; ++k) {  // innermost first
    const std::size_t dim = rank - 1 - k, target = 3 - k;
    if (s[dim] == full[target])
      strides[target] = s[dim] == 1 ? 0 : stride;
    else
      ok = ok && s[dim] == 1;
    stride *= s[dim];
  }
  if (!ok && rank == 3 && s[0] == d.batch * d.heads && s[1] == d.len_q && s[2] == d.len_k) {
    ok = true;  // (B*H, L, S): entry (b*H + h, i, j)
    strides[0] = d.heads * d.len_q * d.len_k, strides[1] = d.len_q * d.len_k, strides[2] = d.len_k, strides[3] = 1;
  }
  if (!ok) fail();
  out.sb = strides[0], out.sh = strides[1], out.si = strides[2], out.sj = strides[3];
  return out;
}

template <class T>
BroadcastMask<T> broadcast_attn_mask(const char*, Mask<T>&&, const AttentionDims&) = delete;  // would dangle

/// The key padding mask `m` (kept by address) of a call of size d: (B, S), the same for
/// every head and query.
template <class T>
BroadcastMask<T> broadcast_key_padding(const char* where, const Mask<T>& m, const AttentionDims& d) {
  const Shape& s = m.shape();  // (compared in place: no allocation on every call)
  if (!m.empty() && !(s.size() == 2 && s[0] == d.batch && s[1] == d.len_k))
    throw std::invalid_argument(message(where, ": key_padding_mask has shape ", s, ", expected (batch, keys) = ",
                                        Shape{d.batch, d.len_k}));
  return {&m, d.len_k, 0, 0, 1};
}
template <class T>
BroadcastMask<T> broadcast_key_padding(const char*, Mask<T>&&, const AttentionDims&) = delete;  // would dangle

/// @brief Logit soft-capping in place: x = cap * tanh(x / cap) for n contiguous values. Where
/// Eigen has a vectorised tanh for T (float), every value goes through it (the last partial
/// packet padded), else through std::tanh: a value's result never depends on its position.
template <class T>
void softcap_inplace(T* x, Index n, T cap) {
  using P = Packet<T>;
  constexpr int kP = kPacketSize<T>;
  const T inv = T(1) / cap;
  if constexpr (ei::packet_traits<T>::HasTanh && kP > 1) {
    const P pinv = ei::pset1<P>(inv), pcap = ei::pset1<P>(cap);
    const auto capped = [&](const P& v) { return ei::pmul(ei::ptanh(ei::pmul(v, pinv)), pcap); };
    Index j = 0;
    for (; j + kP <= n; j += kP) ei::pstoreu(x + j, capped(ei::ploadu<P>(x + j)));
    if (j < n) store_partial(x + j, capped(load_partial(x + j, n - j)), n - j);
  } else {
    for (Index j = 0; j < n; ++j) x[j] = std::tanh(x[j] * inv) * cap;
  }
}

/// @brief Everything that biases or masks the logits of one call, applied in this order:
/// ALiBi, the key padding mask, the attention mask (all added), then causal and
/// sliding-window masking (set to -inf).
template <class T>
struct TileMasks {
  BroadcastMask<T> key_padding, attn;
  Causal causal = Causal::kNone;
  Index window = 0;              ///< sliding window in keys (0: none); implies causal
  const T* alibi = nullptr;      ///< (H) ALiBi slopes, or null

  /// Whether anything adds to the logits (causal and window masking aside).
  bool adds_bias() const { return !key_padding.empty() || !attn.empty() || alibi != nullptr; }
  /// Whether apply() would change something in this tile.
  bool touch(const Tile& t) const { return adds_bias() || t.bounds_cut(causal, window); }

  /// @brief Masks the tile's logits s: entry (r, c) is at s[r * qs + c * ks]. Causal and
  /// window masking, and the end of the t.len_k keys b holds, set keys to -inf rather than
  /// adding it, so that a NaN or +inf logit of a key a query cannot see does not reach its
  /// row. s is in the kernel's compute type C.
  template <class C>
  void apply(const Tile& t, C* s, Index qs, Index ks) const {
    constexpr C kHidden = -std::numeric_limits<C>::infinity();
    for (Index r = 0; r < t.rows; ++r) {
      C* row = s + r * qs;
      if (alibi) add_alibi(t, r, row, ks);
      if (!key_padding.empty()) key_padding.add(t.b, t.h, t.i0 + r, t.j0, t.cols, row, ks);
      if (!attn.empty()) attn.add(t.b, t.h, t.i0 + r, t.j0, t.cols, row, ks);
      for (Index c = 0; c < std::min(t.first_key(causal, window, r) - t.j0, t.cols); ++c) row[c * ks] = kHidden;
      for (Index c = std::max<Index>(t.last_key(causal, r) + 1 - t.j0, 0); c < t.cols; ++c) row[c * ks] = kHidden;
    }
  }

 private:
  /// row[c * ks] += -slope_h * |i + S - L - j| for keys j = j0 + c (S the keys b holds).
  template <class C>
  void add_alibi(const Tile& t, Index r, C* row, Index ks) const {
    const C slope = static_cast<C>(alibi[t.h]);
    const Index at = t.i0 + r + t.len_k - t.dims.len_q;
    for (Index c = 0; c < t.cols; ++c) {
      const Index distance = at - (t.j0 + c);
      row[c * ks] -= slope * static_cast<C>(distance < 0 ? -distance : distance);
    }
  }
};

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
