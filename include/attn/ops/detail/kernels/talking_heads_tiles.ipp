// The talking-heads kernel's vector steps of one kernel pass (no include guard:
// talking_heads_tiles.hpp includes it for the baseline path, kernels/pass.ipp once per wider
// path; see kernels/packets.ipp).

/// mix_heads_linear for output heads [g0, g0 + G) and V packets at x: each input packet is
/// loaded once for the G heads, and every output is bias + sum_h w[g][h] in_h in h order.
template <class T, int G, int V>
EIGEN_ALWAYS_INLINE void mix_heads_block(const T* w, const T* bias, Index nh, Index g0, const T* in, Index in_stride,
                                         T* out, Index out_stride) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>;
  P acc[G][V];
  for (int i = 0; i < G; ++i)
    for (int v = 0; v < V; ++v) acc[i][v] = ei::pset1<P>(bias[g0 + i]);
  for (Index h = 0; h < nh; ++h) {
    P a[V];
    for (int v = 0; v < V; ++v) {
      a[v] = ei::ploadu<P>(in + h * in_stride + v * S);
      keep_in_register(a[v]);
    }
    for (int i = 0; i < G; ++i) {
      const P wv = ei::pset1<P>(w[(g0 + i) * nh + h]);
      for (int v = 0; v < V; ++v) acc[i][v] = ei::pmadd(wv, a[v], acc[i][v]);
    }
  }
  for (int i = 0; i < G; ++i)
    for (int v = 0; v < V; ++v) ei::pstoreu(out + (g0 + i) * out_stride + v * S, acc[i][v]);
}

/// mix_heads_linear for output heads [g0, g0 + G), all n values.
template <class T, int G>
void mix_heads_group(const T* w, const T* bias, Index nh, Index g0, const T* in, Index in_stride, T* out,
                     Index out_stride, Index n) {
  constexpr int S = kPacketSize<T>;
  Index x = 0;
  for (; x + 2 * S <= n; x += 2 * S) mix_heads_block<T, G, 2>(w, bias, nh, g0, in + x, in_stride, out + x, out_stride);
  for (; x < n; x += S) mix_heads_block<T, G, 1>(w, bias, nh, g0, in + x, in_stride, out + x, out_stride);
}

/// @brief A Linear(H, H) across heads: out_g[x] = bias[g] + sum_h w[g][h] in_h[x] for x < n, n a
/// multiple of the packet size. Output heads go in groups of 8 (then 4, 2, 1), whose
/// accumulators stay in registers while each input packet is loaded once for the group.
/// @param w (H, H) row-major; head h's n inputs start at in + h * in_stride, head g's
/// outputs at out + g * out_stride (not overlapping the inputs)
template <class T>
EIGEN_DONT_INLINE void mix_heads_linear(const T* w, const T* bias, Index nh, const T* in, Index in_stride, T* out,
                                        Index out_stride, Index n) {
  Index g = 0;
  for (; g + 8 <= nh; g += 8) mix_heads_group<T, 8>(w, bias, nh, g, in, in_stride, out, out_stride, n);
  if (g + 4 <= nh) mix_heads_group<T, 4>(w, bias, nh, g, in, in_stride, out, out_stride, n), g += 4;
  if (g + 2 <= nh) mix_heads_group<T, 2>(w, bias, nh, g, in, in_stride, out, out_stride, n), g += 2;
  if (g < nh) mix_heads_group<T, 1>(w, bias, nh, g, in, in_stride, out, out_stride, n);
}

/// mix_heads_per_row for N packets (N * P / R keys) of every head.
template <class T, int R, int N>
void mix_heads_per_row_chunk(const T* w, const T* bias, Index nh, const T* in, Index in_stride, T* out,
                             Index out_stride) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>, V = R / S;
  static_assert(N % V == 0, "a chunk holds whole keys");
  for (Index f = 0; f < nh; ++f) {
    P acc[N];
    for (int c = 0; c < N; ++c) acc[c] = ei::pset1<P>(bias[f]);
    for (Index g = 0; g < nh; ++g) {
      P wv[V];
      for (int v = 0; v < V; ++v) wv[v] = ei::ploadu<P>(w + (f * nh + g) * R + v * S);
      const T* src = in + g * in_stride;
      for (int c = 0; c < N; ++c) acc[c] = ei::pmadd(wv[c % V], ei::ploadu<P>(src + c * S), acc[c]);
    }
    T* dst = out + f * out_stride;
    for (int c = 0; c < N; ++c) ei::pstoreu(dst + c * S, acc[c]);
  }
}

/// @brief A Linear(H, H) across heads with a weight per query row: out_f[j][r] = bias[f] +
/// sum_g w[f][g][r] in_g[j][r] for nk keys.
/// @param w (H, H, R); head g's (nk, R) inputs start at in + g * in_stride, head f's
/// outputs at out + f * out_stride
template <class T, int R>
EIGEN_DONT_INLINE void mix_heads_per_row(const T* w, const T* bias, Index nh, const T* in, Index in_stride, T* out,
                                         Index out_stride, Index nk) {
  constexpr int S = kPacketSize<T>, V = R / S, N = std::max(8, V);
  const Index n = nk * R;
  Index x = 0;
  for (; x + N * S <= n; x += N * S)
    mix_heads_per_row_chunk<T, R, N>(w, bias, nh, in + x, in_stride, out + x, out_stride);
  for (; x < n; x += R) mix_heads_per_row_chunk<T, R, V>(w, bias, nh, in + x, in_stride, out + x, out_stride);
}

/// @brief Softmax numerators of one key tile: m[r] = max_j x[j][r], e[j][r] =
/// exp(x[j][r] - m[r]) (0 where x is -inf; a row that is all -inf has m = -inf and e = 0),
/// l[r] = sum_j e[j][r]: online_softmax.hpp's lanes steps.
template <class T, int R>
void softmax_numerators(const T* x, Index nk, T* e, T* m, T* l) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>, V = R / S;
  P mv[V], shift[V], sum[V];
  lanes_max<T, V>(x, nk, R, mv);
  for (int v = 0; v < V; ++v) shift[v] = softmax_shift(mv[v]);
  lanes_exp_sum<T, V>(x, e, nk, R, shift, sum);
  for (int v = 0; v < V; ++v) ei::pstoreu(m + v * S, mv[v]), ei::pstoreu(l + v * S, sum[v]);
}

/// @brief Turns the per-tile maxima m (nt, R) and sums l (nt, R) of softmax_numerators into
/// the factors that normalise each tile: c[t][r] = exp(m[t][r] - M[r]) / L[r], M the row
/// maximum and L[r] = sum_t l[t][r] exp(m[t][r] - M[r]), finalised as every softmax is
/// (0 for a row with no unmasked key, NaN where L is NaN); written over m.
template <class T, int R>
EIGEN_DONT_INLINE void tile_normalisers(T* m, const T* l, Index nt) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>, V = R / S;
  P mx[V];
  lanes_max<T, V>(m, nt, R, mx);
  for (int v = 0; v < V; ++v) {
    const P shift = softmax_shift(mx[v]);
    P total = ei::pset1<P>(T(0));
    for (Index t = 0; t < nt; ++t)
      total = ei::pmadd(ei::ploadu<P>(l + t * R + v * S),
                        exp_nonpositive(ei::psub(ei::ploadu<P>(m + t * R + v * S), shift)), total);
    for (Index t = 0; t < nt; ++t) {
      T* mt = m + t * R + v * S;
      ei::pstoreu(mt, finalise(exp_nonpositive(ei::psub(ei::ploadu<P>(mt), shift)), mx[v], total));
    }
  }
}
