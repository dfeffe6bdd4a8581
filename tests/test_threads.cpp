// Every module gives the same bits on 1, 2 and 3 threads: in eval mode, in training mode with
// the same generator seed (dropout masks), with masks and causal masking, and through its KV
// cache (chunks of 1 token: the decode tile; and of 3). Work items are fixed by the problem,
// never by the thread count (docs/ARCHITECTURE.md, Invariants); the inputs are large enough
// that every kernel splits its work into several items.
#include <vector>

#include "every_module.hpp"

namespace {

using namespace attn_test;
using namespace attn_test::registry;

/// Restores the default thread count when a test ends (also when it fails).
struct ThreadGuard {
  ~ThreadGuard() { attn::set_num_threads(0); }
};

template <class E>
class EveryModuleThreads : public ::testing::Test {};
TYPED_TEST_SUITE(EveryModuleThreads, registry::Modules, registry::EntryNames);

TYPED_TEST(EveryModuleThreads, BitIdenticalForEveryThreadCount) {
  using E = TypeParam;
  using T = float;
  ThreadGuard guard;
  const Index len = 150;  // several query blocks and key tiles
  const Tensor<T> x = random_tensor<T>(input_shape<E>(3, len), 5);
  Tensor<bool> padding({3, len}, false);
  for (Index j = 120; j < len; ++j) padding(1, j) = true;
  auto eval = E::template make<T>(0, 0.25);
  auto training = E::template make<T>(0, 0.25);
  training.train();
  const auto run = [&](int threads) {
    attn::set_num_threads(threads);
    std::vector<Tensor<T>> r;
    Call<T> call;
    r.push_back(E::run(eval, x, call));
    if (E::kMixesTokens) {
      call.key_padding_mask = attn::Mask<T>::block_where_true(padding);
      call.causal = true;
      r.push_back(E::run(eval, x, call));
    }
    Generator gen(3);
    call.generator = &gen;
    r.push_back(E::run(training, x, call));
    if (E::kCached)
      for (Index chunk : {1, 3}) {
        Generator cached_gen(4);
        r.push_back(E::run_cached(eval, x, chunk, nullptr));
        r.push_back(E::run_cached(training, x, chunk, &cached_gen));
      }
    return r;
  };
  const auto one = run(1);
  for (int threads : {2, 3}) {
    const auto many = run(threads);
    ASSERT_EQ(many.size(), one.size());
    for (std::size_t i = 0; i < one.size(); ++i)
      EXPECT_TRUE(same_bits(one[i], many[i])) << "result " << i << ", " << threads << " threads";
  }
}

}  // namespace
