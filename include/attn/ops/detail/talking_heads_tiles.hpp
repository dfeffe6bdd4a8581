#pragma once
/// @file
/// @brief Tile kernels of talking_heads_attention. Not part of the public API.
///
/// A block of R query rows is processed for all heads at once. Every tile is key-major:
/// element (key j, query row r) is at [j * R + r], so the R rows of one key form a short
/// contiguous vector: R / P of Eigen's SIMD packets (P floats or doubles each), used
/// explicitly so that the vectorisation does not depend on the compiler's auto-vectoriser.
/// Softmax reductions over the keys are element-wise maxima and sums of those vectors, the
/// head mixes are element-wise multiply-adds across heads, and q k^T and p v are sums of
/// outer products read in place from the strided key and value rows.
///
/// Every result is computed the same way whatever thread runs it, so the kernel gives
/// bit-identical results for any thread count.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "attn/core/generator.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/attention_options.hpp"
#include "attn/ops/heads_view.hpp"
#include "attn/ops/mask.hpp"

namespace attn {
namespace detail {
namespace th {

/// One scratch buffer per thread of a parallel_for, allocated by the thread on first use
/// and freed with this object. Must be constructed outside the parallel_for.
template <class T>
class ThreadScratch {
 public:
  ThreadScratch()
      : nested_(in_parallel()), buffers_(static_cast<std::size_t>(nested_ ? 1 : std::max(get_num_threads(), 1))) {}
  /// This thread's buffer of at least n elements (aligned for SIMD packets). `spare`, owned
  /// by the caller's work item, serves if the team is larger than expected (the thread
  /// count changed since construction).
  T* get(Index n, Vector<T>& spare) {
    const auto s = static_cast<std::size_t>(slot());
    Vector<T>& buf = s < buffers_.size() ? buffers_[s] : spare;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
  }

 private:
  static bool in_parallel() {
#if defined(_OPENMP)
    return omp_in_parallel() != 0;
#else
    return false;
#endif
  }
  // parallel_for runs its items on a team of at most get_num_threads() threads of its own,
  // or serially on the calling thread when called inside a parallel region.
  int slot() const {
#if defined(_OPENMP)
    if (!nested_) return omp_get_thread_num();
#endif
    return 0;
  }
  bool nested_;
  std::vector<Vector<T>> buffers_;
};

namespace ep = Eigen::internal;  // Eigen's SIMD packets: explicit vectors at any compiler setting

/// The widest SIMD packet of T Eigen uses on this target (T itself without SIMD).
template <class T>
using Packet = typename ep::packet_traits<T>::type;
template <class T>
constexpr int kPacketSize = ep::unpacket_traits<Packet<T>>::size;

#if defined(__AVX512F__)
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif

/// Rows of a register tile of outer products: accumulators for that many R-vectors fill
/// half of the vector registers.
template <class T, int R>
constexpr int register_tile() {
  return std::max(1, kVectorRegisters / 2 / (R / kPacketSize<T>));
}

/// outer_products for I rows, accumulated in registers.
template <class T, int R, int I, bool Accumulate>
void outer_products_rows(const T* a, Index a_row, Index a_step, const T* b, Index n, T* c) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>, V = R / S;
  P acc[I][V];
  for (int i = 0; i < I; ++i)
    for (int v = 0; v < V; ++v) acc[i][v] = Accumulate ? ep::ploadu<P>(c + i * R + v * S) : ep::pset1<P>(T(0));
  for (Index m = 0; m < n; ++m) {
    P bv[V];
    for (int v = 0; v < V; ++v) bv[v] = ep::ploadu<P>(b + m * R + v * S);
    for (int i = 0; i < I; ++i) {
      const P av = ep::pset1<P>(a[i * a_row + m * a_step]);
      for (int v = 0; v < V; ++v) acc[i][v] = ep::pmadd(av, bv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < I; ++i)
    for (int v = 0; v < V; ++v) ep::pstoreu(c + i * R + v * S, acc[i][v]);
}

/// c[i][r] (+)= sum_m a[i * a_row + m * a_step] * b[m][r] for i < rows, m < n: a sum of
/// outer products with a register tile of R-vectors. c and b are (rows, R) and (n, R).
template <class T, int R, bool Accumulate>
void outer_products(const T* a, Index a_row, Index a_step, Index rows, const T* b, Index n, T* c) {
  constexpr int I = register_tile<T, R>();
  Index i = 0;
  for (; i + I <= rows; i += I) outer_products_rows<T, R, I, Accumulate>(a + i * a_row, a_row, a_step, b, n, c + i * R);
  for (; i < rows; ++i) outer_products_rows<T, R, 1, Accumulate>(a + i * a_row, a_row, a_step, b, n, c + i * R);
}

/// One head's logits for nk keys: s[j][r] = sum_e k[j][e] * qt[e][r].
/// @param qt (d, R) scaled queries, transposed; @param k first key row, rows k_stride apart
/// @param s (nk, R) output
template <class T, int R>
void scores(const T* qt, Index d, const T* k, Index k_stride, Index nk, T* s) {
  outer_products<T, R, false>(k, k_stride, 1, nk, qt, d, s);
}

/// mix for N packets of every head.
template <class T, int N>
void mix_chunk(const T* w, const T* bias, Index nh, const T* in, Index in_stride, T* out,
               Index out_stride) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>;
  for (Index g = 0; g < nh; ++g) {
    P acc[N];
    for (int c = 0; c < N; ++c) acc[c] = ep::pset1<P>(bias[g]);
    for (Index h = 0; h < nh; ++h) {
      const P wv = ep::pset1<P>(w[g * nh + h]);
      const T* src = in + h * in_stride;
      for (int c = 0; c < N; ++c) acc[c] = ep::pmadd(wv, ep::ploadu<P>(src + c * S), acc[c]);
    }
    T* dst = out + g * out_stride;
    for (int c = 0; c < N; ++c) ep::pstoreu(dst + c * S, acc[c]);
  }
}

/// A Linear(H, H) across heads: out_g[x] = bias[g] + sum_h w[g][h] in_h[x] for x < n, n a
/// multiple of the packet size. @param w (H, H) row-major; head h's n inputs start at
/// in + h * in_stride, head g's outputs at out + g * out_stride (not overlapping the inputs)
template <class T>
void mix(const T* w, const T* bias, Index nh, const T* in, Index in_stride, T* out, Index out_stride,
         Index n) {
  // 8 packets of independent accumulators hide the multiply-add latency.
  constexpr int S = kPacketSize<T>;
  Index x = 0;
  for (; x + 8 * S <= n; x += 8 * S) mix_chunk<T, 8>(w, bias, nh, in + x, in_stride, out + x, out_stride);
  for (; x < n; x += S) mix_chunk<T, 1>(w, bias, nh, in + x, in_stride, out + x, out_stride);
}

/// mix_scaled for N packets (N * P / R keys) of every head.
template <class T, int R, int N>
void mix_scaled_chunk(const T* wn, const T* bias, Index nh, const T* in, Index in_stride, T* out,
                      Index out_stride) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>, V = R / S;
  static_assert(N % V == 0, "a chunk holds whole keys");
  for (Index f = 0; f < nh; ++f) {
    P acc[N];
    for (int c = 0; c < N; ++c) acc[c] = ep::pset1<P>(bias[f]);
    for (Index g = 0; g < nh; ++g) {
      P w[V];
      for (int v = 0; v < V; ++v) w[v] = ep::ploadu<P>(wn + (f * nh + g) * R + v * S);
      const T* src = in + g * in_stride;
      for (int c = 0; c < N; ++c) acc[c] = ep::pmadd(w[c % V], ep::ploadu<P>(src + c * S), acc[c]);
    }
    T* dst = out + f * out_stride;
    for (int c = 0; c < N; ++c) ep::pstoreu(dst + c * S, acc[c]);
  }
}

/// A Linear(H, H) across heads with a weight per query row: out_f[j][r] = bias[f] +
/// sum_g wn[f][g][r] in_g[j][r] for nk keys. @param wn (H, H, R); head g's (nk, R) inputs
/// start at in + g * in_stride, head f's outputs at out + f * out_stride
template <class T, int R>
void mix_scaled(const T* wn, const T* bias, Index nh, const T* in, Index in_stride, T* out, Index out_stride,
                Index nk) {
  constexpr int S = kPacketSize<T>, V = R / S, N = std::max(8, V);
  const Index n = nk * R;
  Index x = 0;
  for (; x + N * S <= n; x += N * S)
    mix_scaled_chunk<T, R, N>(wn, bias, nh, in + x, in_stride, out + x, out_stride);
  for (; x < n; x += R) mix_scaled_chunk<T, R, V>(wn, bias, nh, in + x, in_stride, out + x, out_stride);
}

/// exp(x - m), exactly 0 where x is -inf (Eigen's vectorised exp clamps its argument, so
/// exp(-inf) would be ~1e-38, and -inf - -inf is NaN).
template <class P>
P exp_shifted(const P& x, const P& m) {
  using T = typename ep::unpacket_traits<P>::type;
  const P e = ep::pexp(ep::psub(x, m));
#if EIGEN_VERSION_AT_LEAST(3, 4, 0)
  return ep::pselect(ep::pcmp_eq(x, ep::pset1<P>(-std::numeric_limits<T>::infinity())), ep::pset1<P>(T(0)), e);
#else
  constexpr int S = ep::unpacket_traits<P>::size;
  T xs[S], es[S];
  ep::pstoreu(xs, x);
  ep::pstoreu(es, e);
  for (int i = 0; i < S; ++i) es[i] = xs[i] == -std::numeric_limits<T>::infinity() ? T(0) : es[i];
  return ep::ploadu<P>(es);
#endif
}

/// Softmax numerators of one tile: m[r] = max_j x[j][r], e[j][r] = exp(x[j][r] - m[r])
/// (0 where x is -inf; a row that is all -inf has m = -inf and e = 0), l[r] = sum_j e[j][r].
template <class T, int R>
void exp_tile(const T* x, Index nk, T* e, T* m, T* l) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>, V = R / S;
  P mv[V], sum[V];
  for (int v = 0; v < V; ++v) mv[v] = ep::pset1<P>(-std::numeric_limits<T>::infinity());
  for (Index j = 0; j < nk; ++j)
    for (int v = 0; v < V; ++v) mv[v] = ep::pmax(mv[v], ep::ploadu<P>(x + j * R + v * S));
  for (int v = 0; v < V; ++v) sum[v] = ep::pset1<P>(T(0));
  for (Index j = 0; j < nk; ++j)
    for (int v = 0; v < V; ++v) {
      const P ev = exp_shifted(ep::ploadu<P>(x + j * R + v * S), mv[v]);
      ep::pstoreu(e + j * R + v * S, ev);
      sum[v] = ep::padd(sum[v], ev);
    }
  for (int v = 0; v < V; ++v) ep::pstoreu(m + v * S, mv[v]), ep::pstoreu(l + v * S, sum[v]);
}

/// Turns the per-tile maxima m (nt, R) and sums l (nt, R) of exp_tile into the factors that
/// normalise each tile: c[t][r] = exp(m[t][r] - M[r]) / sum_t' l[t'][r] exp(m[t'][r] - M[r]),
/// M the row maximum; written over m. A row with no unmasked key gets c = 0.
template <class T, int R>
void tile_normalisers(T* m, const T* l, Index nt) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>, V = R / S;
  for (int v = 0; v < V; ++v) {
    P mx = ep::pset1<P>(-std::numeric_limits<T>::infinity()), sum = ep::pset1<P>(T(0));
    for (Index t = 0; t < nt; ++t) mx = ep::pmax(mx, ep::ploadu<P>(m + t * R + v * S));
    for (Index t = 0; t < nt; ++t)
      sum = ep::pmadd(ep::ploadu<P>(l + t * R + v * S), exp_shifted(ep::ploadu<P>(m + t * R + v * S), mx), sum);
    T inv[S];
    ep::pstoreu(inv, sum);
    for (int i = 0; i < S; ++i) inv[i] = inv[i] == T(0) ? T(0) : T(1) / inv[i];
    const P iv = ep::ploadu<P>(inv);
    for (Index t = 0; t < nt; ++t) {
      T* mt = m + t * R + v * S;
      ep::pstoreu(mt, ep::pmul(exp_shifted(ep::ploadu<P>(mt), mx), iv));
    }
  }
}

/// out[e][r] += sum_j v[j][e] * p[j][r]: one head's weights times values, output transposed.
/// @param p (nk, R) weights; @param v first value row, rows v_stride apart; @param out (dv, R)
template <class T, int R>
void weights_times_values(const T* p, Index nk, const T* v, Index v_stride, Index dv, T* out) {
  outer_products<T, R, true>(v, 1, v_stride, dv, p, nk, out);
}

/// dst[j * stride] += what mask m adds to the logit at its flat element first + j, j < n
/// (Mask::bias, with the mask kind decided once per span).
template <class T>
void add_mask_span(const Mask<T>& m, Index first, Index n, T* dst, Index stride) {
  constexpr T kBlocked = -std::numeric_limits<T>::infinity();
  using Kind = typename Mask<T>::Kind;
  if (m.kind() == Kind::kAdditive) {
    const T* src = m.additive_data() + first;
    for (Index j = 0; j < n; ++j) dst[j * stride] += src[j];
  } else if (m.kind() != Kind::kNone) {
    const bool* src = m.bool_data() + first;
    const bool blocked_if = m.kind() == Kind::kBlockWhereTrue;
    for (Index j = 0; j < n; ++j) dst[j * stride] += src[j] == blocked_if ? kBlocked : T(0);
  }
}

/// What the masks add to the mixed logits of head g, keys j0 .. j0+nk-1, rows
/// i0 .. i0+rows-1 of batch b: mb (nk, R), in the order of detail::add_mask_bias (key
/// padding, then attn_mask (L, S) or (B*H, L, S)); causal masking is causal_tile's, after
/// the addition. Rows past `rows` (padding of the last block) get only the key padding bias.
template <class T, int R>
void mask_tile(const SdpaOptions<T>& opt, Index b, Index g, Index heads, Index i0, Index rows, Index j0,
               Index nk, Index len_q, Index len_k, T* mb) {
  std::fill(mb, mb + nk * R, T(0));
  const auto& am = opt.attn_mask;
  if (!opt.key_padding_mask.empty()) {  // the same for every row: row 0, then copied
    add_mask_span(opt.key_padding_mask, b * len_k + j0, nk, mb, R);
    for (Index j = 0; j < nk; ++j) std::fill(mb + j * R + 1, mb + (j + 1) * R, mb[j * R]);
  }
  if (!am.empty()) {
    const Index base = am.shape().size() == 2 ? 0 : (b * heads + g) * len_q;
    for (Index r = 0; r < rows; ++r) add_mask_span(am, (base + i0 + r) * len_k + j0, nk, mb + r, R);
  }
}

/// Causal masking of a tile of mixed logits x (nk, R), keys j0.., rows i0 .. i0+rows-1:
/// future keys are set to -inf (set, not added, as in detail::add_mask_tile, so that a NaN
/// or +inf logit of a future key does not reach the row).
template <class T, int R>
void causal_tile(const SdpaOptions<T>& opt, Index i0, Index rows, Index j0, Index nk, Index len_q, Index len_k,
                 T* x) {
  const Index shift = opt.causal == Causal::kBottomRight ? len_k - len_q : 0;
  for (Index r = 0; r < rows; ++r)  // keys j > i + shift are in the future of query i
    for (Index j = std::max<Index>(i0 + r + shift + 1 - j0, 0); j < nk; ++j)
      x[j * R + r] = -std::numeric_limits<T>::infinity();
}

/// Whether a key padding mask or an attention mask is set (causal is apart: causal_tile).
template <class T>
bool has_additive_mask(const SdpaOptions<T>& opt) {
  return !opt.key_padding_mask.empty() || !opt.attn_mask.empty();
}

/// Inverted dropout of one head's weights p (nk, R) for keys j0.. and rows i0 .. i0+rows-1:
/// element (b, f, i, j) of the logical (B, H, L, S) weights is element ((b*H + f)*L + i)*S + j
/// of the stream `key`, as detail::dropout_rows numbers them.
template <class T, int R>
void dropout_tile(T* p, Index nk, Index rows, T prob, std::uint64_t key, Index b, Index f, Index heads,
                  Index i0, Index len_q, Index j0, Index len_k) {
  const T scale = T(1) / (T(1) - prob);
  for (Index r = 0; r < rows; ++r) {
    const auto first = static_cast<std::uint64_t>(((b * heads + f) * len_q + i0 + r) * len_k + j0);
    for (Index j = 0; j < nk; ++j) {
      T& x = p[j * R + r];
      x = uniform(key, first + static_cast<std::uint64_t>(j)) < static_cast<double>(prob) ? T(0) : x * scale;
    }
  }
}

}  // namespace th
}  // namespace detail
}  // namespace attn
