#pragma once
/// @file
/// @brief The tiled attention kernel (FlashAttention-2 style online softmax): no (L, S)
/// buffer, a (query block x key block) tile of scores at a time. Not part of the public API.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include <Eigen/Core>

#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/attention_common.hpp"
#include "attn/ops/heads_view.hpp"

namespace attn {
namespace detail {

/// Query rows and keys of one tile of sdpa_tiled_gemm (scores tile: 128 x 256).
constexpr Index kGemmTileQueries = 128;
constexpr Index kGemmTileKeys = 256;

/// @brief out = softmax(scale q k^T + masks) v per (batch, head), one tile at a time, with
/// Eigen GEMMs: the form of sdpa_tiled without SIMD packet code (tests compare the two).
///
/// Per (batch, head, block of query rows): for each block of keys, the scores tile is one
/// GEMM on the strided head views, the masks are added, and the online softmax keeps a
/// running row max m and sum l: when a row's max grows, the accumulator row and l are
/// rescaled by exp(m_old - m_new); the tile becomes p = exp(s - m) (masked entries exactly
/// 0), l += sum(p), dropout scales the kept p by 1/(1-p_drop), and acc += p v is a second
/// GEMM. The output is acc / l, computed once at the end; a row that sees no key gets 0.
/// Dropout acts on the probabilities, so l is the sum before dropout and the result is
/// what the reference kernel gives. Causal masking skips key blocks that are fully in the
/// future of the whole query block; the others are computed on the same tile grid as with
/// an explicit mask, so the two give identical results.
///
/// Arguments must have been checked (check_attention_args). Threaded over (batch, head,
/// query block) items with parallel_for; bit-identical for every thread count.
/// @param scale multiplies q before the product
/// @param key dropout stream key (used when opt.dropout_p > 0)
template <class T>
void sdpa_tiled_gemm(const HeadsView<const T>& q, const HeadsView<const T>& k, const HeadsView<const T>& v,
                const HeadsView<T>& out, const SdpaOptions<T>& opt, T scale, std::uint64_t key) {
  const Index nh = q.heads, len_q = q.length, len_k = k.length, dim = q.dim, dim_v = v.dim;
  if (q.batch == 0 || nh == 0 || len_q == 0 || dim_v == 0) return;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const Index bq = std::min(kGemmTileQueries, len_q), bk = std::max<Index>(std::min(kGemmTileKeys, len_k), 1);
  const Index qblocks = (len_q + bq - 1) / bq;
  const WorkSplit split =
      WorkSplit::of(q.batch * nh * qblocks, static_cast<double>(bq) * len_k * (dim + dim_v + 8));
  const bool masked = !opt.key_padding_mask.empty() || !opt.attn_mask.empty();

  parallel_for(split.items(), [&](Index item) {
    RowMatrix<T> qs(bq, dim), s(bq, bk), acc(bq, dim_v);
    Eigen::Array<T, Eigen::Dynamic, 1> row_max(bq), row_sum(bq);
    for (Index u = split.begin(item); u < split.end(item); ++u) {
      const Index bh = u / qblocks, b = bh / nh, h = bh % nh;
      const Index i0 = (u % qblocks) * bq, rows = std::min(bq, len_q - i0);
      const auto kh = k.head(b, h);
      const auto vh = v.head(b, h);
      auto a = acc.topRows(rows);
      a.setZero();
      row_max.head(rows).setConstant(kNegInf);
      row_sum.head(rows).setZero();
      // Keys after the last one the block's last row may see are masked for every row.
      const Index key_end = opt.causal == Causal::kNone ? len_k
                                                        : causal_last_key(opt, i0 + rows - 1, len_q, len_k) + 1;
      if (key_end > 0) {
        auto qb = qs.topRows(rows);
        qb = q.head(b, h).middleRows(i0, rows) * scale;
        for (Index j0 = 0; j0 < key_end; j0 += bk) {
          const Index cols = std::min(bk, len_k - j0);
          auto st = s.topLeftCorner(rows, cols);
          st.noalias() = qb * kh.middleRows(j0, cols).transpose();
          // Causal masking only touches tiles that reach past the first row's last key.
          if (masked || (opt.causal != Causal::kNone && j0 + cols - 1 > causal_last_key(opt, i0, len_q, len_k)))
            add_mask_tile(st, opt, b, h, nh, i0, j0, len_q, len_k);
          for (Index r = 0; r < rows; ++r) {
            T* srow = st.row(r).data();
            const T tile_max = st.row(r).template maxCoeff<Eigen::PropagateNaN>();
            const T old_max = row_max[r];
            // NaN (in the tile or already in the row) propagates to the row.
            const T new_max = (std::isnan(old_max) || tile_max <= old_max) ? old_max : tile_max;
            if (new_max == kNegInf) {  // every key so far is masked
              st.row(r).setZero();
              continue;
            }
            if (!(new_max == old_max)) {
              if (old_max != kNegInf) {
                const T alpha = std::exp(old_max - new_max);
                a.row(r) *= alpha;
                row_sum[r] *= alpha;
              }
              row_max[r] = new_max;
            }
            row_sum[r] += exp_shifted_inplace(srow, cols, new_max);
            if (opt.dropout_p > T(0))
              dropout_span(srow, cols, opt.dropout_p, key,
                           static_cast<std::uint64_t>((bh * len_q + i0 + r) * len_k + j0));
          }
          a.noalias() += st * vh.middleRows(j0, cols);
        }
      }
      auto o = out.head(b, h).middleRows(i0, rows);
      for (Index r = 0; r < rows; ++r) {
        if (row_max[r] == kNegInf)
          o.row(r).setZero();
        else
          o.row(r) = a.row(r) / row_sum[r];
      }
    }
  });
}


#if EIGEN_VERSION_AT_LEAST(3, 4, 0)
// Eigen's packet types (__m512 ...) carry attributes that GCC warns about when they are
// template arguments, as Eigen's packet functions take them.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

/// @brief The tile kernel of sdpa_tiled, on Eigen's SIMD packets of T.
///
/// A tile holds the scores transposed, one row per key and one column per query, so every
/// step is vectorised across queries: scores are kRegRows x kVecs register blocks of
/// broadcast k times q^T, the softmax statistics (max, sum) of a query are one lane of a
/// packet (no horizontal reductions), and the output accumulator is (Dv, queries), updated
/// with broadcast v times p^T. Nothing is packed per tile: the query block is transposed
/// once per block, and k and v are read in place, or from one contiguous copy per call
/// when they are strided views (pack()).
template <class T>
struct PacketTile {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  static constexpr int kP = Eigen::internal::packet_traits<T>::size;
  static constexpr int kVecs = 4;                ///< packets per tile row
  static constexpr Index kQueries = kP * kVecs;  ///< queries per block (64 floats with AVX-512)
  static constexpr Index kKeys = 128;            ///< keys per tile
  static constexpr int kRegRows = 4;             ///< keys (or rows of v^T) per register block

  /// Where one head's k and v are: k[j][d] at k[j * k_stride + d]; v either in rows,
  /// v[j][c] at v[j * v_stride + c], or in panels (see pack()).
  struct Head {
    const T* k;
    Index k_stride;
    const T* v;
    Index v_stride;
    bool v_panels;
  };

  /// Per-thread buffers: q^T, the score tile, the accumulator, row max and sum.
  struct Scratch {
    Vector<T> qt, s, acc, row_max, row_sum, alpha, mask_row;
    Scratch(Index dim, Index dim_v)
        : qt(dim * kQueries), s(kKeys * kQueries), acc(dim_v * kQueries), row_max(kQueries), row_sum(kQueries),
          alpha(kQueries), mask_row(kKeys) {}
  };

  /// Whether k and v are copied first: when their rows are strided (rows of a projection's
  /// output, 3E apart, fall into few cache sets and thrash the caches, and the hardware
  /// prefetcher does not follow them across pages) and several query blocks reuse them.
  static bool packs(const HeadsView<const T>& q, const HeadsView<const T>& k, const HeadsView<const T>& v) {
    return q.length > kQueries && (k.row_stride != k.dim || v.row_stride != v.dim);
  }

  /// Copies every head's k into contiguous (S, D) rows and its v into panels of kRegRows
  /// columns, each (S, kRegRows) row-major (and single columns for Dv % kRegRows), the
  /// layout accumulate() walks. Threaded over (batch, block of keys): each reads whole rows.
  static void pack(const HeadsView<const T>& k, const HeadsView<const T>& v, Vector<T>& k_packed,
                   Vector<T>& v_packed) {
    const Index nb = k.batch, nh = k.heads, len_k = k.length, dim = k.dim, dim_v = v.dim;
    k_packed.resize(nb * nh * len_k * dim);
    v_packed.resize(nb * nh * len_k * dim_v);
    constexpr Index kChunk = 64;
    const Index chunks = (len_k + kChunk - 1) / kChunk;
    const Index full = dim_v - dim_v % kRegRows;
    parallel_for(nb * chunks, [&](Index item) {
      const Index b = item / chunks, j_begin = (item % chunks) * kChunk, j_end = std::min(len_k, j_begin + kChunk);
      for (Index j = j_begin; j < j_end; ++j)
        for (Index h = 0; h < nh; ++h) {
          const Index bh = b * nh + h;
          const T* krow = k.data + b * k.batch_stride + h * k.head_stride + j * k.row_stride;
          std::copy(krow, krow + dim, k_packed.data() + (bh * len_k + j) * dim);
          const T* vrow = v.data + b * v.batch_stride + h * v.head_stride + j * v.row_stride;
          T* vp = v_packed.data() + bh * len_k * dim_v;
          for (Index r0 = 0; r0 < full; r0 += kRegRows)
            for (int r = 0; r < kRegRows; ++r) vp[r0 * len_k + j * kRegRows + r] = vrow[r0 + r];
          for (Index r0 = full; r0 < dim_v; ++r0) vp[r0 * len_k + j] = vrow[r0];
        }
    });
  }

  /// s[r][.] = sum_d k[r][d] * qt[d][.] for R keys (rows of s, kQueries apart) and the
  /// first V packets of queries; tile_max takes the max with them.
  template <int R, int V>
  static void scores(const T* qt, Index dim, const T* k, Index k_stride, T* s, Packet* tile_max) {
    namespace ei = Eigen::internal;
    Packet acc[R][V];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < V; ++c) acc[r][c] = ei::pset1<Packet>(T(0));
    for (Index d = 0; d < dim; ++d) {
      Packet qv[V];
      for (int c = 0; c < V; ++c) qv[c] = ei::ploadu<Packet>(qt + d * kQueries + c * kP);
      for (int r = 0; r < R; ++r) {
        const Packet kb = ei::pset1<Packet>(k[r * k_stride + d]);
        for (int c = 0; c < V; ++c) acc[r][c] = ei::pmadd(kb, qv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < V; ++c) {
        ei::pstoreu(s + r * kQueries + c * kP, acc[r][c]);
        tile_max[c] = ei::pmax(tile_max[c], acc[r][c]);
      }
  }

  /// acc[r][.] += sum_j v[j][r] * p[j][.] for R rows of the (Dv, queries) accumulator and
  /// the first V packets of queries; v[j][r] is at v[j * v_stride + r].
  template <int R, int V>
  static void accumulate(const T* p, Index keys, const T* v, Index v_stride, T* acc) {
    namespace ei = Eigen::internal;
    Packet a[R][V];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < V; ++c) a[r][c] = ei::ploadu<Packet>(acc + r * kQueries + c * kP);
    for (Index j = 0; j < keys; ++j) {
      Packet pv[V];
      for (int c = 0; c < V; ++c) pv[c] = ei::ploadu<Packet>(p + j * kQueries + c * kP);
      for (int r = 0; r < R; ++r) {
        const Packet vb = ei::pset1<Packet>(v[j * v_stride + r]);
        for (int c = 0; c < V; ++c) a[r][c] = ei::pmadd(vb, pv[c], a[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < V; ++c) ei::pstoreu(acc + r * kQueries + c * kP, a[r][c]);
  }

  /// Adds the masks to the transposed tile: keys j0 .. j0+keys-1 (rows), queries i0.. (the
  /// first `cols` columns, of which the first `rows` are real queries).
  static void add_masks(T* s, Index keys, Index cols, const SdpaOptions<T>& opt, Index b, Index h, Index heads,
                        Index i0, Index rows, Index j0, Index len_q, Index len_k, T* mask_row) {
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    // Same order as add_mask_tile: key padding, attention mask, then causal.
    if (!opt.key_padding_mask.empty()) {
      std::fill(mask_row, mask_row + keys, T(0));
      add_mask_span(opt.key_padding_mask, b * len_k + j0, mask_row, keys);
      for (Index j = 0; j < keys; ++j)
        if (mask_row[j] != T(0))
          for (Index c = 0; c < cols; ++c) s[j * kQueries + c] += mask_row[j];
    }
    const auto& am = opt.attn_mask;
    if (!am.empty()) {
      for (Index c = 0; c < rows; ++c) {
        const Index i = i0 + c;
        std::fill(mask_row, mask_row + keys, T(0));
        add_mask_span(am, (am.shape().size() == 2 ? i : (b * heads + h) * len_q + i) * len_k + j0, mask_row, keys);
        for (Index j = 0; j < keys; ++j) s[j * kQueries + c] += mask_row[j];
      }
    }
    if (opt.causal != Causal::kNone) {
      // key j is in the future of the queries before the first one that sees it
      const Index shift = opt.causal == Causal::kBottomRight ? len_k - len_q : 0;
      for (Index j = 0; j < keys; ++j) {
        const Index first_query = j0 + j - shift - i0;
        for (Index c = 0; c < std::min(first_query, cols); ++c) s[j * kQueries + c] = kNegInf;
      }
    }
  }

  /// One (batch b, head h, query rows i0 .. i0+rows-1) block: the whole online softmax, on
  /// as few packets of queries as hold the rows (1, 2 or kVecs; each query's lane computes
  /// the same whatever the count).
  static void block(const HeadsView<const T>& q, const Head& kv, const HeadsView<T>& out, const SdpaOptions<T>& opt,
                    T scale, std::uint64_t key, Index b, Index h, Index i0, Index rows, Index len_k, Index dim_v,
                    Scratch& w) {
    static_assert(kVecs == 4, "block() dispatches on 1, 2 or 4 packets");
    if (rows <= kP)
      block_packets<1>(q, kv, out, opt, scale, key, b, h, i0, rows, len_k, dim_v, w);
    else if (rows <= 2 * kP)
      block_packets<2>(q, kv, out, opt, scale, key, b, h, i0, rows, len_k, dim_v, w);
    else
      block_packets<4>(q, kv, out, opt, scale, key, b, h, i0, rows, len_k, dim_v, w);
  }

  template <int V>
  static void block_packets(const HeadsView<const T>& q, const Head& kv, const HeadsView<T>& out,
                            const SdpaOptions<T>& opt, T scale, std::uint64_t key, Index b, Index h, Index i0,
                            Index rows, Index len_k, Index dim_v, Scratch& w) {
    namespace ei = Eigen::internal;
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    const Index nh = q.heads, len_q = q.length, dim = q.dim;
    const Index bh = b * nh + h;
    T* const qt = w.qt.data();
    T* const s = w.s.data();
    T* const acc = w.acc.data();
    T* const row_max = w.row_max.data();
    T* const row_sum = w.row_sum.data();
    T* const alpha = w.alpha.data();

    // q^T, scaled; queries past the block's end are zero columns whose results are unused.
    constexpr Index kCols = V * kP;
    const T* qrow = q.data + b * q.batch_stride + h * q.head_stride + i0 * q.row_stride;
    for (Index c = 0; c < kCols; ++c)
      for (Index d = 0; d < dim; ++d) qt[d * kQueries + c] = c < rows ? qrow[c * q.row_stride + d] * scale : T(0);
    for (Index dv = 0; dv < dim_v; ++dv) std::fill(acc + dv * kQueries, acc + dv * kQueries + kCols, T(0));
    w.row_max.setConstant(kNegInf);
    w.row_sum.setZero();

    const bool masked = !opt.key_padding_mask.empty() || !opt.attn_mask.empty();
    // Keys after the last one the block's last row may see are masked for every row.
    const Index key_end =
        opt.causal == Causal::kNone ? len_k : causal_last_key(opt, i0 + rows - 1, len_q, len_k) + 1;
    const Index first_row_last_key = causal_last_key(opt, i0, len_q, len_k);
    const Index full_v = dim_v - dim_v % kRegRows;
    const Packet neg_inf = ei::pset1<Packet>(kNegInf), zero = ei::pset1<Packet>(T(0));

    for (Index j0 = 0; j0 < key_end; j0 += kKeys) {
      const Index keys = std::min(kKeys, len_k - j0);
      // Scores s = k q^T for this tile, and their max per query (NaN need not propagate
      // through the max: exp(NaN - max) is NaN and makes the query's sum NaN).
      Packet tile_max[V];
      for (int c = 0; c < V; ++c) tile_max[c] = neg_inf;
      const T* kt = kv.k + j0 * kv.k_stride;
      Index j = 0;
      for (; j + kRegRows <= keys; j += kRegRows)
        scores<kRegRows, V>(qt, dim, kt + j * kv.k_stride, kv.k_stride, s + j * kQueries, tile_max);
      for (; j < keys; ++j) scores<1, V>(qt, dim, kt + j * kv.k_stride, kv.k_stride, s + j * kQueries, tile_max);
      if (masked || (opt.causal != Causal::kNone && j0 + keys - 1 > first_row_last_key)) {
        add_masks(s, keys, kCols, opt, b, h, nh, i0, rows, j0, len_q, len_k, w.mask_row.data());
        for (int c = 0; c < V; ++c) tile_max[c] = neg_inf;
        for (Index jj = 0; jj < keys; ++jj)
          for (int c = 0; c < V; ++c) tile_max[c] = ei::pmax(tile_max[c], ei::ploadu<Packet>(s + jj * kQueries + c * kP));
      }

      // Online softmax: the new max, alpha = exp(old max - new max) (0 where nothing was
      // accumulated yet), p = exp(s - max) (exactly 0 where masked), the sums.
      Packet new_max[V], safe_max[V], sum[V];
      for (int c = 0; c < V; ++c) {
        const Packet old_max = ei::ploadu<Packet>(row_max + c * kP);
        new_max[c] = ei::pmax(old_max, tile_max[c]);
        const Packet a =
            ei::pselect(ei::pcmp_eq(old_max, neg_inf), zero, pexp_nonpositive(ei::psub(old_max, new_max[c])));
        // exp(s - max) without -inf - (-inf): a query that sees no key yet gets p = 0.
        safe_max[c] = ei::pselect(ei::pcmp_eq(new_max[c], neg_inf), zero, new_max[c]);
        ei::pstoreu(alpha + c * kP, a);
        ei::pstoreu(row_max + c * kP, new_max[c]);
        ei::pstoreu(row_sum + c * kP, ei::pmul(ei::ploadu<Packet>(row_sum + c * kP), a));
        sum[c] = zero;
      }
      for (Index jj = 0; jj < keys; ++jj)
        for (int c = 0; c < V; ++c) {
          T* at = s + jj * kQueries + c * kP;
          const Packet e = pexp_nonpositive(ei::psub(ei::ploadu<Packet>(at), safe_max[c]));
          ei::pstoreu(at, e);
          sum[c] = ei::padd(sum[c], e);
        }
      for (int c = 0; c < V; ++c)
        ei::pstoreu(row_sum + c * kP, ei::padd(ei::ploadu<Packet>(row_sum + c * kP), sum[c]));
      // The accumulator is rescaled only when a query's max changed (alpha != 1).
      bool rescale = false;
      for (Index t = 0; t < kCols; ++t) rescale = rescale || !(alpha[t] == T(1));
      if (rescale)
        for (Index dv = 0; dv < dim_v; ++dv)
          for (int c = 0; c < V; ++c) {
            T* at = acc + dv * kQueries + c * kP;
            ei::pstoreu(at, ei::pmul(ei::ploadu<Packet>(at), ei::ploadu<Packet>(alpha + c * kP)));
          }
      if (opt.dropout_p > T(0)) {
        // The mask of element (b, h, i, j) is element ((b*H + h)*L + i)*S + j of the stream,
        // as in dropout_rows; kept p are scaled by 1/(1-p), the sums stay as they are.
        const T keep_scale = T(1) / (T(1) - opt.dropout_p);
        const double p_drop = static_cast<double>(opt.dropout_p);
        for (Index c = 0; c < rows; ++c) {
          const std::uint64_t first = static_cast<std::uint64_t>((bh * len_q + i0 + c) * len_k + j0);
          for (Index jj = 0; jj < keys; ++jj) {
            T& e = s[jj * kQueries + c];
            e = uniform(key, first + static_cast<std::uint64_t>(jj)) < p_drop ? T(0) : e * keep_scale;
          }
        }
      }
      // acc += v^T p for this tile.
      Index r = 0;
      if (kv.v_panels) {
        for (; r < full_v; r += kRegRows)
          accumulate<kRegRows, V>(s, keys, kv.v + r * len_k + j0 * kRegRows, kRegRows, acc + r * kQueries);
        for (; r < dim_v; ++r) accumulate<1, V>(s, keys, kv.v + r * len_k + j0, 1, acc + r * kQueries);
      } else {
        const T* vt = kv.v + j0 * kv.v_stride;
        for (; r < full_v; r += kRegRows) accumulate<kRegRows, V>(s, keys, vt + r, kv.v_stride, acc + r * kQueries);
        for (; r < dim_v; ++r) accumulate<1, V>(s, keys, vt + r, kv.v_stride, acc + r * kQueries);
      }
    }

    // out = acc / sum. A NaN logit made its query's sum NaN (exp(NaN - max) is NaN), and so
    // does +inf (inf - inf): that row is NaN, as softmax gives. A query that saw no key gets 0.
    for (Index dv = 0; dv < dim_v; ++dv)
      for (int c = 0; c < V; ++c) {
        T* at = acc + dv * kQueries + c * kP;
        ei::pstoreu(at, ei::pdiv(ei::ploadu<Packet>(at), ei::ploadu<Packet>(row_sum + c * kP)));
      }
    T* orow = out.data + b * out.batch_stride + h * out.head_stride + i0 * out.row_stride;
    for (Index c = 0; c < rows; ++c, orow += out.row_stride) {
      const T m = row_max[c], l = row_sum[c];
      if (std::isnan(l) || std::isnan(m))
        std::fill(orow, orow + dim_v, std::numeric_limits<T>::quiet_NaN());
      else if (m == kNegInf)
        std::fill(orow, orow + dim_v, T(0));
      else
        for (Index dv = 0; dv < dim_v; ++dv) orow[dv] = acc[dv * kQueries + c];
    }
  }
};

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // EIGEN_VERSION_AT_LEAST(3, 4, 0)

/// @brief out = softmax(scale q k^T + masks) v per (batch, head), one tile at a time:
/// FlashAttention-2's online softmax on Eigen's SIMD packets (PacketTile).
///
/// Per (batch, head, block of queries), for each block of keys: the tile of scores,
/// the masks, the online softmax (a running max m and sum l per query: when m grows, the
/// accumulator and l are rescaled by exp(m_old - m_new); the tile becomes p = exp(s - m),
/// exactly 0 where masked; l += sum(p)), dropout on p (kept entries scaled by 1/(1-p_drop);
/// l is the sum before dropout, so the result is dropout applied to the probabilities),
/// and acc += v^T p. The output is acc / l, computed once at the end; a query that sees
/// no key gets 0, one whose logits hold NaN (or +inf) gets NaN. Causal masking skips the
/// key blocks that are in the future of the whole query block; the others are computed on
/// the same tile grid as with an explicit mask, so the two give identical results.
/// Strided k and v read by several query blocks are first copied into contiguous rows
/// (PacketTile::pack), O(B*H*S*(D+Dv)) memory.
///
/// Arguments must have been checked (check_attention_args). Threaded over (batch, head,
/// query block) with parallel_for; bit-identical for every thread count.
/// @param scale multiplies q before the product
/// @param key dropout stream key (used when opt.dropout_p > 0)
template <class T>
void sdpa_tiled(const HeadsView<const T>& q, const HeadsView<const T>& k, const HeadsView<const T>& v,
                const HeadsView<T>& out, const SdpaOptions<T>& opt, T scale, std::uint64_t key) {
#if EIGEN_VERSION_AT_LEAST(3, 4, 0)
  using Tile = PacketTile<T>;
  const Index nh = q.heads, len_q = q.length, len_k = k.length, dim_v = v.dim;
  if (q.batch == 0 || nh == 0 || len_q == 0 || dim_v == 0) return;
  Vector<T> k_packed, v_packed;
  const bool packed = Tile::packs(q, k, v);
  if (packed) Tile::pack(k, v, k_packed, v_packed);
  const Index qblocks = (len_q + Tile::kQueries - 1) / Tile::kQueries;
  const WorkSplit split =
      WorkSplit::of(q.batch * nh * qblocks, static_cast<double>(Tile::kQueries) * len_k * (q.dim + dim_v + 8));
  parallel_for(split.items(), [&](Index item) {
    typename Tile::Scratch scratch(q.dim, dim_v);
    for (Index u = split.begin(item); u < split.end(item); ++u) {
      const Index bh = u / qblocks, b = bh / nh, h = bh % nh, i0 = (u % qblocks) * Tile::kQueries;
      const typename Tile::Head kv =
          packed ? typename Tile::Head{k_packed.data() + bh * len_k * k.dim, k.dim, v_packed.data() + bh * len_k * dim_v,
                                       0, true}
                 : typename Tile::Head{k.data + b * k.batch_stride + h * k.head_stride, k.row_stride,
                                       v.data + b * v.batch_stride + h * v.head_stride, v.row_stride, false};
      Tile::block(q, kv, out, opt, scale, key, b, h, i0, std::min(Tile::kQueries, len_q - i0), len_k, dim_v, scratch);
    }
  });
#else
  sdpa_tiled_gemm(q, k, v, out, opt, scale, key);
#endif
}

}  // namespace detail
}  // namespace attn
