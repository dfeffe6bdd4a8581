// Tensor, TensorView and shape errors.
#include "support.hpp"

namespace {

using namespace attn_test;

// Masks and views are views: making one from a temporary must not compile.
template <class A, class = void>
struct can_block : std::false_type {};
template <class A>
struct can_block<A, std::void_t<decltype(attn::Mask<float>::block_where_true(std::declval<A>()))>> : std::true_type {};
template <class A, class = void>
struct can_view : std::false_type {};
template <class A>
struct can_view<A, std::void_t<decltype(attn::as_view(std::declval<A>()))>> : std::true_type {};
static_assert(can_block<Tensor<bool>&>::value && !can_block<Tensor<bool>&&>::value, "mask of a temporary");
static_assert(can_view<attn::RowMatrix<float>&>::value && !can_view<attn::RowMatrix<float>&&>::value, "view of a temporary");

TEST(Tensor, RowMajorLikePyTorch) {
  Tensor<float> t({2, 3}, {0, 1, 2, 3, 4, 5});
  EXPECT_EQ(t(1, 0), 3.0f);
  EXPECT_EQ(t.matrix()(1, 2), 5.0f);
  EXPECT_EQ(t.size(-1), 3);
  const attn::TensorView<const float> v = t;
  EXPECT_EQ(v.data(), t.data());
  EXPECT_EQ(v.numel(), 6);
  const Tensor<float> r = Tensor<float>(t).reshaped({3, 2});
  EXPECT_EQ(r(2, 1), 5.0f);
}

TEST(Tensor, EigenMatrixAsView) {
  attn::RowMatrix<double> m(2, 4);
  m.setRandom();
  const auto v = attn::as_view(m);
  EXPECT_EQ(v.shape(), (attn::Shape{2, 4}));
  EXPECT_EQ(v.data(), m.data());
}

// A default tensor is empty the way an empty view is: shape (0), viewable (MhaOutput's
// attn_weights without need_weights is one).
TEST(Tensor, DefaultIsEmptyAndViewable) {
  const Tensor<float> t;
  EXPECT_EQ(t.shape(), (attn::Shape{0}));
  EXPECT_EQ(t.numel(), 0);
  EXPECT_TRUE(t.empty());
  ASSERT_NO_THROW((void)t.view());
  EXPECT_EQ(t.view().shape(), attn::TensorView<const float>().shape());
  EXPECT_EQ(t.matrix().size(), 0);
  attn::MultiHeadAttention<float> mha(8, 2);
  const auto r = mha.forward(Tensor<float>({1, 3, 8}, 0.5f));
  ASSERT_NO_THROW((void)r.attn_weights.view());
}

TEST(Tensor, BadShapesAreErrors) {
  ExpectInvalid([] { Tensor<float>({2, -1}); }, {"negative dimension", "(2, -1)"});
  ExpectInvalid([] { Tensor<float>({1 << 30, 1 << 30, 1 << 30}); }, {"overflows"});
  ExpectInvalid([] { Tensor<float>({2, 2}, {1, 2, 3}); }, {"(2, 2)", "4 elements", "3 values"});
  ExpectInvalid([] { Tensor<float>({6}).reshaped({4}); }, {"reshaped", "(6,)", "(4,)"});
  ExpectInvalid([] { attn::TensorView<const float>(nullptr, {2}); }, {"null data", "(2,)"});
}

TEST(Tensor, EmptyBatchGivesEmptyOutput) {
  attn::MultiHeadAttention<float> mha(8, 2);
  const auto r = mha.forward(Tensor<float>({0, 3, 8}));
  EXPECT_EQ(r.output.shape(), (attn::Shape{0, 3, 8}));
  attn::SelfAttention<float> sa(4);
  EXPECT_EQ(sa.forward(Tensor<float>({2, 0, 4})).shape(), (attn::Shape{2, 0, 4}));
}

// No keys at all: every query row is fully masked, so its attention output is 0 and the
// MHA output is out_proj.bias; the weights are (B, L, 0) as in PyTorch.
TEST(Tensor, ZeroKeysGiveBiasRowsAndEmptyWeights) {
  attn::MultiHeadAttention<double> mha(12, 3);
  const Tensor<double> q = random_tensor<double>({1, 3, 12}, 1), k({1, 0, 12});
  attn::MhaArgs<double> args;
  args.need_weights = true;
  const auto r = mha.forward(q, k, k, args);
  EXPECT_EQ(r.attn_weights.shape(), (attn::Shape{1, 3, 0}));
  const auto bias = mha.state_dict().at("out_proj.bias");
  for (Index i = 0; i < 3; ++i)
    for (Index c = 0; c < 12; ++c) EXPECT_EQ(r.output(0, i, c), bias[c]);
  args.average_attn_weights = false;
  EXPECT_EQ(mha.forward(q, k, k, args).attn_weights.shape(), (attn::Shape{1, 3, 3, 0}));
}

}  // namespace
