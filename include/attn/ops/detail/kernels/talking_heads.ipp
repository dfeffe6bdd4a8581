// The talking-heads kernel of one kernel pass (no include guard: talking_heads_kernel.hpp
// includes it for the baseline path, kernels/pass.ipp once per wider path; see
// kernels/packets.ipp).

/// @brief One block of R query rows, all heads: the two sweeps over the key tiles.
///
/// The softmax of a mixed head is computed exactly rather than online (its inputs mix all
/// heads, so no accumulator can be rescaled per head): sweep 1 keeps each key tile's max
/// and sum, from which each row's normaliser is exact; sweep 2 normalises, mixes by proj_w,
/// applies dropout and multiplies by v. (SdpaTiles describes the online variant.) Every
/// buffer is key-major (R-vectors, talking_heads_tiles.hpp), in the thread's scratch.
template <class T, int R>
struct TalkingHeadsBlock {
  const TalkingHeadsCall<T>& c;
  Tile tile;     ///< the block's rows (head and keys vary)
  Index nt;      ///< key tiles
  T* queries;    ///< (H, Dk, R) scaled queries, transposed
  T* numerators; ///< (H, S, R) softmax numerators of every key (row-block scheme only)
  T* logits;     ///< (H, kt, R) logits of a key tile; numerators there in the two-pass scheme
  T* mixed;      ///< (H, kt, R) logits after proj_l and masks, then weights after proj_w
  T* tile_max;   ///< (H, nt, R) each key tile's max, then its normaliser
  T* tile_sum;   ///< (H, nt, R) each key tile's sum of numerators
  T* recomputed; ///< (2, H, R) a tile's max and sum recomputed in sweep 2 (two-pass scheme)
  T* mix_scaled; ///< (H, H, R) proj_w's weights times one key tile's normalisers
  T* out_t;      ///< (H, Dv, R) output, transposed

  static Index scratch_size(const TalkingHeadsCall<T>& c) {
    const Index nh = c.call.q.heads, kt = c.key_tile, nt = c.key_tiles();
    return R * (nh * c.call.q.head_dim + (c.keep_numerators ? nh * c.call.k.length : 0) + 2 * nh * kt +
                2 * nh * nt + 2 * nh + nh * nh + nh * c.call.v.head_dim);
  }

  TalkingHeadsBlock(const TalkingHeadsCall<T>& call, const Tile& block, T* scratch)
      : c(call), tile(block), nt(call.key_tiles()) {
    const Index nh = c.call.q.heads, kt = c.key_tile;
    queries = scratch;
    numerators = queries + nh * c.call.q.head_dim * R;
    logits = numerators + (c.keep_numerators ? nh * c.call.k.length * R : 0);
    mixed = logits + nh * kt * R;
    tile_max = mixed + nh * kt * R;
    tile_sum = tile_max + nh * nt * R;
    recomputed = tile_sum + nh * nt * R;
    mix_scaled = recomputed + 2 * nh * R;
    out_t = mix_scaled + nh * nh * R;
  }

  /// Sweep 1, then sweep 2: the block's rows of out (and of the weights if asked).
  void run() {
    const Index nh = c.call.q.heads, kt = c.key_tile;
    load_queries();
    for (Index t = 0; t < nt; ++t) {
      T* e = c.keep_numerators ? numerators + t * kt * R : logits;
      numerators_of(t, e, c.keep_numerators ? c.call.k.length * R : kt * R, tile_max + t * R, tile_sum + t * R, nt * R);
    }
    for (Index g = 0; g < nh; ++g) tile_normalisers<T, R>(tile_max + g * nt * R, tile_sum + g * nt * R, nt);
    std::fill(out_t, out_t + nh * c.call.v.head_dim * R, T(0));
    for (Index t = 0; t < nt; ++t) weights_times_values(t);
    store();
  }

  /// Scaled q^T of every head; rows past the block's end are zero.
  void load_queries() {
    const auto& q = c.call.q;
    for (Index h = 0; h < q.heads; ++h)
      load_scaled_queries(q, tile.b, h, tile.i0, tile.rows, R, c.call.scale, queries + h * q.head_dim * R, 1, R);
  }

  /// Key tile t: logits of all heads, proj_l, masks, and each mixed head g's numerators
  /// exp(x - tile max) into out + g * out_stride ((nk, R)), its tile max and sum into
  /// max + g * stat_stride and sum + g * stat_stride.
  EIGEN_DONT_INLINE void numerators_of(Index t, T* out, Index out_stride, T* max, T* sum, Index stat_stride) {
    const auto& call = c.call;
    const Index nh = call.q.heads, dk = call.q.head_dim, kt = c.key_tile, j0 = t * kt;
    const Tile keys = tile.keys(j0, std::min(kt, call.k.length - j0));
    if (keys.j0 >= tile.key_end(call.masks.causal)) {  // wholly in the future of every row: all -inf
      for (Index g = 0; g < nh; ++g) {
        std::fill(out + g * out_stride, out + g * out_stride + keys.cols * R, T(0));
        std::fill(max + g * stat_stride, max + g * stat_stride + R, -std::numeric_limits<T>::infinity());
        std::fill(sum + g * stat_stride, sum + g * stat_stride + R, T(0));
      }
      return;
    }
    constexpr int kV = R / kPacketSize<T>;
    const auto& k = call.k;
    for (Index h = 0; h < nh; ++h)
      outer_product_rows<T, register_rows<T, kV>(), kV, false>(
          k.row(tile.b, h, j0), k.row_stride, 1, keys.cols,
          queries + h * dk * R, R, dk, logits + h * kt * R, R);
    mix_heads_linear(c.mix.logits_weight, c.mix.logits_bias, nh, logits, kt * R, mixed, kt * R,
                     keys.cols * R);
    for (Index g = 0; g < nh; ++g) {
      T* x = mixed + g * kt * R;
      if (call.adjusts(keys)) call.adjust_logits(keys.head(g), x, 1, R);  // indexed by the mixed head
      softmax_numerators<T, R>(x, keys.cols, out + g * out_stride, max + g * stat_stride, sum + g * stat_stride);
    }
  }

  /// Sweep 2 for key tile t: normalise, proj_w, dropout, weights out, out_t += p v.
  EIGEN_DONT_INLINE void weights_times_values(Index t) {
    const auto& call = c.call;
    const Index nh = call.q.heads, kt = c.key_tile, j0 = t * kt, dv = call.v.head_dim;
    const Tile keys = tile.keys(j0, std::min(kt, call.k.length - j0));
    const T* e = c.keep_numerators ? numerators + j0 * R : logits;
    if (!c.keep_numerators) numerators_of(t, logits, kt * R, recomputed, recomputed + nh * R, R);  // as in sweep 1
    // proj_w with each mixed head's normaliser folded in: mix_scaled[f][g][r] = W_w[f][g] * c_g[r].
    const T* ww = c.mix.weights_weight;
    for (Index f = 0; f < nh; ++f)
      for (Index g = 0; g < nh; ++g)
        for (Index r = 0; r < R; ++r) mix_scaled[(f * nh + g) * R + r] = ww[f * nh + g] * tile_max[(g * nt + t) * R + r];
    mix_heads_per_row<T, R>(mix_scaled, c.mix.weights_bias, nh, e, c.keep_numerators ? call.k.length * R : kt * R,
                            mixed, kt * R, keys.cols);
    constexpr int kV = R / kPacketSize<T>;
    const auto& v = call.v;
    for (Index f = 0; f < nh; ++f) {
      T* p = mixed + f * kt * R;
      if (call.dropout_p > T(0)) dropout_tile(keys.head(f), call.dropout_p, call.dropout_key, p, 1, R);
      if (c.weights) {
        T* w = c.weights + ((tile.b * nh + f) * call.q.length + tile.i0) * call.k.length + j0;
        for (Index r = 0; r < tile.rows; ++r)
          for (Index j = 0; j < keys.cols; ++j) w[r * call.k.length + j] = p[j * R + r];
      }
      outer_product_rows<T, register_rows<T, kV>(), kV, true>(
          v.row(tile.b, f, j0), 1, v.row_stride, dv, p, R,
          keys.cols, out_t + f * dv * R, R);
    }
  }

  /// The block's rows of out, from out_t.
  void store() {
    const auto& out = c.call.out;
    const Index dv = out.head_dim;
    for (Index f = 0; f < out.heads; ++f) {
      T* dst = out.row(tile.b, f, tile.i0);
      for (Index r = 0; r < tile.rows; ++r)
        for (Index e = 0; e < dv; ++e) dst[r * out.row_stride + e] = out_t[(f * dv + e) * R + r];
    }
  }
};

/// All blocks of R query rows, threaded with for_each_block over (batch, query block)
/// units (one "head": a unit holds all heads), so results do not depend on the thread
/// count; each thread reuses one scratch buffer.
template <class T, int R>
void talking_heads_blocks(TalkingHeadsCall<T> c, TalkingHeadsScheme scheme) {
  const AttentionCall<T>& call = c.call;
  const AttentionDims d = call.dims();
  const Index nh = std::max<Index>(d.heads, 1);
  // Keys per tile: one tile of all heads, (H, kt, R), takes about 32 KiB (measured at S = 784,
  // 8 heads: 16 KiB tiles are 5-8% slower, 8 KiB 15%; 48 KiB about the same).
  constexpr Index kTileBytes = 32768;
  constexpr Index step = register_rows<T, R / kPacketSize<T>>();
  c.key_tile = std::clamp<Index>(kTileBytes / (nh * R * Index(sizeof(T))) / step * step, step, 256);
  // Measured (S = 784 .. 8192, 8 heads): keeping the numerators is 1.2-1.4x faster up to
  // S = 4096 (4 MiB per block) and no slower at 8 MiB; beyond, two passes bound the memory.
  constexpr Index kNumeratorBytes = Index(8) << 20;
  c.keep_numerators = scheme == TalkingHeadsScheme::kRowBlock ||
                      (scheme == TalkingHeadsScheme::kAuto && nh * d.len_k * R * Index(sizeof(T)) <= kNumeratorBytes);
  const QueryBlocks blocks{d.batch, 1, d.len_q, R};
  const double unit_cost = double(R) * double(d.len_k) * double(nh) * double(call.q.head_dim + call.v.head_dim + 2 * nh);
  for_each_block<T>(blocks, unit_cost, TalkingHeadsBlock<T, R>::scratch_size(c), [&](const QueryBlock& u, T* scratch) {
    TalkingHeadsBlock<T, R>(c, c.call.tile(u.b, 0, u.i0, blocks.rows_at(u.i0)), scratch).run();
  });
}

/// Runs a talking-heads call in blocks of 128 bytes of query rows (32 floats, 16 doubles), or
/// of one SIMD packet when L is shorter than that (decoding a few rows).
template <class T>
void run_talking_heads(const TalkingHeadsCall<T>& c, TalkingHeadsScheme scheme) {
  constexpr int kFewRows = kPacketSize<T>;
  constexpr int kRows = std::max(kFewRows, 128 / static_cast<int>(sizeof(T)));
  if (c.call.q.length >= kRows)
    talking_heads_blocks<T, kRows>(c, scheme);
  else
    talking_heads_blocks<T, kFewRows>(c, scheme);
}
