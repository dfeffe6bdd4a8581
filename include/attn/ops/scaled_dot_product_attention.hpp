#pragma once
/// @file
/// @brief Scaled dot-product attention: softmax(scale * q k^T + masks) v, per batch and head.


#include <initializer_list>
#include <string>
#include <utility>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/checks.hpp"
#include "attn/ops/detail/sdpa_reference.hpp"
#include "attn/ops/detail/kernels.hpp"
#include "attn/ops/kv_cache.hpp"

namespace attn {
namespace detail {

/// A prepared call on its kernel: sdpa_reference where opt asks for the weights, else the
/// tiled kernel; opt.lse, if asked for, is (re)allocated and written by the kernel.
template <class T, class S>
void run_attention(AttentionCall<T, S> call, const SdpaOptions<T>& opt) {
  if (opt.lse) {
    *opt.lse = Tensor<compute_t<T>>({call.q.batch, call.q.heads, call.q.length});
    call.lse = opt.lse->data();
  }
  if (opt.attn_weights) {
    *opt.attn_weights = Tensor<T>({call.q.batch, call.q.heads, call.q.length, call.k.length});
    sdpa_reference<T>(call, opt.attn_weights->data());
  } else {
    sdpa_tiled<T>(call);
  }
}

/// A (B, H, N, D) tensor, or a (B, N, D) one as one head, as a heads view.
template <class P>
HeadsView<P> tensor_heads(const TensorView<P>& t) {
  return t.dim() == 4 ? HeadsView<P>::bhnd(t.data(), t.size(0), t.size(1), t.size(2), t.size(3))
                      : HeadsView<P>::bhnd(t.data(), t.size(0), 1, t.size(1), t.size(2));
}

/// Checks that tensors of an attention call are all (B, H, N, D) or all (B, N, D).
inline void require_heads_rank(const char* where, std::initializer_list<std::pair<const char*, Shape>> tensors) {
  const Index rank = static_cast<Index>(tensors.begin()->second.size());
  std::string names;
  bool ok = rank == 3 || rank == 4;
  for (const auto& t : tensors) {
    ok = ok && static_cast<Index>(t.second.size()) == rank;
    names += std::string(names.empty() ? "" : ", ") + t.first + " " + to_string(t.second);
  }
  require(ok, where, ": ", names, " must all be (B, H, N, D) or all (B, N, D)");
}

}  // namespace detail

/// @brief out = softmax(scale * q k^T + masks) v for every (batch, head), written into `out`.
///
/// Works on strided views, so q, k and v can be column blocks of a projection's output.
/// The default path is tiled (FlashAttention-2 style online softmax, see
/// detail::SdpaTiles): a (query block x key block) tile of scores at a time, no (L, S)
/// buffer; strided k and v are copied once into contiguous rows (O(B*H*S*(D+Dv)) memory)
/// when several query blocks read them. When opt.attn_weights asks for the weights, the
/// straightforward kernel (detail::sdpa_reference) materialises them (B*H*L*S elements)
/// and multiplies them by v. Threaded over (batch, head, query block) with
/// attn::set_num_threads' thread count; the result is bit-identical for every thread count.
/// @param q (B, H, L, D); @param k (B, H, S, D); @param v (B, H, S, Dv)
/// @param out (B, H, L, Dv), must not overlap q, k or v
/// @param opt scale (default 1/sqrt(D)), masks, causal, sinks, dropout, optional weights and
/// log-sum-exp outputs.
/// The attention mask may have any shape that broadcasts to (B, H, L, S) (PyTorch's rule),
/// or nn.MultiheadAttention's (B*H, L, S); the key padding mask is (B, S).
/// @note The scale multiplies q before the product, as nn.MultiheadAttention and timm do.
/// A query row whose keys are all masked gets weights 0 and output 0 (PyTorch >= 2.5 SDPA
/// and ONNX behaviour; PyTorch 1.13 gives NaN). NaN in a row's logits gives a NaN row.
/// opt.lse receives each query's log-sum-exp, with which attention over disjoint key ranges
/// merges (merge_attention_states) into attention over all of them.
/// Dropout zeroes weights after the softmax (the normaliser is the sum before dropout) with
/// the same mask on both paths. For bfloat16 and half, q, k, v, out (and the weights) are
/// 16-bit and everything in between is float32: each output is rounded once. (On the
/// avx512bf16 path bfloat16 multiplies on vdpbf16ps, which also rounds p to bfloat16 for
/// its product with v, as FlashAttention does.)
/// @throws std::invalid_argument on mismatched shapes, masks, dropout p or a missing generator
template <class T>
void scaled_dot_product_attention(const HeadsView<const T>& q, const HeadsView<const T>& k,
                                  const HeadsView<const T>& v, const HeadsView<T>& out,
                                  const SdpaOptions<T>& opt = {}) {
  detail::run_attention(detail::prepare_call("attn::scaled_dot_product_attention", q, k, v, out, opt), opt);
}

/// @brief Attention of q over every position a KV cache holds, in the cache's storage type
/// S: as scaled_dot_product_attention(q, cache.keys(), cache.values(), out, opt) over the
/// keys and values the cache stands for, with the cache's key_lengths() when its sequences
/// hold different lengths (each sequence's queries over its own keys). k and v are read in
/// place, widened (16-bit) or scaled (int8) in registers by the decode tile; the tiled
/// kernel (more than 4 queries) widens them once per call into its packed copy.
/// @param q (B, H, L, D); @param cache (B, K, S, D) with H a multiple of K
/// @param out (B, H, L, D); @param opt as in the form above (its key_lengths empty)
/// @throws std::invalid_argument as the form above
template <class T, class S>
void scaled_dot_product_attention(const HeadsView<const T>& q, const KVCache<T, S>& cache, const HeadsView<T>& out,
                                  const SdpaOptions<T>& opt = {}) {
  constexpr const char* where = "attn::scaled_dot_product_attention";
  detail::require(opt.key_lengths.empty(), where, ": a KV cache gives its own key_lengths");
  auto call = detail::prepare_call(where, q, cache.keys(), cache.values(), out, opt);
  call.key_lengths = cache.key_lengths().data();  // (null unless ragged; each <= cache.length())
  call.k_scales = cache.key_scales();
  call.v_scales = cache.value_scales();
  detail::run_attention(call, opt);
}

/// @brief Checks opt against a call of `batch` x `heads` queries heads of `len_q` queries over
/// `len_k` keys without running it: the masks' shapes, the sliding window, softcap, ALiBi
/// slopes, dropout probability and generator, and the scale, as scaled_dot_product_attention
/// checks them first. For callers that want every argument checked before they compute q,
/// k and v (the modules do).
/// @throws std::invalid_argument naming attn::scaled_dot_product_attention, as the call would
template <class T>
void check_sdpa_options(const SdpaOptions<T>& opt, Index batch, Index heads, Index len_q, Index len_k) {
  detail::check_options("attn::scaled_dot_product_attention", opt, detail::AttentionDims{batch, heads, len_q, len_k});
}

/// @brief Tensor form, like torch.nn.functional.scaled_dot_product_attention.
/// @param q (B, H, L, D) or (B, L, D); @param k (B, H, S, D) or (B, S, D);
/// @param v (B, H, S, Dv) or (B, S, Dv)
/// @param opt as in the strided form (3-D inputs are one head: H = 1)
/// @return (B, H, L, Dv) or (B, L, Dv)
template <class T>
Tensor<T> scaled_dot_product_attention(const TensorView<const T>& q, const TensorView<const T>& k,
                                       const TensorView<const T>& v, const SdpaOptions<T>& opt = {}) {
  detail::require_heads_rank("attn::scaled_dot_product_attention", {{"q", q.shape()}, {"k", k.shape()}, {"v", v.shape()}});
  Shape shape = q.shape();
  shape.back() = v.size(-1);
  auto out = Tensor<T>::uninitialized(shape);
  scaled_dot_product_attention<T>(detail::tensor_heads(q), detail::tensor_heads(k), detail::tensor_heads(v),
                                  detail::tensor_heads(out.view()), opt);
  return out;
}

}  // namespace attn
