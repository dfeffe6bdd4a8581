// scaled_dot_product_attention and talking_heads_attention ops: PyTorch references,
// causal variants, masks of both polarities, fully masked rows, errors.
#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class SdpaTyped : public ::testing::Test {};
TYPED_TEST_SUITE(SdpaTyped, Scalars);

// Each case states its masks (checked against the file). The output is computed twice: with
// the weights (the straightforward kernel) and without (the tiled kernel); the long cases
// span several query blocks and key tiles, with 11 and 7 value columns (tails of the 4-wide
// register blocks), and store no weights.
TYPED_TEST(SdpaTyped, MatchesPyTorch) {
  using T = TypeParam;
  const std::pair<const char*, const char*> cases[] = {{"sdpa_f32", "kpm:bool am:bool2d"},
                                                       {"sdpa_f64", "am:float3d"},
                                                       {"sdpa_long_f32", "kpm:bool am:bool2d"},
                                                       {"sdpa_long_f64", "kpm:float"}};
  for (const auto& [name, masks] : cases) {
    SCOPED_TRACE(name);
    const Case c(name);
    ASSERT_TRUE(c.MetaIs("module", "sdpa"));
    ASSERT_TRUE(c.HasMasks(masks));
    Tensor<bool> kb, ab;
    Tensor<T> kf, af, weights;
    attn::SdpaOptions<T> opt;
    opt.scale = static_cast<T>(std::stod(c.meta("scale")));
    opt.key_padding_mask = c.mask<T>("input.key_padding_mask", kb, kf);
    opt.attn_mask = c.mask<T>("input.attn_mask", ab, af);
    const Tensor<T> q = c.get<T>("input.query"), k = c.get<T>("input.key"), v = c.get<T>("input.value");
    const double tol = tolerance<T>(c.is_double());
    EXPECT_TRUE(AllClose(attn::scaled_dot_product_attention<T>(q, k, v, opt), c.get<T>("output.output"), tol))
        << "tiled kernel";
    opt.attn_weights = &weights;
    EXPECT_TRUE(AllClose(attn::scaled_dot_product_attention<T>(q, k, v, opt), c.get<T>("output.output"), tol))
        << "with weights";
    if (c.has("output.attn_weights")) {
      EXPECT_TRUE(AllClose(weights, c.get<T>("output.attn_weights"), tol));
    }
  }
}

// Causal flags equal the explicit masks PyTorch documents: tril(ones(L, S)) for top-left,
// tril(ones(L, S), diagonal=S-L) for bottom-right, here given with SDPA's polarity.
TYPED_TEST(SdpaTyped, CausalEqualsExplicitTrilMask) {
  using T = TypeParam;
  for (Index len_q : {3, 5, 8}) {
    const Index len_k = 5;
    const Tensor<T> q = random_tensor<T>({2, 2, len_q, 4}, 1), k = random_tensor<T>({2, 2, len_k, 4}, 2),
                    v = random_tensor<T>({2, 2, len_k, 3}, 3);
    for (auto causal : {attn::Causal::kTopLeft, attn::Causal::kBottomRight}) {
      const Index diag = causal == attn::Causal::kTopLeft ? 0 : len_k - len_q;
      Tensor<bool> keep({len_q, len_k});
      for (Index i = 0; i < len_q; ++i)
        for (Index j = 0; j < len_k; ++j) keep(i, j) = j <= i + diag;
      attn::SdpaOptions<T> a, b;
      a.causal = causal;
      b.attn_mask = attn::Mask<T>::keep_where_true(keep);
      EXPECT_TRUE(AllClose(attn::scaled_dot_product_attention<T>(q, k, v, a),
                           attn::scaled_dot_product_attention<T>(q, k, v, b), 0.0))
          << "L=" << len_q << " causal=" << int(causal);
    }
  }
}

TYPED_TEST(SdpaTyped, FullyMaskedRowsGiveZeros) {
  using T = TypeParam;
  const Tensor<T> q = random_tensor<T>({1, 2, 3, 4}, 4), k = random_tensor<T>({1, 2, 6, 4}, 5),
                  v = random_tensor<T>({1, 2, 6, 4}, 6);
  Tensor<bool> block({3, 6}, false);
  for (Index j = 0; j < 6; ++j) block(1, j) = true;
  Tensor<T> weights;
  attn::SdpaOptions<T> opt;
  opt.attn_mask = attn::Mask<T>::block_where_true(block);
  opt.attn_weights = &weights;
  const Tensor<T> out = attn::scaled_dot_product_attention<T>(q, k, v, opt);
  for (Index h = 0; h < 2; ++h) {
    for (Index c = 0; c < 4; ++c) EXPECT_EQ(out(0, h, 1, c), T(0));
    for (Index j = 0; j < 6; ++j) EXPECT_EQ(weights(0, h, 1, j), T(0));
    for (Index i : {0, 2}) {  // the other rows are proper distributions
      T sum = 0;
      for (Index j = 0; j < 6; ++j) sum += weights(0, h, i, j);
      EXPECT_NEAR(double(sum), 1.0, 1e-6);
    }
  }
  // bottom-right causal with L = 8 queries and S = 6 keys: query i sees keys j <= i - 2,
  // so rows 0 and 1 see none
  attn::SdpaOptions<T> causal;
  causal.causal = attn::Causal::kBottomRight;
  const Tensor<T> out8 = attn::scaled_dot_product_attention<T>(random_tensor<T>({1, 1, 8, 4}, 7), random_tensor<T>({1, 1, 6, 4}, 8),
                                                               random_tensor<T>({1, 1, 6, 4}, 9), causal);
  for (Index c = 0; c < 4; ++c) {
    EXPECT_EQ(out8(0, 0, 0, c), T(0));
    EXPECT_EQ(out8(0, 0, 1, c), T(0));
    EXPECT_NE(out8(0, 0, 2, c), T(0));
  }
}

// A query with every key masked has log-sum-exp -inf and output 0; with a sink its lse is the
// sink (the sink takes all the weight) and its output still 0; the other rows are untouched
// by the sink's presence only through their denominators. On the decode tile (3 queries), the
// tiled kernel (8) and the weights path.
TYPED_TEST(SdpaTyped, LogSumExpAndSinksOfFullyMaskedRows) {
  using T = TypeParam;
  for (Index len_q : {3, 8}) {
    const Tensor<T> q = random_tensor<T>({1, 2, len_q, 4}, 4), k = random_tensor<T>({1, 2, 6, 4}, 5),
                    v = random_tensor<T>({1, 2, 6, 4}, 6), sinks({2}, {T(0.5), T(-2)});
    Tensor<bool> block({len_q, 6}, false);
    for (Index j = 0; j < 6; ++j) block(1, j) = true;
    for (bool with_sinks : {false, true})
      for (bool weights_path : {false, true}) {
        SCOPED_TRACE(::testing::Message() << len_q << " queries, sinks " << with_sinks << ", weights " << weights_path);
        Tensor<T> lse, weights;
        attn::SdpaOptions<T> opt;
        opt.attn_mask = attn::Mask<T>::block_where_true(block);
        opt.lse = &lse;
        if (weights_path) opt.attn_weights = &weights;
        if (with_sinks) opt.sinks = sinks;
        const Tensor<T> out = attn::scaled_dot_product_attention<T>(q, k, v, opt);
        ASSERT_EQ(lse.shape(), (attn::Shape{1, 2, len_q}));
        for (Index h = 0; h < 2; ++h) {
          EXPECT_EQ(lse(0, h, 1), with_sinks ? sinks(h) : -std::numeric_limits<T>::infinity());
          EXPECT_TRUE(std::isfinite(lse(0, h, 0)));
          for (Index c = 0; c < 4; ++c) EXPECT_EQ(out(0, h, 1, c), T(0));
          if (weights_path) {
            T sum = 0;  // a sink's share leaves the weights summing to less than 1
            for (Index j = 0; j < 6; ++j) sum += weights(0, h, 0, j);
            EXPECT_NEAR(double(sum), with_sinks ? 1 - std::exp(double(sinks(h) - lse(0, h, 0))) : 1.0, 1e-6);
          }
        }
      }
  }
}

// Values with no features (Dv = 0): an empty output, but the log-sum-exp is still written,
// the same as with values.
TEST(Sdpa, LogSumExpWithEmptyValues) {
  const Tensor<float> q = random_tensor<float>({1, 2, 4, 8}, 1), k = random_tensor<float>({1, 2, 5, 8}, 2);
  for (bool weights_path : {false, true}) {
    Tensor<float> lse0, lse3, weights;
    attn::SdpaOptions<float> opt;
    if (weights_path) opt.attn_weights = &weights;
    opt.lse = &lse0;
    attn::scaled_dot_product_attention<float>(q, k, Tensor<float>({1, 2, 5, 0}), opt);
    opt.lse = &lse3;
    attn::scaled_dot_product_attention<float>(q, k, random_tensor<float>({1, 2, 5, 3}, 3), opt);
    EXPECT_TRUE(same_bits(lse0, lse3)) << "weights path " << weights_path;
  }
}

// bfloat16 q, k and v (on the avx512bf16 path: vdpbf16ps tiles) give the log-sum-exp and the
// sinks of float32 on the same (widened) values, to bfloat16's rounding of p.
TEST(Sdpa, Bfloat16LogSumExpAndSinksFollowFloat) {
  for (Index len_q : {2, 70}) {
    const Tensor<float> qf = random_tensor<float>({1, 4, len_q, 64}, 1, 2.0), kf = random_tensor<float>({1, 2, 200, 64}, 2),
                        vf = random_tensor<float>({1, 2, 200, 64}, 3), sf({4}, {1.f, -1.f, 3.f, 0.f});
    auto bf = [](const Tensor<float>& x) {
      Tensor<attn::bfloat16> y(x.shape());
      for (Index i = 0; i < x.numel(); ++i) y.data()[i] = attn::bfloat16(x.data()[i]);
      return y;
    };
    auto wide = [](const Tensor<attn::bfloat16>& x) {
      Tensor<float> y(x.shape());
      for (Index i = 0; i < x.numel(); ++i) y.data()[i] = float(x.data()[i]);
      return y;
    };
    const Tensor<attn::bfloat16> q = bf(qf), k = bf(kf), v = bf(vf), sinks = bf(sf);
    Tensor<float> lse, lse_float;
    attn::SdpaOptions<attn::bfloat16> opt;
    opt.causal = attn::Causal::kBottomRight;
    opt.sinks = sinks;
    opt.lse = &lse;
    const Tensor<attn::bfloat16> out = attn::scaled_dot_product_attention<attn::bfloat16>(q, k, v, opt);
    attn::SdpaOptions<float> f;
    f.causal = attn::Causal::kBottomRight;
    const Tensor<float> wide_sinks = wide(sinks);
    f.sinks = wide_sinks;
    f.lse = &lse_float;
    const Tensor<float> expect = attn::scaled_dot_product_attention<float>(wide(q), wide(k), wide(v), f);
    EXPECT_TRUE(AllClose(lse, lse_float, 1e-6)) << len_q << " queries";  // the scores are float32 sums
    EXPECT_TRUE(AllClose(wide(out), expect, 1e-2)) << len_q << " queries";
  }
}

// Keys cut from the middle of one buffer (strided heads) give what a packed copy gives.
TYPED_TEST(SdpaTyped, StridedViewsEqualPackedTensors) {
  using T = TypeParam;
  const Index nb = 2, n = 5, nh = 3, d = 4, c = nh * d;
  const Tensor<T> qkv = random_tensor<T>({nb, n, 3 * c}, 8);
  Tensor<T> packed[3] = {Tensor<T>({nb, nh, n, d}), Tensor<T>({nb, nh, n, d}), Tensor<T>({nb, nh, n, d})};
  for (int p = 0; p < 3; ++p)
    for (Index b = 0; b < nb; ++b)
      for (Index h = 0; h < nh; ++h)
        for (Index i = 0; i < n; ++i)
          for (Index j = 0; j < d; ++j) packed[p](b, h, i, j) = qkv(b, i, p * c + h * d + j);
  const Tensor<T> expect = attn::scaled_dot_product_attention<T>(packed[0], packed[1], packed[2]);
  Tensor<T> out({nb, n, c});
  using HV = attn::HeadsView<const T>;
  attn::scaled_dot_product_attention<T>(HV::bnhd(qkv.data(), nb, n, nh, d, 3 * c), HV::bnhd(qkv.data() + c, nb, n, nh, d, 3 * c),
                                        HV::bnhd(qkv.data() + 2 * c, nb, n, nh, d, 3 * c),
                                        attn::HeadsView<T>::bnhd(out.data(), nb, n, nh, d, c));
  for (Index b = 0; b < nb; ++b)
    for (Index h = 0; h < nh; ++h)
      for (Index i = 0; i < n; ++i)
        for (Index j = 0; j < d; ++j) EXPECT_EQ(out(b, i, h * d + j), expect(b, h, i, j));
}

TEST(SdpaErrors, MalformedViews) {
  using HV = attn::HeadsView<const float>;
  Tensor<float> buf({64}), out({64});
  const HV ok = HV::bhnd(buf.data(), 1, 1, 4, 4);
  const auto out_view = attn::HeadsView<float>::bhnd(out.data(), 1, 1, 4, 4);
  auto run = [&](const HV& q, const attn::HeadsView<float>& o) { attn::scaled_dot_product_attention<float>(q, ok, ok, o); };
  ExpectInvalid([&] { run(HV{nullptr, 1, 1, 4, 4, 16, 16, 4}, out_view); }, {"q", "(1, 1, 4, 4)", "no data"});
  ExpectInvalid([&] { run(HV{buf.data(), 1, 1, -4, 4, 16, 16, 4}, out_view); }, {"q", "negative size"});
  ExpectInvalid([&] { run(HV{buf.data(), 1, 1, 4, 4, 16, 16, 2}, out_view); }, {"q", "row 2", "rows (4)"});
  ExpectInvalid([&] { run(ok, attn::HeadsView<float>::bhnd(buf.data() + 8, 1, 1, 4, 4)); }, {"output overlaps q"});
  // An output whose elements share memory (threads would write them at once).
  const HV two = HV::bhnd(buf.data(), 1, 2, 4, 4);
  auto run2 = [&](const attn::HeadsView<float>& o) { attn::scaled_dot_product_attention<float>(two, two, two, o); };
  ExpectInvalid([&] { run2(attn::HeadsView<float>{out.data(), 1, 2, 4, 4, 32, 0, 4}); }, {"output", "head 0", "share memory"});
  ExpectInvalid([&] { run2(attn::HeadsView<float>{out.data(), 1, 2, 4, 4, 32, 8, 4}); }, {"output", "head 8", "share memory"});
  EXPECT_NO_THROW(run2(attn::HeadsView<float>::bnhd(out.data(), 1, 4, 2, 4, 8)));  // heads interleaved in rows
}

// Values with no features (Dv = 0): an empty output, but the weights are still the softmax.
TEST(Sdpa, WeightsWithEmptyValues) {
  const Tensor<float> q = random_tensor<float>({1, 2, 4, 8}, 1), k = random_tensor<float>({1, 2, 5, 8}, 2);
  Tensor<float> w0, w3;
  attn::SdpaOptions<float> opt;
  opt.attn_weights = &w0;
  const Tensor<float> out = attn::scaled_dot_product_attention<float>(q, k, Tensor<float>({1, 2, 5, 0}), opt);
  EXPECT_EQ(out.shape(), (attn::Shape{1, 2, 4, 0}));
  opt.attn_weights = &w3;
  attn::scaled_dot_product_attention<float>(q, k, random_tensor<float>({1, 2, 5, 3}, 3), opt);
  EXPECT_TRUE(same_bits(w0, w3));
  EXPECT_NEAR(w0(0, 1, 2, 0) + w0(0, 1, 2, 1) + w0(0, 1, 2, 2) + w0(0, 1, 2, 3) + w0(0, 1, 2, 4), 1.0, 1e-6);
}

TEST(SdpaErrors, ShapesMasksAndDropout) {
  const Tensor<float> q({2, 3, 4, 8}), k({2, 3, 6, 8}), v({2, 3, 6, 5});
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, Tensor<float>({2, 3, 6, 7}), v); }, {"head dimension", "(2, 3, 6, 7)"});
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, k, Tensor<float>({2, 3, 5, 5})); }, {"same length", "(2, 3, 5, 5)"});
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, Tensor<float>({1, 3, 6, 8}), v); }, {"must agree in batch"});
  // Grouped-query heads: q's 3 heads are no multiple of 2, and k and v must have as many.
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, Tensor<float>({2, 2, 6, 8}), Tensor<float>({2, 2, 6, 5})); },
                {"multiple", "(2, 3, 4, 8)", "(2, 2, 6, 8)"});
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, Tensor<float>({2, 1, 6, 8}), v); }, {"k and v in heads"});
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(Tensor<float>({4, 8}), k, v); }, {"(4, 8)"});
  Tensor<bool> m({4, 5});
  attn::SdpaOptions<float> opt;
  opt.attn_mask = attn::Mask<float>::keep_where_true(m);
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, k, v, opt); }, {"attn_mask", "(4, 5)", "(2, 3, 4, 6)", "(6, 4, 6)"});
  opt = {};
  opt.sliding_window = 0;
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, k, v, opt); }, {"sliding_window", "at least 1", "0"});
  opt = {};
  opt.softcap = -1.0f;
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, k, v, opt); }, {"softcap", "> 0", "-1"});
  opt = {};
  const Tensor<float> slopes({2});
  opt.alibi_slopes = slopes;
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, k, v, opt); }, {"alibi_slopes", "(2,)", "(3,)"});
  opt = {};
  opt.sinks = slopes;
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, k, v, opt); }, {"sinks", "(2,)", "(3,)"});
  opt = {};
  opt.dropout_p = 0.2f;
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, k, v, opt); }, {"Generator", "0.2"});
  opt.dropout_p = 1.0f;
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, k, v, opt); }, {"dropout", "[0, 1)"});
}

// Merging with a state that saw no key (output 0, lse -inf) leaves the other state's bits;
// two states that saw none merge into one; a NaN lse makes its query NaN.
TEST(AttentionStates, MergeWithAnEmptyStateKeepsTheOther) {
  const Tensor<float> o = random_tensor<float>({2, 3, 5, 4}, 1), lse = random_tensor<float>({2, 3, 5}, 2, 4.0);
  const Tensor<float> none({2, 3, 5, 4}), none_lse({2, 3, 5}, -std::numeric_limits<float>::infinity());
  const attn::AttentionState<float> a = attn::merge_attention_states<float>(o, lse, none, none_lse);
  EXPECT_TRUE(same_bits(a.output, o));
  EXPECT_TRUE(same_bits(a.lse, lse));
  const attn::AttentionState<float> b = attn::merge_attention_states<float>(none, none_lse, o, lse);
  EXPECT_TRUE(same_bits(b.output, o));
  EXPECT_TRUE(same_bits(b.lse, lse));
  const attn::AttentionState<float> c = attn::merge_attention_states<float>(none, none_lse, none, none_lse);
  EXPECT_TRUE(same_bits(c.output, none));
  EXPECT_TRUE(same_bits(c.lse, none_lse));
  Tensor<float> nan_lse = lse;
  nan_lse(1, 2, 3) = std::numeric_limits<float>::quiet_NaN();
  const attn::AttentionState<float> d = attn::merge_attention_states<float>(o, lse, o, nan_lse);
  EXPECT_TRUE(std::isnan(d.lse(1, 2, 3)) && std::isnan(d.output(1, 2, 3, 0)));
  EXPECT_FLOAT_EQ(d.lse(0, 0, 0), lse(0, 0, 0) + std::log(2.0f));  // equal states: the same output, lse + log 2
  EXPECT_FLOAT_EQ(d.output(0, 0, 0, 0), o(0, 0, 0, 0));
}

TEST(AttentionStatesErrors, ShapesThatDoNotPairUp) {
  const Tensor<float> o({2, 3, 4}), lse({2, 3}), o_b({2, 3, 4}), lse_b({2, 3});
  ExpectInvalid([&] { attn::merge_attention_states<float>(o, Tensor<float>({2, 4}), o_b, lse_b); },
                {"merge_attention_states", "(2, 4)", "(2, 3)", "(2, 3, 4)"});
  ExpectInvalid([&] { attn::merge_attention_states<float>(o, lse, Tensor<float>({2, 3, 5}), lse_b); },
                {"(2, 3, 5)", "(2, 3, 4)"});
  ExpectInvalid([&] { attn::merge_attention_states<float>(Tensor<float>(attn::Shape{}), Tensor<float>(attn::Shape{}), o_b, lse_b); },
                {"at least one dimension"});
  Tensor<float> a = random_tensor<float>({2, 3, 4}, 1), a_lse = random_tensor<float>({2, 3}, 2);
  const Tensor<float> a0 = a, a_lse0 = a_lse;
  ExpectInvalid([&] { attn::merge_attention_state_inplace<float>(a, a_lse, o_b, Tensor<float>({3, 2})); },
                {"merge_attention_state_inplace", "(3, 2)"});
  EXPECT_TRUE(same_bits(a, a0) && same_bits(a_lse, a_lse0));  // unchanged
}

}  // namespace
