// The online softmax toolkit of one kernel pass (no include guard: online_softmax.hpp
// includes it for the baseline path, kernels/pass.ipp once per wider path; see
// kernels/packets.ipp).

/// @brief Rows i0 .. i0 + rows - 1 of head h of batch element b of q, times scale, into dst:
/// element d of row r at dst[r * row_step + d * dim_step]; rows r in [rows, padded_rows) are
/// zero (queries past a block's end, whose results are unused). The one query load of every
/// attention tile (query-major: row_step = D, dim_step = 1; key-major: 1 and the block width).
/// dst is in compute_t<T> (a 16-bit q is widened, then scaled in float32).
template <class T>
void load_scaled_queries(const HeadsView<const T>& q, Index b, Index h, Index i0, Index rows, Index padded_rows,
                         compute_t<T> scale, compute_t<T>* dst, Index row_step, Index dim_step) {
  using C = compute_t<T>;
  for (Index r = 0; r < padded_rows; ++r) {
    const T* src = q.row(b, h, i0 + r);
    for (Index d = 0; d < q.head_dim; ++d)
      dst[r * row_step + d * dim_step] = r < rows ? static_cast<C>(src[d]) * scale : C(0);
  }
}

/// @brief The shift of a softmax whose running max is m: m itself, or 0 where m is -inf
/// (every logit so far masked), so that exp_nonpositive(x - shift) of a masked x = -inf is
/// exp(-inf) = 0 rather than exp(NaN).
template <class P>
EIGEN_ALWAYS_INLINE P softmax_shift(const P& m) {
  using Scalar = typename ei::unpacket_traits<P>::type;
  const P neg_inf = ei::pset1<P>(-std::numeric_limits<Scalar>::infinity());
  return ei::pselect(ei::pcmp_eq(m, neg_inf), ei::pset1<P>(Scalar(0)), m);
}

/// @brief The factor alpha = exp(m - m2) that rescales a running sum and accumulator when the
/// running max moves from m to m2 >= m; 0 while nothing was accumulated (m = -inf).
template <class P>
EIGEN_ALWAYS_INLINE P rescale_factor(const P& m, const P& m2) {
  using Scalar = typename ei::unpacket_traits<P>::type;
  const P neg_inf = ei::pset1<P>(-std::numeric_limits<Scalar>::infinity());
  return ei::pselect(ei::pcmp_eq(m, neg_inf), ei::pset1<P>(Scalar(0)), exp_nonpositive(ei::psub(m, m2)));
}

/// @brief The one finalisation of a softmax-weighted sum acc of a query whose running max is m
/// and sum l: NaN when l is NaN (a NaN logit, or +inf: inf - inf), else exactly 0 for a query
/// that saw no key (m = -inf; acc may hold 0 * inf there), else acc / l.
template <class P>
EIGEN_ALWAYS_INLINE P finalise(const P& acc, const P& m, const P& l) {
  using Scalar = typename ei::unpacket_traits<P>::type;
  const P zero = ei::pset1<P>(Scalar(0)), nan = ei::pset1<P>(std::numeric_limits<Scalar>::quiet_NaN());
  const P saw_none = ei::pcmp_eq(m, ei::pset1<P>(-std::numeric_limits<Scalar>::infinity()));
  return ei::pselect(ei::pcmp_eq(l, l), ei::pselect(saw_none, zero, ei::pdiv(acc, l)), nan);
}

/// finalise for one query: out[c] = finalise(acc[c], m, l) for the n contiguous values of acc
/// (out may be acc; a 16-bit out gets each value rounded once).
template <class T>
EIGEN_DONT_INLINE void finalise_row(const compute_t<T>* acc, Index n, compute_t<T> m, compute_t<T> l, T* out) {
  using C = compute_t<T>;
  using P = Packet<C>;
  constexpr int kP = kPacketSize<C>;
  const P pm = ei::pset1<P>(m), pl = ei::pset1<P>(l);
  Index c = 0;
  for (; c + kP <= n; c += kP) store_packet(out + c, finalise(ei::ploadu<P>(acc + c), pm, pl));
  if (c < n) store_partial(out + c, finalise(load_partial(acc + c, n - c), pm, pl), n - c);
}

// ---------------------------------------------------------------------------------------
// Lanes: V packets of queries, a key-major tile s (key j's queries at s + j * stride).
// ---------------------------------------------------------------------------------------

/// max[v] = max over keys j < cols of the packet s + j * stride + v * P (NaN need not
/// propagate through it: exp(NaN - max) is NaN and makes the sum NaN).
template <class T, int V>
EIGEN_DONT_INLINE void lanes_max(const T* s, Index cols, Index stride, Packet<T>* max) {
  using P = Packet<T>;
  P m[V];  // in registers (max may alias s for all the compiler knows)
  for (int v = 0; v < V; ++v) m[v] = ei::pset1<P>(-std::numeric_limits<T>::infinity());
  for (Index j = 0; j < cols; ++j)
    for (int v = 0; v < V; ++v) m[v] = ei::pmax(m[v], ei::ploadu<P>(s + j * stride + v * kPacketSize<T>));
  for (int v = 0; v < V; ++v) max[v] = m[v];
}

/// e = exp(s - shift) for keys j < cols (e may be s), sum[v] = sum over j of the results.
template <class T, int V>
EIGEN_DONT_INLINE void lanes_exp_sum(const T* s, T* e, Index cols, Index stride, const Packet<T>* shift,
                                     Packet<T>* sum) {
  using P = Packet<T>;
  P total[V], by[V];  // in registers (e may alias shift and sum for all the compiler knows)
  for (int v = 0; v < V; ++v) total[v] = ei::pset1<P>(T(0)), by[v] = shift[v];
  for (Index j = 0; j < cols; ++j)
    for (int v = 0; v < V; ++v) {
      const Index at = j * stride + v * kPacketSize<T>;
      const P x = exp_nonpositive(ei::psub(ei::ploadu<P>(s + at), by[v]));
      ei::pstoreu(e + at, x);
      total[v] = ei::padd(total[v], x);
    }
  for (int v = 0; v < V; ++v) sum[v] = total[v];
}

/// @brief The online step of one key tile for V packets of queries: given the tile's max per
/// query, merges it into the running max and sum (row_max, row_sum, V * P values each),
/// turns the tile into p = exp(s - new max) and writes each query's rescale factor to alpha.
/// Returns whether some alpha is not 1 (the accumulator must then be rescaled).
template <class T, int V>
EIGEN_DONT_INLINE bool lanes_online_step(T* s, Index cols, Index stride, const Packet<T>* tile_max, T* row_max,
                                         T* row_sum, T* alpha) {
  using P = Packet<T>;
  constexpr int kP = kPacketSize<T>;
  P shift[V], sum[V], a[V];
  for (int v = 0; v < V; ++v) {
    const P old_max = ei::ploadu<P>(row_max + v * kP), new_max = ei::pmax(old_max, tile_max[v]);
    a[v] = rescale_factor(old_max, new_max);
    shift[v] = softmax_shift(new_max);
    ei::pstoreu(row_max + v * kP, new_max);
    ei::pstoreu(alpha + v * kP, a[v]);
  }
  lanes_exp_sum<T, V>(s, s, cols, stride, shift, sum);
  bool rescale = false;
  for (int v = 0; v < V; ++v) {
    ei::pstoreu(row_sum + v * kP, ei::pmadd(ei::ploadu<P>(row_sum + v * kP), a[v], sum[v]));
    for (int x = 0; x < kP; ++x) rescale = rescale || !(alpha[v * kP + x] == T(1));
  }
  return rescale;
}

/// finalise for V packets of queries in place: acc[d * stride + lane] for d < n.
template <class T, int V>
EIGEN_DONT_INLINE void lanes_finalise(T* acc, Index n, Index stride, const T* row_max, const T* row_sum) {
  using P = Packet<T>;
  constexpr int kP = kPacketSize<T>;
  for (int v = 0; v < V; ++v) {
    const P m = ei::ploadu<P>(row_max + v * kP), l = ei::ploadu<P>(row_sum + v * kP);
    for (Index d = 0; d < n; ++d) {
      T* at = acc + d * stride + v * kP;
      ei::pstoreu(at, finalise(ei::ploadu<P>(at), m, l));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Rows: one query's scores contiguous, vectorised across the keys.
// ---------------------------------------------------------------------------------------

/// The max of x[0 .. n) (-inf for n = 0; NaN need not propagate, as lanes_max).
template <class T>
EIGEN_DONT_INLINE T row_max(const T* x, Index n) {
  T m = -std::numeric_limits<T>::infinity();
  for (Index j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

/// @brief x[j] = exp(x[j] - shift) for j < n, in place (exp_nonpositive, a packet at a
/// time; the last partial packet is padded with -inf so every element takes the same
/// path); returns the sum of the results, added lane by lane then across the lanes. shift is
/// meant to be the max of x: a NaN or +inf shift makes the sum NaN, as softmax does.
template <class T>
EIGEN_DONT_INLINE T exp_shifted_inplace(T* x, Index n, T shift) {
  using P = Packet<T>;
  constexpr int kSize = kPacketSize<T>;
  const P vshift = ei::pset1<P>(shift);
  P sum = ei::pset1<P>(T(0));
  auto step = [&](T* at) {
    const P e = exp_nonpositive(ei::psub(ei::ploadu<P>(at), vshift));
    ei::pstoreu(at, e);
    sum = ei::padd(sum, e);
  };
  Index j = 0;
  for (; j + kSize <= n; j += kSize) step(x + j);
  if (j < n) {
    T tail[kSize];
    for (int t = 0; t < kSize; ++t) tail[t] = j + t < n ? x[j + t] : -std::numeric_limits<T>::infinity();
    step(tail);
    std::copy(tail, tail + (n - j), x + j);
  }
  return sum_lanes(sum);
}

/// @brief The online step of one query over a tile of n contiguous scores: merges the tile's
/// max into the running max m and sum l, turns the tile into p = exp(s - new max) in place
/// and returns the accumulator's rescale factor alpha.
template <class T>
EIGEN_DONT_INLINE T row_online_step(T* s, Index n, T& m, T& l) {
  using P = Packet<T>;
  const T new_max = std::max(m, row_max(s, n));
  const P alpha = rescale_factor(ei::pset1<P>(m), ei::pset1<P>(new_max));
  const T sum = exp_shifted_inplace(s, n, ei::pfirst(softmax_shift(ei::pset1<P>(new_max))));
  m = new_max;
  l = ei::pfirst(ei::pmadd(ei::pset1<P>(l), alpha, ei::pset1<P>(sum)));
  return ei::pfirst(alpha);
}

/// @brief Softmax of the n contiguous values x, in place: one online step from the empty
/// state, then the finalisation (a row of -inf is all 0, NaN or +inf makes the row NaN),
/// dividing by end(max, sum).
template <class T, class End>
void softmax_row_inplace(T* x, Index n, const End& end) {
  T m = -std::numeric_limits<T>::infinity(), l = T(0);
  row_online_step(x, n, m, l);
  finalise_row(x, n, m, end(m, l), x);
}
