#pragma once
/// @file
/// @brief The backward pass of scaled_dot_product_attention: dq, dk and dv from the
/// forward's inputs, output and log-sum-exp, in O(N) memory.

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "attn/core/attention_options.hpp"
#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"
#include "attn/ops/detail/checks.hpp"
#include "attn/ops/detail/sdpa_backward.hpp"
#include "attn/ops/scaled_dot_product_attention.hpp"

namespace attn {

/// @brief The gradients of out = scaled_dot_product_attention(q, k, v, opt) with respect to
/// q, k and v, given grad_out = dL/dout, as torch.autograd gives them
/// (FlashAttention-2's backward).
///
/// The weights are recomputed a tile at a time from q, k and the forward's log-sum-exp
/// (SdpaOptions::lse of the forward call), with the forward's logit rules: every mask kind,
/// both causal alignments, the sliding window, soft-capping (through its derivative),
/// ALiBi, sinks (in the log-sum-exp) and key_lengths. Memory is O(B H (L + S) D): no (L, S)
/// buffer. Grouped-query attention sums dk and dv over the query heads that read each
/// key/value head. A query whose keys were all masked (output 0) passes no gradient. With
/// dropout, the forward's kept weights are regenerated from its key: opt.generator must be
/// in the state the forward's was in (a copy taken before the forward call), and
/// opt.dropout_p the same. Threaded; bit-identical for every thread count.
/// @param q (B, H, L, D); @param k (B, K, S, D); @param v (B, K, S, Dv) the forward's inputs
/// @param out (B, H, L, Dv) the forward's output; @param grad_out (B, H, L, Dv) dL/dout
/// @param lse (B, H, L) the forward's log-sum-exp (in float32 for a float32 call)
/// @param dq (B, H, L, D); @param dk (B, K, S, D); @param dv (B, K, S, Dv) receive the
/// gradients (overwritten), apart from every input
/// @param opt the forward's options, without attn_weights or lse
/// @throws std::invalid_argument for shapes that do not match the forward's, gradients that
/// overlap the inputs or each other, attn_weights or lse asked for, or bad options
template <class T>
void scaled_dot_product_attention_backward(const HeadsView<const T>& q, const HeadsView<const T>& k,
                                           const HeadsView<const T>& v, const HeadsView<const T>& out,
                                           const HeadsView<const T>& grad_out, const TensorView<const T>& lse,
                                           const HeadsView<T>& dq, const HeadsView<T>& dk, const HeadsView<T>& dv,
                                           const SdpaOptions<T>& opt = {}) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "scaled_dot_product_attention_backward: float or double");
  constexpr const char* where = "attn::scaled_dot_product_attention_backward";
  detail::require(!opt.attn_weights && !opt.lse, where, ": the backward pass returns no attn_weights or lse");
  detail::require(!k.pages && !v.pages, where, ": k and v cannot be paged");
  const HeadsView<T> out_view{const_cast<T*>(out.data), out.batch,        out.heads,      out.length,
                              out.head_dim,             out.batch_stride, out.head_stride, out.row_stride};
  const detail::AttentionCall<T> call = detail::prepare_call(where, q, k, v, out_view, opt);
  detail::require(grad_out.shape() == out.shape() && lse.shape() == Shape{q.batch, q.heads, q.length}, where,
                  ": grad_out ", grad_out.shape(), " and lse ", lse.shape(), " must be out's ", out.shape(),
                  " and (B, H, L) = ", Shape{q.batch, q.heads, q.length});
  detail::require(dq.shape() == q.shape() && dk.shape() == k.shape() && dv.shape() == v.shape(), where, ": dq ",
                  dq.shape(), ", dk ", dk.shape(), " and dv ", dv.shape(), " must be q's ", q.shape(), ", k's ",
                  k.shape(), " and v's ", v.shape());
  detail::check_view(where, "grad_out", grad_out);
  detail::check_outputs<T>(where, {{"dq", dq}, {"dk", dk}, {"dv", dv}},
                        {{"q", q}, {"k", k}, {"v", v}, {"out", out}, {"grad_out", grad_out}});
  if (q.batch == 0 || q.heads == 0 || q.length == 0 || k.length == 0) {
    for (const HeadsView<T>* g : {&dq, &dk, &dv}) detail::fill_view(*g, T(0));
    return;
  }
  const detail::WorkBuffer<T> delta(q.batch * q.heads * q.length);
  for (Index b = 0; b < q.batch; ++b)
    for (Index h = 0; h < q.heads; ++h)
      for (Index i = 0; i < q.length; ++i) {
        const T *o = out.row(b, h, i), *d = grad_out.row(b, h, i);
        T sum = 0;
        for (Index c = 0; c < out.head_dim; ++c) sum += o[c] * d[c];
        delta.data()[(b * q.heads + h) * q.length + i] = sum;
      }
  detail::SdpaBackward<T>::run({call, grad_out, lse.data(), delta.data()}, dq, dk, dv);
}

/// The gradients of scaled_dot_product_attention's q, k and v.
template <class T>
struct SdpaGradients {
  Tensor<T> query;  ///< dL/dq, in q's shape
  Tensor<T> key;    ///< dL/dk, in k's shape
  Tensor<T> value;  ///< dL/dv, in v's shape
};

/// @brief Tensor form, like the tensor form of scaled_dot_product_attention (and
/// torch.autograd.grad of its output).
/// @param q (B, H, L, D) or (B, L, D); @param k (B, K, S, D) or (B, S, D);
/// @param v (B, K, S, Dv) or (B, S, Dv); @param out the forward's output; @param grad_out
/// dL/dout in out's shape; @param lse the forward's (B, H, L) log-sum-exp ((B, 1, L) for
/// 3-D inputs); @param opt the forward's options (see the strided form)
/// @throws std::invalid_argument as the strided form
template <class T>
SdpaGradients<T> scaled_dot_product_attention_backward(const TensorView<const T>& q, const TensorView<const T>& k,
                                                       const TensorView<const T>& v, const TensorView<const T>& out,
                                                       const TensorView<const T>& grad_out,
                                                       const TensorView<const T>& lse, const SdpaOptions<T>& opt = {}) {
  detail::require_heads_rank("attn::scaled_dot_product_attention_backward",
                             {{"q", q.shape()}, {"k", k.shape()}, {"v", v.shape()}, {"out", out.shape()},
                              {"grad_out", grad_out.shape()}});
  SdpaGradients<T> g{Tensor<T>(q.shape()), Tensor<T>(k.shape()), Tensor<T>(v.shape())};
  using detail::tensor_heads;
  scaled_dot_product_attention_backward<T>(tensor_heads(q), tensor_heads(k), tensor_heads(v), tensor_heads(out),
                                           tensor_heads(grad_out), lse, tensor_heads(g.query.view()),
                                           tensor_heads(g.key.view()), tensor_heads(g.value.view()), opt);
  return g;
}

}  // namespace attn
