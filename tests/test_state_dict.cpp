// Loading parameters by PyTorch name with torch.nn.Module.load_state_dict's strict rules.
#include "support.hpp"

namespace {

using namespace attn_test;

TEST(StateDict, MissingUnexpectedAndMisshapedAreAllListed) {
  attn::SelfAttention<float> sa(4);
  auto dict = sa.state_dict();
  const auto before = sa.state_dict();
  dict.erase("key.bias");
  dict.erase("value.weight");
  dict.emplace("extra.weight", Tensor<float>({2}));
  dict["query.weight"] = Tensor<float>({4, 5});
  try {
    sa.load_state_dict(dict);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    for (const char* part : {"SelfAttention", "missing key(s): key.bias, value.weight", "unexpected key(s): extra.weight",
                             "size mismatch: query.weight: expected (4, 4), got (4, 5)"})
      EXPECT_NE(m.find(part), std::string::npos) << m << "\nlacks: " << part;
  }
  // nothing was loaded
  for (const auto& kv : before) EXPECT_TRUE(AllClose(sa.state_dict().at(kv.first), kv.second, 0.0)) << kv.first;
}

TEST(StateDict, NonStrictIgnoresNamesButNotShapes) {
  attn::TalkingHeadsAttention<double> th(8, 2);
  attn::StateDict<double> dict;
  dict.emplace("proj_l.bias", Tensor<double>({2}, {0.5, -0.5}));
  dict.emplace("something.else", Tensor<double>({1}));
  th.load_state_dict(dict, /*strict=*/false);
  EXPECT_EQ(th.state_dict().at("proj_l.bias")[0], 0.5);
  dict["proj_l.bias"] = Tensor<double>({3});
  ExpectInvalid([&] { th.load_state_dict(dict, false); }, {"size mismatch", "proj_l.bias", "expected (2,)", "got (3,)"});
}

TEST(StateDict, EveryModuleLoadsWhatItSaves) {
  attn::AttentionBlock<float> ab(8, 2);
  auto dict = ab.state_dict();
  EXPECT_EQ(dict.count("mha.in_proj_weight"), 1u);
  EXPECT_EQ(dict.count("norm.weight"), 1u);
  for (auto& kv : dict) kv.second.flat().setConstant(0.125f);
  attn::AttentionBlock<float> other(8, 2);
  other.load_state_dict(dict);
  for (const auto& kv : other.state_dict()) EXPECT_EQ(kv.second[0], 0.125f) << kv.first;
}

TEST(StateDict, MhaLayoutIsRecognisedFromNames) {
  attn::MultiHeadAttention<float> mha(8, 2);
  attn::StateDict<float> fused;
  fused.emplace("qkv_proj.weight", Tensor<float>({24, 8}));
  fused.emplace("qkv_proj.bias", Tensor<float>({24}));
  fused.emplace("out_proj.weight", Tensor<float>({8, 8}));
  fused.emplace("out_proj.bias", Tensor<float>({8}));
  mha.load_state_dict(fused);
  EXPECT_EQ(mha.layout(), attn::MhaLayout::kFusedQkv);
  EXPECT_EQ(mha.scale(), static_cast<float>(std::pow(4.0, -0.5)));
  // a failed load leaves the layout as it was
  attn::StateDict<float> broken;
  broken.emplace("q.weight", Tensor<float>({8, 8}));
  ExpectInvalid([&] { mha.load_state_dict(broken); }, {"missing key(s)", "k.weight", "out.bias"});
  EXPECT_EQ(mha.layout(), attn::MhaLayout::kFusedQkv);
}

// Seed 001 divides by the float32 square root even in double: sqrt(6) rounded to float.
TEST(StateDict, SeparateLayoutKeepsTheFloat32SquareRoot) {
  attn::MultiHeadAttentionOptions o;
  o.layout = attn::MhaLayout::kSeparateLinears;
  attn::MultiHeadAttention<double> mha(12, 2, o);
  EXPECT_EQ(mha.scale(), 1.0 / double(std::sqrt(6.0f)));
  EXPECT_NE(mha.scale(), 1.0 / std::sqrt(6.0));
  EXPECT_EQ(attn::SelfAttention<double>(6).scale(), 1.0 / double(std::sqrt(6.0f)));
}

}  // namespace
