// The headers keep the layering docs/ARCHITECTURE.md states: modules -> ops -> ops/detail ->
// core, io -> core, mpi -> ops, and modules and mpi use the ops' public headers only (never
// ops/detail).
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

namespace {

namespace fs = std::filesystem;

const fs::path kInclude = fs::path(ATTN_SOURCE_DIR) / "include" / "attn";

/// The layer of a header under include/attn: core 0, ops/detail 1, ops 2, modules 3
/// (modules/detail included), io 4, mpi 5; the umbrella attn.hpp is -1, anything else -2.
int layer_of(const std::string& rel) {
  if (rel == "attn.hpp") return -1;
  if (rel.rfind("core/", 0) == 0) return 0;
  if (rel.rfind("ops/detail/", 0) == 0) return 1;
  if (rel.rfind("ops/", 0) == 0) return 2;
  if (rel.rfind("modules/", 0) == 0) return 3;
  if (rel.rfind("io/", 0) == 0) return 4;
  if (rel.rfind("mpi/", 0) == 0) return 5;
  return -2;
}

/// Whether a header of layer `from` may include one of layer `to`: each layer includes its
/// own and those below, except that modules use ops only through their public headers (not
/// ops/detail), io needs core alone and mpi core and the ops.
bool may_include(int from, int to) {
  if (from == -1) return true;
  if (from == 4) return to == 0 || to == 4;
  if (from == 5) return to == 0 || to == 2 || to == 5;
  if (from == 3) return to != 1 && to <= 3;
  return to <= from;
}

TEST(Layering, IncludesPointDownTheLayers) {
  const std::regex include(R"(#include\s+"attn/([^"]+)\")");
  std::string violations;
  int headers = 0;
  for (const auto& f : fs::recursive_directory_iterator(kInclude)) {
    if (f.path().extension() != ".hpp") continue;
    ++headers;
    const std::string rel = fs::relative(f.path(), kInclude).generic_string();
    const int from = layer_of(rel);
    ASSERT_NE(from, -2) << rel << " is in no layer";
    std::ifstream in(f.path());
    std::stringstream text;
    text << in.rdbuf();
    const std::string s = text.str();
    for (std::sregex_iterator it(s.begin(), s.end(), include), end; it != end; ++it) {
      const std::string target = (*it)[1];
      if (!may_include(from, layer_of(target))) violations += "\n  " + rel + " includes " + target;
    }
  }
  EXPECT_GT(headers, 30);
  EXPECT_TRUE(violations.empty()) << "includes that go up a layer (or into ops/detail from modules):" << violations;
}

}  // namespace
