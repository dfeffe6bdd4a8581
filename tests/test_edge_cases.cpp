// Numerical and size edge cases of every module and of the attention kernel, as the README
// ("Robustness and edge cases") documents them:
//   - logits around +-1e4 stay finite and exact;
//   - NaN / Inf in an input propagate to the documented rows only, and never crash;
//   - fully masked rows give 0 (attention output) / the output projection's bias;
//   - batch 0, query length 0 and key length 0 give empty outputs (PyTorch 1.13's shapes);
//   - sizes whose element counts overflow are std::invalid_argument, before allocating;
//   - float and double agree to float precision on random cases.
// Expected values come from a naive long double attention written here (for large
// logits) or from invariants (row independence, shapes); the PyTorch fixtures of
// test_modules.cpp cover the normal cases.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "every_module.hpp"

namespace {

using attn::Index;
using attn::Shape;
using attn::Tensor;
using attn_test::random_tensor;
using attn_test::randomize;
namespace registry = attn_test::registry;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

template <class E>
class EveryModule : public ::testing::Test {};
TYPED_TEST_SUITE(EveryModule, registry::Modules, registry::EntryNames);

using registry::Call;
using registry::input_shape;

bool bitwise_equal(const float* a, const float* b, Index n) { return std::memcmp(a, b, sizeof(float) * n) == 0; }
bool all_finite(const Tensor<float>& t) {
  for (Index i = 0; i < t.numel(); ++i)
    if (!std::isfinite(t[i])) return false;
  return true;
}
bool all_nan(const float* p, Index n) {
  for (Index i = 0; i < n; ++i)
    if (!std::isnan(p[i])) return false;
  return true;
}

// Training mode with every dropout probability 0 needs no generator (the modules made here
// have none), and gives the eval-mode output bit for bit. (UBSan's null check caught the
// dereference of the missing generator that this once did.)
TYPED_TEST(EveryModule, TrainingWithoutDropoutNeedsNoGenerator) {
  using E = TypeParam;
  auto m = E::template make<float>();
  const Tensor<float> x = random_tensor<float>(input_shape<E>(2, 5), 8);
  const Tensor<float> eval = E::run(m, x, {});
  m.train();
  Tensor<float> train;
  ASSERT_NO_THROW(train = E::run(m, x, {}));
  EXPECT_TRUE(attn_test::same_bits(train, eval));
}

// ---------------------------------------------------------------------------------------
// Large logits.
// ---------------------------------------------------------------------------------------

/// Naive attention in long double: softmax(scale q k^T) v for one (L, D) x (S, D) head.
std::vector<long double> naive_attention(const Tensor<float>& q, const Tensor<float>& k, const Tensor<float>& v,
                                         long double scale) {
  const Index l = q.size(0), s = k.size(0), d = q.size(1), dv = v.size(1);
  std::vector<long double> out(static_cast<std::size_t>(l * dv), 0.0L);
  for (Index i = 0; i < l; ++i) {
    std::vector<long double> logit(static_cast<std::size_t>(s));
    long double mx = -INFINITY, sum = 0;
    for (Index j = 0; j < s; ++j) {
      long double dot = 0;
      for (Index c = 0; c < d; ++c) dot += static_cast<long double>(q[i * d + c]) * scale * k[j * d + c];
      logit[j] = dot;
      mx = std::max(mx, dot);
    }
    for (Index j = 0; j < s; ++j) sum += (logit[j] = std::exp(logit[j] - mx));
    for (Index j = 0; j < s; ++j)
      for (Index c = 0; c < dv; ++c) out[i * dv + c] += logit[j] / sum * v[j * dv + c];
  }
  return out;
}

TEST(EdgeLargeLogits, SdpaAroundTenThousandIsFiniteAndExact) {
  // q k^T spans about [-1e4, 1e4]: exp(x) alone would overflow float at 89.
  for (double magnitude : {1e4, 3e4}) {
    const Index l = 7, s = 9, d = 4;
    Tensor<float> q = random_tensor<float>({l, d}, 11, 1.0), k = random_tensor<float>({s, d}, 12, 1.0),
                  v = random_tensor<float>({s, d}, 13, 1.0);
    const float g = static_cast<float>(std::sqrt(magnitude));  // |q.k| <= 4 g^2 with scale 1
    for (Index i = 0; i < q.numel(); ++i) q[i] *= g;
    for (Index i = 0; i < k.numel(); ++i) k[i] *= g;
    attn::SdpaOptions<float> opt;
    opt.scale = 1.0f;
    const Tensor<float> out = attn::scaled_dot_product_attention<float>(
        Tensor<float>(q).reshaped({1, l, d}), Tensor<float>(k).reshaped({1, s, d}), Tensor<float>(v).reshaped({1, s, d}), opt);
    ASSERT_TRUE(all_finite(out)) << "magnitude " << magnitude;
    const std::vector<long double> ref = naive_attention(q, k, v, 1.0L);
    // With logits this large the weights are one-hot up to rounding of the logits, which
    // are float: compare against the naive result with the float logits' resolution.
    for (Index i = 0; i < out.numel(); ++i) EXPECT_NEAR(out[i], static_cast<double>(ref[i]), 2e-3) << i;
  }
}

TEST(EdgeLargeLogits, AdditiveMaskOfTenThousandActsAsAFiniteBias) {
  // A float mask of -1e4 (the usual "large negative" stand-in for -inf) keeps every row finite.
  const Index l = 5, s = 6, d = 4;
  const Tensor<float> q = random_tensor<float>({1, l, d}, 1), k = random_tensor<float>({1, s, d}, 2),
                      v = random_tensor<float>({1, s, d}, 3);
  Tensor<float> mask({l, s}, 0.0f);
  for (Index j = 0; j < s; ++j) mask(0, j) = -1e4f;  // row 0: every key "masked" by -1e4
  mask(1, 2) = 1e4f;                                  // row 1: one key boosted by +1e4
  attn::SdpaOptions<float> opt;
  opt.attn_mask = attn::Mask<float>::additive(mask);
  const Tensor<float> out = attn::scaled_dot_product_attention<float>(q, k, v, opt);
  ASSERT_TRUE(all_finite(out));
  // Row 0: the same bias on every key cancels in the softmax: as if unmasked.
  const Tensor<float> plain = attn::scaled_dot_product_attention<float>(q, k, v);
  for (Index c = 0; c < d; ++c) EXPECT_NEAR(out(0, 0, c), plain(0, 0, c), 1e-3);
  // Row 1: all the weight on key 2.
  for (Index c = 0; c < d; ++c) EXPECT_FLOAT_EQ(out(0, 1, c), v(0, 2, c));
}

TYPED_TEST(EveryModule, InputsGivingLargeLogitsStayFinite) {
  using E = TypeParam;
  const auto m = E::template make<float>();
  // Inputs of magnitude 300 through 0.5-bounded projections give logits of order 1e4..1e5.
  const Tensor<float> x = random_tensor<float>(input_shape<E>(2, 6), 7, 300.0);
  EXPECT_TRUE(all_finite(E::run(m, x, {})));
  EXPECT_TRUE(all_finite(E::run(m, x, {{}, true, nullptr})));
}

// ---------------------------------------------------------------------------------------
// NaN and Inf.
// ---------------------------------------------------------------------------------------

TYPED_TEST(EveryModule, NanInOneBatchElementStaysInIt) {
  // A NaN or Inf in the first token of batch element 1 reaches every row of that element (each
  // row attends to the first token, causal or not) and nothing else: the other batch elements
  // are bit-identical. A module that does not mix tokens keeps it in that token's row (NaN,
  // or +-inf through a Linear).
  using E = TypeParam;
  const auto m = E::template make<float>();
  const Index len = 5;
  const Tensor<float> clean = random_tensor<float>(input_shape<E>(3, len), 8);
  const Tensor<float> y0 = E::run(m, clean, {});
  for (double bad : {kNaN, kInf, -kInf}) {
    Tensor<float> x = clean;
    x[registry::flat_index<E>(len, 1, 0, 3)] = static_cast<float>(bad);
    const Tensor<float> y = E::run(m, x, {});
    ASSERT_EQ(y.shape(), y0.shape());
    const Index per = y.numel() / 3;
    for (Index i = per; i < 2 * per; ++i) {
      const bool hit = E::kMixesTokens || (i - per) / registry::kFeatures == 0;
      if (!hit) {
        ASSERT_EQ(y[i], y0[i]) << "input " << bad << ": element " << i << " of another token";
      } else if (E::kMixesTokens) {
        ASSERT_TRUE(std::isnan(y[i])) << "input " << bad << ": element " << i << " of batch 1";
      } else {
        ASSERT_FALSE(std::isfinite(y[i])) << "input " << bad << ": element " << i;
      }
    }
    EXPECT_TRUE(bitwise_equal(y.data(), y0.data(), per)) << "input " << bad << ": batch element 0 changed";
    EXPECT_TRUE(bitwise_equal(y.data() + 2 * per, y0.data() + 2 * per, per)) << "input " << bad << ": batch element 2 changed";
  }
}

TEST(EdgeNaN, NanInAQueryRowStaysInThatRow) {
  // Cross-attention: a NaN or Inf in query row i makes output row i (and weights row i)
  // NaN; every other row is bit-identical.
  attn::MultiHeadAttention<float> m(8, 2);
  randomize(m, 300);
  const Tensor<float> q0 = random_tensor<float>({2, 4, 8}, 1), kv = random_tensor<float>({2, 6, 8}, 2);
  attn::MhaArgs<float> args;
  args.need_weights = true;
  const attn::MhaOutput<float> r0 = m.forward(q0, kv, kv, args);
  for (double bad : {kNaN, kInf}) {
    Tensor<float> q = q0;
    q(1, 2, 5) = static_cast<float>(bad);
    const attn::MhaOutput<float> r = m.forward(q, kv, kv, args);
    const Index row = (1 * 4 + 2) * 8, wrow = (1 * 4 + 2) * 6;
    EXPECT_TRUE(all_nan(r.output.data() + row, 8)) << bad;
    EXPECT_TRUE(all_nan(r.attn_weights.data() + wrow, 6)) << bad;
    EXPECT_TRUE(bitwise_equal(r.output.data(), r0.output.data(), row));
    EXPECT_TRUE(bitwise_equal(r.output.data() + row + 8, r0.output.data() + row + 8, r.output.numel() - row - 8));
    EXPECT_TRUE(bitwise_equal(r.attn_weights.data(), r0.attn_weights.data(), wrow));
  }
}

TEST(EdgeNaN, NanInAKeyOrValueReachesEveryRowOfItsBatchElement) {
  attn::MultiHeadAttention<float> m(8, 2);
  randomize(m, 301);
  const Tensor<float> q = random_tensor<float>({2, 4, 8}, 1), kv0 = random_tensor<float>({2, 6, 8}, 2);
  const Tensor<float> y0 = m.forward(q, kv0, kv0).output;
  for (bool in_key : {true, false}) {
    Tensor<float> k = kv0, v = kv0;
    (in_key ? k : v)(0, 3, 1) = NAN;
    const Tensor<float> y = m.forward(q, k, v).output;
    EXPECT_TRUE(all_nan(y.data(), 4 * 8)) << (in_key ? "key" : "value");
    EXPECT_TRUE(bitwise_equal(y.data() + 32, y0.data() + 32, 32)) << (in_key ? "key" : "value");
  }
}

TEST(EdgeNaN, NanInAnAdditiveMaskMakesThatRowNan) {
  const Tensor<float> q = random_tensor<float>({1, 3, 4}, 1), k = random_tensor<float>({1, 5, 4}, 2),
                      v = random_tensor<float>({1, 5, 4}, 3);
  Tensor<float> mask({3, 5}, 0.0f);
  mask(1, 4) = NAN;
  mask(2, 0) = INFINITY;  // +inf in a mask: inf - inf in the softmax, NaN as in PyTorch
  attn::SdpaOptions<float> opt;
  opt.attn_mask = attn::Mask<float>::additive(mask);
  const Tensor<float> out = attn::scaled_dot_product_attention<float>(q, k, v, opt);
  const Tensor<float> plain = attn::scaled_dot_product_attention<float>(q, k, v);
  EXPECT_TRUE(bitwise_equal(out.data(), plain.data(), 4));
  EXPECT_TRUE(all_nan(out.data() + 4, 4));
  EXPECT_TRUE(all_nan(out.data() + 8, 4));
}

TEST(EdgeNaN, SoftmaxRows) {
  // The documented softmax rules: NaN propagates to its row, +inf gives NaN (inf - inf),
  // a row of -inf is all zeros, -inf entries among finite ones are exactly 0.
  Tensor<float> x({4, 3}, {1.0f, NAN, 2.0f, 1.0f, INFINITY, 2.0f, -INFINITY, -INFINITY, -INFINITY, 0.0f, -INFINITY, 0.0f});
  const Tensor<float> y = attn::softmax<float>(x);
  EXPECT_TRUE(all_nan(y.data(), 3));
  EXPECT_TRUE(all_nan(y.data() + 3, 3));
  for (Index j = 0; j < 3; ++j) EXPECT_EQ(y(2, j), 0.0f);
  EXPECT_EQ(y(3, 0), 0.5f);
  EXPECT_EQ(y(3, 1), 0.0f);
  EXPECT_EQ(y(3, 2), 0.5f);
}

TYPED_TEST(EveryModule, NanParametersGiveNanNotACrash) {
  using E = TypeParam;
  auto m = E::template make<float>();
  attn::StateDict<float> dict = m.state_dict();
  for (auto& kv : dict) kv.second = Tensor<float>(kv.second.shape(), NAN);
  m.load_state_dict(dict);
  const Tensor<float> y = E::run(m, random_tensor<float>(input_shape<E>(2, 3), 5), {});
  EXPECT_TRUE(all_nan(y.data(), y.numel()));
}

// ---------------------------------------------------------------------------------------
// Fully masked rows.
// ---------------------------------------------------------------------------------------

TYPED_TEST(EveryModule, FullyMaskedBatchElementIsFiniteAndIndependent) {
  // Every key of batch element 1 masked: its attention rows are 0 (not NaN), so the
  // module's output is finite; batch element 0 is as without the mask.
  using E = TypeParam;
  if (!E::kMixesTokens) GTEST_SKIP() << E::kName << " takes no masks";
  const auto m = E::template make<float>();
  const Tensor<float> x = random_tensor<float>(input_shape<E>(2, 5), 9);
  Tensor<bool> padding({2, 5}, false);
  for (Index j = 0; j < 5; ++j) padding(1, j) = true;
  Call<float> call;
  call.key_padding_mask = attn::Mask<float>::block_where_true(padding);
  for (bool causal : {false, true}) {
    call.causal = causal;
    const Tensor<float> y = E::run(m, x, call), y0 = E::run(m, x, {{}, causal, nullptr});
    EXPECT_TRUE(all_finite(y));
    EXPECT_TRUE(bitwise_equal(y.data(), y0.data(), y.numel() / 2));
  }
}

TEST(EdgeFullyMasked, SelfAttentionRowsAreZeroMhaRowsAreTheOutputBias) {
  attn::SelfAttention<double> sa(4);
  randomize(sa, 1);
  attn::MultiHeadAttention<double> mha(4, 2);
  randomize(mha, 2);
  const Tensor<double> x = random_tensor<double>({2, 3, 4}, 3);
  Tensor<bool> mask({3, 3}, false);  // (L, S): query row 1 sees no key
  for (Index j = 0; j < 3; ++j) mask(1, j) = true;
  attn::MhaArgs<double> args;
  args.attn_mask = attn::Mask<double>::block_where_true(mask);
  args.need_weights = true;
  args.average_attn_weights = false;
  const Tensor<double> ys = sa.forward(x, args);
  const attn::MhaOutput<double> ym = mha.forward(x, x, x, args);
  const Tensor<double> bias = mha.state_dict().at("out_proj.bias");
  for (Index b = 0; b < 2; ++b)
    for (Index c = 0; c < 4; ++c) {
      EXPECT_EQ(ys(b, 1, c), 0.0);
      EXPECT_EQ(ym.output(b, 1, c), bias[c]);
    }
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 2; ++h)
      for (Index j = 0; j < 3; ++j) EXPECT_EQ(ym.attn_weights(b, h, 1, j), 0.0);
}

TEST(EdgeFullyMasked, BottomRightCausalWithMoreQueriesThanKeys) {
  // L = 5 queries, S = 2 keys, diagonal at the last key: query rows 0..2 see no key.
  const Tensor<float> q = random_tensor<float>({1, 5, 4}, 1), k = random_tensor<float>({1, 2, 4}, 2),
                      v = random_tensor<float>({1, 2, 4}, 3);
  attn::SdpaOptions<float> opt;
  opt.causal = attn::Causal::kBottomRight;
  const Tensor<float> out = attn::scaled_dot_product_attention<float>(q, k, v, opt);
  ASSERT_TRUE(all_finite(out));
  for (Index i = 0; i < 3; ++i)
    for (Index c = 0; c < 4; ++c) EXPECT_EQ(out(0, i, c), 0.0f);
  for (Index c = 0; c < 4; ++c) EXPECT_EQ(out(0, 3, c), v(0, 0, c));
}

TEST(EdgeFullyMasked, AdditiveMinusInfinityEverywhere) {
  const Tensor<float> q = random_tensor<float>({2, 3, 4}, 1), k = random_tensor<float>({2, 5, 4}, 2);
  Tensor<float> mask({3, 5}, -INFINITY);
  attn::SdpaOptions<float> opt;
  opt.attn_mask = attn::Mask<float>::additive(mask);
  Tensor<float> weights;
  opt.attn_weights = &weights;
  const Tensor<float> out = attn::scaled_dot_product_attention<float>(q, k, k, opt);
  for (Index i = 0; i < out.numel(); ++i) EXPECT_EQ(out[i], 0.0f);
  for (Index i = 0; i < weights.numel(); ++i) EXPECT_EQ(weights[i], 0.0f);
}

// ---------------------------------------------------------------------------------------
// Empty batch and sequences: PyTorch's shapes (empty outputs; no keys = zero attention).
// ---------------------------------------------------------------------------------------

TYPED_TEST(EveryModule, BatchZeroAndLengthZeroGiveEmptyOutputs) {
  using E = TypeParam;
  const auto m = E::template make<float>();
  for (const Shape& s : {input_shape<E>(0, 5), input_shape<E>(3, 0), input_shape<E>(0, 0)}) {
    const Tensor<float> y = E::run(m, Tensor<float>(s), {});
    EXPECT_EQ(y.shape(), s) << attn::to_string(s);
    EXPECT_EQ(y.numel(), 0);
  }
  if (E::kCached) {
    EXPECT_EQ(E::run_cached(m, Tensor<float>(input_shape<E>(3, 0)), 1, nullptr).numel(), 0);
  }
  if (!E::kUnbatched) return;
  const Shape unbatched = input_shape<E>(-1, 0);
  EXPECT_EQ(E::run(m, Tensor<float>(unbatched), {}).shape(), unbatched);
}

TYPED_TEST(EveryModule, EmptyKeyPaddingMaskForLengthZero) {
  using E = TypeParam;
  if (!E::kMixesTokens) GTEST_SKIP() << E::kName << " takes no masks";
  const auto m = E::template make<float>();
  Tensor<bool> padding({2, 0});
  Call<float> call;
  call.key_padding_mask = attn::Mask<float>::block_where_true(padding);
  EXPECT_EQ(E::run(m, Tensor<float>(input_shape<E>(2, 0)), call).shape(), input_shape<E>(2, 0));
}

// One token alone gives the first row of a causal call on a longer sequence (and, through the
// KV cache, one token at a time gives every row).
TYPED_TEST(EveryModule, LengthOneIsTheFirstRowOfACausalCall) {
  using E = TypeParam;
  if (!E::kCausalPrefix) GTEST_SKIP() << E::kName << ": a causal row depends on the masked keys too";
  const auto m = E::template make<float>();
  const Tensor<float> x = random_tensor<float>(input_shape<E>(2, 6), 10);
  const Tensor<float> full = E::run(m, x, {{}, true, nullptr});
  const Tensor<float> one = E::run(m, registry::tokens<E>(x, 0, 1), {{}, true, nullptr});
  EXPECT_TRUE(attn_test::AllClose(one, registry::tokens<E>(full, 0, 1), 2e-6));
  if (E::kCached) {
    EXPECT_TRUE(attn_test::AllClose(E::run_cached(m, x, 1, nullptr), full, 2e-6));
  }
}

TEST(EdgeEmpty, MhaWithoutKeysGivesTheOutputBiasAndEmptyWeights) {
  // PyTorch 1.13: key length 0 -> output = out_proj.bias, weights (B, L, 0).
  attn::MultiHeadAttention<float> m(8, 2);
  randomize(m, 5);
  const Tensor<float> q = random_tensor<float>({2, 3, 8}, 1), kv({2, 0, 8});
  attn::MhaArgs<float> args;
  args.need_weights = true;
  const attn::MhaOutput<float> r = m.forward(q, kv, kv, args);
  ASSERT_EQ(r.output.shape(), (Shape{2, 3, 8}));
  EXPECT_EQ(r.attn_weights.shape(), (Shape{2, 3, 0}));
  const Tensor<float> bias = m.state_dict().at("out_proj.bias");
  for (Index i = 0; i < r.output.numel(); ++i) EXPECT_EQ(r.output[i], bias[i % 8]);
  // Batch 0 with weights: (0, L, S).
  const attn::MhaOutput<float> r0 = m.forward(Tensor<float>({0, 3, 8}), Tensor<float>({0, 4, 8}), Tensor<float>({0, 4, 8}), args);
  EXPECT_EQ(r0.output.shape(), (Shape{0, 3, 8}));
  EXPECT_EQ(r0.attn_weights.shape(), (Shape{0, 3, 4}));
}

TEST(EdgeEmpty, SdpaEmptyShapes) {
  for (const auto& dims : std::vector<std::vector<Index>>{{0, 2, 3, 4, 5}, {1, 0, 3, 4, 5}, {1, 2, 0, 4, 5}, {1, 2, 3, 0, 5}}) {
    const Index b = dims[0], h = dims[1], l = dims[2], s = dims[3], d = dims[4];
    const Tensor<float> q({b, h, l, d}), k({b, h, s, d}), v({b, h, s, d});
    const Tensor<float> out = attn::scaled_dot_product_attention<float>(q, k, v);
    EXPECT_EQ(out.shape(), (Shape{b, h, l, d}));
    for (Index i = 0; i < out.numel(); ++i) EXPECT_EQ(out[i], 0.0f);  // s = 0: no keys, zero rows
  }
}

// ---------------------------------------------------------------------------------------
// Sizes that overflow, or do not fit: errors before anything is allocated.
// ---------------------------------------------------------------------------------------

constexpr Index kHuge = Index(1) << 32;

TEST(EdgeSizes, TensorElementCountOverflowIsAnError) {
  attn_test::ExpectInvalid([] { Tensor<float> t({kHuge, kHuge}); }, {"attn::Tensor", "overflows"});
  attn_test::ExpectInvalid([] { Tensor<float> t({kHuge, kHuge, 0}); }, {"overflows"});
  attn_test::ExpectInvalid([] { Tensor<float> t({2, -3}); }, {"negative"});
  float one = 1;
  attn_test::ExpectInvalid([&] { attn::TensorView<float> v(&one, {kHuge, kHuge}); }, {"attn::TensorView", "overflows"});
  attn_test::ExpectInvalid([] { Tensor<float>({4}).reshaped({kHuge, kHuge}); }, {"overflows"});
}

TEST(EdgeSizes, ModulesWhoseParameterCountOverflowsAreErrors) {
  // None of these may allocate (or throw std::bad_alloc): the counts overflow Index.
  attn_test::ExpectInvalid([] { attn::SelfAttention<float> m(kHuge); }, {"attn::SelfAttention"});
  attn_test::ExpectInvalid([] { attn::MultiHeadAttention<float> m(kHuge, 1); }, {"MultiHeadAttention"});
  attn_test::ExpectInvalid([] { attn::TalkingHeadsAttention<float> m(kHuge, 1); }, {"overflows"});
  attn_test::ExpectInvalid([] { attn::AttentionBlock<float> m(kHuge, 1); }, {"overflows"});
  attn_test::ExpectInvalid([] { attn::MobileViTEncoderLayer<float> m(8, Index(1) << 62, 2); }, {"overflows"});
  attn_test::ExpectInvalid([] { attn::Linear<float> m(kHuge, kHuge); }, {"overflows"});
  attn_test::ExpectInvalid([] { attn::SelfAttention<float> m(0); }, {"positive"});
  attn_test::ExpectInvalid([] { attn::MultiHeadAttention<float> m(8, 3); }, {"num_heads"});
}

TEST(EdgeSizes, SafetensorsShapesThatOverflowAreErrors) {
  // A header may declare any shape; one whose element count overflows is a runtime_error
  // naming the tensor, never an allocation.
  const std::string dir = ::testing::TempDir();
  int n = 0;
  for (const char* shape : {"[4294967296,4294967296]", "[9223372036854775807,2]", "[4611686018427387904,3,0]",
                            "[18446744073709551615]"}) {
    const std::string header = std::string("{\"w\":{\"dtype\":\"F32\",\"shape\":") + shape + ",\"data_offsets\":[0,0]}}";
    const std::string path = dir + "/attn_edge_shape_" + std::to_string(n++) + ".safetensors";
    {
      std::ofstream out(path, std::ios::binary);
      const std::uint64_t size = header.size();
      for (int i = 0; i < 8; ++i) out.put(static_cast<char>(size >> (8 * i)));
      out << header;
    }
    try {
      attn::io::SafetensorsFile f(path);
      (void)f.get<float>("w");
      ADD_FAILURE() << shape << ": expected std::runtime_error";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
    }
    std::remove(path.c_str());
  }
}

// ---------------------------------------------------------------------------------------
// Float against double on random cases.
// ---------------------------------------------------------------------------------------

template <class E>
double float_double_error(std::uint64_t seed, Index batch, Index length, bool with_mask) {
  auto md = E::template make<double>();
  randomize(md, seed);
  auto mf = E::template make<float>();
  attn::StateDict<float> dict;
  for (const auto& kv : md.state_dict()) {
    Tensor<float> t(kv.second.shape());
    for (Index i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(kv.second[i]);
    dict.emplace(kv.first, std::move(t));
  }
  mf.load_state_dict(dict);
  const Tensor<float> xf = random_tensor<float>(input_shape<E>(batch, length), seed + 1000, 2.0);
  Tensor<double> xd(xf.shape());
  for (Index i = 0; i < xf.numel(); ++i) xd[i] = xf[i];  // the same input values
  Tensor<bool> padding({batch, length}, false);
  for (Index j = length / 2; j < length; ++j) padding(batch - 1, j) = true;
  Call<float> af;
  Call<double> ad;
  if (with_mask && E::kMixesTokens) {
    af.key_padding_mask = attn::Mask<float>::block_where_true(padding);
    ad.key_padding_mask = attn::Mask<double>::block_where_true(padding);
    af.causal = ad.causal = true;
  }
  const Tensor<float> yf = E::run(mf, xf, af);
  const Tensor<double> yd = E::run(md, xd, ad);
  double scale = 0, worst = 0;
  for (Index i = 0; i < yd.numel(); ++i) {
    scale = std::max(scale, std::abs(yd[i]));
    worst = std::max(worst, std::abs(double(yf[i]) - yd[i]));
  }
  return worst / scale;
}

TYPED_TEST(EveryModule, FloatAgreesWithDoubleToFloatPrecision) {
  // Measured worst relative error over these cases: 3.7e-7 (SelfAttention), a few float ulps.
  double worst = 0;
  std::uint64_t seed = 500;
  for (Index batch : {1, 3})
    for (Index length : {1, 7, 70})  // 70 > one block of 64 query rows
      for (bool mask : {false, true}) worst = std::max(worst, float_double_error<TypeParam>(seed++, batch, length, mask));
  EXPECT_LE(worst, 2e-6);
  std::printf("%s: worst relative float-double difference %.3g\n", TypeParam::kName, worst);
}

}  // namespace
