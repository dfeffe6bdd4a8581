// Stateless ops (linear, softmax, layer_norm, activations, head mixing) against PyTorch.
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class OpsTyped : public ::testing::Test {};
TYPED_TEST_SUITE(OpsTyped, Scalars);

TYPED_TEST(OpsTyped, MatchPyTorch) {
  using T = TypeParam;
  for (const char* name : {"ops_f32", "ops_f64"}) {
    SCOPED_TRACE(name);
    const Case c(name);
    const double tol = tolerance<T>(c.is_double());
    const Tensor<T> x = c.get<T>("input.x"), w = c.get<T>("param.weight"), b = c.get<T>("param.bias");
    EXPECT_TRUE(AllClose(attn::linear<T>(x, w, b), c.get<T>("output.linear"), tol));
    EXPECT_TRUE(AllClose(attn::linear<T>(x, w), c.get<T>("output.linear_nobias"), tol));
    EXPECT_TRUE(AllClose(attn::softmax<T>(x), c.get<T>("output.softmax"), tol));
    const T eps = static_cast<T>(std::stod(c.meta("eps")));
    EXPECT_TRUE(AllClose(attn::layer_norm<T>(x, c.get<T>("param.ln_weight"), c.get<T>("param.ln_bias"), eps),
                         c.get<T>("output.layer_norm"), tol));
    EXPECT_TRUE(AllClose(attn::silu<T>(x), c.get<T>("output.silu"), tol));
    EXPECT_TRUE(AllClose(attn::gelu<T>(x), c.get<T>("output.gelu"), tol));
    EXPECT_TRUE(AllClose(attn::gelu<T>(x, attn::GeluApproximation::kTanh), c.get<T>("output.gelu_tanh"), tol));
  }
}

TYPED_TEST(OpsTyped, SoftmaxEdgeRows) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  const Tensor<T> x({4, 3}, {T(1e4), T(-1e4), T(1e4 - 1),  // large logits: finite, max subtracted
                             -inf, -inf, -inf,             // fully masked: zeros, not NaN
                             T(0), -inf, T(0),             // masked entry: exactly 0
                             std::numeric_limits<T>::quiet_NaN(), T(0), T(1)});
  const Tensor<T> y = attn::softmax<T>(x);
  const T e = std::exp(T(-1));
  EXPECT_NEAR(double(y(0, 0)), double(1 / (1 + e)), 1e-6);
  EXPECT_EQ(y(0, 1), T(0));
  EXPECT_NEAR(double(y(0, 2)), double(e / (1 + e)), 1e-6);
  for (Index j = 0; j < 3; ++j) EXPECT_EQ(y(1, j), T(0));
  EXPECT_EQ(y(2, 1), T(0));
  EXPECT_EQ(y(2, 0), T(0.5));
  for (Index j = 0; j < 3; ++j) EXPECT_TRUE(std::isnan(y(3, j)));  // NaN propagates to its row
  // wherever it stands, even when every other entry is masked
  for (Index at = 0; at < 3; ++at) {
    Tensor<T> r({1, 3}, -inf);
    r(0, at) = std::numeric_limits<T>::quiet_NaN();
    const Tensor<T> z = attn::softmax<T>(r);
    for (Index j = 0; j < 3; ++j) EXPECT_TRUE(std::isnan(z(0, j))) << "NaN at " << at;
  }
}

// Head mixing is proj(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2): check it element-wise.
TYPED_TEST(OpsTyped, MixHeadsIsLinearOverHeads) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({2, 3, 4, 5}, 11), w = random_tensor<T>({3, 3}, 12), b = random_tensor<T>({3}, 13);
  const Tensor<T> y = attn::mix_heads<T>(x, w, b);
  for (Index n = 0; n < 2; ++n)
    for (Index g = 0; g < 3; ++g)
      for (Index i = 0; i < 4; ++i)
        for (Index j = 0; j < 5; ++j) {
          T expect = b[g];
          for (Index h = 0; h < 3; ++h) expect += w(g, h) * x(n, h, i, j);
          EXPECT_NEAR(double(y(n, g, i, j)), double(expect), 1e-6);
        }
}

/// The largest and the mean |y - exact| over the elements (y in any element type).
// bfloat16 linear against PyTorch's own bfloat16 nn.Linear (module.to(torch.bfloat16)),
// through the op and through the Linear module loaded from the file (the same bits).
TEST(Bfloat16, LinearIsAtLeastAsAccurateAsPyTorch) {
  using attn::bfloat16;
  for (const char* name : {"linear_small_bf16", "linear_3d_bf16", "linear_deep_bf16", "linear_nobias_bf16"}) {
    SCOPED_TRACE(name);
    const Case c(name);
    ASSERT_EQ(c.meta("dtype"), "bfloat16");
    const Tensor<bfloat16> x = c.get<bfloat16>("input.x"), w = c.get<bfloat16>("param.weight");
    const bool bias = c.meta_bool("bias");
    ASSERT_EQ(bias, c.has("param.bias"));
    const Tensor<bfloat16> y = bias ? attn::linear<bfloat16>(x, w, c.get<bfloat16>("param.bias"))
                                    : attn::linear<bfloat16>(x, w);
    attn::Linear<bfloat16> module(c.meta_int("in_features"), c.meta_int("out_features"), bias);
    module.load_state_dict(c.params<bfloat16>(), "");
    const Tensor<bfloat16> y_module = module.forward(x);
    ASSERT_EQ(y.shape(), y_module.shape());
    ASSERT_EQ(std::memcmp(y.data(), y_module.data(), sizeof(bfloat16) * y.numel()), 0);
    ExpectAtLeastAsAccurateAsPyTorch(c, y);
  }
}

// bfloat16 attention (q, k, v and the output in bfloat16; float32 inside) against PyTorch's
// bfloat16 ops on the same expression: the tiled kernel, the decode tile (which reads bfloat16
// k and v in place) and the kernel that returns the weights (the same outputs up to rounding).
TEST(Bfloat16, SdpaIsAtLeastAsAccurateAsPyTorch) {
  using attn::bfloat16;
  for (const char* name : {"sdpa_bf16", "sdpa_long_bf16", "sdpa_decode_bf16"}) {
    SCOPED_TRACE(name);
    const Case c(name);
    ASSERT_EQ(c.meta("dtype"), "bfloat16");
    Tensor<bool> kb, ab;
    Tensor<bfloat16> kf, af, weights;
    attn::SdpaOptions<bfloat16> opt;
    opt.scale = std::stof(c.meta("scale"));
    opt.key_padding_mask = c.mask<bfloat16>("input.key_padding_mask", kb, kf);
    opt.attn_mask = c.mask<bfloat16>("input.attn_mask", ab, af);
    if (c.meta("causal") == "bottom_right") opt.causal = attn::Causal::kBottomRight;
    const Tensor<bfloat16> q = c.get<bfloat16>("input.query"), k = c.get<bfloat16>("input.key"),
                           v = c.get<bfloat16>("input.value");
    const Tensor<bfloat16> y = attn::scaled_dot_product_attention<bfloat16>(q, k, v, opt);
    ExpectAtLeastAsAccurateAsPyTorch(c, y);
    opt.attn_weights = &weights;
    const Tensor<bfloat16> y_weights = attn::scaled_dot_product_attention<bfloat16>(q, k, v, opt);
    EXPECT_TRUE(AllClose(y_weights, y, 1e-2));
    ASSERT_EQ(weights.shape(), (attn::Shape{q.size(0), q.size(1), q.size(2), k.size(2)}));
  }
}

// nn.MultiheadAttention cast to bfloat16 (self and cross, with a key padding mask) against
// PyTorch's bfloat16 module in inference.
TEST(Bfloat16, MultiHeadAttentionIsAtLeastAsAccurateAsPyTorch) {
  using attn::bfloat16;
  for (const char* name : {"mha_self_bf16", "mha_cross_bf16"}) {
    SCOPED_TRACE(name);
    const Case c(name);
    ASSERT_EQ(c.meta("dtype"), "bfloat16");
    attn::MultiHeadAttention<bfloat16> m(c.meta_int("embed_dim"), c.meta_int("num_heads"));
    m.load_state_dict(c.params<bfloat16>(), "");
    Tensor<bool> kb;
    Tensor<bfloat16> kf;
    attn::MhaArgs<bfloat16> args;
    args.key_padding_mask = c.mask<bfloat16>("input.key_padding_mask", kb, kf);
    const Tensor<bfloat16> q = c.get<bfloat16>("input.query"), k = c.get<bfloat16>("input.key");
    ExpectAtLeastAsAccurateAsPyTorch(c, m.forward(q, k, k, args).output);
  }
}

// The bfloat16 attention kernels and a bfloat16 module give the same bits on 1, 2 and 3
// threads: the tiled kernel (with masks, causal and dropout), the decode tile, the kernel that
// returns the weights, and nn.MultiheadAttention.
TEST(Bfloat16, BitIdenticalForEveryThreadCount) {
  using attn::bfloat16;
  const Tensor<bfloat16> q = random_tensor<bfloat16>({2, 4, 150, 32}, 1), k = random_tensor<bfloat16>({2, 4, 170, 32}, 2),
                         v = random_tensor<bfloat16>({2, 4, 170, 24}, 3), x = random_tensor<bfloat16>({2, 150, 64}, 4),
                         step = random_tensor<bfloat16>({2, 4, 2, 32}, 5);  // a decode step's queries
  Tensor<bool> padding({2, 170}, false);
  for (Index j = 140; j < 170; ++j) padding(1, j) = true;
  const attn::MultiHeadAttention<bfloat16> mha(64, 4);
  const auto run = [&](int threads) {
    attn::set_num_threads(threads);
    std::vector<Tensor<bfloat16>> r;
    attn::SdpaOptions<bfloat16> opt;
    opt.key_padding_mask = attn::Mask<bfloat16>::block_where_true(padding);
    opt.causal = attn::Causal::kBottomRight;
    attn::Generator gen(7);
    opt.dropout_p = 0.2f, opt.generator = &gen;
    r.push_back(attn::scaled_dot_product_attention<bfloat16>(q, k, v, opt));
    r.push_back(attn::scaled_dot_product_attention<bfloat16>(step, k, v, opt));
    Tensor<bfloat16> weights;
    opt.attn_weights = &weights;
    r.push_back(attn::scaled_dot_product_attention<bfloat16>(q, k, v, opt));
    r.push_back(weights);
    r.push_back(mha.forward(x, x, x).output);
    return r;
  };
  const auto one = run(1);
  for (int threads : {2, 3}) {
    const auto many = run(threads);
    for (std::size_t i = 0; i < one.size(); ++i)
      EXPECT_TRUE(same_bits(one[i], many[i])) << "result " << i << ", " << threads << " threads";
  }
  attn::set_num_threads(0);
}

TEST(OpsErrors, ShapesAreNamed) {
  const Tensor<float> x({2, 5}), w({3, 4}), b({2});
  ExpectInvalid([&] { attn::linear<float>(x, w); }, {"linear", "(2, 5)", "(3, 4)"});
  ExpectInvalid([&] { attn::linear<float>(Tensor<float>({2, 4}), w, b); }, {"linear", "bias", "(2,)", "(3, 4)"});
  ExpectInvalid([&] { attn::layer_norm<float>(x, Tensor<float>({4}), Tensor<float>({5})); }, {"layer_norm", "weight", "(4,)", "(5)"});
  ExpectInvalid([&] { attn::layer_norm<float>(Tensor<float>({2, 4}), Tensor<float>({2, 2}), {}); }, {"weight", "(2, 2)"});
  ExpectInvalid([&] { attn::layer_norm<float>(x, {}, {}, -1.0f); }, {"eps", "-1"});
  float scalar = 100;  // a 0-d bias is a tensor, not "no bias"
  ExpectInvalid([&] { attn::linear<float>(Tensor<float>({2, 4}), w, attn::TensorView<const float>(&scalar, {})); }, {"bias", "()"});
  using attn::bfloat16;
  ExpectInvalid([&] { attn::linear<bfloat16>(Tensor<bfloat16>({2, 5}), Tensor<bfloat16>({3, 4})); },
                {"linear", "(2, 5)", "(3, 4)"});
  ExpectInvalid([&] { attn::Linear<bfloat16>(4, 3).forward(Tensor<bfloat16>({2, 5})); }, {"Linear", "(2, 5)"});
  ExpectInvalid([&] { attn::mix_heads<float>(Tensor<float>({1, 2, 3, 3}), Tensor<float>({3, 3}), Tensor<float>({3})); },
                {"mix_heads", "(3, 3)", "(1, 2, 3, 3)"});
}

}  // namespace
