// Loading parameters by PyTorch name with torch.nn.Module.load_state_dict's strict rules.
#include "every_module.hpp"

namespace {

using namespace attn_test;
namespace registry = attn_test::registry;

template <class E>
class EveryModule : public ::testing::Test {};
TYPED_TEST_SUITE(EveryModule, registry::Modules, registry::EntryNames);

/// Every option set of E (float), with another module of the same set whose parameters differ.
template <class E, class F>
void for_each_config(F&& f) {
  for (int config = 0; config < int(E::configs().size()); ++config) {
    SCOPED_TRACE(E::configs()[std::size_t(config)]);
    auto m = E::template make<float>(config);
    if (m.parameters().empty()) continue;  // (LayerNorm without affine parameters)
    auto other = E::template make<float>(config);
    randomize(other, 900 + std::uint64_t(config));
    f(m, other);
  }
}

// state_dict() then load_state_dict() into a module with other values gives that module the
// same outputs, bit for bit; so does the round trip under a prefix (names with it, loaded
// through it), and the prefix's absence leaves nothing loaded.
TYPED_TEST(EveryModule, StateDictRoundTrip) {
  using E = TypeParam;
  const Tensor<float> x = random_tensor<float>(registry::input_shape<E>(2, 6), 3);
  for_each_config<E>([&](auto& m, auto& other) {
    const Tensor<float> want = E::run(m, x, {});
    ASSERT_FALSE(same_bits(E::run(other, x, {}), want));
    auto prefixed = other;
    other.load_state_dict(m.state_dict());
    EXPECT_TRUE(same_bits(E::run(other, x, {}), want));
    const attn::StateDict<float> dict = m.state_dict("blocks.3.");
    for (const auto& kv : dict) EXPECT_EQ(kv.first.rfind("blocks.3.", 0), 0u) << kv.first;
    prefixed.load_state_dict(dict, "blocks.3.");
    EXPECT_TRUE(same_bits(E::run(prefixed, x, {}), want));
    ExpectInvalid([&] { prefixed.load_state_dict(dict, "blocks.4."); }, {"missing key(s)", E::kName});
  });
}

// A strict load lists every missing, unexpected and misshaped name in one error, and loads
// nothing (neither the parameters nor the packed weights the output is computed from
// change); a non-strict one ignores names but not shapes.
TYPED_TEST(EveryModule, StrictLoadErrorsListEveryProblemAndChangeNothing) {
  using E = TypeParam;
  const Tensor<float> x = random_tensor<float>(registry::input_shape<E>(2, 6), 4);
  for_each_config<E>([&](auto& m, auto& other) {
    const Tensor<float> before = E::run(m, x, {});
    const attn::StateDict<float> values = m.state_dict();
    const auto unchanged = [&] {
      bool same = same_bits(E::run(m, x, {}), before);
      for (const auto& kv : m.state_dict()) same = same && same_bits(kv.second, values.at(kv.first));
      return same;
    };
    attn::StateDict<float> dict = other.state_dict();
    const std::string misshaped = dict.begin()->first, missing = std::prev(dict.end())->first;
    attn::Shape wrong = dict.at(misshaped).shape();
    wrong.back() += 1;
    dict[misshaped] = Tensor<float>(wrong);
    dict.emplace("unexpected.weight", Tensor<float>({2}));
    ExpectInvalid([&] { m.load_state_dict(dict, false); }, {E::kName, "size mismatch", misshaped.c_str()});
    EXPECT_TRUE(unchanged()) << "a failed non-strict load changed the parameters or the output";
    if (missing != misshaped) dict.erase(missing);
    ExpectInvalid([&] { m.load_state_dict(dict); },
                  {E::kName, "unexpected key(s): unexpected.weight", ("size mismatch: " + misshaped).c_str(),
                   missing != misshaped ? ("missing key(s): " + missing).c_str() : ""});
    EXPECT_TRUE(unchanged()) << "a failed strict load changed the parameters or the output";
  });
}

// Values written in place through edit_parameters() are used by the next forward pass (the
// module repacks when the edit ends): the result is the one of a module given the same values
// by load_state_dict. parameters() is read-only (tests/compile_fail checks that writing through
// it does not compile).
TYPED_TEST(EveryModule, WritesThroughEditParametersAreUsed) {
  using E = TypeParam;
  const Tensor<float> x = random_tensor<float>(registry::input_shape<E>(2, 5), 12);
  for_each_config<E>([&](auto& written, auto& loaded) {
    static_assert(std::is_const<std::remove_pointer_t<decltype(written.parameters()[0].data)>>::value,
                  "parameters() gives read-only slots");
    const auto dict = loaded.state_dict();
    {
      auto params = written.edit_parameters();
      EXPECT_EQ(params.size(), dict.size());
      for (auto& slot : params) {
        const Tensor<float>& v = dict.at(slot.name);
        std::copy(v.data(), v.data() + v.numel(), slot.data);
      }
    }
    EXPECT_TRUE(same_bits(E::run(written, x, {}), E::run(loaded, x, {})));
    for (const auto& slot : written.parameters())
      EXPECT_TRUE(std::equal(slot.data, slot.data + dict.at(slot.name).numel(), dict.at(slot.name).data())) << slot.name;
  });
}

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
