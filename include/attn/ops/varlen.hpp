#pragma once
/// @file
/// @brief Attention over packed sequences of different lengths (varlen): FlashAttention's
/// flash_attn_varlen_func, with cu_seqlens.

#include <cstdint>

#include "attn/core/attention_options.hpp"
#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/scaled_dot_product_attention.hpp"

namespace attn {
namespace detail {

/// @brief Checks cu_seqlens (B + 1) against `total` packed tokens: 0 first, never decreasing,
/// `total` last. Returns B.
/// @throws std::invalid_argument naming `name`, its shape or the entry at fault
inline Index checked_cu_seqlens(const char* where, const char* name, const TensorView<const std::int64_t>& cu,
                                Index total) {
  require(cu.dim() == 1 && cu.size(0) >= 1, where, ": ", name, " has shape ", cu.shape(),
          ", expected (batch + 1)");
  const std::int64_t* c = cu.data();
  const Index nb = cu.size(0) - 1;
  require(c[0] == 0 && c[nb] == total, where, ": ", name, " must run from 0 to the ", total, " packed tokens, got ",
          c[0], " .. ", c[nb]);
  for (Index b = 0; b < nb; ++b)
    require(c[b] <= c[b + 1], where, ": ", name, " decreases from ", c[b], " to ", c[b + 1], " at sequence ", b);
  return nb;
}

/// Rows [first, first + count) of a view's sequence axis.
template <class P>
HeadsView<P> sequence_rows(HeadsView<P> v, Index first, Index count) {
  v.data += first * v.row_stride;
  v.length = count;
  return v;
}

}  // namespace detail

/// @brief Attention over packed sequences of different lengths, none padded (FlashAttention's
/// varlen, xFormers' BlockDiagonalMask): sequence b's queries, rows [cu_seqlens_q[b],
/// cu_seqlens_q[b + 1]) of q, attend to rows [cu_seqlens_k[b], cu_seqlens_k[b + 1]) of k and
/// v only, and their outputs go to the same rows of out. Block-diagonal attention: each
/// sequence is one scaled_dot_product_attention call on its rows, so causal masking, the
/// sliding window and ALiBi count within each sequence, and each sequence's result is what
/// it would be alone.
/// Every view holds all sequences' rows along its length (any strides, as
/// scaled_dot_product_attention takes them):
/// @param q (1, H, Tq, D); @param k (1, K, Tk, D); @param v (1, K, Tk, Dv)
/// @param out (1, H, Tq, Dv)
/// @param cu_seqlens_q (B + 1) from 0 to Tq; @param cu_seqlens_k (B + 1) from 0 to Tk
/// @param opt as scaled_dot_product_attention's, without masks, weights, lse or key_lengths
/// (they are per call, not per sequence); with dropout, each sequence takes its own key
/// from the generator, in order.
/// @throws std::invalid_argument for views that are not batch 1 or do not pair up, bad
/// cu_seqlens, or options it does not take
template <class T>
void scaled_dot_product_attention_varlen(const HeadsView<const T>& q, const HeadsView<const T>& k,
                                         const HeadsView<const T>& v, const HeadsView<T>& out,
                                         const TensorView<const std::int64_t>& cu_seqlens_q,
                                         const TensorView<const std::int64_t>& cu_seqlens_k,
                                         const SdpaOptions<T>& opt = {}) {
  constexpr const char* where = "attn::scaled_dot_product_attention_varlen";
  detail::check_views(where, q, k, v, out);
  detail::require_unpaged(where, k, v);
  detail::require(q.batch == 1, where, ": q ", q.shape(), " must hold the packed sequences along its length (batch 1)");
  detail::require(opt.key_padding_mask.empty() && opt.attn_mask.empty() && !opt.attn_weights && !opt.lse &&
                      opt.key_lengths.empty(),
                  where, ": packed sequences take no key_padding_mask, attn_mask, attn_weights, lse or key_lengths");
  const Index nb = detail::checked_cu_seqlens(where, "cu_seqlens_q", cu_seqlens_q, q.length);
  detail::require(detail::checked_cu_seqlens(where, "cu_seqlens_k", cu_seqlens_k, k.length) == nb, where,
                  ": cu_seqlens_q ", cu_seqlens_q.shape(), " and cu_seqlens_k ", cu_seqlens_k.shape(),
                  " must count the same sequences");
  const std::int64_t *cq = cu_seqlens_q.data(), *ck = cu_seqlens_k.data();
  for (Index b = 0; b < nb; ++b)
    scaled_dot_product_attention<T>(detail::sequence_rows(q, cq[b], cq[b + 1] - cq[b]),
                                    detail::sequence_rows(k, ck[b], ck[b + 1] - ck[b]),
                                    detail::sequence_rows(v, ck[b], ck[b + 1] - ck[b]),
                                    detail::sequence_rows(out, cq[b], cq[b + 1] - cq[b]), opt);
}

}  // namespace attn
