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
  opt.dropout_p = 0.2f;
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, k, v, opt); }, {"Generator", "0.2"});
  opt.dropout_p = 1.0f;
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(q, k, v, opt); }, {"dropout", "[0, 1)"});
}

}  // namespace
