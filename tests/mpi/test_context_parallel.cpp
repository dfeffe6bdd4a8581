// Context-parallel attention over MPI (attn/mpi/context_parallel.hpp), run by ctest under
// mpirun -np 2 (tests/CMakeLists.txt, ATTN_MPI=ON). Every rank builds the same problem from
// the same seeds, keeps its slice of the keys and values (uneven: rank r holds keys
// [r S / R ... ), one rank none in the last case) and must return, on every rank and bit
// for bit the same, what one process computes over all the keys (to rounding).
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <attn/mpi/context_parallel.hpp>

#include "../support.hpp"

namespace {

using attn::Index;
using attn::Tensor;
using attn_test::AllClose;
using attn_test::ExpectInvalid;
using attn_test::random_tensor;

int rank_of() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int ranks() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

/// Keys [first, first + count) of a (B, K, S, D) tensor.
template <class T>
Tensor<T> slice(const Tensor<T>& x, Index first, Index count) {
  Tensor<T> y({x.size(0), x.size(1), count, x.size(3)});
  for (Index b = 0; b < x.size(0); ++b)
    for (Index h = 0; h < x.size(1); ++h)
      for (Index j = 0; j < count; ++j)
        for (Index d = 0; d < x.size(3); ++d) y(b, h, j, d) = x(b, h, first + j, d);
  return y;
}

/// Whether `t` has the same bits on every rank (rank 0's, broadcast).
template <class T>
bool same_bits_on_all_ranks(const Tensor<T>& t) {
  std::vector<T> root(t.data(), t.data() + t.numel());
  MPI_Bcast(root.data(), int(root.size() * sizeof(T)), MPI_BYTE, 0, MPI_COMM_WORLD);
  int mine = std::equal(root.begin(), root.end(), t.data()) ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

/// The split of S keys: rank r holds [bounds[r], bounds[r + 1]); `empty_last`: the last rank none.
std::vector<Index> bounds(Index keys, bool empty_last) {
  const int n = ranks(), holding = empty_last && n > 1 ? n - 1 : n;
  std::vector<Index> b(std::size_t(n) + 1, keys);
  for (int r = 0; r < holding; ++r) b[std::size_t(r)] = keys * r / holding + (r > 0 ? 3 : 0);  // uneven
  b[0] = 0;
  return b;
}

template <class T>
void expect_matches_one_process(const attn::SdpaOptions<T>& opt, const Tensor<bool>& padding, bool empty_last) {
  const Tensor<T> q = random_tensor<T>({2, 4, 3, 16}, 1, 2.0), k = random_tensor<T>({2, 2, 700, 16}, 2),
                  v = random_tensor<T>({2, 2, 700, 8}, 3);
  const std::vector<Index> b = bounds(700, empty_last);
  const Index first = b[std::size_t(rank_of())], count = b[std::size_t(rank_of()) + 1] - first;
  attn::SdpaOptions<T> all = opt, mine = opt;
  Tensor<bool> my_padding;
  if (!padding.empty()) {
    my_padding = Tensor<bool>({2, count});
    for (Index i = 0; i < 2; ++i)
      for (Index j = 0; j < count; ++j) my_padding(i, j) = padding(i, first + j);
    all.key_padding_mask = attn::Mask<T>::block_where_true(padding);
    mine.key_padding_mask = attn::Mask<T>::block_where_true(my_padding);
  }
  const Tensor<T> want = attn::scaled_dot_product_attention<T>(q, k, v, all);
  const Tensor<T> got =
      attn::mpi::context_parallel_attention<T>(MPI_COMM_WORLD, q, slice(k, first, count), slice(v, first, count), mine);
  EXPECT_TRUE(AllClose(got, want, std::is_same<T, float>::value ? 1e-5 : 1e-12)) << "rank " << rank_of();
  EXPECT_TRUE(same_bits_on_all_ranks(got));
}

template <class T>
class ContextParallel : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ContextParallel, Scalars);

TYPED_TEST(ContextParallel, EqualsOneProcessOverAllKeys) {
  ASSERT_GE(ranks(), 2) << "run under mpirun -np 2 (or more)";
  expect_matches_one_process<TypeParam>({}, {}, false);
}

// The sinks count once (rank 0's), a key padding mask covers each rank's own keys, softcap
// and scale apply everywhere; a rank may hold no keys.
TYPED_TEST(ContextParallel, SinksPaddingSoftcapAndAnEmptyRank) {
  using T = TypeParam;
  const Tensor<T> sinks = random_tensor<T>({4}, 5);
  Tensor<bool> padding({2, 700});
  for (Index j = 0; j < 700; j += 3) padding(1, j) = true;
  attn::SdpaOptions<T> opt;
  opt.sinks = sinks.view();
  opt.softcap = 3;
  opt.scale = 0.3;
  expect_matches_one_process<T>(opt, padding, false);
  expect_matches_one_process<T>(opt, padding, true);
}

// Options that need every rank's keys, and a rank whose q differs, are std::invalid_argument
// on every rank (no rank is left waiting in a collective).
TYPED_TEST(ContextParallel, RejectsWhatNeedsAllKeysOnEveryRank) {
  using T = TypeParam;
  const Tensor<T> q = random_tensor<T>({1, 2, 3, 8}, 7), k = random_tensor<T>({1, 2, 5, 8}, 8);
  attn::SdpaOptions<T> causal;
  causal.causal = attn::Causal::kBottomRight;
  ExpectInvalid([&] { attn::mpi::context_parallel_attention<T>(MPI_COMM_WORLD, q, k, k, causal); },
                {"context_parallel_attention", "no causal masking"});
  const Tensor<T> other = random_tensor<T>({1, 2, rank_of() == 0 ? 3 : 4, 8}, 9);
  ExpectInvalid([&] { attn::mpi::context_parallel_attention<T>(MPI_COMM_WORLD, other, k, k); },
                {"every rank needs the same q"});
  const Tensor<T> narrow = random_tensor<T>({1, 2, 5, rank_of() == 0 ? 8 : 6}, 10);
  ExpectInvalid([&] { attn::mpi::context_parallel_attention<T>(MPI_COMM_WORLD, q, narrow, k); },
                {rank_of() == 0 ? "another rank's" : "scaled_dot_product_attention"});
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (rank_of() != 0) {  // one rank prints
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int failed = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
