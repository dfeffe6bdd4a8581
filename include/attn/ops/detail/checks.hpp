#pragma once
/// @file
/// @brief The argument checks of an attention call, and what its kernels share once the
/// arguments are known to be good (AttentionCall). Not public API.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "attn/core/attention_options.hpp"
#include "attn/core/error.hpp"
#include "attn/core/generator.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/masks.hpp"
#include "attn/ops/detail/softmax_state.hpp"
#include "attn/ops/detail/tile.hpp"

namespace attn {
namespace detail {

/// Checks that a paged view's page table holds a page in [0, pages) for every position it
/// views. Returns the last position of a page plus one (the rows a page spans).
template <class T>
Index check_pages(const char* where, const char* name, const HeadsView<T>& v) {
  const PageTable& p = v.pages;
  require(p.page_size >= 1 && p.stride * p.page_size >= v.length && p.pages >= 1, where, ": ", name, " of shape ",
          v.shape(), " is paged with pages of ", p.page_size, " positions, ", p.stride, " per sequence, ", p.pages,
          " pages: not enough for its length");
  for (Index b = 0; b < v.batch; ++b)
    for (Index n = 0; n < v.length; n += p.page_size)
      require(p.page(b, n) >= 0 && p.page(b, n) < p.pages, where, ": ", name, "'s page table gives page ",
              p.page(b, n), " (of ", p.pages, ") to position ", n, " of batch element ", b);
  return p.page_size;
}

/// Checks that a view is well formed: sizes >= 0, rows at least head_dim apart, data when
/// non-empty, a paged view's page table (check_pages). Returns the address range [first,
/// last) it spans.
template <class T>
std::pair<const void*, const void*> check_view(const char* where, const char* name, const HeadsView<T>& v) {
  require(v.batch >= 0 && v.heads >= 0 && v.length >= 0 && v.head_dim >= 0, where, ": ", name, " has negative size ",
          v.shape());
  require(v.row_stride >= v.head_dim && v.head_stride >= 0 && v.batch_stride >= 0, where, ": ", name,
          " has strides (batch ", v.batch_stride, ", head ", v.head_stride, ", row ", v.row_stride,
          ") smaller than its rows (", v.head_dim, ")");
  if (v.batch == 0 || v.heads == 0 || v.length == 0 || v.head_dim == 0) return {nullptr, nullptr};
  require(v.data != nullptr, where, ": ", name, " of shape ", v.shape(), " has no data");
  const Index blocks = v.pages ? v.pages.pages : v.batch, rows = v.pages ? check_pages(where, name, v) : v.length;
  const Index last = (blocks - 1) * v.batch_stride + (v.heads - 1) * v.head_stride + (rows - 1) * v.row_stride + v.head_dim;
  return {v.data, v.data + last};
}

/// Checks that k and v are not paged, for an operation that reads a head as one strided matrix.
template <class S>
void require_unpaged(const char* where, const HeadsView<const S>& k, const HeadsView<const S>& v) {
  require(!k.pages && !v.pages, where, ": k ", k.shape(), " and v ", v.shape(),
          " must not be paged (a paged KV cache's keys and values); scaled_dot_product_attention reads them");
}

/// Checks that no two elements of an output view share memory (threads write its heads
/// and rows at once): its (stride, count) dimensions, sorted by stride, must each step
/// past everything the smaller ones span.
template <class T>
void check_disjoint(const char* where, const char* name, const HeadsView<T>& v) {
  if (v.batch == 0 || v.heads == 0 || v.length == 0 || v.head_dim == 0) return;
  std::pair<Index, Index> dims[3] = {{v.row_stride, v.length}, {v.head_stride, v.heads}, {v.batch_stride, v.batch}};
  std::sort(std::begin(dims), std::end(dims));
  Index span = v.head_dim;  // elements one row covers
  for (const auto& d : dims) {
    if (d.second == 1) continue;
    require(d.first >= span, where, ": ", name, " of shape ", v.shape(), " has strides (batch ", v.batch_stride,
            ", head ", v.head_stride, ", row ", v.row_stride, ") under which different elements share memory");
    span = d.first * (d.second - 1) + span;
  }
}

/// A view's name and the address range check_view found it spans.
using NamedRange = std::pair<const char*, std::pair<const void*, const void*>>;

/// Checks that output `out` does not share memory with view `in`.
inline void require_apart(const char* where, const NamedRange& out, const NamedRange& in) {
  const auto &a = out.second, &b = in.second;
  std::less<const void*> before;  // a total order on pointers
  require(a.first == nullptr || b.first == nullptr || !before(b.first, a.second) || !before(a.first, b.second), where,
          ": ", out.first, " overlaps ", in.first, " in memory");
}

/// Checks the output views of a call: each well formed, unpaged and disjoint (check_disjoint),
/// and apart from every input and every other output.
template <class T>
void check_outputs(const char* where, std::initializer_list<std::pair<const char*, HeadsView<T>>> outputs,
                   std::initializer_list<std::pair<const char*, HeadsView<const T>>> inputs) {
  std::vector<NamedRange> seen;
  for (const auto& in : inputs) seen.push_back({in.first, check_view(where, in.first, in.second)});
  for (const auto& out : outputs) {
    const NamedRange range{out.first, check_view(where, out.first, out.second)};
    require(!out.second.pages, where, ": ", out.first, " cannot be a paged view");
    check_disjoint(where, out.first, out.second);
    for (const NamedRange& other : seen) require_apart(where, range, other);
    seen.push_back(range);
  }
}

/// Every element of a (well formed) view set to x.
template <class T>
void fill_view(const HeadsView<T>& v, T x) {
  for (Index b = 0; b < v.batch; ++b)
    for (Index h = 0; h < v.heads; ++h)
      for (Index n = 0; n < v.length; ++n) std::fill(v.row(b, h, n), v.row(b, h, n) + v.head_dim, x);
}

/// Checks the views of an attention call: well formed, the output disjoint and not
/// overlapping an input, and shapes that pair up.
template <class T, class S>
void check_views(const char* where, const HeadsView<const T>& q, const HeadsView<const S>& k,
                 const HeadsView<const S>& v, const HeadsView<T>& out) {
  const NamedRange out_range{"the output", check_view(where, "output", out)};
  require(!q.pages && !out.pages, where, ": q and the output cannot be paged views (only k and v can)");
  check_disjoint(where, "output", out);
  for (const NamedRange& in : {NamedRange{"q", check_view(where, "q", q)}, NamedRange{"k", check_view(where, "k", k)},
                               NamedRange{"v", check_view(where, "v", v)}})
    require_apart(where, out_range, in);
  require(k.batch == q.batch && v.batch == q.batch && k.heads == v.heads &&
              (k.heads == 0 ? q.heads == 0 : q.heads % k.heads == 0),
          where, ": q ", q.shape(), ", k ", k.shape(), " and v ", v.shape(),
          " must agree in batch, k and v in heads, and q's heads must be a multiple of k's (grouped-query "
          "attention: query head h reads key/value head h / (H / K))");
  require(k.head_dim == q.head_dim, where, ": q ", q.shape(), " and k ", k.shape(), " must have the same head dimension");
  require(k.length == v.length, where, ": k ", k.shape(), " and v ", v.shape(),
          " must have the same length (keys and values pair up)");
  require(out.batch == q.batch && out.heads == q.heads && out.length == q.length && out.head_dim == v.head_dim, where,
          ": output ", out.shape(), " does not match q ", q.shape(), " and v ", v.shape());
}

/// A call's masks checked against its size: key padding (B, S), attention mask
/// broadcastable to (B, H, L, S), ALiBi slopes (H), causal, a window of at least one key
/// (which implies causal masking, bottom-right unless top-left is asked for). The result
/// refers to opt's masks and slopes.
template <class T>
TileMasks<T> tile_masks(const char* where, const SdpaOptions<T>& opt, const AttentionDims& d) {
  TileMasks<T> m{broadcast_key_padding(where, opt.key_padding_mask, d), broadcast_attn_mask(where, opt.attn_mask, d),
                 opt.causal};
  if (opt.sliding_window) {
    require(*opt.sliding_window >= 1, where, ": sliding_window must be at least 1 key, got ", *opt.sliding_window);
    m.window = *opt.sliding_window;
    if (m.causal == Causal::kNone) m.causal = Causal::kBottomRight;
  }
  if (!opt.alibi_slopes.empty()) {
    require(opt.alibi_slopes.shape() == Shape{d.heads}, where, ": alibi_slopes has shape ", opt.alibi_slopes.shape(),
            ", expected (heads) = ", Shape{d.heads});
    m.alibi = opt.alibi_slopes.data();
  }
  return m;
}
template <class T>
TileMasks<T> tile_masks(const char*, SdpaOptions<T>&&, const AttentionDims&) = delete;  // would dangle

/// @brief What every work item of one attention call reads: the views, the masks, the
/// scale, the dropout stream and the sinks; and where it writes the log-sum-exp. Built by
/// prepare_call once the arguments are checked; its masks refer to the caller's
/// SdpaOptions, which must outlive it. q and out hold T, k and v
/// S (a KV cache's storage type: T, float, bfloat16, half, or int8 with a float scale per row
/// in k_scales and v_scales); the kernels compute in C = compute_t<T> (float32 for a 16-bit
/// T), and so do the call's scalars.
template <class T, class S = T>
struct AttentionCall {
  using C = compute_t<T>;
  static_assert(std::is_same<S, T>::value || std::is_same<C, float>::value,
                "k and v in another type than q need float32 compute");
  HeadsView<const T> q;
  HeadsView<const S> k, v;
  HeadsView<T> out;
  TileMasks<T> masks;
  RowScales k_scales, v_scales;  ///< for int8 k and v: each row's scale
  C scale = C(1);           ///< multiplies q before the product
  C softcap = C(0);         ///< logit soft-capping (0: none)
  C dropout_p = C(0);       ///< dropout on the weights (0: none)
  std::uint64_t dropout_key = 0;
  const T* sinks = nullptr;  ///< (H) sink logits, or null
  C* lse = nullptr;          ///< (B, H, L): receives each query's log-sum-exp, or null
  const std::int64_t* key_lengths = nullptr;  ///< (B) keys each batch element holds, or null: all

  AttentionDims dims() const { return {q.batch, q.heads, q.length, k.length}; }
  /// The keys batch element b holds: its key_lengths entry, else all.
  Index keys_of(Index b) const { return key_lengths ? static_cast<Index>(key_lengths[b]) : k.length; }
  /// Queries [i0, i0 + rows) of head h of batch element b over all the keys it holds.
  Tile tile(Index b, Index h, Index i0, Index rows) const {
    return Tile{dims(), b, h, i0, rows, 0, keys_of(b), keys_of(b)};
  }
  /// The key/value head query head h reads (grouped-query attention: H / K query heads share one).
  Index kv_head(Index h) const { return h / (q.heads / k.heads); }

  /// Whether adjust_logits would change something in tile t.
  bool adjusts(const Tile& t) const { return softcap > C(0) || masks.touch(t); }
  /// @brief What happens to a tile's logits between q k^T and the softmax, in this order:
  /// soft-capping (softcap_logits), then the masks (mask_logits). Logit (r, c) of tile t is
  /// at s[r * qs + c * ks]. Every kernel calls this one compiled copy (never inlined); the
  /// backward pass calls the two steps, keeping the capped logits for the cap's derivative.
  EIGEN_DONT_INLINE void adjust_logits(const Tile& t, C* s, Index qs, Index ks) const {
    softcap_logits(t, s, qs, ks);
    mask_logits(t, s, qs, ks);
  }
  /// The first step of adjust_logits: s = softcap * tanh(s / softcap), if soft-capping.
  void softcap_logits(const Tile& t, C* s, Index qs, Index ks) const {
    if (softcap <= C(0)) return;
    if (ks == 1)  // on lines of contiguous logits: query rows, or key columns
      for (Index r = 0; r < t.rows; ++r) softcap_inplace(s + r * qs, t.cols, softcap);
    else if (qs == 1)
      for (Index c = 0; c < t.cols; ++c) softcap_inplace(s + c * ks, t.rows, softcap);
    else
      for (Index r = 0; r < t.rows; ++r)
        for (Index c = 0; c < t.cols; ++c) softcap_inplace(s + r * qs + c * ks, 1, softcap);
  }
  /// The second step of adjust_logits: the masks (TileMasks::apply), where they touch the tile.
  void mask_logits(const Tile& t, C* s, Index qs, Index ks) const {
    if (masks.touch(t)) masks.apply(t, s, qs, ks);
  }

  /// @brief The end of query i of head h of batch element b, whose softmax ended with max m
  /// and sum l: writes its log-sum-exp (with the head's sink) where asked, and returns the
  /// sum its output is divided by (sum_with_sink). Every kernel ends every row here.
  C end_row(Index b, Index h, Index i, C m, C l) const {
    const C sink = sinks ? C(sinks[h]) : -std::numeric_limits<C>::infinity();
    if (lse) lse[(b * q.heads + h) * q.length + i] = log_sum_exp(m, l, sink);
    return sum_with_sink(m, l, sink);
  }
  /// end_row for the queries of tile t, query c's max and sum at m[c] and l[c] (l updated).
  void end_rows(const Tile& t, const C* m, C* l) const {
    for (Index c = 0; c < t.rows; ++c) l[c] = end_row(t.b, t.h, t.i0 + c, m[c], l[c]);
  }
};

/// @brief Checks everything in opt against a call of size d: the masks and ALiBi slopes
/// (tile_masks), the sinks, the key lengths, the dropout probability and its generator, the scale and the
/// softcap.
/// Returns the call's TileMasks (referring to opt's masks).
template <class T>
TileMasks<T> check_options(const char* where, const SdpaOptions<T>& opt, const AttentionDims& d) {
  TileMasks<T> masks = tile_masks(where, opt, d);
  require(opt.sinks.empty() || opt.sinks.shape() == Shape{d.heads}, where, ": sinks has shape ", opt.sinks.shape(),
          ", expected (heads) = ", Shape{d.heads});
  if (!opt.key_lengths.empty()) {
    require(opt.key_lengths.shape() == Shape{d.batch}, where, ": key_lengths has shape ", opt.key_lengths.shape(),
            ", expected (batch) = ", Shape{d.batch});
    const std::int64_t* n = opt.key_lengths.data();
    const auto bad = std::find_if(n, n + d.batch, [&](std::int64_t x) { return x < 0 || x > d.len_k; });
    require(bad == n + d.batch, where, ": key_lengths[", bad - n, "] = ", bad == n + d.batch ? 0 : *bad,
            " is not between 0 and the ", d.len_k, " keys");
  }
  check_dropout_p(opt.dropout_p, where);
  require(opt.dropout_p == 0 || opt.generator != nullptr, where, ": dropout_p = ", opt.dropout_p,
          " needs a Generator (SdpaOptions::generator)");
  if (opt.scale) require(std::isfinite(*opt.scale), where, ": scale must be finite");
  if (opt.softcap)
    require(*opt.softcap > 0 && std::isfinite(*opt.softcap), where, ": softcap must be > 0, got ", *opt.softcap);
  return masks;
}

/// @brief Checks an attention call's arguments (views, then check_options) and returns its
/// AttentionCall. Takes one key from opt.generator when opt.dropout_p > 0 (after every
/// check: a call that throws leaves the generator as it was).
template <class T, class S>
AttentionCall<T, S> prepare_call(const char* where, const HeadsView<const T>& q, const HeadsView<const S>& k,
                                 const HeadsView<const S>& v, const HeadsView<T>& out, const SdpaOptions<T>& opt) {
  check_views(where, q, k, v, out);
  AttentionCall<T, S> call{q, k, v, out, {}, {}, {}};
  call.masks = check_options(where, opt, call.dims());
  using C = compute_t<T>;
  call.scale = opt.scale ? *opt.scale : C(1) / std::sqrt(static_cast<C>(q.head_dim));
  call.softcap = opt.softcap ? *opt.softcap : C(0);
  call.dropout_p = opt.dropout_p;
  call.sinks = opt.sinks.empty() ? nullptr : opt.sinks.data();
  call.key_lengths = opt.key_lengths.empty() ? nullptr : opt.key_lengths.data();
  if (opt.dropout_p > T(0)) call.dropout_key = opt.generator->next_key();
  return call;
}

}  // namespace detail
}  // namespace attn
