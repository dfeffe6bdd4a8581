// SelfAttention, TalkingHeadsAttention, AttentionBlock and MobileViTEncoderLayer against
// their PyTorch definitions (examples/torch_reference.py).
#include "support.hpp"

namespace {

using namespace attn_test;

/// One PyTorch reference case and what the test runs on it: the module, its masks and the
/// causal mode are stated here and must agree with the file (a stale or swapped file fails);
/// sizes come from the file.
struct ModuleSpec {
  const char* name;
  const char* module;  ///< the file's "module" metadata
  attn::Causal causal;
  const char* masks;   ///< Case::HasMasks spelling
};

std::ostream& operator<<(std::ostream& os, const ModuleSpec& s) { return os << s.name; }

template <class T, class M>
void check(const Case& c, const ModuleSpec& spec, M& module) {
  module.load_state_dict(c.params<T>());
  Tensor<bool> kpm_b, am_b;
  Tensor<T> kpm_f, am_f;
  attn::AttentionArgs<T> args;
  args.key_padding_mask = c.mask<T>("input.key_padding_mask", kpm_b, kpm_f);
  args.attn_mask = c.mask<T>("input.attn_mask", am_b, am_f);
  args.causal = spec.causal;
  ExpectMatchesReference(c, module.forward(c.get<T>("input.x"), args), tolerance<T>(c.is_double()));
}

template <class T>
void check_case(const ModuleSpec& spec) {
  SCOPED_TRACE(spec.name);
  const Case c(spec.name);
  ASSERT_TRUE(c.MetaIs("module", spec.module));
  ASSERT_TRUE(c.MetaIs("causal", causal_name(spec.causal)));
  ASSERT_TRUE(c.HasMasks(spec.masks));
  const std::string m = spec.module;
  if (m == "self_attention") {
    attn::SelfAttention<T> sa(c.meta_int("embed_dim"));
    check<T>(c, spec, sa);
  } else if (m == "talking_heads") {
    attn::TalkingHeadsAttention<T> th(c.meta_int("embed_dim"), c.meta_int("num_heads"), {c.meta_bool("qkv_bias")});
    check<T>(c, spec, th);
  } else if (m == "attention_block") {
    attn::AttentionBlock<T> ab(c.meta_int("embed_dim"), c.meta_int("num_heads"));
    check<T>(c, spec, ab);
  } else if (m == "transformer_encoder") {
    attn::MobileViTEncoderLayer<T> enc(c.meta_int("embed_dim"), c.meta_int("ffn_dim"), c.meta_int("num_heads"));
    check<T>(c, spec, enc);
  } else {
    FAIL() << "unexpected module " << m;
  }
}

using attn::Causal;
constexpr const char *kSA = "self_attention", *kTH = "talking_heads", *kAB = "attention_block",
                     *kENC = "transformer_encoder";
constexpr auto kNoCausal = Causal::kNone, kTopLeft = Causal::kTopLeft;

const ModuleSpec kModuleCases[] = {
    {"sa_e4_f32", kSA, kNoCausal, ""},
    {"sa_e4_f64", kSA, kNoCausal, ""},
    {"sa_e6_f64", kSA, kNoCausal, ""},
    {"sa_len1_f32", kSA, kNoCausal, ""},
    {"sa_masks_f32", kSA, kNoCausal, "kpm:bool am:float2d"},
    {"sa_mask3d_causal_f64", kSA, kTopLeft, "am:bool3d"},
    {"sa_fully_masked_f32", kSA, kNoCausal, "am:bool2d"},
    {"sa_long_causal_f32", kSA, kTopLeft, "kpm:bool"},
    {"th_cait_f32", kTH, kNoCausal, ""},
    {"th_small_f64", kTH, kNoCausal, ""},
    {"th_one_head_f64", kTH, kNoCausal, ""},
    {"th_len1_f32", kTH, kNoCausal, ""},
    {"th_mask_f32", kTH, kNoCausal, "kpm:bool am:bool2d"},
    {"th_mask3d_f64", kTH, kNoCausal, "am:bool3d"},
    {"th_float_mask_f64", kTH, kNoCausal, "am:float2d"},
    {"th_neginf_causal_f32", kTH, kTopLeft, "kpm:bool am:float2d"},
    {"th_mask3d_neginf_f64", kTH, kNoCausal, "am:float3d"},
    {"th_causal_f64", kTH, kTopLeft, ""},
    {"th_causal_long_f32", kTH, kTopLeft, "kpm:bool"},
    {"ab_c64_l1024_f32", kAB, kNoCausal, ""},
    {"ab_small_f64", kAB, kNoCausal, ""},
    {"ab_masks_f32", kAB, kNoCausal, "kpm:bool am:float2d"},
    {"ab_mask3d_causal_f64", kAB, kTopLeft, "am:bool3d"},
    {"ab_fully_masked_f32", kAB, kNoCausal, "kpm:bool am:bool2d"},
    {"ab_long_f32", kAB, kNoCausal, "kpm:bool am:bool2d"},
    {"enc_e64_f32", kENC, kNoCausal, ""},
    {"enc_e64_f64", kENC, kNoCausal, ""},
    {"enc_odd_f64", kENC, kNoCausal, ""},
    {"enc_len1_f32", kENC, kNoCausal, ""},
    {"enc_masks_f32", kENC, kNoCausal, "kpm:bool am:bool2d"},
    {"enc_mask3d_f64", kENC, kNoCausal, "am:float3d"},
    {"enc_causal_f32", kENC, kTopLeft, "kpm:float"},
    {"enc_long_f32", kENC, kTopLeft, "kpm:bool"},
};

class ModuleReference : public ::testing::TestWithParam<ModuleSpec> {};
TEST_P(ModuleReference, Float) { check_case<float>(GetParam()); }
TEST_P(ModuleReference, Double) { check_case<double>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(PyTorch, ModuleReference, ::testing::ValuesIn(kModuleCases),
                         [](const ::testing::TestParamInfo<ModuleSpec>& info) { return std::string(info.param.name); });

// The modules cast to bfloat16, against PyTorch's own bfloat16 modules: at least as accurate
// (ExpectMatchesReference's 16-bit rule).
const ModuleSpec kBfloat16Cases[] = {
    {"sa_bf16", kSA, kNoCausal, ""},
    {"th_bf16", kTH, kNoCausal, ""},
    {"ab_bf16", kAB, kNoCausal, ""},
    {"enc_bf16", kENC, kNoCausal, ""},
};
class ModuleReference16 : public ::testing::TestWithParam<ModuleSpec> {};
TEST_P(ModuleReference16, Bfloat16) { check_case<attn::bfloat16>(GetParam()); }
INSTANTIATE_TEST_SUITE_P(PyTorch, ModuleReference16, ::testing::ValuesIn(kBfloat16Cases),
                         [](const ::testing::TestParamInfo<ModuleSpec>& info) { return std::string(info.param.name); });

template <class T>
class ModulesTyped : public ::testing::Test {};
TYPED_TEST_SUITE(ModulesTyped, Scalars);

// The encoder's MHA is seed 004's layer: a checkpoint maps one to one by name.
TYPED_TEST(ModulesTyped, EncoderNamesAreMobileVitNames) {
  attn::MobileViTEncoderLayer<TypeParam> enc(16, 8, 4);
  std::vector<std::string> names;
  for (const auto& kv : enc.state_dict()) names.push_back(kv.first);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "pre_norm_ffn.0.bias", "pre_norm_ffn.0.weight", "pre_norm_ffn.1.bias", "pre_norm_ffn.1.weight",
                       "pre_norm_ffn.4.bias", "pre_norm_ffn.4.weight", "pre_norm_mha.0.bias", "pre_norm_mha.0.weight",
                       "pre_norm_mha.1.out_proj.bias", "pre_norm_mha.1.out_proj.weight",
                       "pre_norm_mha.1.qkv_proj.bias", "pre_norm_mha.1.qkv_proj.weight"}));
  EXPECT_EQ(enc.num_parameters(), 4 * 16 + (16 * 8 + 8) + (8 * 16 + 16) + (3 * 16 * 16 + 3 * 16) + (16 * 16 + 16));
}

TYPED_TEST(ModulesTyped, UnbatchedInputWorksEverywhere) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({5, 12}, 7);
  const Tensor<T> xb = Tensor<T>(x).reshaped({1, 5, 12});
  attn::SelfAttention<T> sa(12);
  attn::TalkingHeadsAttention<T> th(12, 3);
  attn::MobileViTEncoderLayer<T> enc(12, 6, 3);
  EXPECT_TRUE(AllClose(sa.forward(x).reshaped({1, 5, 12}), sa.forward(xb), 0.0));
  EXPECT_TRUE(AllClose(th.forward(x).reshaped({1, 5, 12}), th.forward(xb), 0.0));
  EXPECT_TRUE(AllClose(enc.forward(x).reshaped({1, 5, 12}), enc.forward(xb), 0.0));
}

// SelfAttention's output row i depends on position j only through key j and value j, so
// once key j is masked, changing x at j must leave every other row unchanged.
TYPED_TEST(ModulesTyped, MaskedKeyHasNoInfluence) {
  using T = TypeParam;
  attn::SelfAttention<T> sa(6);
  Tensor<T> x = random_tensor<T>({1, 4, 6}, 9);
  Tensor<bool> kpm({1, 4}, false);
  kpm(0, 3) = true;
  attn::AttentionArgs<T> args;
  args.key_padding_mask = attn::Mask<T>::block_where_true(kpm);
  const Tensor<T> before = sa.forward(x, args);
  for (Index c = 0; c < 6; ++c) x(0, 3, c) += T(5);
  const Tensor<T> after = sa.forward(x, args);
  for (Index i = 0; i < 3; ++i)
    for (Index c = 0; c < 6; ++c) EXPECT_NEAR(double(before(0, i, c)), double(after(0, i, c)), 1e-6) << i;
}

TEST(ModuleErrors, Constructors) {
  ExpectInvalid([] { attn::TalkingHeadsAttention<float>(10, 4); }, {"dim (10)", "num_heads (4)", "divisible"});
  ExpectInvalid([] { attn::TalkingHeadsAttention<float>(8, 2, {false, 1.5}); }, {"dropout", "1.5"});
  ExpectInvalid([] { attn::AttentionBlock<float>(10, 3); }, {"embed_dim (10)", "num_heads (3)"});
  ExpectInvalid([] { attn::MobileViTEncoderLayer<float>(10, 8, 4); }, {"embed_dim (10)", "num_heads (4)"});
  ExpectInvalid([] { attn::MobileViTEncoderLayer<float>(8, 8, 2, {0.0, 1.0}); }, {"dropout", "[0, 1)"});
  ExpectInvalid([] { attn::MobileViTEncoderLayer<float>(8, 0, 2); }, {"ffn_latent_dim", "0"});
  ExpectInvalid([] { attn::SelfAttention<float>(0); }, {"embed_size", "0"});
}

// Sizes are checked before anything is allocated: no bad_alloc, no overflowed size.
TEST(ModuleErrors, NegativeOrHugeSizesBeforeAllocation) {
  const Index huge = Index(1) << 62;
  ExpectInvalid([] { attn::Linear<float>(-1, 3); }, {"Linear", "in_features (-1)"});
  ExpectInvalid([&] { attn::Linear<float>(huge, 4); }, {"Linear", "overflows"});
  ExpectInvalid([] { attn::LayerNorm<float>(-1); }, {"LayerNorm", "-1"});
  ExpectInvalid([&] { attn::SelfAttention<float>{huge}; }, {"SelfAttention", "overflows"});
  ExpectInvalid([&] { attn::TalkingHeadsAttention<float>(huge, 1); }, {"TalkingHeadsAttention", "overflows"});
  ExpectInvalid([] { attn::MobileViTEncoderLayer<float>(-8, 16, 2); }, {"MobileViTEncoderLayer", "embed_dim (-8)"});
  attn::MultiHeadAttentionOptions o;
  o.kdim = huge;
  ExpectInvalid([&] { attn::MultiHeadAttention<float>(4, 2, o); }, {"MultiHeadAttention", "overflows"});
}

TEST(ModuleErrors, InputShapes) {
  attn::SelfAttention<float> sa(4);
  ExpectInvalid([&] { sa.forward(Tensor<float>({2, 3, 5})); }, {"SelfAttention", "x", "(2, 3, 5)", "4 features"});
  ExpectInvalid([&] { sa.forward(Tensor<float>({4})); }, {"SelfAttention", "(4,)"});
  attn::TalkingHeadsAttention<float> th(8, 2);
  ExpectInvalid([&] { th.forward(Tensor<float>({2, 3, 6})); }, {"TalkingHeadsAttention", "(2, 3, 6)"});
  attn::AttentionBlock<float> ab(8, 2);
  ExpectInvalid([&] { ab.forward(Tensor<float>({2, 6, 8})); }, {"AttentionBlock", "(2, 6, 8)", "(N, C, L)", "C = 8"});
  attn::MobileViTEncoderLayer<float> enc(8, 4, 2);
  ExpectInvalid([&] { enc.forward(Tensor<float>({1, 2, 3, 8})); }, {"MobileViTEncoderLayer", "(1, 2, 3, 8)"});
  Tensor<bool> kpm({2, 4});
  attn::AttentionArgs<float> args;
  args.key_padding_mask = attn::Mask<float>::block_where_true(kpm);
  ExpectInvalid([&] { th.forward(Tensor<float>({2, 3, 8}), args); }, {"TalkingHeadsAttention", "key_padding_mask", "(2, 4)"});
}

}  // namespace
