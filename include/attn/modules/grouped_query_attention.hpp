#pragma once
/// @file
/// @brief GroupedQueryAttention<T>: the attention layer of Llama, Mistral and Qwen2 (grouped
/// key/value heads, rotary positions), full-sequence and incremental.

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "attn/core/error.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"
#include "attn/modules/attention_args.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/module.hpp"
#include "attn/modules/options.hpp"
#include "attn/ops/kv_cache.hpp"
#include "attn/ops/rotary.hpp"
#include "attn/ops/scaled_dot_product_attention.hpp"
#include "attn/ops/varlen.hpp"

namespace attn {

/// @brief Grouped-query attention as in HF's LlamaAttention / MistralAttention / Qwen2Attention:
/// q_proj (H*D, E), k_proj and v_proj (K*D, E), o_proj (E, H*D) without bias, q and k
/// rotated by position, query head h reading key/value head h / (H / K) (no copy of k or v;
/// K = 1 is multi-query attention), causal masking, scale 1/sqrt(D); optionally gpt-oss's
/// attention sinks (GqaOptions::sinks: parameter `sinks`, (H)).
///
/// forward(x) runs a whole sequence at positions 0 .. L-1. forward(x, cache) runs a chunk of
/// new tokens of each sequence at its positions cache.position(b) .. : it projects only the
/// chunk, appends its keys and values to the cache and attends over everything the sequence
/// holds; chunk by chunk it gives the full-sequence outputs. The cache's sequences may hold
/// different lengths (a ragged batch, KVCache): each decodes at its own position.
template <class T>
class GroupedQueryAttention : public Module<T> {
 public:
  /// @param embed_dim E, hidden_size
  /// @param num_heads H, num_attention_heads
  /// @param num_kv_heads K, num_key_value_heads; H must be a multiple of K
  /// @param head_dim D (0: E / H, which must then divide exactly)
  /// @param options biases, rotary embedding, sliding window, softcap, dropout, sinks
  /// @throws std::invalid_argument for sizes or options that do not fit
  GroupedQueryAttention(Index embed_dim, Index num_heads, Index num_kv_heads, Index head_dim = 0,
                        const GqaOptions& options = {})
      : head_dim_(validated(embed_dim, num_heads, num_kv_heads, head_dim, options)),  // first member: checks run first
        num_heads_(num_heads),
        num_kv_heads_(num_kv_heads),
        options_(options),
        q_proj_(embed_dim, num_heads * head_dim_, options.qkv_bias, 41),
        k_proj_(embed_dim, num_kv_heads * head_dim_, options.qkv_bias, 43),
        v_proj_(embed_dim, num_kv_heads * head_dim_, options.qkv_bias, 45),
        o_proj_(num_heads * head_dim_, embed_dim, false, 47),
        sinks_(Vector<T>::Zero(options.sinks ? num_heads : 0)) {}

  Index embed_dim() const { return q_proj_.in_features(); }  ///< E
  Index num_heads() const { return num_heads_; }              ///< H
  Index num_kv_heads() const { return num_kv_heads_; }        ///< K
  Index head_dim() const { return head_dim_; }                ///< D
  const GqaOptions& options() const { return options_; }     ///< as constructed

  /// @brief A cache for forward(x, cache): (batch, K, capacity, D), stored in S (T, or float,
  /// bfloat16, half or std::int8_t: see KVCache).
  template <class S = T>
  KVCache<T, S> make_cache(Index batch, Index capacity) const {
    return KVCache<T, S>(batch, num_kv_heads_, capacity, head_dim_);
  }
  /// @brief A paged cache for forward(x, cache): `batch` sequences of at most `capacity`
  /// positions in `pool`'s pages of (K, page_size, D) (see KVCache).
  template <class S = T>
  KVCache<T, S> make_cache(Index batch, Index capacity, KVPages pool) const {
    return KVCache<T, S>(batch, num_kv_heads_, capacity, head_dim_, pool);
  }

  /// @brief The whole sequence, causal.
  /// @param x (B, L, E)
  /// @param args key_padding_mask (B, L), attn_mask broadcastable to (B, H, L, L), generator
  /// (training with dropout); the masking is causal besides
  /// @return (B, L, E)
  Tensor<T> forward(const TensorView<const T>& x, const GqaArgs<T>& args = {}) const {
    constexpr const char* where = "attn::GroupedQueryAttention::forward";
    const Index nb = check_input(where, x, args), len = x.size(1);
    SdpaOptions<T> opt = attention_options(where, args, nb, len, len);
    const WorkBuffer q(nb * len * num_heads_ * head_dim_), k(nb * num_kv_heads_ * len * head_dim_), v(k.size());
    const HeadsView<T> kh = HeadsView<T>::bhnd(k.data(), nb, num_kv_heads_, len, head_dim_),
                       vh = HeadsView<T>::bhnd(v.data(), nb, num_kv_heads_, len, head_dim_);
    project(x, q.data(), kh, vh, rotary_table(1, len, [](Index, Index n) { return n; }));
    return attend(where, x.shape(), [&](const HeadsView<const T>& qh, const HeadsView<T>& out) {
      scaled_dot_product_attention<T>(qh, kh, vh, out, opt);
    }, q.data());
  }

  /// @brief A chunk of new tokens with a KV cache (decoding), sequence b's at positions
  /// cache.position(b) ..
  /// @param x (B, C, E); @param cache make_cache<S>(B, capacity): the chunk's keys and values
  /// are stored in S (rounded or quantised once), and attention reads them in S. A rolling
  /// cache (KVCache::set_rolling_window) needs a sliding window no wider than its own.
  /// @param args key_padding_mask (B, S) over the S cached tokens after the append (ragged
  /// prompts), attn_mask broadcastable to (B, H, C, S), generator; masking is causal
  /// (bottom-right)
  /// @return (B, C, E)
  /// @throws std::invalid_argument, the cache unchanged, for shapes, masks, or a cache that
  /// does not fit the layer or the chunk
  template <class S>
  Tensor<T> forward(const TensorView<const T>& x, KVCache<T, S>& cache, const GqaArgs<T>& args = {}) const {
    constexpr const char* where = "attn::GroupedQueryAttention::forward";
    const Index nb = check_input(where, x, args), len = x.size(1);
    cache.require_fits(where, nb, num_kv_heads_, head_dim_, len, options_.sliding_window);
    SdpaOptions<T> opt = attention_options(where, args, nb, len, cache.length_after(len));
    const WorkBuffer q(nb * len * num_heads_ * head_dim_);
    const auto table = rotary_table(nb, len, [&](Index b, Index n) { return cache.position(b) + n; });
    cache.append_written(len, [&](const HeadsView<T>& k, const HeadsView<T>& v) { project(x, q.data(), k, v, table); });
    try {
      return attend(where, x.shape(), [&](const HeadsView<const T>& qh, const HeadsView<T>& out) {
        scaled_dot_product_attention<T>(qh, cache, out, opt);
      }, q.data());
    } catch (...) {
      cache.pop(len);
      throw;
    }
  }

  /// @brief Packed sequences of different lengths, none padded (varlen prefill): sequence b is
  /// rows [cu_seqlens[b], cu_seqlens[b + 1]) of x, at positions 0 .. n_b - 1, attending
  /// causally within itself only (scaled_dot_product_attention_varlen); one projection GEMM
  /// for all rows. Each sequence's outputs are those of forward on it alone.
  /// @param x (T, E): every sequence's tokens, one after another
  /// @param cu_seqlens (B + 1) from 0 to T, never decreasing (I64)
  /// @param args generator only (no masks: they are per batch, not per packed sequence)
  /// @return (T, E)
  /// @throws std::invalid_argument for shapes, bad cu_seqlens or masks
  Tensor<T> forward(const TensorView<const T>& x, const TensorView<const std::int64_t>& cu_seqlens,
                    const GqaArgs<T>& args = {}) const {
    constexpr const char* where = "attn::GroupedQueryAttention::forward";
    detail::require(x.dim() == 2, where, ": packed x has shape ", x.shape(), ", expected (tokens, ", embed_dim(), ")");
    detail::require(args.key_padding_mask.empty() && args.attn_mask.empty(), where,
                    ": packed sequences take no key_padding_mask or attn_mask");
    const Index total = x.size(0);
    const TensorView<const T> rows(x.data(), {1, total, x.size(1)});
    check_input(where, rows, args);
    const Index nb = detail::checked_cu_seqlens(where, "cu_seqlens", cu_seqlens, total);
    const SdpaOptions<T> opt = attention_options(where, args, 1, total, total);
    const WorkBuffer q(total * num_heads_ * head_dim_), k(num_kv_heads_ * total * head_dim_), v(k.size());
    const HeadsView<T> kh = HeadsView<T>::bhnd(k.data(), 1, num_kv_heads_, total, head_dim_),
                       vh = HeadsView<T>::bhnd(v.data(), 1, num_kv_heads_, total, head_dim_);
    const std::int64_t* cu = cu_seqlens.data();
    std::vector<Index> start(static_cast<std::size_t>(total));  // each token's sequence's first row
    for (Index b = 0; b < nb; ++b) std::fill(start.begin() + cu[b], start.begin() + cu[b + 1], Index(cu[b]));
    project(rows, q.data(), kh, vh, rotary_table(1, total, [&](Index, Index t) { return t - start[std::size_t(t)]; }));
    return attend(where, rows.shape(), [&](const HeadsView<const T>& qh, const HeadsView<T>& out) {
      scaled_dot_product_attention_varlen<T>(qh, kh, vh, out, cu_seqlens, cu_seqlens, opt);
    }, q.data()).reshaped(x.shape());
  }

 protected:
  /// The parameters by PyTorch name, writable (see Module::slots).
  std::vector<ParameterSlot<T>> slots() override {
    std::vector<ParameterSlot<T>> s;
    this->append_child(s, q_proj_, "q_proj.");
    this->append_child(s, k_proj_, "k_proj.");
    this->append_child(s, v_proj_, "v_proj.");
    this->append_child(s, o_proj_, "o_proj.");
    if (options_.sinks) s.push_back({"sinks", sinks_.data(), {num_heads_}});
    return s;
  }
  const char* type_name() const override { return "attn::GroupedQueryAttention"; }
  std::vector<Module<T>*> children() override { return {&q_proj_, &k_proj_, &v_proj_, &o_proj_}; }

 private:
  using WorkBuffer = detail::WorkBuffer<T>;

  /// The options of one call, checked before anything is written: causal (bottom-right),
  /// window, softcap, sinks, dropout, and the masks against len queries over `keys` keys.
  SdpaOptions<T> attention_options(const char* where, const GqaArgs<T>& args, Index nb, Index len,
                                   Index keys) const {
    SdpaOptions<T> opt = detail::sdpa_options<T>(where, args, scale(), false, keys);
    opt.causal = Causal::kBottomRight;
    opt.sliding_window = options_.sliding_window;
    if (options_.softcap) opt.softcap = static_cast<compute_t<T>>(*options_.softcap);
    if (options_.sinks) opt.sinks = TensorView<const T>(sinks_.data(), {num_heads_});
    opt.generator = args.generator;
    opt.dropout_p = this->is_training() ? static_cast<compute_t<T>>(options_.dropout) : 0;
    detail::check_options(where, opt, nb, num_heads_, len, keys);
    return opt;
  }

  /// With rope, the cos and sin of position(b, n) for `len` tokens n of each of `nb` sequences
  /// b (one row when all sequences start at the same position); else none.
  template <class Position>
  std::optional<RotaryTable<T>> rotary_table(Index nb, Index len, Position&& position) const {
    if (!options_.rope) return std::nullopt;
    bool shared = true;  // (each row counts up from its first position)
    for (Index b = 1; b < nb && shared; ++b) shared = position(b, 0) == position(0, 0);
    Tensor<std::int64_t> positions({shared ? 1 : nb, len});
    for (Index b = 0; b < positions.size(0); ++b)
      for (Index n = 0; n < len; ++n) positions.data()[b * len + n] = position(b, n);
    return RotaryTable<T>(options_.rotary, head_dim_, positions.view());
  }

  /// q (B*L, H*D rows) = q_proj(x), k and v (B, K, L, D) = k_proj(x), v_proj(x), q and k
  /// rotated by `table` (cos and sin computed once for both), if there is one.
  void project(const TensorView<const T>& x, T* q, const HeadsView<T>& k, const HeadsView<T>& v,
               const std::optional<RotaryTable<T>>& table) const {
    const Index nb = x.size(0), len = x.size(1), hd = num_heads_ * head_dim_;
    q_proj_.apply(x, {{0, HeadsView<T>::bnhd(q, nb, len, 1, hd, hd)}});
    k_proj_.apply(x, {{0, k}});
    v_proj_.apply(x, {{0, v}});
    if (!table) return;
    table->apply(HeadsView<T>::bnhd(q, nb, len, num_heads_, head_dim_, hd));
    table->apply(k);
  }

  /// Attention of the projected q (sdpa(q heads, out heads): over the sequence's or the
  /// cache's keys and values), then o_proj.
  template <class Sdpa>
  Tensor<T> attend(const char* where, const Shape& shape, Sdpa&& sdpa, const T* q) const {
    const Index nb = shape[0], len = shape[1], hd = num_heads_ * head_dim_;
    const WorkBuffer out(nb * len * hd);
    detail::prefix_errors(where, [&] {
      sdpa(HeadsView<const T>::bnhd(q, nb, len, num_heads_, head_dim_, hd),
           HeadsView<T>::bnhd(out.data(), nb, len, num_heads_, head_dim_, hd));
    });
    auto y = Tensor<T>::uninitialized(shape);
    o_proj_.apply(Eigen::Map<const RowMatrix<T>>(out.data(), nb * len, hd), y.matrix());
    return y;
  }

  compute_t<T> scale() const { return compute_t<T>(1) / std::sqrt(static_cast<compute_t<T>>(head_dim_)); }

  Index check_input(const char* where, const TensorView<const T>& x, const GqaArgs<T>& args) const {
    detail::require(x.dim() == 3 && x.size(2) == embed_dim(), where, ": x has shape ", x.shape(),
                    ", expected (batch, length, ", embed_dim(), ")");
    this->require_generator(args.generator, options_.dropout);
    return x.size(0);
  }

  /// Checks the constructor arguments before anything is allocated; returns the head dim.
  static Index validated(Index embed_dim, Index num_heads, Index num_kv_heads, Index head_dim, const GqaOptions& o) {
    constexpr const char* where = "attn::GroupedQueryAttention";
    detail::require(embed_dim > 0 && num_heads > 0 && num_kv_heads > 0 && head_dim >= 0, where, ": embed_dim (",
                    embed_dim, "), num_heads (", num_heads, ") and num_kv_heads (", num_kv_heads,
                    ") must be positive, head_dim (", head_dim, ") >= 0");
    detail::require(num_heads % num_kv_heads == 0, where, ": num_heads (", num_heads,
                    ") must be a multiple of num_kv_heads (", num_kv_heads, ")");
    detail::require(head_dim > 0 || embed_dim % num_heads == 0, where, ": embed_dim (", embed_dim,
                    ") is not divisible by num_heads (", num_heads, "): give head_dim");
    const Index d = head_dim > 0 ? head_dim : embed_dim / num_heads;
    detail::checked_numel({num_heads, d, embed_dim}, where);
    if (o.rope) RotaryTable<T>(o.rotary, d, 0);  // checks rotary_dim and theta
    detail::require(!o.sliding_window || *o.sliding_window >= 1, where, ": sliding_window must be >= 1, got ",
                    o.sliding_window.value_or(0));
    detail::require(!o.softcap || *o.softcap > 0, where, ": softcap must be > 0, got ", o.softcap.value_or(0.0));
    detail::check_dropout_p(o.dropout, where);
    return d;
  }

  Index head_dim_, num_heads_, num_kv_heads_;
  GqaOptions options_;
  Linear<T> q_proj_, k_proj_, v_proj_, o_proj_;
  Vector<T> sinks_;  ///< (H) when options_.sinks, else empty
};

}  // namespace attn
