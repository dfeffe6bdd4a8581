#pragma once
/// @file
/// @brief Internals shared by the attention kernels: argument checks, mask bias on a
/// block of score rows, dropout on probability rows. Not part of the public API.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <functional>
#include <string>
#include <utility>

#include <Eigen/Core>

#include "attn/core/error.hpp"
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

/// Checks q/k/v/out shapes, masks and dropout settings of an attention call.
template <class T>
void check_attention_args(const char* where, const HeadsView<const T>& q, const HeadsView<const T>& k,
                          const HeadsView<const T>& v, const HeadsView<T>& out,
                          const SdpaOptions<T>& opt) {
  const auto out_range = check_view(where, "output", out);
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

/// Adds the masks to score rows i0 .. i0+rows-1 of (batch b, head h); s is (rows, S) row-major.
template <class T, class Block>
void add_mask_bias(Block& s, const SdpaOptions<T>& opt, Index b, Index h, Index heads, Index i0,
                   Index len_q) {
  const Index rows = s.rows(), len_k = s.cols();
  const auto& kpm = opt.key_padding_mask;
  const auto& am = opt.attn_mask;
  for (Index r = 0; r < rows; ++r) {
    const Index i = i0 + r;
    T* row = s.row(r).data();
    if (!kpm.empty())
      for (Index j = 0; j < len_k; ++j) row[j] += kpm.bias(b * len_k + j);
    if (!am.empty()) {
      const Index base = (am.shape().size() == 2 ? i : (b * heads + h) * len_q + i) * len_k;
      for (Index j = 0; j < len_k; ++j) row[j] += am.bias(base + j);
    }
    if (opt.causal != Causal::kNone) {
      // keys j > last are in the future of query i
      const Index last = i + (opt.causal == Causal::kBottomRight ? len_k - len_q : 0);
      for (Index j = std::max<Index>(last + 1, 0); j < len_k; ++j)
        row[j] = -std::numeric_limits<T>::infinity();
    }
  }
}

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
