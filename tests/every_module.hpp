#pragma once
// The registry's modules as GoogleTest types: TYPED_TEST_SUITE(Suite, registry::Modules,
// registry::EntryNames) runs a typed test once per module, named after it.

#include <string>
#include <tuple>

#include "registry.hpp"
#include "support.hpp"

namespace attn_test {
namespace registry {

template <class Tuple>
struct AsTypes;
template <class... E>
struct AsTypes<std::tuple<E...>> {
  using type = ::testing::Types<E...>;
};
/// Every module, for TYPED_TEST_SUITE.
using Modules = AsTypes<ModuleTuple>::type;

/// Names typed tests after their entry.
struct EntryNames {
  template <class E>
  static std::string GetName(int) {
    return E::kName;
  }
};

}  // namespace registry
}  // namespace attn_test
