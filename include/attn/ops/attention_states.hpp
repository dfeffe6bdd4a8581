#pragma once
/// @file
/// @brief Attention states (output, log-sum-exp) and their merge: attention over disjoint key
/// ranges combines into attention over all of them (split-KV decoding, shared-prefix cascades,
/// context parallelism).

#include <algorithm>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/softmax_state.hpp"

namespace attn {

/// @brief Attention over some keys: its output (..., Dv) and each query's log-sum-exp (...)
/// in compute_t<T>, as scaled_dot_product_attention gives them with SdpaOptions::lse.
template <class T>
struct AttentionState {
  Tensor<T> output;           ///< (..., Dv)
  Tensor<compute_t<T>> lse;   ///< (...): output's shape without its last dimension
};

namespace detail {

/// Checks that (o, lse) and (o_b, lse_b) are states of the same shape: lse is o's shape
/// without its last dimension.
template <class T, class U, class L, class M>
void check_states(const char* where, const TensorView<T>& o, const TensorView<L>& lse, const TensorView<U>& o_b,
                  const TensorView<M>& lse_b) {
  require(o.dim() >= 1, where, ": the output must have at least one dimension, got ", o.shape());
  const Shape rows(o.shape().begin(), o.shape().end() - 1);
  require(lse.shape() == rows, where, ": the first lse has shape ", lse.shape(), ", expected ", rows,
          " for its output ", o.shape());
  require(o_b.shape() == o.shape() && lse_b.shape() == lse.shape(), where, ": the second state's output ",
          o_b.shape(), " and lse ", lse_b.shape(), " must have the first's shapes ", o.shape(), " and ", lse.shape());
}

}  // namespace detail

/// @brief Merges the state (o_b, lse_b) into (o, lse) in place: afterwards they are the state
/// of attention over both key ranges (FlashInfer's merge_state_in_place; the rule is
/// detail::merge_weights). Equal, up to rounding, to attention over all the keys at once. A
/// query neither state saw a key for stays at output 0, lse -inf; a NaN lse makes its query
/// NaN. Computes in compute_t<T> and rounds each output once; threaded over queries
/// (bit-identical for every thread count).
/// @param o (..., Dv); @param lse (...): o's shape without its last dimension
/// @param o_b, lse_b of the same shapes, over other keys (must not overlap o or lse)
/// @throws std::invalid_argument naming the shapes if they do not pair up (o and lse unchanged)
template <class T>
void merge_attention_state_inplace(const TensorView<T>& o, const TensorView<compute_t<T>>& lse,
                                   const TensorView<const T>& o_b, const TensorView<const compute_t<T>>& lse_b) {
  using C = compute_t<T>;
  detail::check_states("attn::merge_attention_state_inplace", o, lse, o_b, lse_b);
  const Index rows = lse.numel(), dv = o.shape().back();
  constexpr Index kRows = 64;  // queries per work item
  detail::parallel_for((rows + kRows - 1) / kRows, [&](Index item) {
    for (Index r = item * kRows; r < std::min(rows, (item + 1) * kRows); ++r) {
      const detail::MergeWeights<C> w = detail::merge_weights(lse.data()[r], lse_b.data()[r]);
      Eigen::Map<Vector<T>> a(o.data() + r * dv, dv);
      const Eigen::Map<const Vector<T>> b(o_b.data() + r * dv, dv);
      a = (w.a * a.template cast<C>() + w.b * b.template cast<C>()).template cast<T>();
      lse.data()[r] = w.lse;
    }
  });
}

/// @brief The merge of two attention states over disjoint key ranges (FlashInfer's
/// merge_state), as merge_attention_state_inplace computes it, into new tensors.
/// @param o_a (..., Dv); @param lse_a (...); @param o_b, lse_b of the same shapes
/// @return the state of attention over both key ranges
/// @throws std::invalid_argument naming the shapes if they do not pair up
template <class T>
AttentionState<T> merge_attention_states(const TensorView<const T>& o_a, const TensorView<const compute_t<T>>& lse_a,
                                         const TensorView<const T>& o_b,
                                         const TensorView<const compute_t<T>>& lse_b) {
  detail::check_states("attn::merge_attention_states", o_a, lse_a, o_b, lse_b);
  AttentionState<T> s{Tensor<T>(o_a), Tensor<compute_t<T>>(lse_a)};
  merge_attention_state_inplace<T>(s.output, s.lse, o_b, lse_b);
  return s;
}

}  // namespace attn
