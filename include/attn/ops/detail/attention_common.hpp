#pragma once
/// @file
/// @brief Internals shared by the attention kernels: argument checks, mask bias on a
/// block of score rows or on a tile, dropout on probability rows, the shifted exp of the
/// softmax, and how a call is cut into work items. Not part of the public API.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <functional>
#include <iterator>
#include <string>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/attention_options.hpp"
#include "attn/ops/dropout.hpp"
#include "attn/ops/heads_view.hpp"
#include "attn/ops/mask.hpp"

namespace attn {

namespace detail {

/// Query rows per block: the score block (rows x S) stays small whatever L is.
constexpr Index kQueryBlock = 64;

/// Checks the masks' shapes for batch b, h heads, l queries and s keys.
template <class T>
void check_masks(const char* where, const SdpaOptions<T>& opt, Index b, Index h, Index l, Index s) {
  if (!opt.key_padding_mask.empty())
    require(opt.key_padding_mask.shape() == Shape{b, s}, where, ": key_padding_mask has shape ",
            opt.key_padding_mask.shape(), ", expected (batch, keys) = ", Shape{b, s});
  if (!opt.attn_mask.empty())
    require(opt.attn_mask.shape() == Shape{l, s} || opt.attn_mask.shape() == Shape{b * h, l, s},
            where, ": attn_mask has shape ", opt.attn_mask.shape(), ", expected ", Shape{l, s}, " or ", Shape{b * h, l, s});
}

/// Checks that a view is well formed: sizes >= 0, rows at least `dim` apart, data when
/// non-empty. Returns the address range [first, last) it spans.
template <class T>
std::pair<const void*, const void*> check_view(const char* where, const char* name, const HeadsView<T>& v) {
  require(v.batch >= 0 && v.heads >= 0 && v.length >= 0 && v.dim >= 0, where, ": ", name, " has negative size ",
          v.shape());
  require(v.row_stride >= v.dim && v.head_stride >= 0 && v.batch_stride >= 0, where, ": ", name,
          " has strides (batch ", v.batch_stride, ", head ", v.head_stride, ", row ", v.row_stride,
          ") smaller than its rows (", v.dim, ")");
  if (v.batch == 0 || v.heads == 0 || v.length == 0 || v.dim == 0) return {nullptr, nullptr};
  require(v.data != nullptr, where, ": ", name, " of shape ", v.shape(), " has no data");
  const Index last = (v.batch - 1) * v.batch_stride + (v.heads - 1) * v.head_stride + (v.length - 1) * v.row_stride + v.dim;
  return {v.data, v.data + last};
}

/// Checks that no two elements of an output view share memory (threads write its heads
/// and rows at once): its (stride, count) dimensions, sorted by stride, must each step
/// past everything the smaller ones span.
template <class T>
void check_disjoint(const char* where, const char* name, const HeadsView<T>& v) {
  if (v.batch == 0 || v.heads == 0 || v.length == 0 || v.dim == 0) return;
  std::pair<Index, Index> dims[3] = {{v.row_stride, v.length}, {v.head_stride, v.heads}, {v.batch_stride, v.batch}};
  std::sort(std::begin(dims), std::end(dims));
  Index span = v.dim;  // elements one row covers
  for (const auto& d : dims) {
    if (d.second == 1) continue;
    require(d.first >= span, where, ": ", name, " of shape ", v.shape(), " has strides (batch ", v.batch_stride,
            ", head ", v.head_stride, ", row ", v.row_stride, ") under which different elements share memory");
    span = d.first * (d.second - 1) + span;
  }
}

/// Checks q/k/v/out shapes, masks and dropout settings of an attention call.
template <class T>
void check_attention_args(const char* where, const HeadsView<const T>& q, const HeadsView<const T>& k,
                          const HeadsView<const T>& v, const HeadsView<T>& out,
                          const SdpaOptions<T>& opt) {
  const auto out_range = check_view(where, "output", out);
  check_disjoint(where, "output", out);
  for (const auto& in : {std::make_pair("q", &q), std::make_pair("k", &k), std::make_pair("v", &v)}) {
    const auto r = check_view(where, in.first, *in.second);
    std::less<const void*> before;  // a total order on pointers
    require(r.first == nullptr || out_range.first == nullptr || !before(r.first, out_range.second) ||
                !before(out_range.first, r.second),
            where, ": the output overlaps ", in.first, " in memory");
  }
  require(k.batch == q.batch && v.batch == q.batch && k.heads == q.heads && v.heads == q.heads,
          where, ": q ", q.shape(), ", k ", k.shape(), " and v ", v.shape(),
          " must agree in batch and heads");
  require(k.dim == q.dim, where, ": q ", q.shape(), " and k ", k.shape(),
          " must have the same head dimension");
  require(k.length == v.length, where, ": k ", k.shape(), " and v ", v.shape(),
          " must have the same length (keys and values pair up)");
  require(out.batch == q.batch && out.heads == q.heads && out.length == q.length && out.dim == v.dim,
          where, ": output ", out.shape(), " does not match q ", q.shape(), " and v ", v.shape());
  check_masks(where, opt, q.batch, q.heads, q.length, k.length);
  check_dropout_p(opt.dropout_p, where);
  require(opt.dropout_p == T(0) || opt.generator != nullptr, where,
          ": dropout_p = ", opt.dropout_p, " needs a Generator (SdpaOptions::generator)");
  if (opt.scale) require(std::isfinite(*opt.scale), where, ": scale must be finite");
}

/// Adds what mask `m` adds to the logits at flat indices offset .. offset+n-1 to row[0..n):
/// the same values as m.bias(), with the mask kind decided once per span.
template <class T>
void add_mask_span(const Mask<T>& m, Index offset, T* row, Index n) {
  using Kind = typename Mask<T>::Kind;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  switch (m.kind()) {
    case Kind::kBlockWhereTrue: {
      const bool* p = m.bool_data() + offset;
      for (Index j = 0; j < n; ++j) row[j] += p[j] ? kNegInf : T(0);
      break;
    }
    case Kind::kKeepWhereTrue: {
      const bool* p = m.bool_data() + offset;
      for (Index j = 0; j < n; ++j) row[j] += p[j] ? T(0) : kNegInf;
      break;
    }
    case Kind::kAdditive: {
      const T* p = m.additive_data() + offset;
      for (Index j = 0; j < n; ++j) row[j] += p[j];
      break;
    }
    case Kind::kNone: break;
  }
}

/// The last key query i may see under opt.causal (keys after it are masked); len_k - 1
/// without causal masking. Negative when the query sees no key.
template <class T>
Index causal_last_key(const SdpaOptions<T>& opt, Index i, Index len_q, Index len_k) {
  switch (opt.causal) {
    case Causal::kTopLeft: return std::min(i, len_k - 1);
    case Causal::kBottomRight: return std::min(i + len_k - len_q, len_k - 1);
    case Causal::kNone: break;
  }
  return len_k - 1;
}

/// Adds the masks to a tile of scores: rows i0.. (queries) and columns j0.. (keys) of
/// (batch b, head h); s is (rows, cols) with the logical (L, S) = (len_q, len_k). Key
/// padding mask first, then the attention mask, then causal -inf (PyTorch's order).
template <class T, class Tile>
void add_mask_tile(Tile& s, const SdpaOptions<T>& opt, Index b, Index h, Index heads, Index i0,
                   Index j0, Index len_q, Index len_k) {
  const Index rows = s.rows(), cols = s.cols();
  const auto& kpm = opt.key_padding_mask;
  const auto& am = opt.attn_mask;
  for (Index r = 0; r < rows; ++r) {
    const Index i = i0 + r;
    T* row = s.row(r).data();
    if (!kpm.empty()) add_mask_span(kpm, b * len_k + j0, row, cols);
    if (!am.empty())
      add_mask_span(am, (am.shape().size() == 2 ? i : (b * heads + h) * len_q + i) * len_k + j0, row, cols);
    if (opt.causal != Causal::kNone) {
      const Index first = std::max<Index>(causal_last_key(opt, i, len_q, len_k) + 1 - j0, 0);
      for (Index c = first; c < cols; ++c) row[c] = -std::numeric_limits<T>::infinity();
    }
  }
}

/// Adds the masks to score rows i0 .. i0+rows-1 of (batch b, head h); s is (rows, S) row-major.
template <class T, class Block>
void add_mask_bias(Block& s, const SdpaOptions<T>& opt, Index b, Index h, Index heads, Index i0,
                   Index len_q) {
  add_mask_tile(s, opt, b, h, heads, i0, 0, len_q, s.cols());
}

// Eigen's packet types (__m512 ...) carry attributes that GCC warns about when they are
// template arguments, as Eigen's packet functions take them.
#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

#if EIGEN_VERSION_AT_LEAST(3, 4, 0)

/// Whether Eigen has an integer packet type matching Packet (pexp_nonpositive builds 2^n in it).
template <class Packet, class = void>
struct has_integer_packet : std::false_type {};  // Eigen has none for some targets (ZVector, MSA)
template <class Packet>
struct has_integer_packet<Packet, std::void_t<typename Eigen::internal::unpacket_traits<Packet>::integer_packet>>
    : std::true_type {};

/// @brief exp(x) on a packet of the softmax's arguments x <= 0 (or -inf, or NaN), with
/// exp(-inf) exactly 0.
///
/// float: Cody-Waite reduction x = n ln2 + r (|r| <= ln2/2, two FMAs), Cephes' degree-7
/// polynomial for exp(r), and 2^n built in the exponent bits, with n >= -127: results for
/// x < -87.68 (below 2^-126.5) are 0, which also makes exp(-inf) exactly 0 without a compare.
/// double (and targets without integer packets): Eigen's pexp, with -inf selected to 0
/// (pexp clamps its argument, so exp(-inf) would be ~1e-308).
template <class Packet>
Packet pexp_nonpositive(const Packet& x) {
  namespace ei = Eigen::internal;
  using Scalar = typename ei::unpacket_traits<Packet>::type;
  if constexpr (std::is_same<Scalar, float>::value && ei::packet_traits<float>::Vectorizable &&
                ei::unpacket_traits<Packet>::size > 1 && has_integer_packet<Packet>::value) {
    using PacketI = typename ei::unpacket_traits<Packet>::integer_packet;
    // pmax keeps its first argument when that is NaN.
    const Packet xc = ei::pmax(x, ei::pset1<Packet>(-88.0f));
    const Packet shifter = ei::pset1<Packet>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    const Packet n = ei::psub(ei::pmadd(xc, ei::pset1<Packet>(1.44269504088896341f), shifter), shifter);
    Packet r = ei::pmadd(n, ei::pset1<Packet>(-0.693359375f), xc);
    r = ei::pmadd(n, ei::pset1<Packet>(2.12194440e-4f), r);
    Packet y = ei::pmadd(ei::pset1<Packet>(1.9875691500e-4f), r, ei::pset1<Packet>(1.3981999507e-3f));
    y = ei::pmadd(y, r, ei::pset1<Packet>(8.3334519073e-3f));
    y = ei::pmadd(y, r, ei::pset1<Packet>(4.1665795894e-2f));
    y = ei::pmadd(y, r, ei::pset1<Packet>(1.6666665459e-1f));
    y = ei::pmadd(y, r, ei::pset1<Packet>(5.0000001201e-1f));
    y = ei::pmadd(y, ei::pmul(r, r), ei::padd(r, ei::pset1<Packet>(1.0f)));
    // 2^n for n >= -127: n = -127 (x < -87.68) gives the bits of 0.0f.
    const PacketI bits = ei::plogical_shift_left<23>(ei::padd(ei::pcast<Packet, PacketI>(n), ei::pset1<PacketI>(127)));
    return ei::pmul(y, ei::preinterpret<Packet>(bits));
  } else {
    const Packet neg_inf = ei::pset1<Packet>(-std::numeric_limits<Scalar>::infinity());
    return ei::pselect(ei::pcmp_eq(x, neg_inf), ei::pset1<Packet>(Scalar(0)), ei::pexp(x));
  }
}

#endif  // EIGEN_VERSION_AT_LEAST(3, 4, 0)

/// @brief x[j] = exp(x[j] - shift) for j < n, in place, with -inf giving exactly 0; returns
/// the sum of the results. shift is meant to be the max of x: a NaN or +inf shift makes the
/// sum NaN, as softmax does.
///
/// This is the softmax's vectorised exp, pexp_nonpositive, a packet at a time; the last
/// partial packet is padded, so every element goes through the same code (scalar std::exp
/// without Eigen 3.4's packets). Accuracy, checked in tests/test_kernels.cpp against the
/// correctly rounded exp wherever the result is a normal number: float within 1 ulp,
/// double within 2 ulp. Float gives 0 below -87.68 (double's pexp gives at most 1e-308
/// there); -inf gives exactly 0, 0 gives exactly 1, NaN gives NaN.
template <class T>
T exp_shifted_inplace(T* x, Index n, T shift) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
#if EIGEN_VERSION_AT_LEAST(3, 4, 0)
  namespace ei = Eigen::internal;
  using Packet = typename ei::packet_traits<T>::type;
  constexpr int kSize = ei::packet_traits<T>::size;
  if constexpr (ei::packet_traits<T>::Vectorizable && ei::packet_traits<T>::HasExp && kSize > 1) {
    const Packet vshift = ei::pset1<Packet>(shift);
    Packet sum = ei::pset1<Packet>(T(0));
    auto step = [&](T* at) {
      const Packet e = pexp_nonpositive(ei::psub(ei::ploadu<Packet>(at), vshift));
      ei::pstoreu(at, e);
      sum = ei::padd(sum, e);
    };
    Index j = 0;
    for (; j + kSize <= n; j += kSize) step(x + j);
    if (j < n) {
      T tail[kSize];
      for (int t = 0; t < kSize; ++t) tail[t] = j + t < n ? x[j + t] : kNegInf;
      step(tail);
      std::copy(tail, tail + (n - j), x + j);
    }
    // (Lane by lane rather than predux, whose AVX-512 form trips GCC 12's -Wuninitialized.)
    T lanes[kSize];
    ei::pstoreu(lanes, sum);
    T total = T(0);
    for (int t = 0; t < kSize; ++t) total += lanes[t];
    return total;
  }
#endif
  T sum = T(0);
  for (Index j = 0; j < n; ++j) {
    x[j] = x[j] == kNegInf ? T(0) : std::exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/// @brief How an attention call is cut into work items for parallel_for: `units` units
/// (one (batch, head, query block) each) in consecutive runs of `per_item`, chosen from the
/// problem's size only, so that an item amortises its scratch buffers and scheduling.
struct WorkSplit {
  Index units = 0, per_item = 1;

  /// @param unit_cost multiply-adds of one unit
  static WorkSplit of(Index units, double unit_cost) {
    constexpr double kMinItemCost = 1 << 18;  // multiply-adds: ~10 us of work
    WorkSplit w;
    w.units = units;
    const double per = std::ceil(kMinItemCost / std::max(unit_cost, 1.0));
    w.per_item = std::max<Index>(1, std::min<Index>(std::max<Index>(units, 1), static_cast<Index>(per)));
    return w;
  }
  Index items() const { return (units + per_item - 1) / per_item; }
  Index begin(Index item) const { return item * per_item; }
  Index end(Index item) const { return std::min(units, (item + 1) * per_item); }
};

/// Dropout on probability rows i0.. of (b, h); element (b, h, i, j) of the logical
/// (B, H, L, S) weights is element ((b*H + h)*L + i)*S + j of the stream, so the mask does
/// not depend on blocking or threads.
template <class T, class Block>
void dropout_rows(Block& p, T prob, std::uint64_t key, Index b, Index h, Index heads, Index i0,
                  Index len_q) {
  const Index len_k = p.cols();
  for (Index r = 0; r < p.rows(); ++r)
    dropout_span(p.row(r).data(), len_k, prob, key,
                 static_cast<std::uint64_t>(((b * heads + h) * len_q + i0 + r) * len_k));
}

}  // namespace detail
}  // namespace attn
