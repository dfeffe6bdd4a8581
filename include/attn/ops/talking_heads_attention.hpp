#pragma once
/// @file
/// @brief Talking-heads attention core (Shazeer et al. 2020; timm's CaiT TalkingHeadAttn).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include <Eigen/Core>

#include "attn/core/error.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/attention_common.hpp"
#include "attn/ops/detail/talking_heads_tiles.hpp"
#include "attn/ops/heads_view.hpp"

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

/// Everything one talking-heads call shares between its work items (read-only).
template <class T>
struct TalkingHeadsCall {
  HeadsView<const T> q, k, v;
  HeadsView<T> out;
  const TalkingHeadsMix<T>& mix;
  const SdpaOptions<T>& opt;
  T scale;
  std::uint64_t dropout_key;
  Index key_tile = 0;            ///< keys per tile: a tile of all heads stays in L1
  bool keep_numerators = false;  ///< row-block scheme (else two passes over the keys)
};

/// Work space of one block of R query rows, all heads (each array R-vectors, key-major).
template <class T, int R>
struct TalkingHeadsBlock {
  const TalkingHeadsCall<T>& c;
  Index b, i0, rows, nt;
  T* qt;    ///< (H, Dk, R) scaled queries, transposed
  T* num;   ///< (H, S, R) softmax numerators of every key (row-block scheme only)
  T* t1;    ///< (H, kt, R) logits, then numerators (two-pass scheme)
  T* t2;    ///< (H, kt, R) mixed logits, then weights after proj_w
  T* mb;    ///< (kt, R) mask bias
  T* tmax;  ///< (H, nt, R) tile maxima, then tile normalisers
  T* tsum;  ///< (H, nt, R) tile sums
  T* spare; ///< (2, H, R) tile maxima and sums recomputed in pass 2 (two-pass scheme)
  T* wn;    ///< (H, H, R) proj_w weights times one tile's normalisers
  T* acc;   ///< (H, Dv, R) output, transposed

  static Index scratch_size(const TalkingHeadsCall<T>& c) {
    const Index nh = c.q.heads, kt = c.key_tile, nt = (c.k.length + kt - 1) / kt;
    return R * (nh * c.q.dim + (c.keep_numerators ? nh * c.k.length : 0) + 2 * nh * kt + kt + 2 * nh * nt +
                2 * nh + nh * nh + nh * c.v.dim);
  }

  TalkingHeadsBlock(const TalkingHeadsCall<T>& call, Index batch, Index first_row, T* scratch)
      : c(call), b(batch), i0(first_row), rows(std::min<Index>(R, call.q.length - first_row)),
        nt((call.k.length + call.key_tile - 1) / call.key_tile) {
    const Index nh = c.q.heads, kt = c.key_tile;
    qt = scratch;
    num = qt + nh * c.q.dim * R;
    t1 = num + (c.keep_numerators ? nh * c.k.length * R : 0);
    t2 = t1 + nh * kt * R;
    mb = t2 + nh * kt * R;
    tmax = mb + kt * R;
    tsum = tmax + nh * nt * R;
    spare = tsum + nh * nt * R;
    wn = spare + 2 * nh * R;
    acc = wn + nh * nh * R;
  }

  /// Pass 1, then pass 2: the block's rows of out (and of the weights if asked).
  void run() {
    const Index nh = c.q.heads, dk = c.q.dim, dv = c.v.dim, kt = c.key_tile;
    for (Index h = 0; h < nh; ++h) {
      const T* src = c.q.data + b * c.q.batch_stride + h * c.q.head_stride + i0 * c.q.row_stride;
      for (Index e = 0; e < dk; ++e) {
        T* dst = qt + (h * dk + e) * R;
        for (Index r = 0; r < rows; ++r) dst[r] = src[r * c.q.row_stride + e] * c.scale;
        std::fill(dst + rows, dst + R, T(0));
      }
    }
    // Pass 1: every tile's numerators, maxima and sums; then each mixed head's normaliser.
    for (Index t = 0; t < nt; ++t) {
      if (c.keep_numerators)
        numerators(t, num + t * kt * R, c.k.length * R, tmax + t * R, tsum + t * R, nt * R);
      else
        numerators(t, t1, kt * R, tmax + t * R, tsum + t * R, nt * R);
    }
    for (Index g = 0; g < nh; ++g) th::tile_normalisers<T, R>(tmax + g * nt * R, tsum + g * nt * R, nt);

    // Pass 2: normalise, proj_w, dropout, weights, times v.
    std::fill(acc, acc + nh * dv * R, T(0));
    const T* ww = c.mix.weights_weight.data();
    const T* bw = c.mix.weights_bias.data();
    const auto& opt = c.opt;
    for (Index t = 0; t < nt; ++t) {
      const Index j0 = t * kt, nk = std::min(kt, c.k.length - j0);
      const T* e = c.keep_numerators ? num + j0 * R : t1;
      const Index e_stride = c.keep_numerators ? c.k.length * R : kt * R;
      // Recomputed exactly as in pass 1 (same tile, same operations).
      if (!c.keep_numerators) numerators(t, t1, kt * R, spare, spare + nh * R, R);
      // proj_w with each mixed head's normaliser folded in: wn[f][g][r] = W_w[f][g] * c_g[r].
      for (Index f = 0; f < nh; ++f)
        for (Index g = 0; g < nh; ++g)
          for (Index r = 0; r < R; ++r) wn[(f * nh + g) * R + r] = ww[f * nh + g] * tmax[(g * nt + t) * R + r];
      th::mix_scaled<T, R>(wn, bw, nh, e, e_stride, t2, kt * R, nk);
      for (Index f = 0; f < nh; ++f) {
        T* p = t2 + f * kt * R;
        if (opt.dropout_p > T(0))
          th::dropout_tile<T, R>(p, nk, rows, opt.dropout_p, c.dropout_key, b, f, nh, i0, c.q.length, j0, c.k.length);
        if (opt.attn_weights) {
          T* w = opt.attn_weights->data() + ((b * nh + f) * c.q.length + i0) * c.k.length + j0;
          for (Index r = 0; r < rows; ++r)
            for (Index j = 0; j < nk; ++j) w[r * c.k.length + j] = p[j * R + r];
        }
        th::weights_times_values<T, R>(p, nk, c.v.data + b * c.v.batch_stride + f * c.v.head_stride + j0 * c.v.row_stride,
                                       c.v.row_stride, dv, acc + f * dv * R);
      }
    }
    for (Index f = 0; f < nh; ++f) {
      T* dst = c.out.data + b * c.out.batch_stride + f * c.out.head_stride + i0 * c.out.row_stride;
      for (Index r = 0; r < rows; ++r)
        for (Index e = 0; e < dv; ++e) dst[r * c.out.row_stride + e] = acc[(f * dv + e) * R + r];
    }
  }

  /// Key tile t: logits of all heads, proj_l, masks, and each mixed head g's numerators
  /// exp(x - tile max) into out + g * out_stride ((nk, R)), its tile max and sum into
  /// max + g * stat_stride and sum + g * stat_stride.
  void numerators(Index t, T* out, Index out_stride, T* max, T* sum, Index stat_stride) {
    const auto& opt = c.opt;
    const Index nh = c.q.heads, dk = c.q.dim, kt = c.key_tile, len_q = c.q.length, len_k = c.k.length;
    const Index j0 = t * kt, nk = std::min(kt, len_k - j0);
    const Index shift = opt.causal == Causal::kBottomRight ? len_k - len_q : 0;
    if (opt.causal != Causal::kNone && i0 + rows - 1 + shift < j0) {
      // The whole tile is in the future of every row: causal masking makes it -inf.
      for (Index g = 0; g < nh; ++g) {
        std::fill(out + g * out_stride, out + g * out_stride + nk * R, T(0));
        std::fill(max + g * stat_stride, max + g * stat_stride + R, -std::numeric_limits<T>::infinity());
        std::fill(sum + g * stat_stride, sum + g * stat_stride + R, T(0));
      }
      return;
    }
    for (Index h = 0; h < nh; ++h)
      th::scores<T, R>(qt + h * dk * R, dk, c.k.data + b * c.k.batch_stride + h * c.k.head_stride + j0 * c.k.row_stride,
                       c.k.row_stride, nk, t1 + h * kt * R);
    th::mix(c.mix.logits_weight.data(), c.mix.logits_bias.data(), nh, t1, kt * R, t2, kt * R, nk * R);
    const bool per_head_mask = !opt.attn_mask.empty() && opt.attn_mask.shape().size() == 3;
    for (Index g = 0; g < nh; ++g) {
      T* tile = t2 + g * kt * R;
      if (th::has_additive_mask(opt)) {
        if (g == 0 || per_head_mask) th::mask_tile<T, R>(opt, b, g, nh, i0, rows, j0, nk, len_q, len_k, mb);
        for (Index x = 0; x < nk * R; ++x) tile[x] += mb[x];
      }
      if (opt.causal != Causal::kNone) th::causal_tile<T, R>(opt, i0, rows, j0, nk, len_q, len_k, tile);
      th::exp_tile<T, R>(tile, nk, out + g * out_stride, max + g * stat_stride, sum + g * stat_stride);
    }
  }
};

/// How a block's softmax normalisers are made exact (the results are bit-identical).
enum class TalkingHeadsScheme {
  kAuto,      ///< kRowBlock while the numerators of a block take <= 8 MiB, else kTwoPass
  kRowBlock,  ///< keep the numerators of all keys (H * S * R elements per thread)
  kTwoPass,   ///< recompute them in pass 2 (logits, proj_l, masks and exp twice)
};

/// All blocks of R query rows, in parallel: a work item is one (batch, query block), so
/// the items depend only on the problem, and each is computed the same way on any thread;
/// results do not depend on the thread count. Each thread allocates its scratch once.
template <class T, int R>
void talking_heads_blocks(TalkingHeadsCall<T> c, TalkingHeadsScheme scheme) {
  const Index nh = std::max<Index>(c.q.heads, 1);
  // Keys per tile: one tile of all heads, (H, kt, R), takes about 32 KiB (measured at S = 784,
  // 8 heads: 16 KiB tiles are 5-8% slower, 8 KiB 15%; 48 KiB about the same).
  constexpr Index kTileBytes = 32768;
  constexpr Index step = th::register_tile<T, R>();
  c.key_tile = std::clamp<Index>(kTileBytes / (nh * R * Index(sizeof(T))) / step * step, step, 256);
  // Measured (S = 784 .. 8192, 8 heads): keeping the numerators is 1.2-1.4x faster up to
  // S = 4096 (4 MiB per block) and no slower at 8 MiB; beyond, two passes bound the memory.
  constexpr Index kNumeratorBytes = Index(8) << 20;
  c.keep_numerators = scheme == TalkingHeadsScheme::kRowBlock ||
                      (scheme == TalkingHeadsScheme::kAuto && nh * c.k.length * R * Index(sizeof(T)) <= kNumeratorBytes);
  const Index nb = c.q.batch, blocks = (c.q.length + R - 1) / R;
  const Index scratch_size = TalkingHeadsBlock<T, R>::scratch_size(c);
  th::ThreadScratch<T> scratch;
  const auto item = [&](Index i) {
    Vector<T> spare;
    TalkingHeadsBlock<T, R>(c, i / blocks, i % blocks * R, scratch.get(scratch_size, spare)).run();
  };
  // Below ~2^18 (query, key, head) triples (well under a millisecond) starting threads
  // costs more than it saves.
  if (nb * blocks * R * c.k.length * nh < (Index(1) << 18))
    for (Index i = 0; i < nb * blocks; ++i) item(i);
  else
    parallel_for(nb * blocks, item);
}

/// talking_heads_attention with a choice of scheme (tests compare the two).
template <class T>
void talking_heads_attention(const HeadsView<const T>& q, const HeadsView<const T>& k, const HeadsView<const T>& v,
                             const HeadsView<T>& out, const TalkingHeadsMix<T>& mix, const SdpaOptions<T>& opt,
                             TalkingHeadsScheme scheme) {
  constexpr const char* where = "attn::talking_heads_attention";
  check_attention_args(where, q, k, v, out, opt);
  const Index nh = q.heads;
  require(mix.logits_weight.rows() == nh && mix.logits_weight.cols() == nh && mix.weights_weight.rows() == nh &&
              mix.weights_weight.cols() == nh && mix.logits_bias.size() == nh && mix.weights_bias.size() == nh,
          where, ": proj_l / proj_w must be Linear(", nh, ", ", nh, ") for ", nh, " heads");
  const T scale = opt.scale ? *opt.scale : T(1) / std::sqrt(static_cast<T>(q.dim));
  const std::uint64_t key = opt.dropout_p > T(0) ? opt.generator->next_key() : 0;
  if (opt.attn_weights) *opt.attn_weights = Tensor<T>({q.batch, nh, q.length, k.length});
  const TalkingHeadsCall<T> call{q, k, v, out, mix, opt, scale, key};
  // Query rows per block: 128 bytes of a row vector (32 floats, 16 doubles), or one SIMD
  // packet when L is shorter than that (decoding a few rows).
  constexpr int kFewRows = th::kPacketSize<T>;
  constexpr int kRows = std::max(kFewRows, 128 / static_cast<int>(sizeof(T)));
  if (q.length >= kRows)
    talking_heads_blocks<T, kRows>(call, scheme);
  else
    talking_heads_blocks<T, kFewRows>(call, scheme);
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
