// The kernel paths chosen at run time (attn/core/isa.hpp): which ones exist, forcing one, and
// the GEMM (float32, bfloat16 and half) on every path this program runs here against a
// float64 product: odd sizes, several k-blocks, outputs cut into heads, bit-identical for
// every thread count, and a weight that keeps the path it was packed for. (The env-variable variants of the reference tests,
// .path_*, run the modules against PyTorch on each path.)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <attn/io/safetensors.hpp>

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
  for (KernelIsa isa : {KernelIsa::baseline, KernelIsa::avx2, KernelIsa::avx512, KernelIsa::avx512bf16}) {
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

/// The element types of the GEMM: float, and the 16-bit storage types, which sum in float32
/// and round each output once.
template <class T>
class GemmTyped : public ::testing::Test {};
using GemmTypes = ::testing::Types<float, attn::bfloat16, attn::half>;
TYPED_TEST_SUITE(GemmTyped, GemmTypes);

/// Uniform values in [-1, 1] as T (rounded from float).
template <class T>
RowMatrix<T> random(Index rows, Index cols) {
  return RowMatrix<float>(RowMatrix<float>::Random(rows, cols)).cast<T>();
}

/// x W^T + b in float64 for x (m, k), W (n, k), from the T values.
template <class T>
RowMatrix<double> product(const RowMatrix<T>& x, const RowMatrix<T>& w, const attn::Vector<T>& b) {
  RowMatrix<double> y = x.template cast<float>().template cast<double>() *
                        w.template cast<float>().template cast<double>().transpose();
  y.rowwise() += b.template cast<float>().template cast<double>().transpose();
  return y;
}

/// Half of T's rounding step, relative (0 for float, whose rounding the sum bound covers).
template <class T>
double output_rounding() {
  return std::is_same<T, float>::value ? 0.0 : std::is_same<T, attn::bfloat16>::value ? 0x1p-8 : 0x1p-11;
}

/// The largest |error| of y against the float64 product, in units of the per-element bound:
/// the float32 sum's, k * eps * max|x| * max|w| (+ |b|), plus the rounding of the output.
template <class T>
double scaled_error(const RowMatrix<T>& y, const RowMatrix<double>& ref, Index k) {
  const double sum_bound = std::max<Index>(k, 1) * 6e-8 * 4.0 + 6e-8;
  double worst = 0;
  for (Index i = 0; i < ref.rows(); ++i)
    for (Index j = 0; j < ref.cols(); ++j)
      worst = std::max(worst, std::abs(double(float(y(i, j))) - ref(i, j)) /
                                  (sum_bound + output_rounding<T>() * std::abs(ref(i, j))));
  return worst;
}

TYPED_TEST(GemmTyped, OnEveryPathMatchesFloat64) {
  using T = TypeParam;
  PathGuard guard;
  struct Shape {
    Index m, n, k;
  };
  // An empty sum (k = 0: the bias), sizes around the register blocks (6 rows; 8, 16 or 64
  // columns), odd depths (the k-pairs of avx512bf16), more than one k-block (512 floats, 1024
  // bfloat16 values) and depths that are whole k-blocks, items of several panels over several
  // k-blocks, and a row count that spans several row blocks.
  const Shape shapes[] = {{3, 5, 0},     {1, 1, 1},      {5, 17, 3},     {7, 65, 129},  {13, 70, 600},
                          {6, 64, 1030}, {9, 33, 2101},  {5, 40, 1024},  {7, 20, 2048}, {13, 700, 1100},
                          {400, 33, 40}};
  for (KernelIsa isa : attn::available_kernel_isas()) {
    attn::set_kernel_isa(isa);
    for (const Shape& s : shapes) {
      SCOPED_TRACE(std::string(attn::to_string(isa)) + " m " + std::to_string(s.m) + " n " + std::to_string(s.n) +
                   " k " + std::to_string(s.k));
      const RowMatrix<T> x = random<T>(s.m, s.k), w = random<T>(s.n, s.k);
      const attn::Vector<T> b = random<T>(s.n, 1);
      RowMatrix<T> y(s.m, s.n);
      attn::linear(x, w, b, y);
      EXPECT_LE(scaled_error(y, product(x, w, b), s.k), 1.0);
    }
  }
}

TYPED_TEST(GemmTyped, WritesEachOutputRangeIntoItsHeads) {
  using T = TypeParam;
  PathGuard guard;
  const Index m = 9, k = 1100, heads = 3, d = 11, n = 2 * heads * d;  // k: several k-blocks
  const RowMatrix<T> x = random<T>(m, k), w = random<T>(n, k);
  const attn::Vector<T> b = random<T>(n, 1);
  const RowMatrix<double> ref = product(x, w, b);
  for (KernelIsa isa : attn::available_kernel_isas()) {
    SCOPED_TRACE(attn::to_string(isa));
    attn::set_kernel_isa(isa);
    const attn::PackedLinear<T> layer(w.data(), n, k, k, b.data());
    // Features [0, heads*d) into a (1, heads, m, d) tensor, [heads*d, n) into (m, heads*d).
    RowMatrix<T> head_major = RowMatrix<T>::Constant(heads * m, d, T(-1)), plain = RowMatrix<T>::Constant(m, heads * d, T(-1));
    const auto xt = attn::Tensor<T>::from_data({m, k}, x.data());
    layer.apply(xt.view(), {attn::LinearOutput<T>{0, attn::HeadsView<T>::bhnd(head_major.data(), 1, heads, m, d)},
                            attn::LinearOutput<T>{heads * d, attn::HeadsView<T>::bnhd(plain.data(), 1, m, 1, heads * d, heads * d)}});
    RowMatrix<T> y(m, n);
    for (Index r = 0; r < m; ++r)
      for (Index f = 0; f < n; ++f) y(r, f) = f < heads * d ? head_major((f / d) * m + r, f % d) : plain(r, f - heads * d);
    EXPECT_LE(scaled_error(y, ref, k), 1.0);
  }
}

TYPED_TEST(GemmTyped, BitIdenticalForEveryThreadCountOnEveryPath) {
  using T = TypeParam;
  PathGuard guard;
  const Index m = 300, n = 200, k = 1100;
  const RowMatrix<T> x = random<T>(m, k), w = random<T>(n, k);
  const attn::Vector<T> b = random<T>(n, 1);
  for (KernelIsa isa : attn::available_kernel_isas()) {
    SCOPED_TRACE(attn::to_string(isa));
    attn::set_kernel_isa(isa);
    RowMatrix<T> one(m, n), many(m, n);
    attn::set_num_threads(1);
    attn::linear(x, w, b, one);
    for (int threads : {2, 3}) {
      attn::set_num_threads(threads);
      attn::linear(x, w, b, many);
      EXPECT_EQ(std::memcmp(one.data(), many.data(), sizeof(T) * m * n), 0) << threads << " threads";
    }
  }
}

/// The 16-bit bits of a tensor's elements.
template <class S>
std::vector<std::uint16_t> bits_of(const std::vector<S>& v) {
  std::vector<std::uint16_t> out(v.size());
  std::memcpy(out.data(), v.data(), 2 * v.size());
  return out;
}

/// One set of conversions (convert16.hpp) against PyTorch's (fixture dtypes_f32: rounding
/// ties, subnormals, overflow to infinity), over every length up to all values (vector bodies
/// and tails), plus NaN of either sign, which stays NaN of its sign.
template <class Set>
void expect_conversions_match_pytorch(const char* set) {
  SCOPED_TRACE(set);
  const attn::io::SafetensorsFile ref(std::string(ATTN_REFERENCE_DIR) + "/dtypes_f32.safetensors");
  const attn::Tensor<float> source = ref.get<float>("input.source");
  const attn::Tensor<attn::bfloat16> bf16 = ref.get<attn::bfloat16>("output.bf16");
  const attn::Tensor<attn::half> f16 = ref.get<attn::half>("output.f16");
  const attn::Tensor<float> bf16_values = ref.get<float>("output.bf16_as_f32"), f16_values = ref.get<float>("output.f16_as_f32");
  const Index n = source.numel();
  for (Index len : {n, n - 3, Index(17), Index(5)}) {
    std::vector<attn::bfloat16> b(len);
    std::vector<attn::half> h(len);
    std::vector<float> wide(len);
    Set::narrow(source.data(), b.data(), len);
    Set::narrow(source.data(), h.data(), len);
    EXPECT_EQ(bits_of(b), bits_of(std::vector<attn::bfloat16>(bf16.data(), bf16.data() + len))) << len;
    EXPECT_EQ(bits_of(h), bits_of(std::vector<attn::half>(f16.data(), f16.data() + len))) << len;
    Set::widen(b.data(), wide.data(), len);
    EXPECT_EQ(std::memcmp(wide.data(), bf16_values.data(), 4 * len), 0) << len;
    Set::widen(h.data(), wide.data(), len);
    EXPECT_EQ(std::memcmp(wide.data(), f16_values.data(), 4 * len), 0) << len;
  }
  std::vector<float> nans(16, std::numeric_limits<float>::quiet_NaN());
  for (Index i = 0; i < 16; i += 2) nans[i] = -nans[i];
  std::vector<attn::bfloat16> b(16);
  std::vector<attn::half> h(16);
  Set::narrow(nans.data(), b.data(), 16);
  Set::narrow(nans.data(), h.data(), 16);
  for (Index i = 0; i < 16; ++i) {
    EXPECT_TRUE(std::isnan(float(b[i])) && std::signbit(float(b[i])) == std::signbit(nans[i])) << i;
    EXPECT_TRUE(std::isnan(float(h[i])) && std::signbit(float(h[i])) == std::signbit(nans[i])) << i;
  }
}

/// The conversion functions of one set, as a type.
#define ATTN_CONVERSION_SET(name)                                                                   \
  struct name##_set {                                                                               \
    template <class S>                                                                              \
    static void narrow(const float* x, S* y, Index n) { attn::detail::convert16::name::narrow(x, y, n); } \
    template <class S>                                                                              \
    static void widen(const S* x, float* y, Index n) { attn::detail::convert16::name::widen(x, y, n); }   \
  };
ATTN_CONVERSION_SET(scalar)
ATTN_CONVERSION_SET(build)
#if ATTN_DISPATCH
ATTN_CONVERSION_SET(avx2)
ATTN_CONVERSION_SET(avx512)
#endif

TEST(KernelPaths, SixteenBitConversionsOfEverySetMatchPyTorch) {
  expect_conversions_match_pytorch<scalar_set>("scalar");
  expect_conversions_match_pytorch<build_set>("build");
#if ATTN_DISPATCH
  if (attn::detail::cpu_runs(KernelIsa::avx2)) expect_conversions_match_pytorch<avx2_set>("avx2");
  if (attn::detail::cpu_runs(KernelIsa::avx512)) expect_conversions_match_pytorch<avx512_set>("avx512");
#endif
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
  EXPECT_LE(scaled_error(after, product<float>(x, w, attn::Vector<float>::Zero(n)), k), 1.0);
}

}  // namespace
