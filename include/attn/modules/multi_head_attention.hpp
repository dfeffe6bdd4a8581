#pragma once
/// @file
/// @brief MultiHeadAttention<T>: torch.nn.MultiheadAttention (batch_first), self and cross.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/mask.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"
#include "attn/modules/attention_args.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/module.hpp"
#include "attn/modules/options.hpp"
#include "attn/ops/kv_cache.hpp"
#include "attn/ops/scaled_dot_product_attention.hpp"
#include "attn/ops/varlen.hpp"

namespace attn {

/// @brief Multi-head attention with torch.nn.MultiheadAttention(batch_first=True) semantics.
///
/// Self-attention when query, key and value are the same tensor (one fused projection
/// GEMM), cross-attention when they differ (Lq != Lk, kdim / vdim != embed_dim). The
/// projections run as GEMMs over all B*N rows; heads are strided views of their output.
/// load_state_dict recognises all three layouts of MhaLayout from the names present.
template <class T>
class MultiHeadAttention : public Module<T> {
 public:
  /// @brief nn.MultiheadAttention(embed_dim, num_heads, ..., batch_first=True); the other
  /// arguments are in `options`.
  ///
  /// Initial values follow PyTorch's _reset_parameters (xavier_uniform_ in-projection weights,
  /// zero in_proj_bias and out_proj.bias, out_proj.weight U(-1/sqrt(E), 1/sqrt(E)); bias_k and
  /// bias_v uniform with xavier_normal_'s variance), drawn from fixed seeds, not torch's RNG.
  /// The module starts in eval mode; with options.dropout > 0 in training mode, forward needs
  /// a Generator in its MhaArgs.
  /// @param embed_dim E, features of the query and of the output; must be > 0 and divisible by
  /// num_heads
  /// @param num_heads H, parallel attention heads of head_dim = E / H features each; must be > 0
  /// @param options dropout (the attention weights' dropout probability, in [0, 1); default 0),
  /// bias, add_bias_kv, add_zero_attn, kdim / vdim (>= 0, 0 = embed_dim) and the starting
  /// layout (kFusedQkv needs kdim == vdim == embed_dim); see MultiHeadAttentionOptions
  /// @throws std::invalid_argument if any of these constraints fails or the in-projection's
  /// element count overflows
  MultiHeadAttention(Index embed_dim, Index num_heads, const MultiHeadAttentionOptions& options = {})
      : embed_dim_(validated(embed_dim, num_heads, options)),  // first member: checks run first
        num_heads_(num_heads),
        head_dim_(embed_dim / num_heads),
        kdim_(options.kdim == 0 ? embed_dim : options.kdim),
        vdim_(options.vdim == 0 ? embed_dim : options.vdim),
        options_(options),
        out_proj_(embed_dim, embed_dim, options.bias, 7) {
    set_layout(options.layout);
    const Index e = embed_dim;
    // xavier_uniform_ per projection, as PyTorch's _reset_parameters; biases start at 0.
    in_weight_.resize(weight_offset(3));
    if (same_embed_dims()) {
      detail::init_uniform(in_weight_.data(), in_weight_.size(), std::sqrt(6.0 / double(4 * e)), 3);
    } else {
      const Index in[] = {e, kdim_, vdim_};
      for (int i = 0; i < 3; ++i)
        detail::init_uniform(in_weight_.data() + weight_offset(i), e * in[i], std::sqrt(6.0 / double(e + in[i])),
                             3 + static_cast<std::uint64_t>(i));
    }
    in_bias_ = Vector<T>::Zero(options.bias ? 3 * e : 0);
    if (options.bias) out_proj_.set_parameters(out_proj_.weight(), Vector<T>::Zero(e));
    repack();
    if (options.add_bias_kv) {
      bias_k_.resize(e);
      bias_v_.resize(e);
      detail::init_uniform(bias_k_.data(), e, std::sqrt(6.0 / double(2 * e)), 8);
      detail::init_uniform(bias_v_.data(), e, std::sqrt(6.0 / double(2 * e)), 9);
    }
  }

  /// E, features of the query and of the output.
  Index embed_dim() const { return embed_dim_; }
  /// H, the number of heads.
  Index num_heads() const { return num_heads_; }
  /// Features per head, E / H.
  Index head_dim() const { return head_dim_; }
  /// Features of the key input (embed_dim unless options.kdim was set).
  Index kdim() const { return kdim_; }
  /// Features of the value input (embed_dim unless options.vdim was set).
  Index vdim() const { return vdim_; }
  /// The constructor options; options().layout follows set_layout and load_state_dict.
  const MultiHeadAttentionOptions& options() const { return options_; }
  /// The current parameter-name layout (see MhaLayout).
  MhaLayout layout() const { return layout_; }
  /// The factor q k^T is multiplied by (depends on the layout, see MhaLayout).
  compute_t<T> scale() const { return scale_; }

  /// Chooses the parameter names and scale convention (load_state_dict does it by itself).
  /// @throws std::invalid_argument for kFusedQkv unless kdim == vdim == embed_dim
  void set_layout(MhaLayout layout) {
    detail::require(layout != MhaLayout::kFusedQkv || same_embed_dims(),
                    "attn::MultiHeadAttention: the fused qkv_proj layout needs kdim (", kdim_,
                    ") and vdim (", vdim_, ") equal to embed_dim (", embed_dim_, ")");
    layout_ = layout;
    options_.layout = layout;
    const double d = static_cast<double>(head_dim_);
    switch (layout) {
      case MhaLayout::kTorch: scale_ = static_cast<compute_t<T>>(1.0 / std::sqrt(d)); break;
      case MhaLayout::kSeparateLinears:
        scale_ = compute_t<T>(1) / static_cast<compute_t<T>>(std::sqrt(static_cast<float>(head_dim_)));
        break;
      case MhaLayout::kFusedQkv: scale_ = static_cast<compute_t<T>>(std::pow(d, -0.5)); break;
    }
  }

  /// @brief Attention of query over key/value.
  /// @param query (B, L, E) or unbatched (L, E)
  /// @param key (B, S, kdim) or (S, kdim); @param value (B, S, vdim) or (S, vdim)
  /// @param args masks (key_padding_mask (B, S); attn_mask broadcastable to (B, H, L, S) or
  /// (B*H, L, S)), causal, generator, need_weights, average_attn_weights
  /// @return output (B, L, E) and, with need_weights, the weights (B, L, S') averaged over
  /// heads or (B, H, L, S') per head, S' = S + add_bias_kv + add_zero_attn (batch dim dropped
  /// for unbatched input).
  /// @throws std::invalid_argument for shapes, masks or a missing generator in training mode
  MhaOutput<T> forward(const TensorView<const T>& query, const TensorView<const T>& key,
                       const TensorView<const T>& value, const MhaArgs<T>& args = {}) const {
    constexpr const char* where = "attn::MultiHeadAttention::forward";
    const Index nb = check_inputs(where, query, key, value, args);
    const Index len_q = query.size(-2), len_k = key.size(-2);
    SdpaOptions<T> opt = call_options(where, args, args.causal, query.dim() == 2, nb, len_q, len_k);
    Projections p(nb * len_q * embed_dim_, nb * len_k * embed_dim_);
    project(query, key, value, nb, p);
    ExtraKeys extra;
    if (extra_keys() > 0) append_extra_keys(p, opt, extra);
    return attend(where, p.q, kv_views(p.k, p.v), opt, args, query.shape());
  }

  /// Self-attention: forward(x, x, x, args).
  MhaOutput<T> forward(const TensorView<const T>& x, const MhaArgs<T>& args = {}) const {
    return forward(x, x, x, args);
  }

  /// @brief Packed sequences of different lengths, none padded (varlen): sequence b's queries
  /// are rows [cu_seqlens_q[b], cu_seqlens_q[b + 1]) of query and attend to rows
  /// [cu_seqlens_k[b], cu_seqlens_k[b + 1]) of key and value only, with args.causal within
  /// each sequence (scaled_dot_product_attention_varlen); one projection GEMM per input. Each
  /// sequence's outputs are those of forward on it alone.
  /// @param query (Tq, E); @param key (Tk, kdim); @param value (Tk, vdim): every sequence's
  /// tokens, one after another
  /// @param cu_seqlens_q (B + 1) from 0 to Tq; @param cu_seqlens_k (B + 1) from 0 to Tk (I64)
  /// @param args causal and generator (no masks or weights: they are per batch, not per
  /// packed sequence)
  /// @return output (Tq, E)
  /// @throws std::invalid_argument for shapes, bad cu_seqlens, masks, need_weights, or
  /// add_bias_kv / add_zero_attn
  MhaOutput<T> forward(const TensorView<const T>& query, const TensorView<const T>& key,
                       const TensorView<const T>& value, const TensorView<const std::int64_t>& cu_seqlens_q,
                       const TensorView<const std::int64_t>& cu_seqlens_k, const MhaArgs<T>& args = {}) const {
    constexpr const char* where = "attn::MultiHeadAttention::forward";
    check_inputs(where, query, key, value, args);
    detail::require(query.dim() == 2 && extra_keys() == 0 && args.key_padding_mask.empty() && args.attn_mask.empty() &&
                        !args.need_weights,
                    where, ": packed sequences need (tokens, features) inputs (query ", query.shape(),
                    ") and take no masks, need_weights, add_bias_kv or add_zero_attn");
    const Index len_q = query.size(0), len_k = key.size(0);
    detail::checked_cu_seqlens(where, "cu_seqlens_q", cu_seqlens_q, len_q);
    detail::checked_cu_seqlens(where, "cu_seqlens_k", cu_seqlens_k, len_k);
    SdpaOptions<T> opt = call_options(where, args, args.causal, true, 1, len_q, len_k);
    Projections p(len_q * embed_dim_, len_k * embed_dim_);
    project(query, key, value, 1, p);
    const auto varlen = [&](const HeadsView<const T>& q, const HeadsView<T>& out, const SdpaOptions<T>& o) {
      scaled_dot_product_attention_varlen<T>(q, p.k, p.v, out, cu_seqlens_q, cu_seqlens_k, o);
    };
    return attend(where, p.q, varlen, opt, args, query.shape());
  }

  /// Packed self-attention: forward(x, x, x, cu_seqlens, cu_seqlens, args).
  MhaOutput<T> forward(const TensorView<const T>& x, const TensorView<const std::int64_t>& cu_seqlens,
                       const MhaArgs<T>& args = {}) const {
    return forward(x, x, x, cu_seqlens, cu_seqlens, args);
  }

  /// @brief A cache for decoding with this layer: (batch, num_heads, capacity, head_dim),
  /// stored in S (T, or float, bfloat16, half or std::int8_t: see KVCache).
  template <class S = T>
  KVCache<T, S> make_cache(Index batch, Index capacity) const {
    return KVCache<T, S>(batch, num_heads_, capacity, head_dim_);
  }
  /// @brief A paged cache for decoding with this layer: `batch` sequences of at most
  /// `capacity` positions in `pool`'s pages of (num_heads, page_size, head_dim) (see KVCache).
  template <class S = T>
  KVCache<T, S> make_cache(Index batch, Index capacity, KVPages pool) const {
    return KVCache<T, S>(batch, num_heads_, capacity, head_dim_, pool);
  }

  /// @brief Self-attention on a chunk of new tokens with a KV cache (autoregressive decoding):
  /// only the chunk is projected, its keys and values are appended to the cache, and the
  /// chunk's queries attend over everything cached. Causal masking counts positions from
  /// the start of the sequence: with args.causal kTopLeft or kBottomRight (the same thing
  /// here, as in a full pass) the query at position p sees the keys at positions <= p, so
  /// feeding a sequence chunk by chunk gives the outputs of forward(x) with causal masking;
  /// with kNone every query sees every cached key.
  /// @param x (B, C, E): the chunk (C new tokens)
  /// @param cache make_cache(B, capacity): keys and values of the tokens before the chunk
  /// @param args key_padding_mask (B, S) over all S cached tokens after the append (ragged
  /// prompts), attn_mask broadcastable to (B, H, C, S), causal, generator, need_weights
  /// @throws std::invalid_argument, the cache unchanged, for shapes, masks, a cache that
  /// does not fit the layer or the chunk, or add_bias_kv / add_zero_attn (PyTorch has no
  /// cached form of them)
  template <class S>
  MhaOutput<T> forward(const TensorView<const T>& x, KVCache<T, S>& cache, const MhaArgs<T>& args = {}) const {
    constexpr const char* where = "attn::MultiHeadAttention::forward";
    const Index nb = check_inputs(where, x, x, x, args);
    detail::require(x.dim() == 3 && same_embed_dims() && extra_keys() == 0, where,
                    ": a KV cache needs batched (B, C, E) input, kdim = vdim = embed_dim and no add_bias_kv / "
                    "add_zero_attn (x ", x.shape(), ")");
    const Index len = x.size(1), before = cache.length();  // (the longest sequence's)
    cache.require_fits(where, nb, num_heads_, head_dim_, len);
    const Causal causal = args.causal == Causal::kNone ? Causal::kNone : Causal::kBottomRight;  // positions
    SdpaOptions<T> opt = call_options(where, args, causal, false, nb, len, before + len);
    const detail::WorkBuffer<T> qbuf(nb * len * embed_dim_);
    cache.append_written(len, [&](const HeadsView<T>& k, const HeadsView<T>& v) {
      project_rows(x, {{0, HeadsView<T>::bnhd(qbuf.data(), nb, len, 1, embed_dim_, embed_dim_)},
                       {embed_dim_, k},
                       {2 * embed_dim_, v}});
    });
    try {
      return attend(where, HeadsView<const T>::bnhd(qbuf.data(), nb, len, num_heads_, head_dim_, embed_dim_),
                    kv_cache(cache), opt, args, x.shape());
    } catch (...) {
      cache.pop(len);
      throw;
    }
  }

  /// @brief Cross-attention's keys and values of an encoder memory, projected once into a
  /// cache (which is reset first) for forward_memory to reuse at every decoding step.
  /// @param memory (B, S, kdim); key = value = memory, as in a transformer decoder
  /// @param cache make_cache(B, capacity >= S)
  /// @throws std::invalid_argument, the cache unchanged, for shapes or a cache that does not fit
  template <class S>
  void encode_memory(const TensorView<const T>& memory, KVCache<T, S>& cache) const {
    constexpr const char* where = "attn::MultiHeadAttention::encode_memory";
    const Index nb = detail::check_sequence(where, "memory", memory.shape(), kdim_);
    detail::require(memory.dim() == 3 && kdim_ == vdim_, where, ": memory must be batched (B, S, kdim) and kdim = vdim",
                    " (memory ", memory.shape(), ", kdim ", kdim_, ", vdim ", vdim_, ")");
    const Index len = memory.size(1);
    detail::require(len <= cache.capacity(), where, ": memory of ", len, " tokens does not fit a cache of capacity ",
                    cache.capacity());
    cache.require_fits(where, nb, num_heads_, head_dim_, 0);
    cache.reset();
    cache.append_written(len, [&](const HeadsView<T>& k, const HeadsView<T>& v) {
      project_rows(memory, {{embed_dim_, k}, {2 * embed_dim_, v}});
    });
  }

  /// @brief Cross-attention of query over the memory encode_memory put in the cache.
  /// @param query (B, L, E); @param cache filled by encode_memory
  /// @param args key_padding_mask (B, S) over the memory, attn_mask, causal, generator,
  /// need_weights, as forward(query, memory, memory, args)
  template <class S>
  MhaOutput<T> forward_memory(const TensorView<const T>& query, const KVCache<T, S>& cache,
                              const MhaArgs<T>& args = {}) const {
    constexpr const char* where = "attn::MultiHeadAttention::forward_memory";
    const Index nb = detail::check_sequence(where, "query", query.shape(), embed_dim_);
    detail::require(query.dim() == 3 && extra_keys() == 0, where,
                    ": needs batched (B, L, E) queries and no add_bias_kv / add_zero_attn (query ", query.shape(), ")");
    cache.require_fits(where, nb, num_heads_, head_dim_, 0);
    this->require_generator(args.generator, options_.dropout);
    const Index len = query.size(1);
    SdpaOptions<T> opt = call_options(where, args, args.causal, false, nb, len, cache.length());
    const detail::WorkBuffer<T> qbuf(nb * len * embed_dim_);
    project_rows(query, {{0, HeadsView<T>::bnhd(qbuf.data(), nb, len, 1, embed_dim_, embed_dim_)}});
    return attend(where, HeadsView<const T>::bnhd(qbuf.data(), nb, len, num_heads_, head_dim_, embed_dim_),
                  kv_cache(cache), opt, args, query.shape());
  }

 protected:
  /// The parameters by PyTorch name, writable (see Module::slots).
  std::vector<ParameterSlot<T>> slots() override {
    T* w = in_weight_.data();
    T* b = in_bias_.data();
    const Index e = embed_dim_;
    const bool bias = options_.bias;
    std::vector<ParameterSlot<T>> s;
    switch (layout_) {
      case MhaLayout::kTorch:
        if (same_embed_dims()) {
          s.push_back({"in_proj_weight", w, {3 * e, e}});
        } else {
          s.push_back({"q_proj_weight", w, {e, e}});
          s.push_back({"k_proj_weight", w + weight_offset(1), {e, kdim_}});
          s.push_back({"v_proj_weight", w + weight_offset(2), {e, vdim_}});
        }
        if (bias) s.push_back({"in_proj_bias", b, {3 * e}});
        this->append_child(s, out_proj_, "out_proj.");
        break;
      case MhaLayout::kSeparateLinears: {
        const char* names[] = {"q.", "k.", "v."};
        const Index in[] = {e, kdim_, vdim_};
        for (int i = 0; i < 3; ++i) {
          s.push_back({std::string(names[i]) + "weight", w + weight_offset(i), {e, in[i]}});
          if (bias) s.push_back({std::string(names[i]) + "bias", b + i * e, {e}});
        }
        this->append_child(s, out_proj_, "out.");
        break;
      }
      case MhaLayout::kFusedQkv:
        s.push_back({"qkv_proj.weight", w, {3 * e, e}});
        if (bias) s.push_back({"qkv_proj.bias", b, {3 * e}});
        this->append_child(s, out_proj_, "out_proj.");
        break;
    }
    if (options_.add_bias_kv) {
      s.push_back({"bias_k", bias_k_.data(), {1, 1, e}});
      s.push_back({"bias_v", bias_v_.data(), {1, 1, e}});
    }
    return s;
  }
  const char* type_name() const override { return "attn::MultiHeadAttention"; }
  std::vector<Module<T>*> children() override { return {&out_proj_}; }
  void on_parameters_changed() override {
    repack();
    Module<T>::on_parameters_changed();
  }

  /// Loads nn.MultiheadAttention, separate-Linear (q./k./v./out.) or MobileViT (qkv_proj./out_proj.)
  /// names; the layout follows the names present under the prefix.
  void load_parameters(const StateDict<T>& dict, const std::string& prefix, bool strict) override {
    const MhaLayout before = layout_;
    const auto has = [&](const char* name) { return dict.count(prefix + name) != 0; };
    if (has("in_proj_weight") || has("q_proj_weight"))
      set_layout(MhaLayout::kTorch);
    else if (has("q.weight"))
      set_layout(MhaLayout::kSeparateLinears);
    else if (has("qkv_proj.weight"))
      set_layout(MhaLayout::kFusedQkv);
    try {
      Module<T>::load_parameters(dict, prefix, strict);
    } catch (...) {
      set_layout(before);
      throw;
    }
  }

 private:
  /// Per-head views of the projected query, key and value, and the workspace they view.
  struct Projections {
    detail::WorkBuffer<T> qbuf, kbuf, vbuf;
    HeadsView<const T> q, k, v;
    Projections(Index q_elements, Index kv_elements) : qbuf(q_elements), kbuf(kv_elements), vbuf(kv_elements) {}
  };
  /// Copies of k and v with the extra keys, and the masks padded for them.
  struct ExtraKeys {
    RowMatrix<T> k, v;
    Tensor<bool> kpm_bools, am_bools;
    Tensor<T> kpm_values, am_values;
  };

  /// Checks the constructor arguments (before anything is allocated); returns embed_dim.
  static Index validated(Index embed_dim, Index num_heads, const MultiHeadAttentionOptions& o) {
    constexpr const char* where = "attn::MultiHeadAttention";
    detail::require(embed_dim > 0 && num_heads > 0, where, ": embed_dim (", embed_dim, ") and num_heads (",
                    num_heads, ") must be positive");
    detail::require(embed_dim % num_heads == 0, where, ": embed_dim (", embed_dim,
                    ") must be divisible by num_heads (", num_heads, ")");
    detail::require(o.kdim >= 0 && o.vdim >= 0, where, ": kdim (", o.kdim, ") and vdim (", o.vdim,
                    ") must be >= 0 (0 means embed_dim)");
    detail::checked_numel({3, embed_dim, std::max({embed_dim, o.kdim, o.vdim})}, where);  // in_proj size
    detail::check_dropout_p(o.dropout, where);
    return embed_dim;
  }

  /// Checks forward's inputs and flags; returns the batch size (1 unbatched).
  Index check_inputs(const char* where, const TensorView<const T>& query, const TensorView<const T>& key,
                     const TensorView<const T>& value, const MhaArgs<T>& args) const {
    const Index nb = detail::check_sequence(where, "query", query.shape(), embed_dim_);
    detail::check_sequence(where, "key", key.shape(), kdim_);
    detail::check_sequence(where, "value", value.shape(), vdim_);
    detail::require(key.dim() == query.dim() && value.dim() == query.dim() &&
                        (query.dim() == 2 || (key.size(0) == nb && value.size(0) == nb)),
                    where, ": query ", query.shape(), ", key ", key.shape(), " and value ", value.shape(),
                    " must all be batched with the same batch size, or all unbatched");
    detail::require(key.size(-2) == value.size(-2), where, ": key ", key.shape(), " and value ", value.shape(),
                    " must have the same length");
    detail::require(args.causal == Causal::kNone || extra_keys() == 0, where,
                    ": causal masking with add_bias_kv / add_zero_attn is ambiguous; pass an attn_mask");
    this->require_generator(args.generator, options_.dropout);
    return nb;
  }

  /// The attention kernel over k and v views: sdpa(q, out, opt) for attend.
  static auto kv_views(const HeadsView<const T>& k, const HeadsView<const T>& v) {
    return [k, v](const HeadsView<const T>& q, const HeadsView<T>& out, const SdpaOptions<T>& opt) {
      scaled_dot_product_attention<T>(q, k, v, out, opt);
    };
  }
  /// The attention kernel over what a cache holds, in its storage type: sdpa(q, out, opt) for attend.
  template <class S>
  static auto kv_cache(const KVCache<T, S>& cache) {
    return [&cache](const HeadsView<const T>& q, const HeadsView<T>& out, const SdpaOptions<T>& opt) {
      scaled_dot_product_attention<T>(q, cache, out, opt);
    };
  }

  /// Attention of the projected heads (sdpa: kv_views or kv_cache), the weights if asked
  /// for, then the output projection: forward's common tail.
  template <class Sdpa>
  MhaOutput<T> attend(const char* where, const HeadsView<const T>& q, const Sdpa& sdpa, SdpaOptions<T>& opt,
                      const MhaArgs<T>& args, const Shape& query_shape) const {
    const Index nb = q.batch, len_q = q.length;
    MhaOutput<T> result;
    if (args.need_weights) opt.attn_weights = &result.attn_weights;
    const detail::WorkBuffer<T> attn_out(nb * len_q * embed_dim_);
    detail::prefix_errors(where, [&] {
      sdpa(q, HeadsView<T>::bnhd(attn_out.data(), nb, len_q, num_heads_, head_dim_, embed_dim_), opt);
    });
    result.output = Tensor<T>::uninitialized(query_shape);
    out_proj_.apply(Eigen::Map<const RowMatrix<T>>(attn_out.data(), nb * len_q, embed_dim_), result.output.matrix());
    if (args.need_weights)
      result.attn_weights = shape_weights(std::move(result.attn_weights), args.average_attn_weights, query_shape.size() == 2);
    return result;
  }

  /// @brief The kernel options of a call of len_q queries over len_k keys (without the extra
  /// keys), checked before anything is computed or written to a cache.
  SdpaOptions<T> call_options(const char* where, const MhaArgs<T>& args, Causal causal, bool unbatched, Index nb,
                              Index len_q, Index len_k) const {
    SdpaOptions<T> opt = detail::sdpa_options<T>(where, args, scale_, unbatched, len_k);
    opt.causal = causal;
    opt.generator = args.generator;
    opt.dropout_p = this->is_training() ? static_cast<compute_t<T>>(options_.dropout) : 0;
    detail::check_options(where, opt, nb, num_heads_, len_q, len_k);
    return opt;
  }

  /// Keys appended after the S real ones: bias_k / bias_v, then the zero key.
  Index extra_keys() const { return (options_.add_bias_kv ? 1 : 0) + (options_.add_zero_attn ? 1 : 0); }

  /// Projections: one GEMM for each distinct input (fused when the inputs coincide). q is
  /// written as (B*L, E) rows, k and v head-major (B, H, S, D), the layout the attention
  /// kernel reads them in without copying.
  void project(const TensorView<const T>& query, const TensorView<const T>& key, const TensorView<const T>& value,
               Index nb, Projections& p) const {
    const Index e = embed_dim_, nh = num_heads_, d = head_dim_, len_q = query.size(-2), len_k = key.size(-2);
    using Out = LinearOutput<T>;
    p.q = HeadsView<const T>::bnhd(p.qbuf.data(), nb, len_q, nh, d, e);
    p.k = HeadsView<const T>::bhnd(p.kbuf.data(), nb, nh, len_k, d);
    p.v = HeadsView<const T>::bhnd(p.vbuf.data(), nb, nh, len_k, d);
    const Out q{0, HeadsView<T>::bnhd(p.qbuf.data(), nb, len_q, 1, e, e)},
        k{e, HeadsView<T>::bhnd(p.kbuf.data(), nb, nh, len_k, d)}, v{2 * e, HeadsView<T>::bhnd(p.vbuf.data(), nb, nh, len_k, d)};
    if (same_tensor(query, key) && same_tensor(key, value) && same_embed_dims()) {
      project_rows(query, {q, k, v});
    } else {
      project_rows(query, {q});
      if (same_tensor(key, value) && kdim_ == vdim_) {
        project_rows(key, {k, v});
      } else {
        project_rows(key, {k});
        project_rows(value, {v});
      }
    }
  }

  /// x (rows, in) times rows of the stacked [W_q; W_k; W_v] (+ bias) into the outputs, whose
  /// features are rows of that stack, from the packed group that holds them (one GEMM).
  void project_rows(const TensorView<const T>& x, std::initializer_list<LinearOutput<T>> outputs) const {
    const Index first = outputs.begin()->first, last = (outputs.end() - 1)->first + (outputs.end() - 1)->count();
    for (const PackedRows& g : in_packed_)
      if (first >= g.first && last <= g.first + g.weight.out_features()) {
        std::vector<LinearOutput<T>> in_group(outputs);
        for (auto& o : in_group) o.first -= g.first;
        g.weight.apply(x, in_group.data(), Index(in_group.size()));
        return;
      }
  }

  /// Packs the in-projection for the GEMM: consecutive blocks of [W_q; W_k; W_v] with the
  /// same input width together (all three when kdim == vdim == embed_dim), so a fused
  /// projection is one GEMM.
  /// (The groups are made once; packing again reuses their memory.)
  void repack() {
    const Index widths[] = {embed_dim_, kdim_, vdim_};
    if (in_packed_.empty())
      for (int i = 0, j = 1; i < 3; i = j, j = i + 1) {
        while (j < 3 && widths[j] == widths[i]) ++j;
        in_packed_.push_back({i, j - i, {}});
      }
    for (PackedRows& g : in_packed_) {
      const Index first = g.projection * embed_dim_, width = widths[g.projection];
      g.weight.pack(in_weight_.data() + weight_offset(int(g.projection)), g.count * embed_dim_, width, width,
                    options_.bias ? in_bias_.data() + first : nullptr);
      g.first = first;
    }
  }

  /// bias_k / bias_v and the zero key as extra keys after the S real ones (PyTorch's order):
  /// k and v are copied with them, and the masks (checked against the real S by
  /// call_options) get columns that mask nothing for them.
  void append_extra_keys(Projections& p, SdpaOptions<T>& opt, ExtraKeys& x) const {
    const Index len = p.k.length, nb = p.k.batch;
    copy_with_extra_keys(p.k, bias_k_, x.k);
    copy_with_extra_keys(p.v, bias_v_, x.v);
    p.k = HeadsView<const T>::bhnd(x.k.data(), nb, num_heads_, len + extra_keys(), head_dim_);
    p.v = HeadsView<const T>::bhnd(x.v.data(), nb, num_heads_, len + extra_keys(), head_dim_);
    opt.key_padding_mask = pad_keys(opt.key_padding_mask, len, x.kpm_bools, x.kpm_values);
    opt.attn_mask = pad_keys(opt.attn_mask, len, x.am_bools, x.am_values);
  }

  /// Copies the keys (or values) of every head into (B, H, S + extra, D) and appends each
  /// head's part of bias_k (bias_v) and / or the zero row after them.
  void copy_with_extra_keys(const HeadsView<const T>& src, const Vector<T>& learned, RowMatrix<T>& dst) const {
    const Index len = src.length, d = head_dim_, len2 = len + extra_keys();
    dst.setZero(src.batch * src.heads * len2, d);
    for (Index b = 0; b < src.batch; ++b)
      for (Index h = 0; h < src.heads; ++h) {
        const Index at = (b * src.heads + h) * len2;
        dst.middleRows(at, len) = src.head(b, h);
        if (options_.add_bias_kv) dst.row(at + len) = learned.segment(h * d, d).transpose();
      }
  }

  /// Mask m (its last dimension S keys, or 1 when it broadcasts over them) with the extra
  /// keys' columns appended, masking nothing (false for block_where_true, true for
  /// keep_where_true, 0 for additive), as PyTorch pads masks for bias_k and the zero key.
  /// The padded mask views `bools` or `values`.
  Mask<T> pad_keys(const Mask<T>& m, Index len_k, Tensor<bool>& bools, Tensor<T>& values) const {
    using Kind = typename Mask<T>::Kind;
    if (m.empty()) return m;
    Shape shape = m.shape();
    const Index len = shape.back(), rows = detail::checked_numel(shape, "mask") / std::max<Index>(len, 1);
    shape.back() = len_k + extra_keys();
    auto copy_rows = [&](const auto* src, auto* dst) {
      for (Index i = 0; i < rows; ++i)
        for (Index j = 0; j < len_k; ++j) dst[i * shape.back() + j] = src[i * len + (len == 1 ? 0 : j)];
    };
    if (m.kind() == Kind::kAdditive) {
      values = Tensor<T>(shape, T(0));
      copy_rows(m.additive_data(), values.data());
      return Mask<T>::additive(values.view());
    }
    const bool keep = m.kind() == Kind::kKeepWhereTrue;
    bools = Tensor<bool>(shape, keep);
    copy_rows(m.bool_data(), bools.data());
    return keep ? Mask<T>::keep_where_true(bools.view()) : Mask<T>::block_where_true(bools.view());
  }

  /// The weights as forward returns them: (B, H, L, S) averaged over heads into (B, L, S)
  /// if asked, the batch dimension dropped for unbatched input.
  Tensor<T> shape_weights(Tensor<T> w, bool average, bool unbatched) const {
    if (average) {
      const Index nb = w.size(0), nh = w.size(1), len_q = w.size(2), len_s = w.size(3);
      Tensor<T> avg({nb, len_q, len_s});
      for (Index b = 0; b < nb; ++b) {
        auto acc = avg.matrix().middleRows(b * len_q, len_q);
        for (Index h = 0; h < nh; ++h)
          acc += Eigen::Map<const RowMatrix<T>>(w.data() + (b * nh + h) * len_q * len_s, len_q, len_s);
        acc /= static_cast<T>(nh);
      }
      w = std::move(avg);
    }
    if (!unbatched) return w;
    Shape s = w.shape();
    s.erase(s.begin());
    return std::move(w).reshaped(s);
  }

  bool same_embed_dims() const { return kdim_ == embed_dim_ && vdim_ == embed_dim_; }

  static bool same_tensor(const TensorView<const T>& a, const TensorView<const T>& b) {
    return a.data() == b.data() && a.shape() == b.shape();
  }

  /// Where W_q (i = 0), W_k (1), W_v (2) start in in_weight_; i = 3 gives the total size.
  Index weight_offset(int i) const {
    const Index widths[] = {embed_dim_, kdim_, vdim_};
    Index offset = 0;
    for (int j = 0; j < i; ++j) offset += embed_dim_ * widths[j];
    return offset;
  }

  Index embed_dim_, num_heads_, head_dim_, kdim_, vdim_;
  MultiHeadAttentionOptions options_;
  MhaLayout layout_ = MhaLayout::kTorch;
  compute_t<T> scale_ = 1;
  Vector<T> in_weight_;  // [W_q (E, E); W_k (E, kdim); W_v (E, vdim)], row-major, back to back
  Vector<T> in_bias_;    // [b_q; b_k; b_v] (3E) or empty
  /// Projections [projection, projection + count) of [W_q; W_k; W_v] (0: q, 1: k, 2: v),
  /// rows [first, first + weight.out_features()) of the stacked in-projection, packed.
  struct PackedRows {
    Index projection, count;
    PackedLinear<T> weight;
    Index first = 0;
  };
  std::vector<PackedRows> in_packed_;
  Linear<T> out_proj_;
  Vector<T> bias_k_, bias_v_;
};

}  // namespace attn
