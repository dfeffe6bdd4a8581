#pragma once
/// @file
/// @brief Talking-heads attention core (Shazeer et al. 2020; timm's CaiT TalkingHeadAttn).

#include <Eigen/Core>

#include "attn/core/attention_options.hpp"
#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/checks.hpp"
#include "attn/ops/detail/kernels.hpp"

namespace attn {

/// @brief Parameters of the two head mixes, in PyTorch's Linear(H, H) layout.
template <class T>
struct TalkingHeadsMix {
  Eigen::Map<const RowMatrix<T>> logits_weight;  ///< proj_l.weight (H, H): before softmax
  Eigen::Map<const Vector<T>> logits_bias;       ///< proj_l.bias (H)
  Eigen::Map<const RowMatrix<T>> weights_weight; ///< proj_w.weight (H, H): after softmax
  Eigen::Map<const Vector<T>> weights_bias;      ///< proj_w.bias (H)
};

namespace detail {

template <class T>
void talking_heads_widened(const HeadsView<const T>& q, const HeadsView<const T>& k, const HeadsView<const T>& v,
                           const HeadsView<T>& out, const TalkingHeadsMix<T>& mix, const SdpaOptions<T>& opt,
                           TalkingHeadsScheme scheme);

/// talking_heads_attention with a choice of scheme (tests compare the two).
template <class T>
void talking_heads_attention(const HeadsView<const T>& q, const HeadsView<const T>& k, const HeadsView<const T>& v,
                             const HeadsView<T>& out, const TalkingHeadsMix<T>& mix, const SdpaOptions<T>& opt,
                             TalkingHeadsScheme scheme) {
  require_unpaged("attn::talking_heads_attention", k, v);
  if constexpr (is_storage16<T>::value) {
    talking_heads_widened(q, k, v, out, mix, opt, scheme);
  } else {
    constexpr const char* where = "attn::talking_heads_attention";
    const Index nh = q.heads;
    require(mix.logits_weight.rows() == nh && mix.logits_weight.cols() == nh && mix.weights_weight.rows() == nh &&
                mix.weights_weight.cols() == nh && mix.logits_bias.size() == nh && mix.weights_bias.size() == nh,
            where, ": proj_l / proj_w must be Linear(", nh, ", ", nh, ") for ", nh, " heads");
    require(k.heads == q.heads && !opt.sliding_window && !opt.softcap && opt.alibi_slopes.empty() &&
                opt.key_lengths.empty(),
            where, ": talking heads mixes every head's logits: it takes as many key/value heads as query heads (q ",
            q.shape(), ", k ", k.shape(), ") and no sliding window, softcap, ALiBi or key_lengths");
    const AttentionCall<T> call = prepare_call(where, q, k, v, out, opt);
    if (opt.attn_weights) *opt.attn_weights = Tensor<T>({q.batch, nh, q.length, k.length});
    const HeadMixes<T> mixes{mix.logits_weight.data(), mix.logits_bias.data(), mix.weights_weight.data(),
                             mix.weights_bias.data()};
    talking_heads(TalkingHeadsCall<T>{call, mixes, opt.attn_weights ? opt.attn_weights->data() : nullptr}, scheme);
  }
}

/// The values of a view as a contiguous (B, H, N, D) float32 tensor.
template <class T>
Tensor<float> widened(const HeadsView<const T>& x) {
  auto t = Tensor<float>::uninitialized({x.batch, x.heads, x.length, x.head_dim});
  float* dst = t.data();
  for (Index b = 0; b < x.batch; ++b)
    for (Index h = 0; h < x.heads; ++h)
      for (Index i = 0; i < x.length; ++i, dst += x.head_dim)
        for (Index d = 0; d < x.head_dim; ++d) dst[d] = static_cast<float>(x.row(b, h, i)[d]);
  return t;
}

/// A 16-bit mask as float32's: a boolean one views the same entries, an additive one is
/// widened into `storage`.
template <class T>
Mask<float> widened(const Mask<T>& m, Tensor<float>& storage) {
  using Kind = typename Mask<T>::Kind;
  if (m.empty()) return {};
  if (m.kind() == Kind::kAdditive) {
    storage = Tensor<float>::uninitialized(m.shape());
    for (Index i = 0; i < storage.numel(); ++i) storage.data()[i] = static_cast<float>(m.additive_data()[i]);
    return Mask<float>::additive(storage);
  }
  const TensorView<const bool> entries(m.bool_data(), m.shape());
  return m.kind() == Kind::kBlockWhereTrue ? Mask<float>::block_where_true(entries)
                                           : Mask<float>::keep_where_true(entries);
}

/// @brief talking_heads_attention for a 16-bit T: q, k, v, the mixes and an additive mask
/// widened to float32 once (O(B H (L + 2S) D) against the kernel's O(B H L S (D + Dv + 2H))),
/// the float32 kernel, and its output (and weights) rounded once.
template <class T>
void talking_heads_widened(const HeadsView<const T>& q, const HeadsView<const T>& k, const HeadsView<const T>& v,
                           const HeadsView<T>& out, const TalkingHeadsMix<T>& mix, const SdpaOptions<T>& opt,
                           TalkingHeadsScheme scheme) {
  check_views("attn::talking_heads_attention", q, k, v, out);
  const Tensor<float> qf = widened(q), kf = widened(k), vf = widened(v);
  const RowMatrix<float> lw = mix.logits_weight.template cast<float>(), ww = mix.weights_weight.template cast<float>();
  const Vector<float> lb = mix.logits_bias.template cast<float>(), wb = mix.weights_bias.template cast<float>();
  Tensor<float> key_padding, attn_mask, weights;
  SdpaOptions<float> o;
  o.scale = opt.scale, o.softcap = opt.softcap, o.sliding_window = opt.sliding_window, o.causal = opt.causal;
  o.key_padding_mask = widened(opt.key_padding_mask, key_padding);
  o.attn_mask = widened(opt.attn_mask, attn_mask);
  o.dropout_p = opt.dropout_p, o.generator = opt.generator;
  if (opt.attn_weights) o.attn_weights = &weights;
  auto of = Tensor<float>::uninitialized({out.batch, out.heads, out.length, out.head_dim});
  const auto heads = [](auto& t) { return HeadsView<std::remove_pointer_t<decltype(t.data())>>::bhnd(
                                       t.data(), t.size(0), t.size(1), t.size(2), t.size(3)); };
  const TalkingHeadsMix<float> mf{{lw.data(), lw.rows(), lw.cols()}, {lb.data(), lb.size()},
                                  {ww.data(), ww.rows(), ww.cols()}, {wb.data(), wb.size()}};
  talking_heads_attention<float>(heads(qf), heads(kf), heads(vf), heads(of), mf, o, scheme);
  const float* src = of.data();
  for (Index b = 0; b < out.batch; ++b)
    for (Index h = 0; h < out.heads; ++h)
      for (Index i = 0; i < out.length; ++i, src += out.head_dim)
        for (Index d = 0; d < out.head_dim; ++d) out.row(b, h, i)[d] = T(src[d]);
  if (opt.attn_weights) {
    *opt.attn_weights = Tensor<T>::uninitialized(weights.shape());
    for (Index i = 0; i < weights.numel(); ++i) opt.attn_weights->data()[i] = T(weights.data()[i]);
  }
}

}  // namespace detail

/// @brief out_f = (W_w softmax(W_l (scale q k^T) + b_l + masks) + b_w)_f v_f for all heads f.
///
/// A block of query rows (32 floats or 16 doubles; one SIMD packet when L is shorter) is
/// processed for all heads together, a tile of keys at a time: logits of all heads, proj_l,
/// masks, and each mixed head's softmax numerators exp(x - tile max) with the tile's max and
/// sum. After the last tile each mixed head's normaliser is exact, and a second sweep over
/// the key tiles normalises, mixes by proj_w, applies dropout and multiplies by v. The
/// numerators are kept between the sweeps while they take at most 8 MiB per block (H x S x
/// rows), else recomputed; both give the same bits. Nothing of size (B, H, L, S) exists
/// unless opt.attn_weights asks for it, and q, k, v and out are read and written in place
/// through their strided views. Work items (batch, query block) run on get_num_threads()
/// threads (see attn/core/parallel.hpp); results are bit-identical for every thread count.
/// @param q (B, H, L, D); @param k (B, H, S, D); @param v (B, H, S, Dv); @param out (B, H, L, Dv)
/// @param mix proj_l and proj_w parameters
/// @param opt scale (default 1/sqrt(D)), masks, causal, dropout, optional weights output
/// @note Masks apply to the mixed logits, after proj_l and before softmax, as in the paper;
/// a mask of shape (B*H, L, S) is indexed by the mixed head. A fully masked row has softmax 0
/// (not NaN), so after proj_w its weights are proj_w's bias. Dropout acts after proj_w, and
/// the weights returned are the ones that multiply v.
template <class T>
void talking_heads_attention(const HeadsView<const T>& q, const HeadsView<const T>& k,
                             const HeadsView<const T>& v, const HeadsView<T>& out,
                             const TalkingHeadsMix<T>& mix, const SdpaOptions<T>& opt = {}) {
  detail::talking_heads_attention(q, k, v, out, mix, opt, detail::TalkingHeadsScheme::kAuto);
}

}  // namespace attn
