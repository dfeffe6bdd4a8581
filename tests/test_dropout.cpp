// Dropout: identity in eval mode, inverted scaling, a deterministic seeded mask.
#include <cstdio>
#include <vector>

#include "every_module.hpp"

namespace {

using namespace attn_test;
namespace registry = attn_test::registry;

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
// Dropout inside the modules, one site at a time (every site of every module of the registry,
// tests/registry.hpp): statistics that fail when a site drops with the wrong probability,
// does not rescale by 1/(1-p), rescales by (1-p), swaps p and 1-p, or is not applied at all.
//
// Each site's module is set up so that the observed output is linear in its masks (the
// registry silences the other branches with zero weights), and dropout is inverted, so the
// mean of the training-mode output over seeds is predicted by the eval-mode output (the law
// of the site, registry::Law). With n seeds and element i's sample standard error SE_i, the
// check is max_i |mean_i - predicted_i| / SE_i <= 5.5 (about 3.5 is the largest of a few
// hundred standard normals; the seeds are fixed, so the test is deterministic). A wrong
// rescaling moves the mean by a fixed fraction of the dropped part: missing 1/(1-p) by p = 0.3
// of it, rescaling by (1-p) by 1 - (1-p)^2 = 0.51, dropping with 1-p by 1 - p/(1-p) = 0.57.
// The dropped part of an element is of the order of its own spread, so with n = 600 such a
// bias is about 0.3 * sqrt(600 * (1-p) / p) = 11 standard errors or more, twice the bound.
//
// A site that is skipped, or drops with another probability but rescales to match, keeps the
// mean. The variance catches it: per element it is f(p) times a sum that does not depend on p
// (f(p) = p/(1-p) for one mask, the law says otherwise), so the total variance at p = 0.3 over
// that at p = 0.6 is f(0.3)/f(0.6). The check allows +-15% (measured: within 2%); a skipped
// site gives 0/0 (fails: the variance must be positive), a probability that does not follow
// the argument gives 1 (+250% for one mask), p^2 in place of p gives -38%.
//
// Where a dropped element can be seen in the output (an exact 0, the residual input passed
// through unchanged), the fraction of dropped elements must be the law's within 5 binomial
// standard deviations (+-0.006 here). Two masks tied to one probability (a residual dropout
// and the dropout inside its branch) are told apart this way: the residual one by the
// fraction, the inner one by the variance of the elements the residual one kept.
// ---------------------------------------------------------------------------------------

struct SiteResult {
  double max_t = 0;           ///< max_i |mean_i - predicted_i| / SE_i
  double total_variance = 0;  ///< sum_i of the sample variances
  double dropped = -1;        ///< fraction of elements seen dropped (-1: not observable)
  Index elements = 0;
};

constexpr int kSamples = 600;
using registry::Law;

/// The law's variance factor f(p) and dropped fraction g(p).
double variance_factor(Law law, double p) {
  switch (law) {
    case Law::kLinear: return p / (1 - p);
    case Law::kResidualOfLinear: return p / ((1 - p) * (1 - p) * (1 - p));
    case Law::kTwoMasks: return 1 / ((1 - p) * (1 - p)) - 1;
  }
  return 0;
}
double dropped_fraction(Law law, double p) { return law == Law::kTwoMasks ? 1 - (1 - p) * (1 - p) : p; }

/// Runs the site at p for seeds 1..kSamples and compares the samples with the law's prediction
/// from the eval output.
template <class T>
SiteResult sample_site(const registry::DropoutSite<T>& site, double p) {
  const auto run = site.at(p);
  const Tensor<T> eval = run(nullptr);
  const bool observable = site.base.numel() > 0 || site.zeros;
  const Index m = eval.numel();
  const auto dropped = [&](const Tensor<T>& y, Index i) {
    return site.base.numel() > 0 ? y[i] == site.base[i] : site.zeros && y[i] == T(0);
  };
  // Elements the residual mask kept (kResidualOfLinear) are predicted as base + (eval - base) / (1 - p).
  const bool conditional = site.law == Law::kResidualOfLinear;
  std::vector<double> predicted(static_cast<std::size_t>(m)), sum(static_cast<std::size_t>(m), 0.0),
      sum_sq(static_cast<std::size_t>(m), 0.0), count(static_cast<std::size_t>(m), 0.0);
  for (Index i = 0; i < m; ++i)
    predicted[std::size_t(i)] =
        conditional ? double(site.base[i]) + (double(eval[i]) - double(site.base[i])) / (1 - p) : double(eval[i]);
  Index seen = 0;
  for (int s = 1; s <= kSamples; ++s) {
    attn::Generator gen(std::uint64_t(s) * 7919u);
    const Tensor<T> y = run(&gen);
    for (Index i = 0; i < m; ++i) {
      const bool was_dropped = observable && dropped(y, i);
      seen += was_dropped;
      if (conditional && was_dropped) continue;
      const double d = double(y[i]) - predicted[std::size_t(i)];  // centred: no cancellation
      sum[std::size_t(i)] += d;
      sum_sq[std::size_t(i)] += d * d;
      count[std::size_t(i)] += 1;
    }
  }
  SiteResult r;
  r.elements = m;
  for (Index i = 0; i < m; ++i) {
    const double n = count[std::size_t(i)];
    if (n < 2) continue;
    const double mean_d = sum[std::size_t(i)] / n;
    const double var = std::max(0.0, (sum_sq[std::size_t(i)] - n * mean_d * mean_d) / (n - 1));
    r.total_variance += var;
    const double se = std::sqrt(var / n);
    r.max_t = std::max(r.max_t, se > 0 ? std::abs(mean_d) / se : (std::abs(mean_d) < 1e-12 ? 0.0 : INFINITY));
  }
  if (observable) r.dropped = double(seen) / (double(kSamples) * double(m));
  return r;
}

/// The checks above for one site.
template <class T>
void check_site(const registry::DropoutSite<T>& site) {
  SCOPED_TRACE(site.name);
  const double p = 0.3, p2 = 0.6;
  const SiteResult r = sample_site(site, p), r2 = sample_site(site, p2);
  const double expected_ratio = variance_factor(site.law, p) / variance_factor(site.law, p2);
  std::printf("    %s: max |mean - predicted| / SE: %.2f (p = 0.3), %.2f (p = 0.6); variance ratio / expected: "
              "%.3f; dropped: %.4f\n", site.name.c_str(), r.max_t, r2.max_t,
              r.total_variance / r2.total_variance / expected_ratio, r.dropped);
  EXPECT_LE(r.max_t, 5.5) << "the mean over " << kSamples << " seeds is not the predicted output";
  EXPECT_LE(r2.max_t, 5.5) << "p = 0.6: the mean over " << kSamples << " seeds is not the predicted output";
  ASSERT_GT(r.total_variance, 0.0) << "the outputs do not vary with the seed: no dropout";
  ASSERT_GT(r2.total_variance, 0.0) << "p = 0.6: the outputs do not vary with the seed: no dropout";
  EXPECT_NEAR(r.total_variance / r2.total_variance / expected_ratio, 1.0, 0.15)
      << "variance at p = 0.3 over variance at p = 0.6: " << r.total_variance / r2.total_variance << ", expected "
      << expected_ratio;
  if (r.dropped >= 0) {
    const double q = dropped_fraction(site.law, p);
    const double sd = std::sqrt(q * (1 - q) / (double(kSamples) * double(r.elements)));
    EXPECT_NEAR(r.dropped, q, 5 * sd) << "fraction of dropped elements";
  }
}

template <class E>
class EveryModule : public ::testing::Test {};
TYPED_TEST_SUITE(EveryModule, registry::Modules, registry::EntryNames);

TYPED_TEST(EveryModule, EveryDropoutSiteFloat) {
  const auto sites = TypeParam::template sites<float>();
  if (sites.empty()) GTEST_SKIP() << TypeParam::kName << " has no dropout";
  for (const auto& s : sites) check_site<float>(s);
}
TYPED_TEST(EveryModule, EveryDropoutSiteDouble) {
  const auto sites = TypeParam::template sites<double>();
  if (sites.empty()) GTEST_SKIP() << TypeParam::kName << " has no dropout";
  for (const auto& s : sites) check_site<double>(s);
}

// The attention-weight dropout of MultiHeadAttention seen through the returned per-head
// weights (the straightforward kernel): a dropped weight is exactly 0 (no eval-mode weight is,
// without masks).
TYPED_TEST(DropoutTyped, MhaAttentionDropoutStatisticsOfTheWeights) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({2, 8, 16}, 32);
  attn::MultiHeadAttention<T> base(16, 4);
  randomize(base, 50);
  const auto dict = base.state_dict();
  check_site(registry::site<T>(
      "attention weights, weights path", Law::kLinear,
      [&](double p) {
        attn::MultiHeadAttentionOptions o;
        o.dropout = p;
        attn::MultiHeadAttention<T> m(16, 4, o);
        m.load_state_dict(dict);
        return m;
      },
      [x](const attn::MultiHeadAttention<T>& m, attn::Generator* g) {
        attn::MhaArgs<T> args;
        args.generator = g;
        args.need_weights = true;
        args.average_attn_weights = false;
        return m.forward(x, args).attn_weights;
      },
      Tensor<T>(), true));
}

}  // namespace
