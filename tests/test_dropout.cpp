// Dropout: identity in eval mode, inverted scaling, a deterministic seeded mask.
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
  attn::TransformerEncoderLayer<T> enc(12, 8, 3, 0.1, 0.2, 0.3);
  attn::TalkingHeadsAttention<T> th(12, 3, true, 0.2, 0.1);
  check(enc);
  check(th);
}

}  // namespace
