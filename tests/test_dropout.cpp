// Dropout: identity in eval mode, inverted scaling, a deterministic seeded mask.
#include <cstdio>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class DropoutTyped : public ::testing::Test {};
TYPED_TEST_SUITE(DropoutTyped, Scalars);

TYPED_TEST(DropoutTyped, EvalIsIdentity) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({7, 9}, 1);
  attn::Generator gen(5);
  EXPECT_TRUE(AllClose(attn::dropout<T>(x, T(0.5), false, gen), x, 0.0));
  EXPECT_TRUE(AllClose(attn::dropout<T>(x, T(0), true, gen), x, 0.0));
}

// n = 200000 Bernoulli(p) drops: the count's standard deviation is sqrt(n p (1-p)) ~ 205
// for p = 0.3. The masks are a fixed function of the seed, so the check is deterministic;
// the 8-sigma bound is there so a correct generator passes for any seed.
TYPED_TEST(DropoutTyped, DropsAboutPAndScalesTheRest) {
  using T = TypeParam;
  const Index n = 200000;
  const Tensor<T> x({n}, T(1));
  for (double p : {0.1, 0.3, 0.9}) {
    for (std::uint64_t seed : {0u, 1u, 12345u}) {
      attn::Generator gen(seed);
      const Tensor<T> y = attn::dropout<T>(x, T(p), true, gen);
      Index zeros = 0;
      for (Index i = 0; i < n; ++i) {
        if (y[i] == T(0))
          ++zeros;
        else
          ASSERT_EQ(y[i], T(1) / (T(1) - T(p)));
      }
      const double sigma = std::sqrt(n * p * (1 - p));
      EXPECT_NEAR(double(zeros), n * p, 8 * sigma) << "p=" << p << " seed=" << seed;
    }
  }
}

TYPED_TEST(DropoutTyped, SameSeedSameMaskOtherSeedOtherMask) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({1000}, 2);
  attn::Generator a(42), b(42), c(43);
  const Tensor<T> ya = attn::dropout<T>(x, T(0.5), true, a), yb = attn::dropout<T>(x, T(0.5), true, b),
                  yc = attn::dropout<T>(x, T(0.5), true, c);
  EXPECT_TRUE(AllClose(ya, yb, 0.0));
  EXPECT_FALSE(AllClose(ya, yc, 0.0));
  // the generator advances: the next application draws another mask
  EXPECT_FALSE(AllClose(attn::dropout<T>(x, T(0.5), true, a), ya, 0.0));
}

// The mask of element (b, h, i, j) of the (B, H, L, S) weights is element
// ((b*H + h)*L + i)*S + j of the call's stream, whatever the query blocking (L = 100 spans
// two 64-row blocks): this is what makes masks independent of how work is split.
TYPED_TEST(DropoutTyped, SdpaMaskDependsOnlyOnSeedCallAndElement) {
  using T = TypeParam;
  const Index nb = 2, nh = 2, len_q = 100, len_k = 7;
  const Tensor<T> q = random_tensor<T>({nb, nh, len_q, 4}, 1), k = random_tensor<T>({nb, nh, len_k, 4}, 2),
                  v = random_tensor<T>({nb, nh, len_k, 3}, 3);
  Tensor<T> w_eval, w_drop;
  attn::SdpaOptions<T> opt;
  opt.attn_weights = &w_eval;
  attn::scaled_dot_product_attention<T>(q, k, v, opt);
  attn::Generator gen(99);
  opt.dropout_p = T(0.4);
  opt.generator = &gen;
  opt.attn_weights = &w_drop;
  attn::scaled_dot_product_attention<T>(q, k, v, opt);
  // The call's stream is the first of Generator(99), the one random_uniform(.., 99) reads.
  const Tensor<double> u = attn::random_uniform<double>({w_eval.numel()}, 99);
  for (Index e = 0; e < w_eval.numel(); ++e) {
    const bool dropped = u[e] < 0.4;
    ASSERT_EQ(w_drop[e], dropped ? T(0) : w_eval[e] * (T(1) / (T(1) - T(0.4)))) << "element " << e;
  }
}

TEST(DropoutErrors, ProbabilityOutsideZeroOne) {
  attn::Generator gen(0);
  const Tensor<float> x({3});
  ExpectInvalid([&] { attn::dropout<float>(x, 1.0f, true, gen); }, {"dropout", "[0, 1)", "1"});
  ExpectInvalid([&] { attn::dropout<float>(x, -0.5f, true, gen); }, {"dropout", "-0.5"});
}

// Attention dropout acts on the weights: every returned weight is 0 or the eval-mode weight
// scaled by 1/(1-p), and the output is exactly those weights times v.
TYPED_TEST(DropoutTyped, MhaAttentionDropoutZeroesOrScalesWeights) {
  using T = TypeParam;
  attn::MultiHeadAttentionOptions o;
  o.dropout = 0.25;
  attn::MultiHeadAttention<T> mha(16, 4, o);
  const Tensor<T> x = random_tensor<T>({2, 6, 16}, 3);
  attn::MhaArgs<T> args;
  args.need_weights = true;
  args.average_attn_weights = false;
  const Tensor<T> w_eval = mha.forward(x, args).attn_weights;
  mha.train();
  attn::Generator gen(7);
  args.generator = &gen;
  const auto r1 = mha.forward(x, args);
  Index zeros = 0;
  for (Index i = 0; i < w_eval.numel(); ++i) {
    if (r1.attn_weights[i] == T(0)) {
      ++zeros;
    } else {
      EXPECT_NEAR(double(r1.attn_weights[i]), double(w_eval[i]) / 0.75, 1e-6);
    }
  }
  EXPECT_GT(zeros, 0);
  EXPECT_LT(zeros, w_eval.numel());
  attn::Generator same(7), other(8);
  args.generator = &same;
  EXPECT_TRUE(AllClose(mha.forward(x, args).output, r1.output, 0.0));
  args.generator = &other;
  EXPECT_FALSE(AllClose(mha.forward(x, args).output, r1.output, 0.0));
  mha.eval();
  EXPECT_TRUE(AllClose(mha.forward(x, args).attn_weights, w_eval, 0.0));
}

// In training mode, one seed gives one output, another seed another, and both differ from
// eval mode; back in eval mode the generator is not used.
TYPED_TEST(DropoutTyped, ModulesAreDeterministicPerSeedAndIdentityInEval) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({2, 5, 12}, 4);
  auto check = [&](auto& module) {
    const Tensor<T> eval_out = module.forward(x);
    module.train();
    attn::Generator a(1), b(1), c(2);
    const Tensor<T> ya = module.forward(x, with_generator<T>(a)), yb = module.forward(x, with_generator<T>(b)),
                    yc = module.forward(x, with_generator<T>(c));
    EXPECT_TRUE(AllClose(ya, yb, 0.0));
    EXPECT_FALSE(AllClose(ya, yc, 1e-3));
    EXPECT_FALSE(AllClose(ya, eval_out, 1e-3));
    module.eval();
    EXPECT_TRUE(AllClose(module.forward(x, with_generator<T>(c)), eval_out, 0.0));
  };
  attn::MobileViTEncoderLayer<T> enc(12, 8, 3, {0.1, 0.2, 0.3});
  attn::TalkingHeadsAttention<T> th(12, 3, {true, 0.2, 0.1});
  check(enc);
  check(th);
}


// ---------------------------------------------------------------------------------------
// Dropout inside the modules, one slot at a time: statistics that fail when a slot drops
// with the wrong probability, does not rescale by 1/(1-p), rescales by (1-p), swaps p and
// 1-p, or is not applied at all.
//
// Each slot is followed by computations that are linear in its output (the module's weights
// are set so where they are not: see the encoder configurations), and dropout is inverted,
// so the mean of the training-mode output over seeds is the eval-mode output. With n seeds
// and element i's sample standard error SE_i, the check is max_i |mean_i - eval_i| / SE_i
// <= 5.5 (about 3.5 is the largest of a few hundred standard normals; the seeds are fixed,
// so the test is deterministic). A wrong rescaling moves the mean by a fixed fraction of the
// dropped part: missing 1/(1-p) by p = 0.3 of it, rescaling by (1-p) by 1 - (1-p)^2 = 0.51,
// dropping with 1-p by 1 - p/(1-p) = 0.57. The dropped part of an element is of the order of
// its own spread (exactly for element-wise slots), so with n = 600 such a bias is about
// 0.3 * sqrt(600 * (1-p) / p) = 11 standard errors or more, twice the bound.
//
// A slot that is skipped, or drops with another probability but rescales to match, keeps
// the mean. The variance catches it: per element it is p/(1-p) times a sum that does not
// depend on p, so the total variance at p = 0.3 over that at p = 0.6 is
// (0.3/0.7) / (0.6/0.4) = 0.286. The check allows +-15% (measured: within 1.5%); a skipped
// slot gives 0/0 (fails: the variance must be positive), a probability that does not follow
// the argument gives 1 (+250%), p^2 in place of p gives -38%.
//
// Where a dropped element can be seen in the output (an exact 0 in the weights or after the
// projection, the residual input passed through unchanged), the fraction of dropped
// elements must be p within 5 binomial standard deviations (+-0.006 here).
// ---------------------------------------------------------------------------------------

struct SlotResult {
  double max_t = 0;           ///< max_i |mean_i - eval_i| / SE_i
  double total_variance = 0;  ///< sum_i of the sample variances
  double dropped = -1;        ///< fraction of elements seen dropped (-1: not observable)
  Index elements = 0;
};

constexpr int kSamples = 600;

/// Runs `run(generator)` for seeds 1..kSamples and compares the samples with `eval`.
/// `dropped(sample, i)` (may be null) tells whether element i of a sample was dropped.
template <class T, class Run, class Dropped>
SlotResult sample_slot(const Tensor<T>& eval, Run&& run, Dropped&& dropped, bool observable) {
  const Index m = eval.numel();
  std::vector<double> sum(std::size_t(m), 0.0), sum_sq(std::size_t(m), 0.0);
  Index seen = 0;
  for (int s = 1; s <= kSamples; ++s) {
    attn::Generator gen(std::uint64_t(s) * 7919u);
    const Tensor<T> y = run(gen);
    for (Index i = 0; i < m; ++i) {
      const double d = double(y[i]) - double(eval[i]);  // centred on eval: no cancellation
      sum[std::size_t(i)] += d;
      sum_sq[std::size_t(i)] += d * d;
      if (observable && dropped(y, i)) ++seen;
    }
  }
  SlotResult r;
  r.elements = m;
  const double n = kSamples;
  for (Index i = 0; i < m; ++i) {
    const double mean_d = sum[std::size_t(i)] / n;
    const double var = std::max(0.0, (sum_sq[std::size_t(i)] - n * mean_d * mean_d) / (n - 1));
    r.total_variance += var;
    const double se = std::sqrt(var / n);
    r.max_t = std::max(r.max_t, se > 0 ? std::abs(mean_d) / se : (mean_d == 0 ? 0.0 : INFINITY));
  }
  if (observable) r.dropped = double(seen) / (n * double(m));
  return r;
}

/// The checks above for one slot. make(p): a module in training mode whose slot drops with p
/// (every other dropout 0, same weights for every p); out(module, generator or null): the
/// observed tensor; dropped(sample, i): as in sample_slot (null if not observable).
template <class T, class Make, class Out, class Dropped>
void check_slot(Make&& make, Out&& out, Dropped&& dropped, bool observable) {
  const double p = 0.3, p2 = 0.6;
  auto module = make(p);
  module.eval();
  const Tensor<T> eval = out(module, nullptr);
  module.train();
  const SlotResult r =
      sample_slot<T>(eval, [&](attn::Generator& g) { return out(module, &g); }, dropped, observable);
  auto module2 = make(p2);
  module2.train();
  const SlotResult r2 =
      sample_slot<T>(eval, [&](attn::Generator& g) { return out(module2, &g); }, dropped, false);

  std::printf("    max |mean - eval| / SE: %.2f (p = 0.3), %.2f (p = 0.6); variance ratio / expected: %.3f; "
              "dropped: %.4f\n", r.max_t, r2.max_t,
              r.total_variance / r2.total_variance / ((p / (1 - p)) / (p2 / (1 - p2))), r.dropped);
  EXPECT_LE(r.max_t, 5.5) << "the mean over " << kSamples << " seeds is not the eval-mode output";
  EXPECT_LE(r2.max_t, 5.5) << "p = 0.6: the mean over " << kSamples << " seeds is not the eval-mode output";
  ASSERT_GT(r.total_variance, 0.0) << "the outputs do not vary with the seed: no dropout";
  ASSERT_GT(r2.total_variance, 0.0) << "p = 0.6: the outputs do not vary with the seed: no dropout";
  const double expected_ratio = (p / (1 - p)) / (p2 / (1 - p2));
  EXPECT_NEAR(r.total_variance / r2.total_variance / expected_ratio, 1.0, 0.15)
      << "variance at p = 0.3 over variance at p = 0.6: " << r.total_variance / r2.total_variance << ", expected "
      << expected_ratio << " (p/(1-p) ratio)";
  if (observable) {
    const double sd = std::sqrt(p * (1 - p) / (double(kSamples) * double(r.elements)));
    EXPECT_NEAR(r.dropped, p, 5 * sd) << "fraction of dropped elements";
  }
}

// Attention-weight dropout of MultiHeadAttention, tiled kernel (need_weights off): the
// output is out_proj of the dropped weights times v, linear in them.
TYPED_TEST(DropoutTyped, MhaAttentionDropoutStatistics) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({2, 8, 16}, 31);
  attn::MultiHeadAttention<T> base(16, 4);
  randomize(base, 40);
  const auto dict = base.state_dict();
  auto make = [&](double p) {
    attn::MultiHeadAttentionOptions o;
    o.dropout = p;
    attn::MultiHeadAttention<T> m(16, 4, o);
    m.load_state_dict(dict);
    return m;
  };
  auto out = [&](const attn::MultiHeadAttention<T>& m, attn::Generator* g) {
    attn::MhaArgs<T> args;
    args.generator = g;
    return m.forward(x, args).output;
  };
  check_slot<T>(make, out, [](const Tensor<T>&, Index) { return false; }, false);
}

// The same slot seen through the returned per-head weights (the straightforward kernel):
// a dropped weight is exactly 0 (no eval-mode weight is, without masks).
TYPED_TEST(DropoutTyped, MhaAttentionDropoutStatisticsOfTheWeights) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({2, 8, 16}, 32);
  attn::MultiHeadAttention<T> base(16, 4);
  randomize(base, 50);
  const auto dict = base.state_dict();
  auto make = [&](double p) {
    attn::MultiHeadAttentionOptions o;
    o.dropout = p;
    attn::MultiHeadAttention<T> m(16, 4, o);
    m.load_state_dict(dict);
    return m;
  };
  auto weights = [&](const attn::MultiHeadAttention<T>& m, attn::Generator* g) {
    attn::MhaArgs<T> args;
    args.generator = g;
    args.need_weights = true;
    args.average_attn_weights = false;
    return m.forward(x, args).attn_weights;
  };
  check_slot<T>(make, weights, [](const Tensor<T>& y, Index i) { return y[i] == T(0); }, true);
}

// TalkingHeadsAttention's attention dropout (after proj_w, then times v and proj: linear).
TYPED_TEST(DropoutTyped, TalkingHeadsAttentionDropoutStatistics) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({2, 8, 16}, 33);
  attn::TalkingHeadsAttention<T> base(16, 4, {true});
  randomize(base, 60);
  const auto dict = base.state_dict();
  auto make = [&](double p) {
    attn::TalkingHeadsAttention<T> m(16, 4, {true, p, 0.0});
    m.load_state_dict(dict);
    return m;
  };
  auto out = [&](const attn::TalkingHeadsAttention<T>& m, attn::Generator* g) {
    return m.forward(x, g ? with_generator<T>(*g) : attn::AttentionArgs<T>{});
  };
  check_slot<T>(make, out, [](const Tensor<T>&, Index) { return false; }, false);
}

// TalkingHeadsAttention's projection dropout: the last step, a dropped output is exactly 0.
TYPED_TEST(DropoutTyped, TalkingHeadsProjectionDropoutStatistics) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({2, 8, 16}, 34);
  attn::TalkingHeadsAttention<T> base(16, 4, {true});
  randomize(base, 70);
  const auto dict = base.state_dict();
  auto make = [&](double p) {
    attn::TalkingHeadsAttention<T> m(16, 4, {true, 0.0, p});
    m.load_state_dict(dict);
    return m;
  };
  auto out = [&](const attn::TalkingHeadsAttention<T>& m, attn::Generator* g) {
    return m.forward(x, g ? with_generator<T>(*g) : attn::AttentionArgs<T>{});
  };
  check_slot<T>(make, out, [](const Tensor<T>& y, Index i) { return y[i] == T(0); }, true);
}

/// The encoder layer's three dropouts. The FFN branch reads the attention branch's result
/// through a LayerNorm (not linear), so each configuration silences one branch with zero
/// weights: "attention" zeroes fc2 (pre_norm_ffn.4), so out = x + Dropout(MHA(LN(x)));
/// "ffn" zeroes out_proj, so out = x + Dropout(fc2(Dropout(SiLU(fc1(LN(x)))))) with fc2 the
/// identity (ffn_latent_dim = embed_dim), which shows the hidden units themselves.
template <class T>
struct EncoderSlot {
  enum Which { kAttentionWeights, kResidualOfAttention, kResidualOfFfn, kFfnHidden };
  static void run(Which which) {
    const Index e = 16;
    const Tensor<T> x = random_tensor<T>({2, 8, e}, 35);
    attn::MobileViTEncoderLayer<T> base(e, e, 4);
    randomize(base, 80);
    auto dict = base.state_dict();
    const bool ffn_branch = which == kResidualOfFfn || which == kFfnHidden;
    if (ffn_branch) {
      dict["pre_norm_mha.1.out_proj.weight"].flat().setZero();
      dict["pre_norm_mha.1.out_proj.bias"].flat().setZero();
      if (which == kFfnHidden) {
        Tensor<T>& w = dict["pre_norm_ffn.4.weight"];
        w.flat().setZero();
        for (Index i = 0; i < e; ++i) w(i, i) = T(1);
        dict["pre_norm_ffn.4.bias"].flat().setZero();
      }
    } else {
      dict["pre_norm_ffn.4.weight"].flat().setZero();
      dict["pre_norm_ffn.4.bias"].flat().setZero();
    }
    auto make = [&](double p) {
      const double attn_p = which == kAttentionWeights ? p : 0.0;
      const double res_p = which == kResidualOfAttention || which == kResidualOfFfn ? p : 0.0;
      const double ffn_p = which == kFfnHidden ? p : 0.0;
      attn::MobileViTEncoderLayer<T> m(e, e, 4, {attn_p, res_p, ffn_p});
      m.load_state_dict(dict);
      return m;
    };
    auto out = [&](const attn::MobileViTEncoderLayer<T>& m, attn::Generator* g) {
      return m.forward(x, g ? with_generator<T>(*g) : attn::AttentionArgs<T>{});
    };
    // A dropped residual branch or hidden unit leaves x exactly (x + 0); the attention
    // weights are not visible in the output.
    check_slot<T>(make, out, [&](const Tensor<T>& y, Index i) { return y[i] == x[i]; },
                  which != kAttentionWeights);
  }
};

TYPED_TEST(DropoutTyped, EncoderAttentionDropoutStatistics) {
  EncoderSlot<TypeParam>::run(EncoderSlot<TypeParam>::kAttentionWeights);
}
TYPED_TEST(DropoutTyped, EncoderResidualDropoutOfTheAttentionBranchStatistics) {
  EncoderSlot<TypeParam>::run(EncoderSlot<TypeParam>::kResidualOfAttention);
}
TYPED_TEST(DropoutTyped, EncoderResidualDropoutOfTheFfnBranchStatistics) {
  EncoderSlot<TypeParam>::run(EncoderSlot<TypeParam>::kResidualOfFfn);
}
TYPED_TEST(DropoutTyped, EncoderFfnDropoutStatistics) { EncoderSlot<TypeParam>::run(EncoderSlot<TypeParam>::kFfnHidden); }

}  // namespace
