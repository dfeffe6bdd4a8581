// The tiled attention kernel of one kernel pass (no include guard: sdpa_tiled.hpp includes it
// for the baseline path, kernels/pass.ipp once per wider path; see kernels/packets.ipp).

/// @brief The tile kernel of run_sdpa_tiled, on the pass's SIMD packets of T.
///
/// A tile holds the scores transposed, one row per key and one column per query (the
/// "key-major" layout), so every step is vectorised across queries: scores and p v are
/// register tiles (register_tile.hpp), and the softmax statistics (max, sum) of a query are
/// one lane of a packet, with no horizontal reductions. The online softmax is
/// online_softmax.hpp's, in its lanes form; dropout zeroes or scales p after the sum took
/// it, so the result is dropout applied to the probabilities. T is the views' element type;
/// everything inside a tile is in C = compute_t<T> (a 16-bit T's k and v are widened when
/// they are packed, its q when it is loaded, and each output is rounded once).
template <class T>
struct SdpaTiles {
  using C = compute_t<T>;
  using P = Packet<C>;
  static constexpr int kP = kPacketSize<C>;
  static constexpr int kVecs = 4;                ///< packets of queries in a full block
  static constexpr Index kQueries = kP * kVecs;  ///< queries per block (64 floats with AVX-512)
  static constexpr Index kKeys = 128;            ///< keys per tile
  static constexpr int kRegRows = 4;             ///< rows of a register block; v's panel width

  /// Where one head's k and v are: k[j][d] at k[j * k_stride + d]; v either in rows,
  /// v[j][c] at v[j * v_stride + c], or in panels (see pack()).
  struct Head {
    const C* k;
    Index k_stride;
    const C* v;
    Index v_stride;
    bool v_panels;
  };

  /// One thread's buffers, each kQueries wide: q^T (D rows), the score tile (kKeys rows),
  /// the accumulator (Dv rows), and the running max, sum and rescale factor.
  struct Scratch {
    C *qt, *s, *acc, *row_max, *row_sum, *alpha;
    static Index size(Index dim, Index dim_v) { return kQueries * (dim + kKeys + dim_v + 3); }
    Scratch(C* base, Index dim, Index dim_v)
        : qt(base), s(qt + dim * kQueries), acc(s + kKeys * kQueries), row_max(acc + dim_v * kQueries),
          row_sum(row_max + kQueries), alpha(row_sum + kQueries) {}
  };

  /// Whether k and v are copied first: when their rows are strided (rows of a projection's
  /// output, 3E apart, fall into few cache sets and thrash the caches, and the hardware
  /// prefetcher does not follow them across pages) and several query blocks reuse them; and
  /// always when they are not in C (16-bit or int8 k and v, which the tiles read widened) or
  /// paged (a paged cache's: the tiles read a head's keys as one strided matrix). Packing
  /// changes no bit: the tiles compute the same on rows in either place.
  template <class S>
  static bool packs(const HeadsView<const T>& q, const HeadsView<const S>& k, const HeadsView<const S>& v) {
    return !std::is_same<S, C>::value || k.pages || v.pages ||
           (q.length > kQueries && (k.row_stride != k.head_dim || v.row_stride != v.head_dim));
  }

  /// Copies every (key/value) head's k into contiguous (S, D) rows and its v into panels of kRegRows
  /// columns, each (S, kRegRows) row-major (and single columns for Dv % kRegRows), the
  /// layout accumulate() walks, in C (int8 rows times their scales). Threaded over (batch,
  /// block of keys): each reads whole rows. k_packed and v_packed hold B*H*S*D and B*H*S*Dv
  /// elements.
  template <class S>
  static void pack(const AttentionCall<T, S>& call, C* k_packed, C* v_packed) {
    const HeadsView<const S>&k = call.k, &v = call.v;
    const Index nb = k.batch, nh = k.heads, len_k = k.length, dim = k.head_dim, dim_v = v.head_dim;
    constexpr Index kChunk = 64;
    const Index chunks = (len_k + kChunk - 1) / kChunk;
    const Index full = dim_v - dim_v % kRegRows;
    parallel_for(nb * chunks, [&](Index item) {
      const Index b = item / chunks, j_begin = (item % chunks) * kChunk;
      const Index j_end = std::min(call.keys_of(b), j_begin + kChunk);  // (ragged: the keys b holds)
      for (Index j = j_begin; j < j_end; ++j)
        for (Index h = 0; h < nh; ++h) {
          const Index bh = b * nh + h;
          const auto scale = [&](const RowScales& sc) { return sc ? C(*sc.row(b, h, j)) : C(1); };  // x 1 is exact
          const C ks = scale(call.k_scales), vs = scale(call.v_scales);
          const S *krow = k.row(b, h, j), *vrow = v.row(b, h, j);
          C* kp = k_packed + (bh * len_k + j) * dim;
          for (Index d = 0; d < dim; ++d) kp[d] = C(krow[d]) * ks;
          C* vp = v_packed + bh * len_k * dim_v;
          for (Index r0 = 0; r0 < full; r0 += kRegRows)
            for (int r = 0; r < kRegRows; ++r) vp[r0 * len_k + j * kRegRows + r] = C(vrow[r0 + r]) * vs;
          for (Index r0 = full; r0 < dim_v; ++r0) vp[r0 * len_k + j] = C(vrow[r0]) * vs;
        }
    });
  }

  /// One (batch, head, query block) tile over all keys, on as few packets of queries as
  /// hold its rows (1, 2 or kVecs; each query's lane computes the same whatever the count).
  template <class S>
  static void block(const AttentionCall<T, S>& call, const Tile& tile, const Head& kv, const Scratch& w) {
    static_assert(kVecs == 4, "block() dispatches on 1, 2 or 4 packets");
    if (tile.rows <= kP)
      block_packets<1, S>(call, tile, kv, w);
    else if (tile.rows <= 2 * kP)
      block_packets<2, S>(call, tile, kv, w);
    else
      block_packets<4, S>(call, tile, kv, w);
  }

  template <int V, class S>
  static EIGEN_DONT_INLINE void block_packets(const AttentionCall<T, S>& call, const Tile& tile, const Head& kv,
                                              const Scratch& w) {
    const Index dim_v = call.v.head_dim, key_end = tile.key_end(call.masks.causal);
    // Causal or window masking: tiles no query of the block may see are skipped.
    const Index key_begin = tile.key_begin(call.masks.causal, call.masks.window) / kKeys * kKeys;
    load_scaled_queries(call.q, tile.b, tile.h, tile.i0, tile.rows, V * kP, call.scale, w.qt, 1, kQueries);
    for (Index dv = 0; dv < dim_v; ++dv) std::fill(w.acc + dv * kQueries, w.acc + dv * kQueries + V * kP, C(0));
    std::fill(w.row_max, w.row_max + kQueries, -std::numeric_limits<C>::infinity());
    std::fill(w.row_sum, w.row_sum + kQueries, C(0));
    for (Index j0 = key_begin; j0 < key_end; j0 += kKeys) {
      const Tile t = tile.keys(j0, std::min(kKeys, tile.len_k - j0));
      P tile_max[V];  // per query, taken as the scores are stored
      for (int c = 0; c < V; ++c) tile_max[c] = ei::pset1<P>(-std::numeric_limits<C>::infinity());
      outer_products<C, kRegRows, V, false>(kv.k + j0 * kv.k_stride, kv.k_stride, 1, t.cols, w.qt, kQueries,
                                            call.q.head_dim, w.s, kQueries,
                                            [&](int c, const P& p) { tile_max[c] = ei::pmax(tile_max[c], p); });
      if (call.adjusts(t)) {
        call.adjust_logits(t, w.s, 1, kQueries);
        lanes_max<C, V>(w.s, t.cols, kQueries, tile_max);
      }
      if (lanes_online_step<C, V>(w.s, t.cols, kQueries, tile_max, w.row_max, w.row_sum, w.alpha))
        rescale<V>(dim_v, w);
      if (call.dropout_p > C(0)) dropout_tile(t, call.dropout_p, call.dropout_key, w.s, 1, kQueries);
      accumulate<V>(kv, t, dim_v, w);
    }
    call.end_rows(tile, w.row_max, w.row_sum);
    lanes_finalise<C, V>(w.acc, dim_v, kQueries, w.row_max, w.row_sum);
    for (Index c = 0; c < tile.rows; ++c) {
      T* out = call.out.row(tile.b, tile.h, tile.i0 + c);
      for (Index dv = 0; dv < dim_v; ++dv) out[dv] = T(w.acc[dv * kQueries + c]);
    }
  }

  /// acc *= alpha for every query of the block.
  template <int V>
  static EIGEN_DONT_INLINE void rescale(Index dim_v, const Scratch& w) {
    for (Index dv = 0; dv < dim_v; ++dv)
      for (int c = 0; c < V; ++c) {
        C* at = w.acc + dv * kQueries + c * kP;
        ei::pstoreu(at, ei::pmul(ei::ploadu<P>(at), ei::ploadu<P>(w.alpha + c * kP)));
      }
  }

  /// acc += v^T p for the key tile: acc[dv][query] += sum_j v[j][dv] p[j][query].
  template <int V>
  static void accumulate(const Head& kv, const Tile& t, Index dim_v, const Scratch& w) {
    if (!kv.v_panels) {
      outer_products<C, kRegRows, V, true>(kv.v + t.j0 * kv.v_stride, 1, kv.v_stride, dim_v, w.s, kQueries, t.cols,
                                           w.acc, kQueries);
      return;
    }
    panels<V>(kv.v, t.dims.len_k, t.j0, t.cols, dim_v, w);
  }

  /// accumulate() for v in panels (see pack()): one register tile per panel of kRegRows columns.
  template <int V>
  static EIGEN_DONT_INLINE void panels(const C* v, Index len_k, Index j0, Index cols, Index dim_v, const Scratch& w) {
    const Index full = dim_v - dim_v % kRegRows;
    NoSeen none;
    Index r = 0;
    for (; r < full; r += kRegRows)
      outer_product_block<C, kRegRows, V, true>(v + r * len_k + j0 * kRegRows, 1, kRegRows, w.s, kQueries, cols,
                                                w.acc + r * kQueries, kQueries, none);
    for (; r < dim_v; ++r)
      outer_product_block<C, 1, V, true>(v + r * len_k + j0, 1, 1, w.s, kQueries, cols, w.acc + r * kQueries, kQueries,
                                         none);
  }
};

#if ATTN_HAS_AVX512BF16
/// @brief SdpaTiles for bfloat16 on the avx512bf16 path: the same blocks of 64 queries (four
/// packets of 16 floats), key tiles, logit rules and online softmax, with q.k and p.v on
/// vdpbf16ps (sdpa_bf16.hpp: SdpaBf16). q is packed in pairs along the head dimension and k
/// read in place; p is rounded to bfloat16 for its product with v (as FlashAttention rounds
/// it for its second GEMM; the softmax sums are of the float32 p) and v is packed in pairs
/// along the keys. The scale multiplies the float32 scores. An even head dimension only
/// (k's pairs are read in place).
template <class T>
struct SdpaTilesBf16 {
  static_assert(std::is_same<T, bfloat16>::value, "bfloat16 only");
  using Pair = SdpaBf16::Pair;
  using P = Packet<float>;
  static constexpr int kV = 4;
  static constexpr Index kQueries = SdpaBf16::kQueries, kKeys = 128;

  /// One block's buffers: q's pairs (D/2 rows of kQueries) and p's pairs (kKeys/2 rows) in
  /// `pairs`; the score tile, the accumulator (Dv rows), the running max, sum, rescale factor
  /// and the tile's max in `floats`.
  struct Scratch {
    Pair *qt2, *p2;
    float *s, *acc, *row_max, *row_sum, *alpha, *tile_max;
    static Index pair_count(Index dim) { return kQueries * (dim / 2 + kKeys / 2); }
    static Index float_count(Index dim_v) { return kQueries * (kKeys + dim_v + 4); }
    Scratch(Pair* pairs, float* floats, Index dim, Index dim_v)
        : qt2(pairs), p2(pairs + dim / 2 * kQueries), s(floats), acc(s + kKeys * kQueries),
          row_max(acc + dim_v * kQueries), row_sum(row_max + kQueries), alpha(row_sum + kQueries),
          tile_max(alpha + kQueries) {}
  };

  /// v of every (batch, key/value head) as pairs along the keys: head bh's column c, pair jp at
  /// v2[(bh * Dv + c) * s2 + jp], s2 = (S + 1) / 2 (a missing last key is 0).
  static void pack_v(const HeadsView<const T>& v, Pair* v2) {
    const Index s2 = (v.length + 1) / 2;
    parallel_for(v.batch * v.heads, [&](Index bh) {
      const Index b = bh / v.heads, h = bh % v.heads;
      Pair* dst = v2 + bh * v.head_dim * s2;
      for (Index jp = 0; jp < s2; ++jp) {
        const T* lo = v.row(b, h, 2 * jp);
        const T* hi = 2 * jp + 1 < v.length ? v.row(b, h, 2 * jp + 1) : nullptr;
        for (Index c = 0; c < v.head_dim; ++c)
          dst[c * s2 + jp] = SdpaBf16::bits(lo[c]) | (hi ? SdpaBf16::bits(hi[c]) : Pair(0)) << 16;
      }
    });
  }

  /// One (batch, head, query block) tile over all keys: k rows k_stride apart, v's pairs
  /// (pack_v) of its key/value head at v2.
  static EIGEN_DONT_INLINE void block(const AttentionCall<T>& call, const Tile& tile, const T* k, Index k_stride,
                                      const Pair* v2, Index s2, const Scratch& w) {
    const Index pairs = call.q.head_dim / 2, dim_v = call.v.head_dim, key_end = tile.key_end(call.masks.causal);
    const Index key_begin = tile.key_begin(call.masks.causal, call.masks.window) / kKeys * kKeys;
    for (Index r = 0; r < kQueries; ++r) {
      const T* q = r < tile.rows ? call.q.row(tile.b, tile.h, tile.i0 + r) : nullptr;
      for (Index p = 0; p < pairs; ++p)
        w.qt2[p * kQueries + r] = q ? SdpaBf16::bits(q[2 * p]) | SdpaBf16::bits(q[2 * p + 1]) << 16 : Pair(0);
    }
    std::fill(w.acc, w.acc + dim_v * kQueries, 0.0f);
    std::fill(w.row_max, w.row_max + kQueries, -std::numeric_limits<float>::infinity());
    std::fill(w.row_sum, w.row_sum + kQueries, 0.0f);
    for (Index j0 = key_begin; j0 < key_end; j0 += kKeys) {
      const Tile t = tile.keys(j0, std::min(kKeys, tile.len_k - j0));
      SdpaBf16::scores(k + j0 * k_stride, k_stride, t.cols, w.qt2, pairs, call.scale, w.s, w.tile_max);
      P tile_max[kV];
      for (int v = 0; v < kV; ++v) tile_max[v] = ei::ploadu<P>(w.tile_max + v * kPacketSize<float>);
      if (call.adjusts(t)) {
        call.adjust_logits(t, w.s, 1, kQueries);
        lanes_max<float, kV>(w.s, t.cols, kQueries, tile_max);
      }
      if (lanes_online_step<float, kV>(w.s, t.cols, kQueries, tile_max, w.row_max, w.row_sum, w.alpha))
        for (Index c = 0; c < dim_v; ++c)
          for (int v = 0; v < kV; ++v) {
            float* at = w.acc + c * kQueries + v * kPacketSize<float>;
            ei::pstoreu(at, ei::pmul(ei::ploadu<P>(at), ei::ploadu<P>(w.alpha + v * kPacketSize<float>)));
          }
      if (call.dropout_p > 0.0f) dropout_tile(t, call.dropout_p, call.dropout_key, w.s, 1, kQueries);
      SdpaBf16::pair_rows(w.s, t.cols, w.p2);
      SdpaBf16::values(v2 + j0 / 2, s2, (t.cols + 1) / 2, dim_v, w.p2, w.acc);
    }
    call.end_rows(tile, w.row_max, w.row_sum);
    lanes_finalise<float, kV>(w.acc, dim_v, kQueries, w.row_max, w.row_sum);
    for (Index c = 0; c < tile.rows; ++c) {
      T* out = call.out.row(tile.b, tile.h, tile.i0 + c);
      for (Index dv = 0; dv < dim_v; ++dv) out[dv] = T(w.acc[dv * kQueries + c]);
    }
  }

  /// The whole call: v packed once (and a paged k copied into rows), then (batch, head, query
  /// block) units with for_each_block.
  static void run(const AttentionCall<T>& call) {
    const AttentionDims d = call.dims();
    const Index dim = call.q.head_dim, dim_v = call.v.head_dim, s2 = (d.len_k + 1) / 2;
    const WorkBuffer<Pair> v2(d.batch * call.k.heads * dim_v * s2);
    pack_v(call.v, v2.data());
    const WorkBuffer<T> k_rows(call.k.pages ? d.batch * call.k.heads * d.len_k * dim : 0);
    HeadsView<const T> k = call.k;
    if (call.k.pages) {
      k = HeadsView<const T>::bhnd(k_rows.data(), d.batch, call.k.heads, d.len_k, dim);
      parallel_for(d.batch * call.k.heads, [&](Index bh) {
        for (Index j = 0; j < call.keys_of(bh / k.heads); ++j)
          std::copy_n(call.k.row(bh / k.heads, bh % k.heads, j), dim, k_rows.data() + (bh * d.len_k + j) * dim);
      });
    }
    const QueryBlocks blocks{d.batch, d.heads, d.len_q, kQueries};
    for_each_block<float>(blocks, double(kQueries) * double(d.len_k) * double(dim + dim_v + 8),
                          Scratch::float_count(dim_v), [&](const QueryBlock& u, float* floats) {
                            const WorkBuffer<Pair> pairs(Scratch::pair_count(dim));
                            const Index kvh = call.kv_head(u.h);
                            block(call, call.tile(u.b, u.h, u.i0, blocks.rows_at(u.i0)), k.row(u.b, kvh),
                                  k.row_stride,
                                  v2.data() + (u.b * call.k.heads + kvh) * dim_v * s2, s2,
                                  Scratch(pairs.data(), floats, dim, dim_v));
                          });
  }
};
#endif

/// @brief out = softmax(scale q k^T + masks) v per (batch, head), one tile at a time with
/// SdpaTiles (FlashAttention-2's online softmax; the algorithm is described there).
///
/// Strided k and v read by several query blocks, and k and v not in C (16-bit or int8,
/// widened to float32 once per call), are first copied into contiguous rows
/// (SdpaTiles::pack), O(B*H*S*(D+Dv)) memory (the modules
/// project k and v head-major, which needs no copy in float); each thread has one scratch buffer of SdpaTiles::Scratch::size elements.
/// Both come from the workspace (attn/core/workspace.hpp). Threaded over (batch, head, query block) units with
/// for_each_block; bit-identical for every thread count. A call of at most
/// SdpaRows::kMaxRows queries (a decode step) runs SdpaRows' query-major tiles instead, over
/// (batch, group of heads sharing a key/value head) units, reading k and v in place in any
/// storage type, their keys split across items where the units are few (SdpaRows::run); bfloat16 on avx512bf16 (native_bf16) with an even head dimension runs
/// SdpaTilesBf16.
template <class T, class S>
void run_sdpa_tiled(const AttentionCall<T, S>& call, bool native_bf16 = false) {
  using K = SdpaTiles<T>;
  using C = compute_t<T>;
  const AttentionDims d = call.dims();
  const Index dim = call.q.head_dim, dim_v = call.v.head_dim;
  if (d.batch == 0 || d.heads == 0 || d.len_q == 0 || (dim_v == 0 && !call.lse)) return;
  if (d.len_q <= SdpaRows<T>::kMaxRows) return SdpaRows<T, S>::run(call);  // decoding: a few queries
#if ATTN_HAS_AVX512BF16
  if constexpr (std::is_same<T, bfloat16>::value && std::is_same<S, T>::value && kPacketSize<float> == 16)
    if (native_bf16 && dim % 2 == 0) return SdpaTilesBf16<T>::run(call);
#endif
  (void)native_bf16;
  const bool packed = K::packs(call.q, call.k, call.v);
  const WorkBuffer<C> k_packed(packed ? d.batch * call.k.heads * d.len_k * dim : 0),
      v_packed(packed ? d.batch * call.k.heads * d.len_k * dim_v : 0);
  if (packed) K::pack(call, k_packed.data(), v_packed.data());
  const auto head = [&](Index b, Index h) -> typename K::Head {
    const Index kvh = call.kv_head(h), bh = b * call.k.heads + kvh;
    if constexpr (std::is_same<S, C>::value)  // (k and v in another type are always packed)
      if (!packed) return {call.k.row(b, kvh), call.k.row_stride, call.v.row(b, kvh), call.v.row_stride, false};
    return {k_packed.data() + bh * d.len_k * dim, dim, v_packed.data() + bh * d.len_k * dim_v, 0, true};
  };
  const QueryBlocks blocks{d.batch, d.heads, d.len_q, K::kQueries};
  for_each_block<C>(blocks, double(K::kQueries) * double(d.len_k) * double(dim + dim_v + 8), K::Scratch::size(dim, dim_v),
                    [&](const QueryBlock& u, C* scratch) {
                      const Tile tile = call.tile(u.b, u.h, u.i0, blocks.rows_at(u.i0));
                      K::block(call, tile, head(u.b, u.h), typename K::Scratch(scratch, dim, dim_v));
                    });
}
