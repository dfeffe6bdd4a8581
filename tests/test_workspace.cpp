// The per-thread workspace (attn/core/workspace.hpp): buffers are given back in LIFO order,
// a thread keeps the memory of its largest call and reuses it (a second call of the same
// size allocates nothing), release_workspace() frees it, and results do not depend on it.
#include <cstring>

#include "every_module.hpp"

namespace {

using namespace attn_test;
using attn::detail::WorkBuffer;
using attn::detail::Workspace;

TEST(Workspace, BuffersAreDisjointAlignedAndGivenBackInOrder) {
  attn::release_workspace();
  {
    const WorkBuffer<float> a(100);
    const WorkBuffer<double> b(1000);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.data()) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % 64, 0u);
    const auto* a_end = reinterpret_cast<const char*>(a.data() + 100);
    const auto* b_begin = reinterpret_cast<const char*>(b.data());
    EXPECT_TRUE(b_begin >= a_end || reinterpret_cast<const char*>(b.data() + 1000) <= reinterpret_cast<const char*>(a.data()));
    {
      const WorkBuffer<float> c(1 << 20);  // does not fit: a second block
      std::memset(c.data(), 0, sizeof(float) << 20);
    }
    const WorkBuffer<float> d(10);  // c's place again
  }
  // Nothing taken: the blocks were merged into one of their total size, which the same
  // pattern of buffers now fits in without allocating.
  const std::size_t kept = attn::workspace_bytes();
  EXPECT_GE(kept, (sizeof(float) << 20) + 1000 * sizeof(double));
  {
    const WorkBuffer<float> a(100);
    const WorkBuffer<double> b(1000);
    const WorkBuffer<float> c(1 << 20);
  }
  EXPECT_EQ(attn::workspace_bytes(), kept);
  attn::release_workspace();
  EXPECT_EQ(attn::workspace_bytes(), 0u);
}

// A pattern whose later buffer does not fit the unused blocks its earlier buffers left
// (they are replaced by one block) keeps enough memory for the whole pattern: the second
// run of it allocates nothing.
TEST(Workspace, ReplacingTooSmallBlocksKeepsThePeak) {
  attn::release_workspace();
  const auto pattern = [] {
    const WorkBuffer<float> a(1000);
    {
      const WorkBuffer<float> b(1000);
      const WorkBuffer<float> c(1000);
    }
    const WorkBuffer<float> d(1500);
  };
  pattern();
  const std::size_t kept = attn::workspace_bytes();
  EXPECT_GE(kept, 3000 * sizeof(float));
  pattern();
  EXPECT_EQ(attn::workspace_bytes(), kept);
  attn::release_workspace();
}

// A module's second forward pass of the same size allocates no workspace memory, and its
// result is the same, bit for bit, whether the workspace was kept or released: every module,
// full and through its KV cache (a second decode of the same sizes).
template <class E>
class EveryModule : public ::testing::Test {};
TYPED_TEST_SUITE(EveryModule, registry::Modules, registry::EntryNames);

template <class F>
void check_reuse(bool uses_workspace, F&& forward) {
  attn::release_workspace();
  const Tensor<float> first = forward();
  const std::size_t kept = attn::workspace_bytes();
  if (uses_workspace) {
    EXPECT_GT(kept, 0u);
  }
  const Tensor<float> second = forward();
  EXPECT_EQ(attn::workspace_bytes(), kept);
  EXPECT_TRUE(same_bits(first, second));
  attn::release_workspace();
  EXPECT_EQ(attn::workspace_bytes(), 0u);
  EXPECT_TRUE(same_bits(forward(), first));
}

TYPED_TEST(EveryModule, ReusesTheWorkspaceAcrossCalls) {
  using E = TypeParam;
  attn::set_num_threads(1);  // every scratch buffer then comes from the workspace measured here
  const auto m = E::template make<float>();
  const Tensor<float> x = random_tensor<float>(registry::input_shape<E>(2, 70), 1);
  check_reuse(E::kMixesTokens, [&] { return E::run(m, x, registry::Call<float>{}); });
  if (E::kCached) check_reuse(true, [&] { return E::run_cached(m, x, 1, nullptr); });
  attn::set_num_threads(0);
}

}  // namespace
