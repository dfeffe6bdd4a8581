// The kernel paths chosen at run time (attn/core/isa.hpp): which ones exist, forcing one, and
// the GEMM on every path this program runs here against a float64 product: odd sizes, two
// k-blocks, outputs cut into heads, bit-identical for every thread count, and a weight that
// keeps the path it was packed for. (The env-variable variants of the reference tests,
// .path_*, run the modules against PyTorch on each path.)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <attn/attn.hpp>

namespace {

using attn::Index;
using attn::KernelIsa;
using attn::RowMatrix;

/// Whether f() throws std::invalid_argument whose message contains `text`.
template <class F>
bool throws_naming(F&& f, const std::string& text) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return std::string(e.what()).find(text) != std::string::npos;
  }
  return false;
}

/// Restores the path and the thread count a test started with.
struct PathGuard {
  KernelIsa isa = attn::kernel_isa();
  ~PathGuard() {
    attn::set_kernel_isa(isa);
    attn::set_num_threads(0);
  }
};

TEST(KernelPaths, BaselineIsAlwaysAvailableAndTheDefaultIsTheWidest) {
  const std::vector<KernelIsa> paths = attn::available_kernel_isas();
  ASSERT_FALSE(paths.empty());
  EXPECT_EQ(paths.front(), KernelIsa::baseline);
  EXPECT_TRUE(std::is_sorted(paths.begin(), paths.end()));
  if (!std::getenv("ATTN_KERNEL_ISA")) {
    EXPECT_EQ(attn::kernel_isa(), paths.back());
  }
  for (KernelIsa isa : paths) std::printf("available: %s\n", attn::to_string(isa));
}

TEST(KernelPaths, ForcingAPathThisProgramCannotRunThrowsAndChangesNothing) {
  PathGuard guard;
  const std::vector<KernelIsa> paths = attn::available_kernel_isas();
  for (KernelIsa isa : {KernelIsa::baseline, KernelIsa::avx2, KernelIsa::avx512}) {
    const bool runnable = std::find(paths.begin(), paths.end(), isa) != paths.end();
    attn::set_kernel_isa(KernelIsa::baseline);
    if (runnable) {
      attn::set_kernel_isa(isa);
      EXPECT_EQ(attn::kernel_isa(), isa);
    } else {
      EXPECT_TRUE(throws_naming([&] { attn::set_kernel_isa(isa); }, "attn::set_kernel_isa")) << attn::to_string(isa);
      EXPECT_EQ(attn::kernel_isa(), KernelIsa::baseline);
    }
  }
  EXPECT_TRUE(throws_naming([] { attn::detail::runnable_isa("sse9", "ATTN_KERNEL_ISA"); }, "ATTN_KERNEL_ISA: 'sse9'"));
}

/// x W^T + b in float64 for x (m, k), W (n, k).
RowMatrix<double> product(const RowMatrix<float>& x, const RowMatrix<float>& w, const attn::Vector<float>& b) {
  RowMatrix<double> y = x.cast<double>() * w.cast<double>().transpose();
  y.rowwise() += b.cast<double>().transpose();
  return y;
}

/// The largest |error| of y against the float64 product, in units of the per-element bound
/// k * eps * max|x| * max|w| (+ |b|).
double scaled_error(const RowMatrix<float>& y, const RowMatrix<double>& ref, Index k) {
  const double bound = std::max<Index>(k, 1) * 6e-8 * 4.0 + 6e-8;
  return (y.cast<double>() - ref).cwiseAbs().maxCoeff() / bound;
}

TEST(KernelPaths, GemmOnEveryPathMatchesFloat64) {
  PathGuard guard;
  struct Shape {
    Index m, n, k;
  };
  // Sizes around the register blocks (6 rows; 8, 16 or 64 columns), more than one k-block
  // (512 floats), and a row count that spans several row blocks.
  const Shape shapes[] = {{1, 1, 1}, {5, 17, 3}, {7, 65, 129}, {13, 70, 600}, {6, 64, 1030}, {400, 33, 40}};
  for (KernelIsa isa : attn::available_kernel_isas()) {
    attn::set_kernel_isa(isa);
    for (const Shape& s : shapes) {
      SCOPED_TRACE(std::string(attn::to_string(isa)) + " m " + std::to_string(s.m) + " n " + std::to_string(s.n) +
                   " k " + std::to_string(s.k));
      const RowMatrix<float> x = RowMatrix<float>::Random(s.m, s.k), w = RowMatrix<float>::Random(s.n, s.k);
      const attn::Vector<float> b = attn::Vector<float>::Random(s.n);
      RowMatrix<float> y(s.m, s.n);
      attn::linear(x, w, b, y);
      EXPECT_LE(scaled_error(y, product(x, w, b), s.k), 1.0);
    }
  }
}

TEST(KernelPaths, GemmWritesEachOutputRangeIntoItsHeads) {
  PathGuard guard;
  const Index m = 9, k = 37, heads = 3, d = 11, n = 2 * heads * d;
  const RowMatrix<float> x = RowMatrix<float>::Random(m, k), w = RowMatrix<float>::Random(n, k);
  const attn::Vector<float> b = attn::Vector<float>::Random(n);
  const RowMatrix<double> ref = product(x, w, b);
  for (KernelIsa isa : attn::available_kernel_isas()) {
    SCOPED_TRACE(attn::to_string(isa));
    attn::set_kernel_isa(isa);
    const attn::PackedLinear<float> layer(w.data(), n, k, k, b.data());
    // Features [0, heads*d) into a (1, heads, m, d) tensor, [heads*d, n) into (m, heads*d).
    std::vector<float> head_major(heads * m * d, -1.f), plain(m * heads * d, -1.f);
    const auto xt = attn::Tensor<float>::from_data({m, k}, x.data());
    layer.apply(xt.view(), {attn::LinearOutput<float>{0, attn::HeadsView<float>::bhnd(head_major.data(), 1, heads, m, d)},
                            attn::LinearOutput<float>{heads * d, attn::HeadsView<float>::bnhd(plain.data(), 1, m, 1, heads * d, heads * d)}});
    double worst = 0;
    for (Index r = 0; r < m; ++r)
      for (Index f = 0; f < n; ++f) {
        const float got = f < heads * d ? head_major[(f / d) * m * d + r * d + f % d] : plain[r * heads * d + f - heads * d];
        worst = std::max(worst, std::abs(got - ref(r, f)));
      }
    EXPECT_LE(worst, k * 6e-8 * 4.0 + 6e-8);
  }
}

TEST(KernelPaths, GemmIsBitIdenticalForEveryThreadCountOnEveryPath) {
  PathGuard guard;
  const Index m = 300, n = 200, k = 700;
  const RowMatrix<float> x = RowMatrix<float>::Random(m, k), w = RowMatrix<float>::Random(n, k);
  const attn::Vector<float> b = attn::Vector<float>::Random(n);
  for (KernelIsa isa : attn::available_kernel_isas()) {
    SCOPED_TRACE(attn::to_string(isa));
    attn::set_kernel_isa(isa);
    RowMatrix<float> one(m, n), many(m, n);
    attn::set_num_threads(1);
    attn::linear(x, w, b, one);
    for (int threads : {2, 3}) {
      attn::set_num_threads(threads);
      attn::linear(x, w, b, many);
      EXPECT_EQ(std::memcmp(one.data(), many.data(), sizeof(float) * m * n), 0) << threads << " threads";
    }
  }
}

TEST(KernelPaths, AWeightRunsOnThePathItWasPackedFor) {
  PathGuard guard;
  const Index m = 20, n = 70, k = 90;
  const RowMatrix<float> x = RowMatrix<float>::Random(m, k), w = RowMatrix<float>::Random(n, k);
  const std::vector<KernelIsa> paths = attn::available_kernel_isas();
  attn::set_kernel_isa(paths.back());
  const attn::PackedLinear<float> layer(w.data(), n, k, k, nullptr);
  RowMatrix<float> before(m, n), after(m, n);
  layer.apply(x.data(), m, k, before.data(), n);
  attn::set_kernel_isa(paths.front());  // another path for what is packed from now on
  layer.apply(x.data(), m, k, after.data(), n);
  EXPECT_EQ(std::memcmp(before.data(), after.data(), sizeof(float) * m * n), 0);
  EXPECT_LE(scaled_error(after, product(x, w, attn::Vector<float>::Zero(n)), k), 1.0);
}

}  // namespace
