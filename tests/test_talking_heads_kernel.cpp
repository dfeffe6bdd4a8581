// talking_heads_attention's tiled, threaded kernel against a straightforward implementation
// (all logits of a batch element at once, the shared mask / softmax / dropout helpers), on
// random problems: strided views, L != S, lengths that are no multiple of the block sizes,
// every mask kind, fully masked rows, dropout, weights; and bit-identical results for every
// thread count. The PyTorch references of the module are in test_modules.cpp.
#include <cstring>
#include <random>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "support.hpp"

namespace {

using namespace attn_test;
using attn::HeadsView;
using attn::RowMatrix;

/// The straightforward algorithm: per batch element, the (H, L, S) logits of all heads, the
/// head mix as a sum over heads, masks, softmax, second mix, dropout, weights times v.
template <class T>
void reference_talking_heads(const HeadsView<const T>& q, const HeadsView<const T>& k, const HeadsView<const T>& v,
                             const HeadsView<T>& out, const attn::TalkingHeadsMix<T>& mix,
                             const attn::SdpaOptions<T>& opt, std::uint64_t dropout_key) {
  const Index nb = q.batch, nh = q.heads, len_q = q.length, len_k = k.length;
  const T scale = opt.scale ? *opt.scale : T(1) / std::sqrt(static_cast<T>(q.head_dim));
  if (opt.attn_weights) *opt.attn_weights = Tensor<T>({nb, nh, len_q, len_k});
  const attn::detail::AttentionDims dims{nb, nh, len_q, len_k};
  const auto masks = attn::detail::tile_masks("test", opt, dims);
  std::vector<RowMatrix<T>> logits(nh), mixed(nh);
  for (Index b = 0; b < nb; ++b) {
    for (Index h = 0; h < nh; ++h) logits[h] = (q.head(b, h) * scale).lazyProduct(k.head(b, h).transpose());
    for (Index g = 0; g < nh; ++g) {
      mixed[g] = RowMatrix<T>::Constant(len_q, len_k, mix.logits_bias[g]);
      for (Index h = 0; h < nh; ++h) mixed[g] += mix.logits_weight(g, h) * logits[h];
      masks.apply(attn::detail::Tile{dims, b, g, 0, len_q, 0, len_k, len_k}, mixed[g].data(), len_k, 1);
      attn::softmax_rows_inplace(mixed[g]);
    }
    for (Index f = 0; f < nh; ++f) {
      RowMatrix<T> p = RowMatrix<T>::Constant(len_q, len_k, mix.weights_bias[f]);
      for (Index g = 0; g < nh; ++g) p += mix.weights_weight(f, g) * mixed[g];
      if (opt.dropout_p > T(0))
        attn::detail::dropout_tile(attn::detail::Tile{dims, b, f, 0, len_q, 0, len_k, len_k}, opt.dropout_p, dropout_key,
                                   p.data(), len_k, 1);
      if (opt.attn_weights)
        Eigen::Map<RowMatrix<T>>(opt.attn_weights->data() + (b * nh + f) * len_q * len_k, len_q, len_k) = p;
      out.head(b, f) = p.lazyProduct(v.head(b, f));
    }
  }
}

/// Random heads stored as a (B, N, H*D + pad) buffer (bnhd, strided rows) or contiguous (B, H, N, D).
template <class T>
struct RandomHeads {
  std::vector<T> data;
  HeadsView<T> view;
  RandomHeads(Index b, Index h, Index n, Index d, bool bnhd, std::mt19937& rng, double scale = 1.0) {
    const Index pad = bnhd ? Index(rng() % 3) : 0, row = h * d + pad;
    data.resize(std::size_t(std::max<Index>(b * n * row, 1)));
    std::uniform_real_distribution<double> u(-scale, scale);
    for (auto& x : data) x = T(u(rng));
    view = bnhd ? HeadsView<T>::bnhd(data.data(), b, n, h, d, row) : HeadsView<T>::bhnd(data.data(), b, h, n, d);
  }
};

/// One random problem: shapes, views, mixes, and the mask settings in `kind`.
template <class T>
struct Problem {
  enum MaskKind { kNone, kPadding, kPaddingKeep, kPaddingAdditive, kMask2dBool, kMask2dAdditive, kMask3d, kCausalTopLeft,
                  kCausalBottomRight, kAll, kFullyMaskedRows, kCount };
  Index nb, nh, len_q, len_k, dk, dv;
  RandomHeads<T> q, k, v;
  RowMatrix<T> wl, ww;
  attn::Vector<T> bl, bw;
  Tensor<bool> kpm_bool, am_bool;
  Tensor<T> kpm_add, am_add;
  attn::SdpaOptions<T> opt;

  Problem(Index b, Index h, Index l, Index s, Index d, Index d_v, int kind, std::mt19937& rng, double qscale = 1.0)
      : nb(b), nh(h), len_q(l), len_k(s), dk(d), dv(d_v),
        q(b, h, l, d, rng() % 2 == 0, rng, qscale), k(b, h, s, d, rng() % 2 == 0, rng), v(b, h, s, d_v, rng() % 2 == 0, rng),
        wl(h, h), ww(h, h), bl(h), bw(h) {
    std::uniform_real_distribution<double> u(-1, 1);
    for (Index i = 0; i < h * h; ++i) wl.data()[i] = T(u(rng)), ww.data()[i] = T(u(rng));
    for (Index i = 0; i < h; ++i) bl[i] = T(u(rng)), bw[i] = T(u(rng));
    std::bernoulli_distribution coin(0.3);
    auto bools = [&](attn::Shape shape) {
      Tensor<bool> t(std::move(shape));
      for (Index i = 0; i < t.numel(); ++i) t[i] = coin(rng);
      return t;
    };
    auto additive = [&](attn::Shape shape) {  // finite values and some -inf
      Tensor<T> t(std::move(shape));
      for (Index i = 0; i < t.numel(); ++i) t[i] = coin(rng) ? -std::numeric_limits<T>::infinity() : T(u(rng));
      return t;
    };
    switch (kind) {
      case kPadding: kpm_bool = bools({b, s}); opt.key_padding_mask = attn::Mask<T>::block_where_true(kpm_bool); break;
      case kPaddingKeep: kpm_bool = bools({b, s}); opt.key_padding_mask = attn::Mask<T>::keep_where_true(kpm_bool); break;
      case kPaddingAdditive: kpm_add = additive({b, s}); opt.key_padding_mask = attn::Mask<T>::additive(kpm_add); break;
      case kMask2dBool: am_bool = bools({l, s}); opt.attn_mask = attn::Mask<T>::block_where_true(am_bool); break;
      case kMask2dAdditive: am_add = additive({l, s}); opt.attn_mask = attn::Mask<T>::additive(am_add); break;
      case kMask3d: am_add = additive({b * h, l, s}); opt.attn_mask = attn::Mask<T>::additive(am_add); break;
      case kCausalTopLeft: opt.causal = attn::Causal::kTopLeft; break;
      case kCausalBottomRight: opt.causal = attn::Causal::kBottomRight; break;
      case kAll:
        kpm_add = additive({b, s});
        opt.key_padding_mask = attn::Mask<T>::additive(kpm_add);
        am_bool = bools({b * h, l, s});
        opt.attn_mask = attn::Mask<T>::keep_where_true(am_bool);
        opt.causal = attn::Causal::kBottomRight;
        break;
      case kFullyMaskedRows:  // every other query row sees no key; batch 0 has every key padded
        am_bool = bools({l, s});
        for (Index i = 0; i < l; i += 2)
          for (Index j = 0; j < s; ++j) am_bool(i, j) = true;
        opt.attn_mask = attn::Mask<T>::block_where_true(am_bool);
        kpm_bool = Tensor<bool>({b, s}, false);
        for (Index j = 0; j < s; ++j) kpm_bool(0, j) = true;
        opt.key_padding_mask = attn::Mask<T>::block_where_true(kpm_bool);
        break;
      default: break;
    }
  }
  attn::TalkingHeadsMix<T> mix() const {
    return {{wl.data(), nh, nh}, {bl.data(), nh}, {ww.data(), nh, nh}, {bw.data(), nh}};
  }
  HeadsView<const T> cq() const { return q.view; }
  HeadsView<const T> ck() const { return k.view; }
  HeadsView<const T> cv() const { return v.view; }
};

/// Runs the kernel (into a (B, H, L, Dv) tensor) with the problem's options plus dropout and
/// weights as asked; the generator is seeded the same for every run.
template <class T>
Tensor<T> run_kernel(Problem<T>& pb, double dropout_p, Tensor<T>* weights,
                     attn::detail::TalkingHeadsScheme scheme = attn::detail::TalkingHeadsScheme::kAuto) {
  Tensor<T> out({pb.nb, pb.nh, pb.len_q, pb.dv}, T(-7));
  attn::Generator gen(99);
  attn::SdpaOptions<T> opt = pb.opt;
  opt.dropout_p = T(dropout_p);
  opt.generator = &gen;
  opt.attn_weights = weights;
  attn::detail::talking_heads_attention<T>(pb.cq(), pb.ck(), pb.cv(),
                                           HeadsView<T>::bhnd(out.data(), pb.nb, pb.nh, pb.len_q, pb.dv), pb.mix(), opt,
                                           scheme);
  return out;
}

template <class T>
Tensor<T> run_reference(Problem<T>& pb, double dropout_p, Tensor<T>* weights) {
  Tensor<T> out({pb.nb, pb.nh, pb.len_q, pb.dv});
  attn::Generator gen(99);
  attn::SdpaOptions<T> opt = pb.opt;
  opt.dropout_p = T(dropout_p);
  opt.attn_weights = weights;
  reference_talking_heads<T>(pb.cq(), pb.ck(), pb.cv(), HeadsView<T>::bhnd(out.data(), pb.nb, pb.nh, pb.len_q, pb.dv),
                             pb.mix(), opt, dropout_p > 0 ? gen.next_key() : 0);
  return out;
}

template <class T>
class TalkingHeadsKernel : public ::testing::Test {
 protected:
  // Both are computed in T; the tiled kernel sums in another order. Largest errors seen:
  // 3.2e-7 (float) and 1.5e-15 (double) on the random problems; with logits of ~1e4, whose
  // rounding exp amplifies, 3.4e-6 and 4.2e-15.
  static double tol(bool large_logits = false) {
    if (std::is_same<T, float>::value) return large_logits ? 2e-5 : 2e-6;
    return large_logits ? 1e-13 : 1e-14;
  }
};
TYPED_TEST_SUITE(TalkingHeadsKernel, Scalars);

TYPED_TEST(TalkingHeadsKernel, MatchesStraightforwardOnRandomProblems) {
  using T = TypeParam;
  std::mt19937 rng(2024);
  // (B, H, L, S, D, Dv): L and S below, at and above the block sizes (a SIMD packet or 32 /
  // 16 rows, key tiles of 8..256), L != S, L > S (bottom-right causal then has rows that see
  // no key), D != Dv, one head; the last shape's numerators take > 8 MiB per block, so its
  // default scheme is two-pass.
  const std::vector<std::array<Index, 6>> shapes = {
      {1, 1, 1, 1, 1, 1},   {2, 3, 5, 7, 4, 3},     {1, 8, 33, 70, 16, 16}, {3, 2, 70, 33, 5, 8},
      {1, 4, 64, 64, 8, 8}, {2, 8, 100, 101, 16, 16}, {1, 5, 17, 300, 3, 2}, {2, 1, 40, 1, 7, 7},
      {1, 2, 3, 0, 4, 4},   {1, 16, 45, 37, 2, 5}, {1, 16, 40, 4200, 2, 3}};
  for (const auto& s : shapes)
    for (int kind = 0; kind < Problem<T>::kCount; ++kind)
      for (double dropout_p : {0.0, 0.25}) {
        if (s[3] > 1000 && (kind % 4 != 1 || dropout_p == 0)) continue;  // a few cases of the long one
        SCOPED_TRACE(::testing::Message() << "shape (" << s[0] << ", " << s[1] << ", " << s[2] << ", " << s[3] << ", "
                                          << s[4] << ", " << s[5] << ") mask kind " << kind << " dropout " << dropout_p);
        Problem<T> pb(s[0], s[1], s[2], s[3], s[4], s[5], kind, rng);
        Tensor<T> w, w_ref;
        const bool weights = (kind + int(dropout_p > 0)) % 2 == 0;
        const Tensor<T> out = run_kernel(pb, dropout_p, weights ? &w : nullptr);
        const Tensor<T> ref = run_reference(pb, dropout_p, weights ? &w_ref : nullptr);
        EXPECT_TRUE(AllClose(out, ref, this->tol()));
        if (weights) {
          EXPECT_TRUE(AllClose(w, w_ref, this->tol()));
        }
        // The two-pass scheme recomputes exactly what the row-block scheme keeps.
        Tensor<T> w2;
        const Tensor<T> out2 = run_kernel(pb, dropout_p, weights ? &w2 : nullptr, attn::detail::TalkingHeadsScheme::kTwoPass);
        EXPECT_TRUE(same_bits(out2, out));
        if (weights) {
          EXPECT_TRUE(same_bits(w2, w));
        }
      }
}

// Fully masked rows: softmax 0, so the weights are proj_w's bias and the output is
// bias_f * sum_j v_f[j] (exactly what the straightforward kernel gives, checked above);
// here checked directly, with no NaN anywhere.
TYPED_TEST(TalkingHeadsKernel, FullyMaskedRowsGiveProjWBias) {
  using T = TypeParam;
  std::mt19937 rng(7);
  Problem<T> pb(2, 3, 40, 50, 4, 4, Problem<T>::kFullyMaskedRows, rng);
  Tensor<T> w;
  const Tensor<T> out = run_kernel(pb, 0.0, &w);
  for (Index i = 0; i < out.numel(); ++i) ASSERT_FALSE(std::isnan(double(out[i])));
  for (Index f = 0; f < 3; ++f) {
    for (Index i = 0; i < 40; i += 2) {
      for (Index j = 0; j < 50; ++j) {
        ASSERT_EQ(w(1, f, i, j), pb.bw[f]) << f << " " << i << " " << j;
        ASSERT_EQ(w(0, f, i + 1, j), pb.bw[f]);  // batch 0: every key padded
      }
    }
  }
}

// Causal masking sets future keys to -inf (as add_mask_tile does), it does not add -inf: a
// NaN in a future key (here the last key, in a tile of its own or not) reaches only the
// rows that see it, whatever the tiling.
TYPED_TEST(TalkingHeadsKernel, NanInAFutureKeyReachesOnlyTheRowsThatSeeIt) {
  using T = TypeParam;
  for (Index len : {Index(64), Index(100), Index(257)}) {
    SCOPED_TRACE(len);
    std::mt19937 rng(13);
    Problem<T> pb(1, 4, len, len, 8, 8, Problem<T>::kCausalTopLeft, rng);
    const auto& kv = pb.k.view;
    for (Index h = 0; h < pb.nh; ++h) kv.data[h * kv.head_stride + (len - 1) * kv.row_stride] = std::numeric_limits<T>::quiet_NaN();
    const Tensor<T> out = run_kernel<T>(pb, 0.0, nullptr), ref = run_reference<T>(pb, 0.0, nullptr);
    for (Index f = 0; f < pb.nh; ++f)
      for (Index i = 0; i < len; ++i)
        for (Index e = 0; e < pb.dv; ++e) {
          if (i == len - 1) {
            ASSERT_TRUE(std::isnan(double(out(0, f, i, e)))) << "head " << f;
          } else {
            ASSERT_FALSE(std::isnan(double(out(0, f, i, e)))) << "head " << f << ", row " << i;
            ASSERT_NEAR(double(out(0, f, i, e)), double(ref(0, f, i, e)), 1e-5) << "head " << f << ", row " << i;
          }
        }
  }
}

// Large logits (standard deviation ~1e2 and ~4e3): the per-tile maxima and the final
// rescaling keep exp finite; exp amplifies the logits' rounding, hence the wider tolerance.
TYPED_TEST(TalkingHeadsKernel, LargeLogits) {
  using T = TypeParam;
  std::mt19937 rng(11);
  for (double qscale : {300.0, 1e4}) {
    Problem<T> pb(2, 4, 50, 300, 8, 8, Problem<T>::kCausalTopLeft, rng, qscale);
    Tensor<T> w, w_ref;
    const Tensor<T> out = run_kernel(pb, 0.0, &w), ref = run_reference(pb, 0.0, &w_ref);
    EXPECT_TRUE(AllClose(out, ref, this->tol(true)));
    EXPECT_TRUE(AllClose(w, w_ref, this->tol(true)));
  }
}

// Results are bit-identical for 1, 2 and 3 threads (and the default), with masks, dropout
// and weights.
TYPED_TEST(TalkingHeadsKernel, BitIdenticalForEveryThreadCount) {
  using T = TypeParam;
  std::mt19937 rng(5);
  Problem<T> pb(3, 8, 130, 150, 16, 16, Problem<T>::kAll, rng);
  Tensor<T> w1;
  attn::set_num_threads(1);
  const Tensor<T> out1 = run_kernel(pb, 0.2, &w1);
  for (int n : {2, 3, 0}) {
    attn::set_num_threads(n);
    Tensor<T> w;
    const Tensor<T> out = run_kernel(pb, 0.2, &w);
    EXPECT_TRUE(same_bits(out, out1)) << n << " threads";
    EXPECT_TRUE(same_bits(w, w1)) << n << " threads";
  }
  attn::set_num_threads(0);
  // The module too (qkv and proj Linear layers around the kernel).
  attn::TalkingHeadsAttention<T> th(64, 8);
  const Tensor<T> x = random_tensor<T>({2, 150, 64}, 3);
  attn::set_num_threads(1);
  const Tensor<T> y1 = th.forward(x);
  attn::set_num_threads(2);
  const Tensor<T> y2 = th.forward(x);
  attn::set_num_threads(0);
  EXPECT_TRUE(same_bits(y1, y2));
}

#if defined(_OPENMP)
// Called from inside a parallel region, the kernel runs serially on each calling thread
// (one scratch buffer per call) and gives the same results.
TYPED_TEST(TalkingHeadsKernel, CallsFromSeveralThreadsAtOnce) {
  using T = TypeParam;
  std::mt19937 rng(9);
  Problem<T> pb(2, 4, 70, 60, 8, 8, Problem<T>::kPadding, rng);
  const Tensor<T> expected = run_kernel<T>(pb, 0.0, nullptr);
  std::vector<Tensor<T>> outs(4);
#pragma omp parallel for num_threads(2)
  for (int i = 0; i < 4; ++i) outs[std::size_t(i)] = run_kernel<T>(pb, 0.0, nullptr);
  for (const auto& o : outs)
    EXPECT_TRUE(same_bits(o, expected));
}
#endif

}  // namespace
