// The decode tile of one kernel pass (no include guard: sdpa_rows.hpp includes it for the
// baseline path, kernels/pass.ipp once per wider path; see kernels/packets.ipp).

/// @brief The online softmax (online_softmax.hpp, in its row form) for tiles of at most
/// kMaxRows queries, with the tile's scores query-major.
///
/// SdpaTiles vectorises across the queries of a block: with one query (a decode step) 15 of
/// 16 float lanes would be idle and every score would cost head_dim multiply-adds. Here each
/// score is a dot product over the head dimension and p v adds p_j v_j across it, so a few
/// queries stream k and v at the rate memory gives them. The logit rules and dropout are the
/// ones SdpaTiles uses, with the scores' strides swapped.
///
/// Every row of the tile is computed by the same packet operations whatever the number of
/// rows: the head dimension's tail is a zero-padded packet (q and the accumulator are padded
/// in the scratch, k's and v's tails loaded with load_partial), never scalar code, so a query
/// head gives the same bits alone or grouped with others.
///
/// k and v are read in place in their own element type S (a KV cache's storage type); 16-bit
/// and int8 packets are widened in registers (load_packet), so a cache in bfloat16 or half is
/// read at half the bytes and one in int8 at a quarter. A paged k or v (a paged cache's) is
/// read a run of rows at a time (Head::runs: to the end of a page); every score and every
/// step of p v is the same operation whatever the runs, so paged gives the bits contiguous does. An int8 key's scale multiplies its
/// score, and a value's scale its weight (after the softmax sums took the weight), so no
/// element is dequantised in memory. The tile computes in C = compute_t<T>.
template <class T, class S = T>
struct SdpaRows {
  using C = compute_t<T>;
  using P = Packet<C>;
  static constexpr int kP = kPacketSize<C>;
  static constexpr Index kMaxRows = 4;  ///< queries per tile at most
  static constexpr Index kKeys = 128;   ///< keys per score tile
  static constexpr Index kAhead = 16;   ///< rows of k and v prefetched ahead of their use

  /// A head dimension rounded up to whole packets.
  static Index padded(Index dim) { return (dim + kP - 1) / kP * kP; }

  /// One tile's buffers, query-major: q (rows, D) scaled, the scores (rows, kKeys), the
  /// accumulator (rows, Dv), and each query's running max and sum; q and the accumulator
  /// rows padded to whole packets.
  struct Scratch {
    C *q, *s, *acc, *row_max, *row_sum;
    Index dim, dim_v;  ///< padded row lengths of q and acc
    static Index size(Index dim, Index dim_v) { return kMaxRows * (padded(dim) + kKeys) + state_size(dim_v); }
    /// The accumulators, maxima and sums, contiguous from acc: a tile's softmax state.
    static Index state_size(Index dim_v) { return kMaxRows * (padded(dim_v) + 2); }
    Scratch(C* base, Index d, Index dv)
        : q(base), s(q + kMaxRows * padded(d)), acc(s + kMaxRows * kKeys), row_max(acc + kMaxRows * padded(dv)),
          row_sum(row_max + kMaxRows), dim(padded(d)), dim_v(padded(dv)) {}
  };

  /// @brief How many heads one tile takes: query heads that read the same key/value head
  /// (grouped-query attention) share the tile, so each key and value is loaded once for all
  /// of them; at most kMaxRows rows (heads x queries), a divisor of the group size.
  static Index heads_per_tile(const AttentionCall<T, S>& call) {
    const Index group = call.q.heads / call.k.heads, fit = std::max<Index>(1, kMaxRows / call.q.length);
    Index n = std::min(group, fit);
    while (group % n != 0) --n;
    return n;
  }

  /// A run of n keys (rows of k or v) the tile reads: key i at at + i * stride, its int8
  /// scale at scales[i] (else null); `next` is where the keys after it are (the next page's
  /// rows of a paged view), what the prefetches reach for past the run's end.
  struct Run {
    const S* at;
    Index n, stride;
    const float* scales;
    const S* next;
    /// The row kAhead keys after key i: in the run, or past it from next.
    const S* ahead(Index i) const { return i + kAhead < n ? at + (i + kAhead) * stride : next + (i + kAhead - n) * stride; }
  };

  /// One key/value head (b, h) of the call as the tile reads it.
  struct Head {
    const AttentionCall<T, S>& call;
    Index b, h;
    /// f(j, run) for each Run of keys of x (k or v) in [j0, j0 + cols), j its first key: one
    /// for an unpaged view, one per page for a paged one (page numbers counted on from j0's,
    /// with no division per page).
    template <class F>
    void runs(const HeadsView<const S>& x, const RowScales& sc, Index j0, Index cols, F&& f) const {
      const Index end = j0 + cols;
      if (!x.pages) {
        const S* at = x.row(b, h, j0);
        return f(j0, Run{at, cols, x.row_stride, sc.row(b, h, j0), at + cols * x.row_stride});
      }
      const Index size = x.pages.page_size;
      for (Index j = j0, i = j0 / size, offset = j0 % size; j < end; ++i, offset = 0) {
        const Index n = std::min(end - j, size - offset);
        const S* at = x.page_row(b, h, i, offset);
        f(j, Run{at, n, x.row_stride, sc.pages ? sc.page_row(b, h, i, offset) : sc.row(b, h, j),
                 j + n < x.length ? x.page_row(b, h, i + 1, 0) : at + n * x.row_stride});
        j += n;
      }
    }
  };

  /// Key/value head kvh of batch element b of the call.
  static Head head(const AttentionCall<T, S>& call, Index b, Index kvh) { return {call, b, kvh}; }

  /// Keys a split of a unit's keys holds at least (see key_splits).
  static constexpr Index kSplitKeys = 2048;
  /// Work items a call is cut into at least, by splitting keys, when its units are fewer.
  static constexpr Index kSplitItems = 16;

  /// @brief The whole call: (batch, group of heads sharing a key/value head) units of all
  /// queries, each over every key it may see, or over key_splits ranges of them merged after
  /// (split-KV decoding). Bit-identical for every thread count: the splits depend on the
  /// problem alone.
  static void run(const AttentionCall<T, S>& call) {
    const AttentionDims d = call.dims();
    const Index dim = call.q.head_dim, dim_v = call.v.head_dim, heads = heads_per_tile(call);
    const QueryBlocks units{d.batch, d.heads / heads, d.len_q, d.len_q};
    const auto tile_of = [&](const QueryBlock& u) { return call.tile(u.b, u.h * heads, 0, d.len_q); };
    const auto kv_of = [&](const Tile& t) { return head(call, t.b, call.kv_head(t.h)); };
    // The keys a unit's queries may see, from a whole key tile: [begin, end).
    const auto begin_of = [&](const Tile& t) { return t.key_begin(call.masks.causal, call.masks.window) / kKeys * kKeys; };
    const auto end_of = [&](const Tile& t) { return std::max(begin_of(t), t.key_end(call.masks.causal)); };
    Index most = 0;  // the most keys a unit may see (every unit's, unless the keys are ragged)
    for (Index b = 0; b < d.batch; ++b) {
      const Tile t = tile_of(units[b * (units.count() / d.batch)]);
      most = std::max(most, end_of(t) - begin_of(t));
    }
    const double cost = double(heads * d.len_q) * double(most) * double(dim + dim_v + 8);
    const Index splits = key_splits(units.count(), most);
    const Index span = (most + splits * kKeys - 1) / (splits * kKeys) * kKeys;
    const Index parts = splits > 1 ? (most + span - 1) / span : 1;
    if (parts == 1) {
      for_each_block<C>(units, cost, Scratch::size(dim, dim_v), [&](const QueryBlock& u, C* scratch) {
        const Scratch w(scratch, dim, dim_v);
        const Tile t = tile_of(u);
        block(call, t, heads, kv_of(t), w, begin_of(t), end_of(t));
        finish(call, t, heads, w);
      });
      return;
    }
    const Index stride = Scratch::state_size(dim_v);  // a split's state: accumulators, maxima, sums
    const WorkBuffer<C> states(units.count() * parts * stride);
    const WorkSplit items = WorkSplit::of(units.count() * parts, cost / double(parts));
    parallel_for(items.items(), [&](Index item) {
      const WorkBuffer<C> scratch(Scratch::size(dim, dim_v));
      const Scratch w(scratch.data(), dim, dim_v);
      for (Index x = items.begin(item); x < items.end(item); ++x) {
        const Tile t = tile_of(units[x / parts]);
        const Index j = begin_of(t) + (x % parts) * span;  // (past end_of(t), an empty state)
        block(call, t, heads, kv_of(t), w, j, std::min(end_of(t), j + span));
        std::copy(w.acc, w.acc + stride, states.data() + x * stride);
      }
    });
    parallel_for(units.count(), [&](Index u) {
      const WorkBuffer<C> scratch(Scratch::size(dim, dim_v));
      const Scratch w(scratch.data(), dim, dim_v);
      const Tile t = tile_of(units[u]);
      merge(states.data() + u * parts * stride, parts, heads * t.rows, w);
      finish(call, t, heads, w);
    });
  }

  /// @brief Key ranges a unit's `keys` keys are cut into: enough that the call has
  /// kSplitItems items when it has fewer units, each range at least kSplitKeys keys. Fixed by
  /// the problem alone, never by the thread count.
  static Index key_splits(Index units, Index keys) {
    const Index wanted = (kSplitItems + std::max<Index>(units, 1) - 1) / std::max<Index>(units, 1);
    return std::max<Index>(1, std::min(wanted, keys / kSplitKeys));
  }

  /// @brief All queries of `heads` consecutive heads from tile.h (sharing the key/value head
  /// kv) over the keys in [j_begin, j_end) they may see (j_begin a multiple of kKeys), into
  /// w's accumulators, running maxima and sums. Row r of the tile is query r % L of head
  /// tile.h + r / L.
  static void block(const AttentionCall<T, S>& call, const Tile& tile, Index heads, const Head& kv, const Scratch& w,
                    Index j_begin, Index j_end) {
    static_assert(kMaxRows == 4, "block() dispatches on 1 to 4 rows");
    switch (heads * tile.rows) {
      case 1: return block_rows<1>(call, tile, heads, kv, w, j_begin, j_end);
      case 2: return block_rows<2>(call, tile, heads, kv, w, j_begin, j_end);
      case 3: return block_rows<3>(call, tile, heads, kv, w, j_begin, j_end);
      default: return block_rows<4>(call, tile, heads, kv, w, j_begin, j_end);
    }
  }

  /// The outputs of a tile's rows from w's state (each row through AttentionCall::end_row).
  static void finish(const AttentionCall<T, S>& call, const Tile& tile, Index heads, const Scratch& w) {
    for (Index r = 0; r < heads * tile.rows; ++r) {
      const Index h = tile.h + r / tile.rows, i = tile.i0 + r % tile.rows;
      finalise_row(w.acc + r * w.dim_v, call.v.head_dim, w.row_max[r],
                   call.end_row(tile.b, h, i, w.row_max[r], w.row_sum[r]), call.out.row(tile.b, h, i));
    }
  }

  /// @brief The states of `parts` key ranges of one tile (each Scratch::state_size values in a
  /// Scratch's layout, one after another) merged into w's for its `rows` rows, in range order,
  /// by the online softmax's rule: the largest maximum, and each range's sum and accumulator
  /// times rescale_factor(its maximum, that one).
  static void merge(const C* states, Index parts, Index rows, const Scratch& w) {
    const Index stride = Scratch::state_size(w.dim_v);
    const Index at_max = kMaxRows * w.dim_v, at_sum = at_max + kMaxRows;  // in a state, after the accumulators
    for (Index r = 0; r < rows; ++r) {
      C top = -std::numeric_limits<C>::infinity();
      for (Index p = 0; p < parts; ++p) top = std::max(top, states[p * stride + at_max + r]);
      P sum = ei::pset1<P>(C(0));
      C* acc = w.acc + r * w.dim_v;
      std::fill(acc, acc + w.dim_v, C(0));
      for (Index p = 0; p < parts; ++p) {
        const C* state = states + p * stride;
        const P alpha = rescale_factor(ei::pset1<P>(state[at_max + r]), ei::pset1<P>(top));
        sum = ei::pmadd(ei::pset1<P>(state[at_sum + r]), alpha, sum);
        for (Index c = 0; c < w.dim_v; c += kP)
          ei::pstoreu(acc + c, ei::pmadd(ei::ploadu<P>(state + r * w.dim_v + c), alpha, ei::ploadu<P>(acc + c)));
      }
      w.row_max[r] = top;
      w.row_sum[r] = ei::pfirst(sum);
    }
  }

 private:
  template <int R>
  static EIGEN_DONT_INLINE void block_rows(const AttentionCall<T, S>& call, const Tile& tile, Index heads,
                                           const Head& kv, const Scratch& w, Index j_begin, Index j_end) {
    const Index dim_v = call.v.head_dim, key_end = std::min(j_end, tile.key_end(call.masks.causal));
    const Index key_begin = std::max(j_begin, tile.key_begin(call.masks.causal, call.masks.window) / kKeys * kKeys);
    const Index per_head = tile.rows * kKeys;  // scores of one head's queries
    for (Index e = 0; e < heads; ++e)
      load_scaled_queries(call.q, tile.b, tile.h + e, tile.i0, tile.rows, tile.rows, call.scale,
                          w.q + e * tile.rows * w.dim, w.dim, 1);
    for (Index r = 0; r < R; ++r) std::fill(w.q + r * w.dim + call.q.head_dim, w.q + (r + 1) * w.dim, C(0));
    std::fill(w.acc, w.acc + R * w.dim_v, C(0));
    std::fill(w.row_max, w.row_max + R, -std::numeric_limits<C>::infinity());
    std::fill(w.row_sum, w.row_sum + R, C(0));
    for (Index j0 = key_begin; j0 < key_end; j0 += kKeys) {
      const Tile t = tile.keys(j0, std::min(kKeys, std::min(j_end, tile.len_k) - j0));
      kv.runs(call.k, call.k_scales, j0, t.cols, [&](Index j, const Run& k) {
        scores<R>(j - j0, k, call.q.head_dim, w);
        if (k.scales) scale_keys<R>(k.scales, j - j0, k.n, w);
      });
      if (call.adjusts(t))
        for (Index e = 0; e < heads; ++e) call.adjust_logits(t.head(t.h + e), w.s + e * per_head, kKeys, 1);
      for (Index r = 0; r < R; ++r) {
        const C alpha = row_online_step(w.s + r * kKeys, t.cols, w.row_max[r], w.row_sum[r]);
        if (alpha != C(1))
          for (Index c = 0; c < w.dim_v; c += kP)
            ei::pstoreu(w.acc + r * w.dim_v + c, ei::pmul(ei::ploadu<P>(w.acc + r * w.dim_v + c), ei::pset1<P>(alpha)));
      }
      if (call.dropout_p > C(0))
        for (Index e = 0; e < heads; ++e)
          dropout_tile(t.head(t.h + e), call.dropout_p, call.dropout_key, w.s + e * per_head, kKeys, 1);
      kv.runs(call.v, call.v_scales, j0, t.cols, [&](Index j, const Run& v) {
        if (v.scales) scale_keys<R>(v.scales, j - j0, v.n, w);
        accumulate<R>(j - j0, v, dim_v, w);
      });
    }
  }

  /// s[r][at + j] *= scale[j] for `cols` keys: an int8 key's scale on its scores, or a
  /// value's on its weights.
  template <int R>
  static void scale_keys(const float* scale, Index at, Index cols, const Scratch& w) {
    for (Index r = 0; r < R; ++r)
      for (Index j = 0; j < cols; ++j) w.s[r * kKeys + at + j] *= scale[j];
  }

  /// s[r][at + j] = q_r . k_j for the run's keys, four at a time (4 R independent sums), each
  /// key row loaded once for all R queries.
  template <int R>
  static EIGEN_DONT_INLINE void scores(Index at, const Run& k, Index dim, const Scratch& w) {
    Index j = 0;
    for (; j + 4 <= k.n; j += 4) dots<R, 4>(k, j, dim, w, at + j);
    for (; j < k.n; ++j) dots<R, 1>(k, j, dim, w, at + j);
  }

  /// s[r][at + x] = q_r . k_x for the N keys of run `run` from key j: packets of multiply-adds
  /// along the head dimension (its tail a zero-padded packet), then the lanes summed in order.
  template <int R, int N>
  static EIGEN_ALWAYS_INLINE void dots(const Run& run, Index j, Index dim, const Scratch& w, Index at) {
    const S* k = run.at + j * run.stride;
    const Index ks = run.stride;
    const S* ahead[N];
    for (int x = 0; x < N; ++x) ahead[x] = run.ahead(j + x);
    P acc[R][N];
    for (int r = 0; r < R; ++r)
      for (int x = 0; x < N; ++x) acc[r][x] = ei::pset1<P>(C(0));
    const auto step = [&](Index d, const P* kd) {
      for (int x = 0; x < N; ++x)
        for (int r = 0; r < R; ++r) acc[r][x] = ei::pmadd(ei::ploadu<P>(w.q + r * w.dim + d), kd[x], acc[r][x]);
    };
    Index d = 0;
    P kd[N];
    for (; d + kP <= dim; d += kP) {
      for (int x = 0; x < N; ++x) {
        prefetch(ahead[x] + d);
        kd[x] = load_packet(k + x * ks + d);
      }
      step(d, kd);
    }
    if (d < dim) {
      for (int x = 0; x < N; ++x) kd[x] = load_partial(k + x * ks + d, dim - d);
      step(d, kd);
    }
    for (int r = 0; r < R; ++r)
      for (int x = 0; x < N; ++x) w.s[r * kKeys + at + x] = sum_lanes(acc[r][x]);
  }

  /// acc[r] += sum_j p[r][at + j] v_j over the run's keys: the accumulator kept in registers
  /// for N packets of columns at a time, each v packet loaded once for all R queries; the
  /// last columns are one zero-padded packet.
  template <int R>
  static EIGEN_DONT_INLINE void accumulate(Index at, const Run& v, Index dim_v, const Scratch& w) {
    Index c = 0;
    for (; c + 4 * kP <= dim_v; c += 4 * kP) accumulate_columns<R, 4, false>(at, v, 0, c, w);
    for (; c + kP <= dim_v; c += kP) accumulate_columns<R, 1, false>(at, v, 0, c, w);
    if (c < dim_v) accumulate_columns<R, 1, true>(at, v, dim_v - c, c, w);
  }

  /// accumulate() for N packets of columns from column c0 (Partial: one packet of `width` < kP).
  template <int R, int N, bool Partial>
  static EIGEN_ALWAYS_INLINE void accumulate_columns(Index at, const Run& run, Index width, Index c0,
                                                     const Scratch& w) {
    const C* p = w.s + at;
    const S* v = run.at + c0;
    const Index vs = run.stride;
    C* acc = w.acc + c0;
    P a[R][N];
    for (int r = 0; r < R; ++r)
      for (int x = 0; x < N; ++x) a[r][x] = ei::ploadu<P>(acc + r * w.dim_v + x * kP);
    for (Index j = 0; j < run.n; ++j)
      for (int x = 0; x < N; ++x) {
        prefetch(run.ahead(j) + c0 + x * kP);
        const P vp = Partial ? load_partial(v + j * vs, width) : load_packet(v + j * vs + x * kP);
        for (int r = 0; r < R; ++r) a[r][x] = ei::pmadd(ei::pset1<P>(p[r * kKeys + j]), vp, a[r][x]);
      }
    for (int r = 0; r < R; ++r)
      for (int x = 0; x < N; ++x) ei::pstoreu(acc + r * w.dim_v + x * kP, a[r][x]);
  }
};
