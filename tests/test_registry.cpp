// The registry (registry.hpp) against the sources: every public module class is in it and in
// the README's module table, every entry's option sets construct and run, every error names the
// class the user called.
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "every_module.hpp"

namespace {

namespace fs = std::filesystem;
using namespace attn_test;
using namespace attn_test::registry;

std::string read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::set<std::string> registry_names() {
  std::set<std::string> names;
  for_each_entry([&](auto e) { names.insert(decltype(e)::kName); });
  return names;
}

std::string join(const std::set<std::string>& s) {
  std::string out;
  for (const auto& n : s) out += (out.empty() ? "" : ", ") + n;
  return out;
}

/// Names in a but not in b.
std::set<std::string> minus(const std::set<std::string>& a, const std::set<std::string>& b) {
  std::set<std::string> d;
  for (const auto& n : a)
    if (!b.count(n)) d.insert(n);
  return d;
}

const fs::path kInclude = fs::path(ATTN_SOURCE_DIR) / "include" / "attn";

TEST(Registry, HoldsEveryPublicModuleClass) {
  std::set<std::string> classes;
  const std::regex derived(R"(class\s+(\w+)\s*(?:final\s*)?:\s*public\s+Module<T>)");
  for (const auto& f : fs::recursive_directory_iterator(kInclude / "modules")) {
    const std::string text = read(f.path());
    for (std::sregex_iterator it(text.begin(), text.end(), derived), end; it != end; ++it) classes.insert((*it)[1]);
  }
  ASSERT_GE(classes.size(), 10u) << "found only " << join(classes);
  EXPECT_TRUE(minus(classes, registry_names()).empty())
      << "module classes missing from tests/registry.hpp: " << join(minus(classes, registry_names()));
  EXPECT_TRUE(minus(registry_names(), classes).empty())
      << "registry entries that are no module class: " << join(minus(registry_names(), classes));
}

// The README's module table (its first column names each class as `Name<T>(...)`) lists
// exactly the registry's modules.
TEST(Registry, MatchesTheReadmeModuleTable) {
  const std::string readme = read(fs::path(ATTN_SOURCE_DIR) / "README.md");
  const auto begin = readme.find("\n## Modules\n");
  ASSERT_NE(begin, std::string::npos) << "README.md has no '## Modules' section";
  const auto end = readme.find("\n## ", begin + 1);
  std::set<std::string> listed;
  std::istringstream lines(readme.substr(begin, end - begin));
  const std::regex name(R"(`(\w+)<T>\()");
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("| `", 0) != 0) continue;
    const std::string first = line.substr(0, line.find(" | "));
    for (std::sregex_iterator it(first.begin(), first.end(), name), e; it != e; ++it) listed.insert((*it)[1]);
  }
  EXPECT_EQ(listed, registry_names()) << "README table: " << join(listed) << "\nregistry: " << join(registry_names());
}

template <class E>
class EveryModule : public ::testing::Test {};
TYPED_TEST_SUITE(EveryModule, registry::Modules, registry::EntryNames);

TYPED_TEST(EveryModule, EveryConfigConstructsAndRuns) {
  using E = TypeParam;
  const Tensor<float> x = random_tensor<float>(input_shape<E>(2, 5), 1);
  for (int config = 0; config < int(E::configs().size()); ++config) {
    SCOPED_TRACE(E::configs()[std::size_t(config)]);
    const auto m = E::template make<float>(config);
    const Tensor<float> y = E::run(m, x, Call<float>{});
    EXPECT_EQ(y.shape(), x.shape());
    for (Index i = 0; i < y.numel(); ++i) ASSERT_TRUE(std::isfinite(y[i])) << i;
    if (E::kCached) {
      const Tensor<float> inc = E::run_cached(m, x, 2, nullptr);
      EXPECT_TRUE(AllClose(inc, E::run(m, x, Call<float>{{}, true, nullptr}), 2e-6));
    }
  }
}

// A wrong input or a mask that does not fit is a std::invalid_argument that names the class
// the user called, even when a submodule or the kernel found it.
TYPED_TEST(EveryModule, ErrorsNameTheClassCalled) {
  using E = TypeParam;
  const auto m = E::template make<float>();
  const std::string name = std::string("attn::") + E::kName;
  Shape wrong = input_shape<E>(2, 5);
  wrong[E::kLayout == Layout::kTokens ? 2 : 1] = kFeatures + 1;
  ExpectInvalid([&] { E::run(m, Tensor<float>(wrong), Call<float>{}); }, {name.c_str()});
  if (!E::kMixesTokens) return;
  Tensor<bool> kpm({2, 4}, false);  // 4 keys for 5 tokens
  Call<float> call;
  call.key_padding_mask = attn::Mask<float>::block_where_true(kpm);
  ExpectInvalid([&] { E::run(m, random_tensor<float>(input_shape<E>(2, 5), 2), call); },
                {name.c_str(), "key_padding_mask", "(2, 4)"});
}

TEST(ModuleErrors, DropoutOptionsNameTheClassAndTheOption) {
  ExpectInvalid([] { attn::MultiHeadAttention<float>(8, 2, {1.5}); }, {"attn::MultiHeadAttention", "1.5"});
  ExpectInvalid([] { attn::TalkingHeadsAttention<float>(8, 2, {false, 1.5, 0.0}); }, {"attn::TalkingHeadsAttention", "1.5"});
  ExpectInvalid([] { attn::TalkingHeadsAttention<float>(8, 2, {false, 0.0, -0.5}); }, {"attn::TalkingHeadsAttention", "-0.5"});
  ExpectInvalid([] { attn::AttentionBlock<float>(8, 2, {1.0, 1e-5}); }, {"attn::AttentionBlock", "[0, 1)"});
  for (int which = 0; which < 3; ++which) {
    attn::MobileViTEncoderLayerOptions o;
    (which == 0 ? o.attn_dropout : which == 1 ? o.dropout : o.ffn_dropout) = 1.0;
    const char* option = which == 0 ? "attn_dropout" : which == 1 ? "(dropout)" : "ffn_dropout";
    ExpectInvalid([&] { attn::MobileViTEncoderLayer<float>(8, 16, 2, o); }, {"attn::MobileViTEncoderLayer", option});
  }
  attn::TransformerLayerOptions t;
  t.dropout = 2.0;
  ExpectInvalid([&] { attn::TransformerEncoderLayer<float>(8, 2, t); }, {"attn::TransformerEncoderLayer", "2"});
  ExpectInvalid([&] { attn::TransformerDecoderLayer<float>(8, 2, t); }, {"attn::TransformerDecoderLayer", "2"});
  attn::GqaOptions g;
  g.dropout = 1.0;
  ExpectInvalid([&] { attn::GroupedQueryAttention<float>(8, 4, 2, 0, g); }, {"attn::GroupedQueryAttention", "[0, 1)"});
  ExpectInvalid([] { attn::AttentionBlock<float>(10, 4); }, {"attn::AttentionBlock", "divisible"});
}

}  // namespace
