#pragma once
/// @file
/// @brief The rules of a finished softmax's state, one query at a time: its log-sum-exp, a
/// sink logit joining its denominator, and the merge of two states over disjoint keys.
/// Scalar (once per query, never per key). Not public API.
///
/// A query's softmax over logits s_j ends with a running max m and a sum l = sum_j exp(s_j -
/// m) (online_softmax.hpp); m = -inf when every logit was masked (l = 0 then), l NaN for a
/// NaN logit.

#include <algorithm>
#include <cmath>
#include <limits>

namespace attn {
namespace detail {

/// @brief The sum a query's output is divided by when a sink logit `sink` (gpt-oss: one per
/// head, -inf for none) joins the denominator: l + exp(sink - m), in m's frame; l itself
/// for no sink or no key seen (the output is 0 then: the sink takes all the weight). Where
/// exp(sink - m) overflows the output is 0, as it is to C's precision.
template <class C>
C sum_with_sink(C m, C l, C sink) {
  constexpr C kNegInf = -std::numeric_limits<C>::infinity();
  return sink == kNegInf || m == kNegInf ? l : l + std::exp(sink - m);
}

/// @brief log(sum_j exp(s_j) + exp(sink)), the log of the denominator (sink -inf: none):
/// sink for no key seen (-inf without one), NaN with l. Computed from the larger of m and
/// sink, so it does not overflow.
template <class C>
C log_sum_exp(C m, C l, C sink) {
  constexpr C kNegInf = -std::numeric_limits<C>::infinity();
  if (m == kNegInf) return sink;
  const C top = std::max(m, sink);
  return top + std::log(l * std::exp(m - top) + std::exp(sink - top));
}

/// The weights of two attention states in their merge, and the merged log-sum-exp.
template <class C>
struct MergeWeights {
  C a, b, lse;
};

/// @brief FlashInfer's merge_state for one query: states (o_a, lse_a) and (o_b, lse_b) over
/// disjoint keys merge into o = a o_a + b o_b with a = exp(lse_a) / (exp(lse_a) + exp(lse_b))
/// (b alike) and lse = log(exp(lse_a) + exp(lse_b)), computed from the larger lse. Neither
/// saw a key (both -inf): a = b = 0, lse -inf (output 0, attn's rule for a query without
/// keys). A NaN lse makes everything NaN.
template <class C>
MergeWeights<C> merge_weights(C lse_a, C lse_b) {
  constexpr C kNegInf = -std::numeric_limits<C>::infinity();
  if (std::isnan(lse_a) || std::isnan(lse_b)) {
    const C nan = std::numeric_limits<C>::quiet_NaN();
    return {nan, nan, nan};
  }
  const C top = std::max(lse_a, lse_b);
  if (top == kNegInf) return {C(0), C(0), kNegInf};
  const C wa = std::exp(lse_a - top), wb = std::exp(lse_b - top), sum = wa + wb;
  return {wa / sum, wb / sum, top + std::log(sum)};
}

}  // namespace detail
}  // namespace attn
