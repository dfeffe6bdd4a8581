// One module instance called from 8 threads at once gives the same bits as serial calls:
// forward is const and re-entrant, and dropout takes its Generator per call, so there is
// no hidden shared state. Every module of the registry (tests/registry.hpp), in eval mode and
// in training mode with dropout (one Generator per call, same seed -> same result), full and
// through a KV cache. Run under ThreadSanitizer too (see
// tests/run.sh and the README): libgomp is not TSan-instrumented, so that tree is built
// with -DATTN_OPENMP=OFF. The Concurrency.Pool* tests drive attn's thread pool directly, so
// they run with helper threads in that tree too.

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#if defined(__unix__)
#include <sys/wait.h>
#include <unistd.h>
#endif

#include "every_module.hpp"

namespace {

using attn::Index;
using attn::Shape;
using attn::Tensor;
using attn_test::random_tensor;
using attn_test::randomize;
using attn_test::same_bits;
namespace registry = attn_test::registry;

constexpr int kThreads = 8;
constexpr int kCallsPerThread = 6;
constexpr int kInputs = 12;

/// One call: input i, with generator seed (if training). Returns every output tensor.
using Call = std::function<std::vector<Tensor<float>>(int input, std::uint64_t seed)>;

/// Runs `call` serially for every input, then from kThreads threads at once, each thread
/// going through the inputs in its own order; every threaded result must equal the serial
/// one bit for bit. Returns the number of mismatches.
int check_concurrent(const Call& call) {
  std::vector<std::vector<Tensor<float>>> serial;
  for (int i = 0; i < kInputs; ++i) serial.push_back(call(i, 1000 + i));
  std::atomic<int> mismatches{0}, calls{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();  // start together
      for (int c = 0; c < kCallsPerThread; ++c) {
        const int i = (t * 5 + c * 7) % kInputs;
        const std::vector<Tensor<float>> r = call(i, 1000 + i);
        bool ok = r.size() == serial[i].size();
        for (std::size_t k = 0; ok && k < r.size(); ++k) ok = same_bits(r[k], serial[i][k]);
        if (!ok) ++mismatches;
        ++calls;
      }
    });
  }
  go = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(calls.load(), kThreads * kCallsPerThread);
  return mismatches.load();
}

/// Inputs of entry E: x_i (2, N_i, C) with N_i varying (several query blocks for some), and a
/// key padding mask per input.
template <class E>
struct Inputs {
  std::vector<Tensor<float>> x;
  std::vector<Tensor<bool>> padding;
  Inputs() {
    for (int i = 0; i < kInputs; ++i) {
      const Index n = 3 + 11 * i % 70;
      x.push_back(random_tensor<float>(registry::input_shape<E>(2, n), 50 + i));
      Tensor<bool> p({2, n}, false);
      for (Index j = n - 1 - i % 3; j < n; ++j) p(1, j) = true;
      padding.push_back(std::move(p));
    }
  }
};

/// Runs body(i) for i in [0, n) on the calling thread and `helpers` pool threads (false if
/// another thread's loop holds the pool).
template <class F>
bool pool_run(Index n, F& body, int helpers) {
  return attn::detail::ThreadPool::instance().run(
      n, [](void* b, Index i) { (*static_cast<F*>(b))(i); }, &body, helpers);
}

// Every item runs exactly once, whichever threads take it, loop after loop; a loop started
// inside an item runs on that thread.
TEST(Concurrency, PoolRunsEveryItemOnce) {
  for (const Index n : {1, 2, 7, 1000}) {
    for (int loop = 0; loop < 200; ++loop) {
      std::vector<int> runs(std::size_t(n), 0);
      auto body = [&](Index i) {
        ++runs[std::size_t(i)];
        int inner = 0;
        attn::detail::parallel_for(3, [&](Index) { ++inner; });  // nested: serial, no race
        EXPECT_EQ(inner, 3);
      };
      ASSERT_TRUE(pool_run(n, body, 2));
      for (Index i = 0; i < n; ++i) ASSERT_EQ(runs[std::size_t(i)], 1) << "item " << i << " of " << n;
    }
  }
}

// The first exception thrown by an item reaches the caller; the pool runs the next loop.
TEST(Concurrency, PoolRethrowsAndGoesOn) {
  auto throwing = [](Index i) {
    if (i == 37) throw std::runtime_error("item 37");
  };
  EXPECT_THROW(pool_run(100, throwing, 2), std::runtime_error);
  std::atomic<Index> sum{0};
  auto adding = [&](Index i) { sum += i; };
  ASSERT_TRUE(pool_run(100, adding, 2));
  EXPECT_EQ(sum.load(), 4950);
}

// Loops called from several threads at once all complete: one holds the pool, the others
// run their items on their own thread.
TEST(Concurrency, PoolCalledFromSeveralThreads) {
  std::atomic<long> sum{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int loop = 0; loop < 300; ++loop) {
        auto adding = [&](Index i) { sum += long(i); };
        if (!pool_run(50, adding, 2)) attn::detail::parallel_for(50, adding);
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(sum.load(), 4L * 300 * 1225);
  attn::release_workspace();  // reaches every pool thread, and returns
}

#if defined(__unix__)
// A child of fork() has none of the parent's pool threads and starts none (a lock held by
// another thread during the fork stays locked there: new threads hung in ASan's allocator):
// its loops run on the calling thread, and release_workspace() completes.
TEST(Concurrency, PoolAfterFork) {
  std::atomic<Index> sum{0};
  auto adding = [&](Index i) { sum += i; };
  ASSERT_TRUE(pool_run(10, adding, 2));  // the parent's helpers exist
  const pid_t child = fork();
  ASSERT_NE(child, -1);
  if (child == 0) {
    std::atomic<Index> s{0};
    auto add = [&](Index i) { s += i; };
    const bool ran = pool_run(100, add, 2);
    attn::release_workspace();
    _exit(ran && s.load() == 4950 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}
#endif

template <class E>
class EveryModule : public ::testing::Test {};
TYPED_TEST_SUITE(EveryModule, registry::Modules, registry::EntryNames);

// Every module, in eval mode and in training mode (dropout at every site), with a key padding
// mask and, for every other input, causal masking; and through its KV cache (each call its own
// cache, the module shared).
TYPED_TEST(EveryModule, SharedAcrossThreads) {
  using E = TypeParam;
  const Inputs<E> in;
  auto m = E::template make<float>(0, 0.2);
  for (bool training : {false, true}) {
    m.train(training);
    const auto& shared = m;
    const int bad = check_concurrent([&](int i, std::uint64_t seed) {
      attn::Generator gen(seed);
      registry::Call<float> call;
      if (E::kMixesTokens) call.key_padding_mask = attn::Mask<float>::block_where_true(in.padding[i]);
      call.causal = i % 2 == 1;
      call.generator = &gen;
      std::vector<Tensor<float>> r{E::run(shared, in.x[i], call)};
      if (E::kCached) {
        attn::Generator cached(seed + 1);
        r.push_back(E::run_cached(shared, in.x[i], 1 + i % 3, &cached));
      }
      return r;
    });
    EXPECT_EQ(bad, 0) << (training ? "training" : "eval") << " mode";
  }
}

TEST(Concurrency, MultiHeadAttentionSelfAndCrossWithMasksAndWeights) {
  attn::MultiHeadAttentionOptions o;
  o.dropout = 0.25;
  o.kdim = 12;
  o.vdim = 20;
  attn::MultiHeadAttention<float> cross(8, 4, o);
  randomize(cross, 5);
  attn::MultiHeadAttentionOptions so;
  so.dropout = 0.25;
  so.add_bias_kv = true;
  attn::MultiHeadAttention<float> self(8, 4, so);
  randomize(self, 6);
  const Inputs<registry::MultiHeadAttentionEntry> in;
  std::vector<Tensor<float>> keys, values;
  std::vector<Tensor<float>> masks;  // (B*H, L, S) additive
  for (int i = 0; i < kInputs; ++i) {
    const Index s = 1 + 5 * i % 17, l = in.x[i].size(1);
    keys.push_back(random_tensor<float>({2, s, 12}, 80 + i));
    values.push_back(random_tensor<float>({2, s, 20}, 90 + i));
    Tensor<float> m = random_tensor<float>({2 * 4, l, s}, 100 + i);
    m[0] = -INFINITY;
    masks.push_back(std::move(m));
  }
  for (bool training : {false, true}) {
    cross.train(training);
    self.train(training);
    const attn::MultiHeadAttention<float>& c = cross;
    const attn::MultiHeadAttention<float>& s = self;
    const int bad = check_concurrent([&](int i, std::uint64_t seed) {
      attn::Generator gen(seed);
      attn::MhaArgs<float> a;
      a.generator = &gen;
      a.need_weights = true;
      a.average_attn_weights = i % 2 == 0;
      a.attn_mask = attn::Mask<float>::additive(masks[i]);
      a.causal = i % 3 ? attn::Causal::kNone : attn::Causal::kBottomRight;
      attn::MhaOutput<float> rc = c.forward(in.x[i], keys[i], values[i], a);
      attn::MhaArgs<float> b;
      b.generator = &gen;
      b.need_weights = true;
      b.key_padding_mask = attn::Mask<float>::block_where_true(in.padding[i]);  // (causal: not with bias_k)
      attn::MhaOutput<float> rs = s.forward(in.x[i], b);
      return std::vector<Tensor<float>>{std::move(rc.output), std::move(rc.attn_weights), std::move(rs.output),
                                        std::move(rs.attn_weights)};
    });
    EXPECT_EQ(bad, 0) << (training ? "training" : "eval") << " mode";
  }
}

TEST(Concurrency, ReadingStateDictsWhileForwarding) {
  // state_dict() and num_parameters() of a const module only read: safe alongside forward.
  attn::MultiHeadAttention<float> m(8, 4);
  randomize(m, 7);
  const attn::MultiHeadAttention<float>& shared = m;
  const Inputs<registry::MultiHeadAttentionEntry> in;
  const int bad = check_concurrent([&](int i, std::uint64_t) {
    std::vector<Tensor<float>> r{shared.forward(in.x[i]).output};
    if (i % 2) {
      const attn::StateDict<float> d = shared.state_dict();
      for (const auto& kv : d) r.push_back(kv.second);
    }
    return r;
  });
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(shared.num_parameters(), 4 * 8 * 8 + 4 * 8);
}

}  // namespace
