// The fast paths: the tiled attention kernel against the straightforward one (every mask
// kind, odd sizes, Lq != Lk, fully masked rows, dropout, NaN), bit-identical results for
// every thread count, and the accuracy of the vectorised exp the softmax uses.
#include <array>
#include <cstring>
#include <limits>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;
using attn::Causal;
using attn::Mask;
using HV = attn::HeadsView<const float>;

template <class T>
class KernelsTyped : public ::testing::Test {};
TYPED_TEST_SUITE(KernelsTyped, Scalars);

/// Restores the default thread count when a test ends (also when it fails).
struct ThreadGuard {
  ~ThreadGuard() { attn::set_num_threads(0); }
};

template <class T>
attn::HeadsView<const T> heads(const Tensor<T>& t) {
  return attn::HeadsView<const T>::bhnd(t.data(), t.size(0), t.size(1), t.size(2), t.size(3));
}
template <class T>
attn::HeadsView<T> heads(Tensor<T>& t) {
  return attn::HeadsView<T>::bhnd(t.data(), t.size(0), t.size(1), t.size(2), t.size(3));
}

/// Runs the reference and the tiled kernel on the same problem (one prepared call, so one
/// dropout key).
template <class T>
std::array<Tensor<T>, 2> both_kernels(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                      const attn::SdpaOptions<T>& opt) {
  const attn::Shape shape{q.size(0), q.size(1), q.size(2), v.size(3)};
  std::array<Tensor<T>, 2> out{Tensor<T>(shape), Tensor<T>(shape)};
  auto call = attn::detail::prepare_call("test", heads(q), heads(k), heads(v), heads(out[0]), opt);
  attn::detail::sdpa_reference<T>(call, nullptr);
  call.out = heads(out[1]);
  attn::detail::sdpa_tiled<T>(call);
  return out;
}

/// Tiled vs reference on random problems: sizes that are and are not multiples of the tile
/// sizes (64 queries x 128 keys with AVX-512 floats), Lq != Lk, Dv != D (also not a multiple
/// of 4), logits large enough that row maxima
/// move from tile to tile, and every kind of mask.
TYPED_TEST(KernelsTyped, TiledMatchesReference) {
  using T = TypeParam;
  // Logits here reach ~+-60, so summing them in another order moves them by ~1e-5 x eps
  // relative: in float the two kernels differ by up to 6.7e-6 (of max |out|; the query-major
  // tile at head_dim 64, scale 0.5), 1.9e-14 in double.
  const double tol = std::is_same<T, float>::value ? 1e-5 : 1e-13;
  struct Problem {
    Index b, h, lq, lk, d, dv, kv_heads = 0;  ///< 0: h (no grouped heads)
  };
  const Problem problems[] = {{2, 2, 64, 256, 8, 8},  {1, 3, 130, 300, 16, 12}, {2, 1, 1, 513, 64, 64},
                              {1, 2, 77, 5, 32, 8},   {2, 2, 300, 129, 8, 4},   {1, 1, 200, 600, 64, 32},
                              {1, 2, 150, 300, 12, 11}, {2, 1, 90, 200, 7, 9},  // value tails of 3 and 1 columns
                              // a few queries (decoding: the query-major tile), odd dims, tails
                              {2, 3, 3, 300, 9, 11},    {1, 2, 4, 129, 64, 20}, {2, 2, 2, 200, 37, 33},
                              // ... with grouped heads: tiles of 3 heads, 4 heads, 2 heads x 2 queries
                              {2, 6, 1, 300, 16, 16, 2}, {1, 8, 1, 257, 64, 64, 2}, {2, 4, 2, 140, 9, 11, 1}};
  std::uint64_t seed = 100;
  for (const Problem& p : problems) {
    const Tensor<T> q = random_tensor<T>({p.b, p.h, p.lq, p.d}, ++seed, 4.0),
                    k = random_tensor<T>({p.b, p.kv_heads ? p.kv_heads : p.h, p.lk, p.d}, ++seed, 4.0),
                    v = random_tensor<T>({p.b, p.kv_heads ? p.kv_heads : p.h, p.lk, p.dv}, ++seed);
    // Masks: key padding (B, S) with batch 0 fully padded; (L, S) with row 1 fully
    // blocked; (B*H, L, S); additive with -inf and finite values.
    Tensor<bool> kpm({p.b, p.lk}), am2({p.lq, p.lk}), am3({p.b * p.h, p.lq, p.lk});
    Tensor<T> kpm_add({p.b, p.lk}), am_add({p.lq, p.lk});
    const Tensor<T> noise = random_tensor<T>({p.b * p.h, p.lq, p.lk}, ++seed);
    const Tensor<T> slopes = random_tensor<T>({p.h}, ++seed, 0.5);
    for (Index b = 0; b < p.b; ++b)
      for (Index j = 0; j < p.lk; ++j) {
        kpm(b, j) = b == 0 || j % 3 == 1;
        kpm_add(b, j) = j % 4 == 0 ? -std::numeric_limits<T>::infinity() : T(j % 5);
      }
    for (Index i = 0; i < p.lq; ++i)
      for (Index j = 0; j < p.lk; ++j) {
        am2(i, j) = i == 1 || (i + j) % 7 == 0;
        am_add(i, j) = (i * 3 + j) % 11 == 0 ? -std::numeric_limits<T>::infinity() : T(((i + j) % 9) - 4);
      }
    for (Index e = 0; e < am3.numel(); ++e) am3[e] = noise[e] > T(0.3);

    std::vector<std::pair<std::string, attn::SdpaOptions<T>>> cases;
    auto add = [&](std::string name, auto&& set) {
      attn::SdpaOptions<T> o;
      set(o);
      cases.emplace_back(std::move(name), o);
    };
    add("none", [](auto&) {});
    add("kpm block", [&](auto& o) { o.key_padding_mask = Mask<T>::block_where_true(kpm); });
    add("kpm keep", [&](auto& o) { o.key_padding_mask = Mask<T>::keep_where_true(kpm); });
    add("kpm additive", [&](auto& o) { o.key_padding_mask = Mask<T>::additive(kpm_add); });
    add("am (L,S) block", [&](auto& o) { o.attn_mask = Mask<T>::block_where_true(am2); });
    add("am (L,S) keep", [&](auto& o) { o.attn_mask = Mask<T>::keep_where_true(am2); });
    add("am (L,S) additive", [&](auto& o) { o.attn_mask = Mask<T>::additive(am_add); });
    add("am (B*H,L,S) block", [&](auto& o) { o.attn_mask = Mask<T>::block_where_true(am3); });
    add("am (B*H,L,S) additive", [&](auto& o) { o.attn_mask = Mask<T>::additive(noise); });
    add("causal top-left", [](auto& o) { o.causal = Causal::kTopLeft; });
    add("causal bottom-right", [](auto& o) { o.causal = Causal::kBottomRight; });
    add("kpm + am + causal", [&](auto& o) {
      o.key_padding_mask = Mask<T>::additive(kpm_add);
      o.attn_mask = Mask<T>::block_where_true(am2);
      o.causal = Causal::kBottomRight;
    });
    add("scale 0.5", [](auto& o) { o.scale = T(0.5); });
    add("sliding window 5", [](auto& o) { o.sliding_window = 5; });
    add("sliding window 150, top-left", [](auto& o) {
      o.sliding_window = 150;
      o.causal = Causal::kTopLeft;
    });
    add("softcap 2 + kpm", [&](auto& o) {
      o.softcap = T(2);
      o.key_padding_mask = Mask<T>::block_where_true(kpm);
    });
    add("alibi + window 40", [&](auto& o) {
      o.alibi_slopes = slopes;
      o.sliding_window = 40;
    });
    attn::Generator gen(5);
    add("dropout", [&](auto& o) {
      o.dropout_p = T(0.3);
      o.generator = &gen;
    });
    add("dropout + causal + kpm", [&](auto& o) {
      o.dropout_p = T(0.5);
      o.generator = &gen;
      o.causal = Causal::kTopLeft;
      o.key_padding_mask = Mask<T>::block_where_true(kpm);
    });
    for (const auto& c : cases) {
      SCOPED_TRACE(::testing::Message() << c.first << ", (B, H, Lq, Lk, D, Dv) = (" << p.b << ", " << p.h << ", "
                                        << p.lq << ", " << p.lk << ", " << p.d << ", " << p.dv << ")");
      const auto [ref, tiled] = both_kernels(q, k, v, c.second);
      EXPECT_TRUE(AllClose(tiled, ref, tol));
      // Fully masked rows are exactly 0 on both paths.
      for (Index e = 0; e < ref.numel(); ++e) {
        if (ref[e] == T(0)) {
          ASSERT_EQ(tiled[e], T(0)) << "element " << e;
        }
      }
    }
  }
}

/// A (B, N, H*D) output whose rows interleave the heads, as a module's, and its heads view.
template <class T>
struct BnhdOut {
  Tensor<T> t;
  Index b, h, n, d;
  BnhdOut(Index b_, Index h_, Index n_, Index d_) : t({b_, n_, h_ * d_}), b(b_), h(h_), n(n_), d(d_) {}
  attn::HeadsView<T> view() { return attn::HeadsView<T>::bnhd(t.data(), b, n, h, d, h * d); }
};

// Self-attention on a fused projection: q, k and v are column blocks of one (B, N, 3*H*D)
// buffer, so their rows are strided and, past one query block, the tiled kernel first packs
// k and v (SdpaTiles::pack). Head dims 9, 10 and 11 leave 1-3 value columns after the
// 4-wide register blocks (in v's panels too). With masks, causal and dropout.
TYPED_TEST(KernelsTyped, TiledMatchesReferenceOnPackedStridedViews) {
  using T = TypeParam;
  const double tol = std::is_same<T, float>::value ? 5e-6 : 1e-13;
  struct Problem {
    Index b, h, n, d;
  };
  const Problem problems[] = {{2, 2, 150, 9}, {1, 3, 300, 10}, {1, 1, 70, 11}, {2, 2, 20, 9}};
  std::uint64_t seed = 500;
  for (const Problem& p : problems) {
    const Index row = 3 * p.h * p.d;
    const Tensor<T> qkv = random_tensor<T>({p.b, p.n, row}, ++seed, 3.0);
    using HV = attn::HeadsView<const T>;
    const HV q = HV::bnhd(qkv.data(), p.b, p.n, p.h, p.d, row), k = HV::bnhd(qkv.data() + p.h * p.d, p.b, p.n, p.h, p.d, row),
             v = HV::bnhd(qkv.data() + 2 * p.h * p.d, p.b, p.n, p.h, p.d, row);
    Tensor<bool> kpm({p.b, p.n}), am({p.n, p.n});
    for (Index i = 0; i < kpm.numel(); ++i) kpm[i] = i % 5 == 2;
    for (Index i = 0; i < am.numel(); ++i) am[i] = (i * 7) % 11 == 3;
    attn::Generator gen(3);
    for (int variant = 0; variant < 4; ++variant) {
      SCOPED_TRACE(::testing::Message() << "(B, H, N, D) = (" << p.b << ", " << p.h << ", " << p.n << ", " << p.d
                                        << "), variant " << variant);
      attn::SdpaOptions<T> opt;
      if (variant == 1) opt.key_padding_mask = Mask<T>::block_where_true(kpm), opt.attn_mask = Mask<T>::block_where_true(am);
      if (variant == 2) opt.causal = Causal::kTopLeft;
      if (variant == 3) opt.dropout_p = T(0.25), opt.generator = &gen;
      BnhdOut<T> ref(p.b, p.h, p.n, p.d), tiled(p.b, p.h, p.n, p.d);
      auto call = attn::detail::prepare_call("test", q, k, v, ref.view(), opt);
      attn::detail::sdpa_reference<T>(call, nullptr);
      call.out = tiled.view();
      attn::detail::sdpa_tiled<T>(call);
      EXPECT_TRUE(AllClose(tiled.t, ref.t, tol));
    }
  }
}

// Grouped-query heads: k and v with K heads serve H = g K query heads, query head h reading
// key/value head h / g, as if k and v were repeated g times (HF's repeat_kv, PyTorch's
// enable_gqa): the same bits as running on the repeated copies, on both kernels, with
// strided (packed) and contiguous k and v, and K = 1 (multi-query).
TYPED_TEST(KernelsTyped, GroupedQueryHeadsEqualRepeatedKeyValueHeads) {
  using T = TypeParam;
  for (const auto& [kv_heads, lq] : {std::pair<Index, Index>{1, 90}, {2, 90}, {1, 1}, {2, 1}, {1, 3}, {3, 2}}) {
    // (lq <= 4: the query-major tiles, which take 3, 2 or 1 heads of a group at once)
    const Index b = 2, h = 6, lk = 130, d = 12, g = h / kv_heads;
    const Tensor<T> q = random_tensor<T>({b, h, lq, d}, 1, 3.0), k = random_tensor<T>({b, kv_heads, lk, d}, 2, 3.0),
                    v = random_tensor<T>({b, kv_heads, lk, d}, 3);
    Tensor<T> k_rep({b, h, lk, d}), v_rep({b, h, lk, d});
    for (Index bb = 0; bb < b; ++bb)
      for (Index hh = 0; hh < h; ++hh)
        for (Index j = 0; j < lk * d; ++j) {
          k_rep[((bb * h + hh) * lk) * d + j] = k[((bb * kv_heads + hh / g) * lk) * d + j];
          v_rep[((bb * h + hh) * lk) * d + j] = v[((bb * kv_heads + hh / g) * lk) * d + j];
        }
    for (const bool weights : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "K = " << kv_heads << ", L = " << lq
                                        << (weights ? ", weights path" : ", tiled path"));
      attn::SdpaOptions<T> opt;
      opt.causal = Causal::kBottomRight;
      opt.sliding_window = 50;
      Tensor<T> w1, w2;
      if (weights) opt.attn_weights = &w1;
      const Tensor<T> grouped = attn::scaled_dot_product_attention<T>(q, k, v, opt);
      if (weights) opt.attn_weights = &w2;
      const Tensor<T> repeated = attn::scaled_dot_product_attention<T>(q, k_rep, v_rep, opt);
      EXPECT_TRUE(same_bits(grouped, repeated));
      EXPECT_TRUE(same_bits(w1, w2));
    }
    // Strided k and v (columns of a (B*S, 2*K*D) buffer): the tiled kernel packs them per kv head.
    const Tensor<T> kv = random_tensor<T>({b, lk, 2 * kv_heads * d}, 4);
    using HV = attn::HeadsView<const T>;
    const HV ks = HV::bnhd(kv.data(), b, lk, kv_heads, d, 2 * kv_heads * d),
             vs = HV::bnhd(kv.data() + kv_heads * d, b, lk, kv_heads, d, 2 * kv_heads * d);
    Tensor<T> k2({b, kv_heads, lk, d}), v2({b, kv_heads, lk, d}), out1({b, h, lq, d}), out2({b, h, lq, d});
    for (Index bb = 0; bb < b; ++bb)
      for (Index hh = 0; hh < kv_heads; ++hh) {
        Eigen::Map<attn::RowMatrix<T>>(k2.data() + (bb * kv_heads + hh) * lk * d, lk, d) = ks.head(bb, hh);
        Eigen::Map<attn::RowMatrix<T>>(v2.data() + (bb * kv_heads + hh) * lk * d, lk, d) = vs.head(bb, hh);
      }
    attn::scaled_dot_product_attention<T>(heads(q), ks, vs, heads(out1));
    attn::scaled_dot_product_attention<T>(heads(q), heads(k2), heads(v2), heads(out2));
    EXPECT_TRUE(same_bits(out1, out2)) << "K = " << kv_heads << ", L = " << lq << ", packed strided k and v";
  }
}

// The public entry point takes the tiled path without weights and the reference path with
// them; both agree, also with dropout (same generator state, so the same mask).
TYPED_TEST(KernelsTyped, WeightsPathAgreesWithTiledPath) {
  using T = TypeParam;
  const Tensor<T> q = random_tensor<T>({2, 3, 100, 16}, 1, 3.0), k = random_tensor<T>({2, 3, 270, 16}, 2, 3.0),
                  v = random_tensor<T>({2, 3, 270, 16}, 3);
  attn::SdpaOptions<T> opt;
  attn::Generator g1(9), g2(9);
  opt.dropout_p = T(0.2);
  opt.generator = &g1;
  opt.causal = Causal::kBottomRight;
  const Tensor<T> fast = attn::scaled_dot_product_attention<T>(q, k, v, opt);
  Tensor<T> weights;
  opt.generator = &g2;
  opt.attn_weights = &weights;
  const Tensor<T> slow = attn::scaled_dot_product_attention<T>(q, k, v, opt);
  EXPECT_TRUE(AllClose(fast, slow, std::is_same<T, float>::value ? 2e-6 : 1e-13));
}

// Causal masking skips whole key tiles; the result is identical to the explicit mask, which
// computes them (as zeros), across several tiles in both directions.
TYPED_TEST(KernelsTyped, CausalSkipEqualsExplicitMaskAcrossTiles) {
  using T = TypeParam;
  for (Index len_q : {300, 700}) {
    const Index len_k = 520;
    const Tensor<T> q = random_tensor<T>({1, 2, len_q, 8}, 1, 3.0), k = random_tensor<T>({1, 2, len_k, 8}, 2, 3.0),
                    v = random_tensor<T>({1, 2, len_k, 8}, 3);
    for (auto causal : {Causal::kTopLeft, Causal::kBottomRight}) {
      const Index diag = causal == Causal::kTopLeft ? 0 : len_k - len_q;
      Tensor<bool> keep({len_q, len_k});
      for (Index i = 0; i < len_q; ++i)
        for (Index j = 0; j < len_k; ++j) keep(i, j) = j <= i + diag;
      attn::SdpaOptions<T> a, b;
      a.causal = causal;
      b.attn_mask = Mask<T>::keep_where_true(keep);
      EXPECT_TRUE(AllClose(attn::scaled_dot_product_attention<T>(q, k, v, a),
                           attn::scaled_dot_product_attention<T>(q, k, v, b), 0.0))
          << "L=" << len_q << " causal=" << int(causal);
    }
  }
}

// NaN in one query row makes that row NaN (as softmax does) and leaves the others alone.
TYPED_TEST(KernelsTyped, NanLogitsPropagateToTheirRowOnly) {
  using T = TypeParam;
  Tensor<T> q = random_tensor<T>({1, 1, 70, 8}, 1);
  const Tensor<T> k = random_tensor<T>({1, 1, 300, 8}, 2), v = random_tensor<T>({1, 1, 300, 8}, 3);
  q(0, 0, 66, 3) = std::numeric_limits<T>::quiet_NaN();
  const Tensor<T> out = attn::scaled_dot_product_attention<T>(q, k, v);
  for (Index i = 0; i < 70; ++i)
    for (Index c = 0; c < 8; ++c) EXPECT_EQ(std::isnan(out(0, 0, i, c)), i == 66) << i << ", " << c;
}

// Sinks and the log-sum-exp on every kernel: the decode tile (3 queries; over 9000 keys it
// splits them, SdpaRows::run), the tiled kernel (100) and the weights path agree with each
// other and with the definition computed here in long double: lse = log(sum_j exp(logit_j) +
// exp(sink_h)), out = sum_j exp(logit_j - lse) v_j.
TYPED_TEST(KernelsTyped, SinksAndLogSumExpOnEveryKernel) {
  using T = TypeParam;
  const double tol = std::is_same<T, float>::value ? 2e-6 : 1e-13;
  for (auto [len_q, len_k] : {std::pair<Index, Index>{3, 150}, {100, 150}, {3, 9000}}) {
    SCOPED_TRACE(::testing::Message() << len_q << " queries over " << len_k << " keys");
    const Index dim = 16;
    const Tensor<T> q = random_tensor<T>({2, 4, len_q, dim}, 1, 2.0), k = random_tensor<T>({2, 2, len_k, dim}, 2, 2.0),
                    v = random_tensor<T>({2, 2, len_k, 5}, 3), sinks = random_tensor<T>({4}, 4, 3.0);
    attn::SdpaOptions<T> opt;
    opt.causal = Causal::kBottomRight;
    opt.sinks = sinks;
    Tensor<T> lse, weights, lse_weights;
    opt.lse = &lse;
    const Tensor<T> out = attn::scaled_dot_product_attention<T>(q, k, v, opt);
    opt.lse = &lse_weights;
    opt.attn_weights = &weights;
    EXPECT_TRUE(AllClose(attn::scaled_dot_product_attention<T>(q, k, v, opt), out, tol));
    EXPECT_TRUE(AllClose(lse_weights, lse, tol));
    Tensor<T> expect_lse({2, 4, len_q}), expect_out(out.shape());
    for (Index b = 0; b < 2; ++b)
      for (Index h = 0; h < 4; ++h)
        for (Index i = 0; i < len_q; ++i) {
          std::vector<long double> logits;
          for (Index j = 0; j <= i + len_k - len_q; ++j) {
            long double dot = 0;
            for (Index d = 0; d < dim; ++d) dot += (long double)q(b, h, i, d) * k(b, h / 2, j, d);
            logits.push_back(dot / std::sqrt((long double)dim));
          }
          long double sum = std::exp((long double)sinks(h));
          for (long double x : logits) sum += std::exp(x);
          expect_lse(b, h, i) = T(std::log(sum));
          for (Index c = 0; c < 5; ++c) {
            long double acc = 0;
            for (std::size_t j = 0; j < logits.size(); ++j) acc += std::exp(logits[j]) / sum * v(b, h / 2, Index(j), c);
            expect_out(b, h, i, c) = T(acc);
          }
        }
    EXPECT_TRUE(AllClose(lse, expect_lse, tol)) << "lse";
    EXPECT_TRUE(AllClose(out, expect_out, 2 * tol)) << "output";
  }
}

// Split-KV decoding (SdpaRows::run: a few units, many keys, their keys cut into ranges merged
// after) against the weights path, which never splits: multi-query heads, 1 to 4 queries over
// 20000 keys with a padding mask, a sliding window, dropout (the same kept weights) and
// sinks, outputs and log-sum-exps.
TYPED_TEST(KernelsTyped, SplitKeysEqualOneRange) {
  using T = TypeParam;
  const double tol = std::is_same<T, float>::value ? 2e-6 : 1e-13;
  const Index len_k = 20000;
  const Tensor<T> k = random_tensor<T>({1, 1, len_k, 32}, 2, 2.0), v = random_tensor<T>({1, 1, len_k, 32}, 3),
                  sinks = random_tensor<T>({4}, 4, 3.0);
  Tensor<bool> padding({1, len_k}, false);
  for (Index j = 500; j < 4000; ++j) padding(0, j) = true;
  for (Index len_q : {1, 2, 4})
    for (Index window : {0, 9000}) {
      SCOPED_TRACE(::testing::Message() << len_q << " queries, window " << window);
      const Tensor<T> q = random_tensor<T>({1, 4, len_q, 32}, 1, 2.0);
      attn::SdpaOptions<T> opt;
      opt.causal = Causal::kBottomRight;
      if (window) opt.sliding_window = window;
      opt.key_padding_mask = Mask<T>::block_where_true(padding);
      opt.sinks = sinks;
      attn::Generator g1(7), g2(7);
      opt.dropout_p = T(0.1);
      opt.generator = &g1;
      Tensor<T> lse, lse_weights, weights;
      opt.lse = &lse;
      const Tensor<T> split = attn::scaled_dot_product_attention<T>(q, k, v, opt);
      opt.generator = &g2;
      opt.lse = &lse_weights;
      opt.attn_weights = &weights;
      EXPECT_TRUE(AllClose(split, attn::scaled_dot_product_attention<T>(q, k, v, opt), tol));
      EXPECT_TRUE(AllClose(lse, lse_weights, tol));
    }
}

// Every kernel gives the same bits on 1, 2 and 3 threads: SDPA (tiled, with weights, and the
// decode tile over a long cache, its keys split, with grouped heads and dropout; outputs and
// log-sum-exps), linear, and
// MultiHeadAttention with masks and dropout. (Every module: test_threads.cpp.)
TYPED_TEST(KernelsTyped, BitIdenticalForEveryThreadCount) {
  using T = TypeParam;
  ThreadGuard guard;
  const Tensor<T> q = random_tensor<T>({2, 4, 150, 32}, 1, 2.0), k = random_tensor<T>({2, 4, 333, 32}, 2, 2.0),
                  v = random_tensor<T>({2, 4, 333, 32}, 3);
  const Tensor<T> x = random_tensor<T>({3, 130, 64}, 4), w = random_tensor<T>({96, 64}, 5), bias = random_tensor<T>({96}, 6);
  Tensor<bool> padding({3, 130}, false);
  for (Index j = 100; j < 130; ++j) padding(1, j) = true;
  attn::MultiHeadAttentionOptions mo;
  mo.dropout = 0.1;
  attn::MultiHeadAttention<T> mha(64, 4, mo);
  attn::MobileViTEncoderLayer<T> layer(64, 128, 4);
  const Tensor<T> q1 = random_tensor<T>({2, 8, 1, 64}, 7, 2.0), k_long = random_tensor<T>({2, 2, 4096, 64}, 8, 2.0),
                  v_long = random_tensor<T>({2, 2, 4096, 64}, 9);

  auto run = [&](int threads) {
    attn::set_num_threads(threads);
    std::vector<Tensor<T>> r;
    attn::SdpaOptions<T> opt;
    opt.causal = Causal::kBottomRight;
    Tensor<T> lse, weights, weights_lse;
    opt.lse = &lse;
    r.push_back(attn::scaled_dot_product_attention<T>(q, k, v, opt));
    r.push_back(std::move(lse));
    opt.attn_weights = &weights;
    opt.lse = &weights_lse;
    r.push_back(attn::scaled_dot_product_attention<T>(q, k, v, opt));
    r.push_back(std::move(weights));
    r.push_back(std::move(weights_lse));
    r.push_back(attn::linear<T>(x, w, bias));
    attn::MhaArgs<T> args;
    args.key_padding_mask = Mask<T>::block_where_true(padding);
    r.push_back(mha.forward(x, args).output);
    args.need_weights = true;
    auto with_weights = mha.forward(x, args);
    r.push_back(std::move(with_weights.output));
    r.push_back(std::move(with_weights.attn_weights));
    attn::MultiHeadAttention<T> training = mha;
    training.train();
    attn::Generator gen(3);
    args.generator = &gen;
    args.need_weights = false;
    r.push_back(training.forward(x, args).output);
    r.push_back(layer.forward(x));
    attn::SdpaOptions<T> decode;  // one query per head: 4 units of 4 grouped heads, each an item
    attn::Generator decode_gen(5);
    decode.dropout_p = T(0.1);
    decode.generator = &decode_gen;
    decode.causal = Causal::kBottomRight;
    Tensor<T> decode_lse;
    decode.lse = &decode_lse;
    r.push_back(attn::scaled_dot_product_attention<T>(q1, k_long, v_long, decode));
    r.push_back(std::move(decode_lse));
    return r;
  };
  const auto one = run(1);
  for (int threads : {2, 3}) {
    const auto many = run(threads);
    ASSERT_EQ(many.size(), one.size());
    for (std::size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(same_bits(one[i], many[i])) << "result " << i << ", " << threads << " threads";
  }
}

TEST(Threads, SetAndGet) {
  ThreadGuard guard;
  attn::set_num_threads(3);
#if defined(_OPENMP)
  EXPECT_EQ(attn::get_num_threads(), 3);
#else
  EXPECT_EQ(attn::get_num_threads(), 1);
#endif
  attn::set_num_threads(0);
  EXPECT_GE(attn::get_num_threads(), 1);
  ExpectInvalid([] { attn::set_num_threads(-1); }, {"set_num_threads", "-1"});
}

/// Distance in units in the last place between two finite values of the same sign.
template <class T>
double ulps(T a, T b) {
  using Bits = std::conditional_t<std::is_same<T, float>::value, std::int32_t, std::int64_t>;
  Bits ia, ib;
  std::memcpy(&ia, &a, sizeof(T));
  std::memcpy(&ib, &b, sizeof(T));
  return std::abs(double(ia > ib ? ia - ib : ib - ia));
}

// The softmax's vectorised exp: exp(x - shift) with -inf -> 0 exactly. Accuracy against
// std::exp rounded from long double, over arguments from 0 down to where the result
// underflows, is the contract stated in ops/detail/exp.hpp; on the kernel path this program
// runs (ATTN_KERNEL_ISA: the .path_* variants check the others).
TYPED_TEST(KernelsTyped, VectorisedExpAccuracy) {
  using T = TypeParam;
  const auto exp_shifted_inplace = [](T* x, Index n, T shift) {
    return attn::detail::with_kernels<T>(attn::detail::kernel_isa_for<T>(),
                                         [&](auto kernels) { return decltype(kernels)::exp_shifted(x, n, shift); });
  };
  const bool is_float = std::is_same<T, float>::value;
  // Normal results: exp(x) >= the smallest normal number.
  const double lowest_normal = std::log(double(std::numeric_limits<T>::min()));
  const Index n = 200001;
  std::vector<T> x(n), y(n);
  for (Index i = 0; i < n; ++i) x[i] = static_cast<T>(lowest_normal * double(i) / double(n - 1));
  for (T shift : {T(0), T(1.5), T(-3.25)}) {
    y = x;
    for (auto& e : y) e += shift;
    const T sum = exp_shifted_inplace(y.data(), n, shift);
    double worst = 0;
    for (Index i = 0; i < n; ++i) {
      const T arg = static_cast<T>(x[i] + shift) - shift;  // what the function exponentiates
      const T expect = static_cast<T>(std::exp(static_cast<long double>(arg)));
      if (expect < std::numeric_limits<T>::min()) continue;  // the shift moved x below the range
      worst = std::max(worst, ulps(y[i], expect));
    }
    EXPECT_LE(worst, is_float ? 1.0 : 2.0) << "shift " << shift;
    double returned = 0;  // the sum returned is that of the results (accumulated in T)
    for (const T& e : y) returned += double(e);
    EXPECT_NEAR(double(sum), returned, returned * (is_float ? 1e-4 : 1e-12));
  }
  // Special values: 0 -> 1, -inf -> 0, far below the range -> (almost) 0, NaN -> NaN.
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<T> special = {T(0), -inf, T(-1e4), T(lowest_normal - 30), std::numeric_limits<T>::quiet_NaN()};
  exp_shifted_inplace(special.data(), Index(special.size()), T(0));
  EXPECT_EQ(special[0], T(1));
  EXPECT_EQ(special[1], T(0));
  EXPECT_LE(special[2], std::numeric_limits<T>::min());
  EXPECT_GE(special[2], T(0));
  EXPECT_LE(special[3], std::numeric_limits<T>::min());
  EXPECT_TRUE(std::isnan(special[4]));
}

}  // namespace
