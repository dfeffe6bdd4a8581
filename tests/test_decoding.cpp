// Decoding: KVCache, rotary position embedding, and the incremental (KV-cached) forward
// passes of MultiHeadAttention, GroupedQueryAttention and TransformerDecoderLayer.
// Self-consistency only (PyTorch references live elsewhere):
//   - the cache holds what was appended, rejects what does not fit and stays unchanged;
//   - rotary is a rotation by position (norms kept, relative positions, both pairings);
//   - chunk by chunk equals the one-shot causal pass, for any chunk size;
//   - errors on the incremental paths leave the caches as they were (length and contents);
//   - ragged prompts through a key padding mask equal unpadded runs;
//   - a rolling cache keeps the last positions and decodes a sliding window as the full
//     sequence does;
//   - a decode loop neither grows the workspace nor reallocates the caches.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;
using attn::HeadsView;
using attn::KVCache;
using attn::RotaryOptions;
using attn::Shape;

template <class T>
class Decoding : public ::testing::Test {};
TYPED_TEST_SUITE(Decoding, Scalars);

/// Incremental vs one-shot: the same sums in another order, a few ulps relative to max |ref|.
template <class T>
double tight() {
  return std::is_same<T, float>::value ? 1e-5 : 1e-12;
}

// ---------------------------------------------------------------------------------------
// Helpers: views, copies and slices.
// ---------------------------------------------------------------------------------------

/// A contiguous (B, H, N, D) tensor as a heads view.
template <class T>
HeadsView<const T> heads_of(const Tensor<T>& t) {
  return HeadsView<const T>::bhnd(t.data(), t.size(0), t.size(1), t.size(2), t.size(3));
}

/// The contents of a heads view as a contiguous (B, H, N, D) tensor.
template <class T>
Tensor<T> copy_heads(const HeadsView<const T>& v) {
  Tensor<T> t({v.batch, v.heads, v.length, v.head_dim});
  for (Index b = 0; b < v.batch; ++b)
    for (Index h = 0; h < v.heads; ++h)
      Eigen::Map<attn::RowMatrix<T>>(t.data() + (b * v.heads + h) * v.length * v.head_dim, v.length, v.head_dim) =
          v.head(b, h);
  return t;
}

/// A cache's length and contents, to check that a failed call left it as it was.
template <class T>
struct CacheState {
  explicit CacheState(const KVCache<T>& c) : length(c.length()), keys(copy_heads(c.keys())), values(copy_heads(c.values())) {}
  Index length;
  Tensor<T> keys, values;
};

template <class T>
::testing::AssertionResult Unchanged(const KVCache<T>& c, const CacheState<T>& before) {
  if (c.length() != before.length)
    return ::testing::AssertionFailure() << "length " << c.length() << ", was " << before.length;
  if (!same_bits(copy_heads(c.keys()), before.keys)) return ::testing::AssertionFailure() << "keys changed";
  if (!same_bits(copy_heads(c.values()), before.values)) return ::testing::AssertionFailure() << "values changed";
  return ::testing::AssertionSuccess();
}

/// Appends `count` random positions to a cache.
template <class T>
void fill(KVCache<T>& c, Index count, std::uint64_t seed) {
  const Shape s{c.batch(), c.kv_heads(), count, c.head_dim()};
  const Tensor<T> k = random_tensor<T>(s, seed), v = random_tensor<T>(s, seed + 1);
  c.append(heads_of(k), heads_of(v));
}

// ---------------------------------------------------------------------------------------
// KVCache
// ---------------------------------------------------------------------------------------

// Chunks appended (one contiguous, one a strided view of a (B, C, K*D) projection output)
// come back in order from keys() and values().
TYPED_TEST(Decoding, CacheAppendKeepsChunksInOrder) {
  using T = TypeParam;
  KVCache<T> c(2, 3, 10, 4);
  const Tensor<T> k1 = random_tensor<T>({2, 3, 3, 4}, 1), v1 = random_tensor<T>({2, 3, 3, 4}, 2);
  const Tensor<T> k2 = random_tensor<T>({2, 4, 12}, 3), v2 = random_tensor<T>({2, 4, 12}, 4);  // (B, C, K*D)
  c.append(heads_of(k1), heads_of(v1));
  c.append(HeadsView<const T>::bnhd(k2.data(), 2, 4, 3, 4, 12), HeadsView<const T>::bnhd(v2.data(), 2, 4, 3, 4, 12));
  ASSERT_EQ(c.length(), 7);
  const Tensor<T> keys = copy_heads(c.keys()), values = copy_heads(c.values());
  ASSERT_EQ(keys.shape(), Shape({2, 3, 7, 4}));
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 3; ++h)
      for (Index n = 0; n < 7; ++n)
        for (Index d = 0; d < 4; ++d) {
          const T want_k = n < 3 ? k1(b, h, n, d) : k2(b, n - 3, h * 4 + d);
          const T want_v = n < 3 ? v1(b, h, n, d) : v2(b, n - 3, h * 4 + d);
          ASSERT_EQ(keys(b, h, n, d), want_k) << b << " " << h << " " << n << " " << d;
          ASSERT_EQ(values(b, h, n, d), want_v) << b << " " << h << " " << n << " " << d;
        }
}

// append_written hands the writer the cache's own memory (T storage), appends what it wrote,
// and appends nothing when the writer throws or the positions do not fit.
TYPED_TEST(Decoding, CacheAppendWrittenWritesInPlace) {
  using T = TypeParam;
  KVCache<T> c(1, 2, 5, 3);
  fill(c, 2, 5);
  const CacheState<T> before(c);
  const Tensor<T> nk = random_tensor<T>({1, 2, 2, 3}, 7), nv = random_tensor<T>({1, 2, 2, 3}, 8);
  const auto write = [&](const HeadsView<T>& k, const HeadsView<T>& v) {
    ASSERT_EQ(k.shape(), Shape({1, 2, 2, 3}));
    EXPECT_EQ(k.data, c.keys().data + 2 * 3);  // the cache's memory, after the positions held
    for (Index h = 0; h < 2; ++h) {
      k.head(0, h) = heads_of(nk).head(0, h);
      v.head(0, h) = heads_of(nv).head(0, h);
    }
  };
  EXPECT_THROW(c.append_written(2, [&](const HeadsView<T>& k, const HeadsView<T>& v) {
    write(k, v);
    throw std::runtime_error("writer fails");
  }), std::runtime_error);
  EXPECT_EQ(c.length(), 2);
  c.append_written(2, write);
  ASSERT_EQ(c.length(), 4);
  for (Index h = 0; h < 2; ++h) {
    EXPECT_EQ(c.keys().head(0, h).topRows(2), heads_of(before.keys).head(0, h)) << h;
    EXPECT_EQ(c.keys().head(0, h).bottomRows(2), heads_of(nk).head(0, h)) << h;
    EXPECT_EQ(c.values().head(0, h).bottomRows(2), heads_of(nv).head(0, h)) << h;
  }
  bool called = false;
  const auto mark = [&](const HeadsView<T>&, const HeadsView<T>&) { called = true; };
  ExpectInvalid([&] { c.append_written(2, mark); }, {"2 more positions do not fit", "length 4", "capacity 5"});
  ExpectInvalid([&] { c.append_written(-1, mark); }, {"-1 more positions"});
  EXPECT_FALSE(called);
  EXPECT_EQ(c.length(), 4);
}

// truncate keeps the first positions, reset forgets all; neither frees or moves memory, and
// appending after them overwrites from the new end.
TYPED_TEST(Decoding, CacheTruncateResetAndBytes) {
  using T = TypeParam;
  KVCache<T> c(2, 3, 8, 4);
  EXPECT_EQ(c.bytes(), 2 * sizeof(T) * 2 * 3 * 8 * 4);
  const T* base = c.keys().data;
  fill(c, 5, 11);
  const CacheState<T> five(c);
  c.truncate(3);
  ASSERT_EQ(c.length(), 3);
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 3; ++h) EXPECT_EQ(c.keys().head(b, h), heads_of(five.keys).head(b, h).topRows(3));
  ExpectInvalid([&] { c.truncate(4); }, {"truncate", "length 4", "current length 3"});
  ExpectInvalid([&] { c.truncate(-1); }, {"truncate", "-1"});
  EXPECT_EQ(c.length(), 3);
  fill(c, 5, 13);  // fills to capacity again
  EXPECT_EQ(c.length(), 8);
  c.reset();
  EXPECT_EQ(c.length(), 0);
  EXPECT_EQ(c.keys().shape(), Shape({2, 3, 0, 4}));
  EXPECT_EQ(c.bytes(), 2 * sizeof(T) * 2 * 3 * 8 * 4);
  fill(c, 8, 17);
  EXPECT_EQ(c.keys().data, base);  // never reallocated
}

// Every misfit is std::invalid_argument naming it, and leaves length and contents as they
// were; the memory is allocated once (keys() never moves).
TYPED_TEST(Decoding, CacheRejectsMisfitsUnchanged) {
  using T = TypeParam;
  KVCache<T> c(2, 3, 6, 4);
  const T* base = c.keys().data;
  fill(c, 4, 21);
  const CacheState<T> before(c);
  const auto chunk = [](Shape s, std::uint64_t seed) { return random_tensor<T>(std::move(s), seed); };
  const auto append = [&](const Tensor<T>& k, const Tensor<T>& v) { c.append(heads_of(k), heads_of(v)); };
  const Tensor<T> ok = chunk({2, 3, 2, 4}, 23);
  ExpectInvalid([&] { append(chunk({2, 3, 3, 4}, 1), chunk({2, 3, 3, 4}, 2)); },
                {"3 more positions do not fit", "length 4", "capacity 6"});
  ExpectInvalid([&] { append(chunk({1, 3, 2, 4}, 1), chunk({1, 3, 2, 4}, 2)); }, {"append", "k (1, 3, 2, 4)", "batch"});
  ExpectInvalid([&] { append(chunk({2, 2, 2, 4}, 1), chunk({2, 2, 2, 4}, 2)); }, {"append", "k (2, 2, 2, 4)", "kv_heads"});
  ExpectInvalid([&] { append(chunk({2, 3, 2, 5}, 1), chunk({2, 3, 2, 5}, 2)); }, {"append", "k (2, 3, 2, 5)", "head_dim"});
  ExpectInvalid([&] { append(ok, chunk({2, 3, 1, 4}, 2)); }, {"append", "v (2, 3, 1, 4)", "(2, 3, 2, 4)"});
  ExpectInvalid([&] { append(ok, chunk({2, 3, 2, 3}, 2)); }, {"append", "v (2, 3, 2, 3)"});
  EXPECT_TRUE(Unchanged(c, before));
  append(ok, ok);  // fits exactly
  EXPECT_EQ(c.length(), 6);
  EXPECT_EQ(c.keys().data, base);
  ExpectInvalid([] { KVCache<T>(2, -1, 4, 4); }, {"kv_heads (-1)"});
}

// ---------------------------------------------------------------------------------------
// Rotary position embedding
// ---------------------------------------------------------------------------------------

RotaryOptions rotary(Index rotary_dim, bool interleaved, double theta = 10000.0) {
  RotaryOptions o;
  o.rotary_dim = rotary_dim;
  o.interleaved = interleaved;
  o.theta = theta;
  return o;
}

/// The (i, j) pairs a rotary embedding turns together.
std::vector<std::pair<Index, Index>> rotary_pairs(Index rotary_dim, bool interleaved) {
  std::vector<std::pair<Index, Index>> p;
  for (Index i = 0; i < rotary_dim / 2; ++i)
    p.emplace_back(interleaved ? 2 * i : i, interleaved ? 2 * i + 1 : i + rotary_dim / 2);
  return p;
}

TEST(Rotary, RejectsBadOptionsAndViews) {
  const Tensor<float> x = random_tensor<float>({1, 2, 5, 8}, 1);
  ExpectInvalid([&] { attn::apply_rotary<float>(x, rotary(3, false)); }, {"rotary_dim (3)", "even", "head_dim (8)"});
  ExpectInvalid([&] { attn::apply_rotary<float>(x, rotary(10, true)); }, {"rotary_dim (10)", "at most head_dim (8)"});
  ExpectInvalid([&] { attn::apply_rotary<float>(x, rotary(-2, false)); }, {"rotary_dim (-2)"});
  for (double theta : {0.0, -1.0, std::numeric_limits<double>::infinity()})
    ExpectInvalid([&] { attn::apply_rotary<float>(x, rotary(0, false, theta)); }, {"theta must be > 0"});
  ExpectInvalid([&] { attn::apply_rotary<float>(x, rotary(0, false), -1); }, {"position_offset (-1)"});
  const Tensor<float> x3 = random_tensor<float>({2, 5, 8}, 1);
  ExpectInvalid([&] { attn::apply_rotary<float>(x3, rotary(0, false)); }, {"(B, H, L, D)", "(2, 5, 8)"});

  Tensor<float> y = x;
  const HeadsView<float> view = HeadsView<float>::bhnd(y.data(), 1, 2, 5, 8);
  const attn::RotaryTable<float> len4(rotary(0, false), 8, 4), dim6(rotary(0, false), 6, 5);
  ExpectInvalid([&] { len4.apply(view); }, {"apply_rotary", "view (1, 2, 5, 8)", "length 4"});
  ExpectInvalid([&] { dim6.apply(view); }, {"apply_rotary", "view (1, 2, 5, 8)", "head_dim 6"});
  const Tensor<std::int64_t> pos3({3, 5}, std::int64_t(0));
  const attn::RotaryTable<float> batch3(rotary(0, false), 8, pos3);
  ExpectInvalid([&] { batch3.apply(view); }, {"apply_rotary", "batch 3"});
  const Tensor<std::int64_t> pos3d({1, 1, 5}, std::int64_t(0));
  ExpectInvalid([&] { attn::RotaryTable<float>(rotary(0, false), 8, pos3d); }, {"positions has shape (1, 1, 5)"});
  EXPECT_TRUE(same_bits(y, x));  // no failed apply touched it
}

// Each pair keeps its norm; dimensions past rotary_dim pass through bit for bit; the
// rotated ones do change (position > 0).
TYPED_TEST(Decoding, RotaryTurnsPairsAndPassesTheRestThrough) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({2, 3, 6, 10}, 31);
  for (bool interleaved : {false, true})
    for (Index rd : {10, 4}) {
      SCOPED_TRACE(std::string(interleaved ? "interleaved" : "rotate_half") + " rotary_dim " + std::to_string(rd));
      const Tensor<T> y = attn::apply_rotary<T>(x, rotary(rd, interleaved), 5);
      double worst = 0;
      bool moved = false;
      for (Index r = 0; r < 2 * 3 * 6; ++r) {
        const T* a = x.data() + r * 10;
        const T* b = y.data() + r * 10;
        for (auto [i, j] : rotary_pairs(rd, interleaved)) {
          worst = std::max(worst, std::abs(std::hypot(double(a[i]), double(a[j])) - std::hypot(double(b[i]), double(b[j]))));
          moved = moved || a[i] != b[i];
        }
        for (Index d = rd; d < 10; ++d) ASSERT_EQ(a[d], b[d]) << "row " << r << " dim " << d;
      }
      EXPECT_LE(worst, tight<T>());
      EXPECT_TRUE(moved);
    }
}

// An offset p is the explicit positions p .. p+L-1; per-batch positions (B, L) rotate each
// batch element by its own row; a strided (B, L, H*D) view rotates as its (B, H, L, D) copy.
TYPED_TEST(Decoding, RotaryPositionsOffsetsAndPerBatchRows) {
  using T = TypeParam;
  const Index len = 5, p = 7;
  const RotaryOptions opt = rotary(6, false);
  const Tensor<T> x = random_tensor<T>({2, 3, len, 8}, 33);
  const Tensor<std::int64_t> shared({len}, {p, p + 1, p + 2, p + 3, p + 4});
  Tensor<T> y = x;
  attn::RotaryTable<T>(opt, 8, shared).apply(HeadsView<T>::bhnd(y.data(), 2, 3, len, 8));
  EXPECT_TRUE(same_bits(y, attn::apply_rotary<T>(x, opt, p)));
  EXPECT_FALSE(same_bits(y, attn::apply_rotary<T>(x, opt, p + 1)));

  const Tensor<std::int64_t> rows({2, len}, {3, 4, 5, 6, 7, 40, 0, 0, 9, 2});
  Tensor<T> per_batch = x;
  attn::RotaryTable<T>(opt, 8, rows).apply(HeadsView<T>::bhnd(per_batch.data(), 2, 3, len, 8));
  for (Index b = 0; b < 2; ++b) {
    Tensor<T> alone = Tensor<T>::from_data({1, 3, len, 8}, x.data() + b * 3 * len * 8);
    const Tensor<std::int64_t> row = Tensor<std::int64_t>::from_data({len}, rows.data() + b * len);
    attn::RotaryTable<T>(opt, 8, row).apply(HeadsView<T>::bhnd(alone.data(), 1, 3, len, 8));
    EXPECT_TRUE(std::equal(alone.data(), alone.data() + alone.numel(), per_batch.data() + b * alone.numel())) << b;
  }
  EXPECT_TRUE(std::equal(per_batch.data(), per_batch.data() + 3 * len * 8, attn::apply_rotary<T>(x, opt, 3).data()));

  Tensor<T> bnhd({2, len, 3 * 8});  // x as (B, L, H*D) rows
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 3; ++h)
      for (Index n = 0; n < len; ++n)
        for (Index d = 0; d < 8; ++d) bnhd(b, n, h * 8 + d) = x(b, h, n, d);
  attn::apply_rotary(HeadsView<T>::bnhd(bnhd.data(), 2, len, 3, 8, 24), opt, p);
  EXPECT_TRUE(same_bits(copy_heads(HeadsView<const T>::bnhd(bnhd.data(), 2, len, 3, 8, 24)), attn::apply_rotary<T>(x, opt, p)));
}

/// <R_m q, R_n k> for head vectors q, k (1, 1, 1, D).
template <class T>
double rotated_dot(const Tensor<T>& q, const Tensor<T>& k, const RotaryOptions& opt, Index m, Index n) {
  const Tensor<T> a = attn::apply_rotary<T>(q, opt, m), b = attn::apply_rotary<T>(k, opt, n);
  double s = 0;
  for (Index d = 0; d < q.numel(); ++d) s += double(a[d]) * double(b[d]);
  return s;
}

// The score of q at position m and k at position n depends on m - n only (both pairings,
// partial rotary too), and m = n gives the unrotated q . k.
TYPED_TEST(Decoding, RotaryScoresDependOnRelativePositionOnly) {
  using T = TypeParam;
  const Tensor<T> q = random_tensor<T>({1, 1, 1, 8}, 35), k = random_tensor<T>({1, 1, 1, 8}, 36);
  double qk = 0;
  for (Index d = 0; d < 8; ++d) qk += double(q[d]) * double(k[d]);
  for (bool interleaved : {false, true})
    for (Index rd : {8, 6}) {
      SCOPED_TRACE(std::string(interleaved ? "interleaved" : "rotate_half") + " rotary_dim " + std::to_string(rd));
      const RotaryOptions opt = rotary(rd, interleaved);
      const double base = rotated_dot(q, k, opt, 7, 3);
      for (auto [m, n] : {std::pair<Index, Index>{4, 0}, {104, 100}, {1003, 999}})
        EXPECT_NEAR(rotated_dot(q, k, opt, m, n), base, 10 * tight<T>()) << m << " " << n;
      EXPECT_GT(std::abs(rotated_dot(q, k, opt, 8, 3) - base), 1e-3);  // another distance, another score
      EXPECT_NEAR(rotated_dot(q, k, opt, 50, 50), qk, 10 * tight<T>());
    }
}

// Pairs (2i, 2i+1) and pairs (i, i + R/2) are the same rotation with the dimensions permuted.
TYPED_TEST(Decoding, RotaryPairingsArePermutationsOfEachOther) {
  using T = TypeParam;
  const Index rd = 6, dim = 8;
  const Tensor<T> x = random_tensor<T>({2, 2, 4, dim}, 37);
  std::vector<Index> to_half(dim);  // interleaved dim j sits at to_half[j] in rotate_half order
  for (Index j = 0; j < dim; ++j) to_half[j] = j >= rd ? j : (j % 2 == 0 ? j / 2 : j / 2 + rd / 2);
  const auto permuted = [&](const Tensor<T>& t) {
    Tensor<T> out(t.shape());
    for (Index r = 0; r < t.numel() / dim; ++r)
      for (Index j = 0; j < dim; ++j) out[r * dim + to_half[j]] = t[r * dim + j];
    return out;
  };
  const Tensor<T> interleaved = attn::apply_rotary<T>(x, rotary(rd, true), 11);
  const Tensor<T> half = attn::apply_rotary<T>(permuted(x), rotary(rd, false), 11);
  EXPECT_TRUE(same_bits(permuted(interleaved), half));
  EXPECT_FALSE(same_bits(interleaved, attn::apply_rotary<T>(x, rotary(rd, false), 11)));
}

// ---------------------------------------------------------------------------------------
// Incremental == one-shot
// ---------------------------------------------------------------------------------------

/// One causal decoding step of either attention layer, with these masks, returning the
/// output only.
template <class T, class S>
Tensor<T> decode(const attn::MultiHeadAttention<T>& m, const Tensor<T>& x, KVCache<T, S>& cache,
                 const attn::AttentionMasks<T>& masks = {}) {
  attn::MhaArgs<T> args;
  static_cast<attn::AttentionMasks<T>&>(args) = masks;
  args.causal = attn::Causal::kBottomRight;
  return m.forward(x, cache, args).output;
}
template <class T, class S>
Tensor<T> decode(const attn::GroupedQueryAttention<T>& m, const Tensor<T>& x, KVCache<T, S>& cache,
                 const attn::AttentionMasks<T>& masks = {}) {
  attn::GqaArgs<T> args;
  static_cast<attn::AttentionMasks<T>&>(args) = masks;
  return m.forward(x, cache, args);
}

/// `full` (the one-shot outputs for x) against x fed chunk by chunk through a fresh cache,
/// for chunk sizes 1, 3 and 4 (neither divides 10 or 37).
template <class T, class Model>
void expect_chunks_match(const Model& m, const Tensor<T>& x, const Tensor<T>& full) {
  for (Index chunk : {1, 3, 4}) {
    SCOPED_TRACE("length " + std::to_string(x.size(1)) + ", chunk " + std::to_string(chunk));
    KVCache<T> cache = m.make_cache(x.size(0), x.size(1) + 1);
    const Tensor<T> inc = in_chunks(x, chunk, [&](const Tensor<T>& c, Index) { return decode(m, c, cache); });
    EXPECT_EQ(cache.length(), x.size(1));
    EXPECT_TRUE(AllClose(inc, full, tight<T>()));
  }
}

TYPED_TEST(Decoding, MhaIncrementalMatchesCausalForward) {
  using T = TypeParam;
  attn::MultiHeadAttention<T> m(16, 4);
  randomize(m, 41);
  attn::MhaArgs<T> causal;
  causal.causal = attn::Causal::kBottomRight;
  for (Index len : {10, 37}) {
    const Tensor<T> x = random_tensor<T>({2, len, 16}, 43);
    expect_chunks_match(m, x, m.forward(x, x, x, causal).output);
  }
}

struct GqaCase {
  const char* name;
  Index embed, heads, kv_heads, head_dim;
  attn::GqaOptions options;
};

std::vector<GqaCase> gqa_cases() {
  attn::GqaOptions half, inter, partial, none, window, cap;
  inter.rotary.interleaved = true;
  partial.rotary.rotary_dim = 4;
  partial.qkv_bias = true;
  none.rope = false;
  window.sliding_window = 3;
  window.rotary.interleaved = true;
  cap.softcap = 0.3;
  return {{"multi-query K=1", 16, 4, 1, 0, half},  {"K=H interleaved", 16, 4, 4, 0, inter},
          {"K=2 of H=6", 24, 6, 2, 0, half},         {"partial rotary 4 of 8, biases", 16, 4, 2, 8, partial},
          {"no rope", 16, 4, 2, 0, none},            {"sliding window 3", 16, 4, 2, 0, window},
          {"softcap 0.3, head_dim 6", 16, 4, 2, 6, cap}};
}

TYPED_TEST(Decoding, GqaIncrementalMatchesFullSequence) {
  using T = TypeParam;
  for (const GqaCase& c : gqa_cases()) {
    SCOPED_TRACE(c.name);
    attn::GroupedQueryAttention<T> m(c.embed, c.heads, c.kv_heads, c.head_dim, c.options);
    randomize(m, 47);
    for (Index len : {10, 37}) {
      const Tensor<T> x = random_tensor<T>({2, len, c.embed}, 49);
      expect_chunks_match(m, x, m.forward(x));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Rolling caches
// ---------------------------------------------------------------------------------------

// A rolling cache keeps the last window - 1 positions when it runs out of room, in order,
// and counts positions across the drops; its memory is allocated once.
TYPED_TEST(Decoding, RollingCacheKeepsTheLastPositions) {
  using T = TypeParam;
  KVCache<T> c(2, 3, 8, 4), all(2, 3, 40, 4);
  c.set_rolling_window(3);
  const T* base = c.keys().data;
  const std::size_t bytes = c.bytes();
  Index appended = 0;
  for (const Index n : {5, 3, 1, 4, 6, 2, 1, 1, 6}) {
    const Shape s{2, 3, n, 4};
    const Tensor<T> k = random_tensor<T>(s, 100 + appended), v = random_tensor<T>(s, 200 + appended);
    const Index expected = c.length_after(n);
    c.append(heads_of(k), heads_of(v));
    all.append(heads_of(k), heads_of(v));
    appended += n;
    ASSERT_EQ(c.length(), expected);
    ASSERT_EQ(c.position(), appended);
    ASSERT_EQ(c.first() + c.length(), appended);
    ASSERT_GE(c.length(), std::min<Index>(appended, 2 + n));  // the window's 2 older ones, and the chunk
    for (Index b = 0; b < 2; ++b)
      for (Index h = 0; h < 3; ++h) {
        EXPECT_EQ(c.keys().head(b, h), all.keys().head(b, h).middleRows(c.first(), c.length()));
        EXPECT_EQ(c.values().head(b, h), all.values().head(b, h).middleRows(c.first(), c.length()));
      }
  }
  EXPECT_GT(c.first(), 0);
  EXPECT_EQ(c.keys().data, base);
  EXPECT_EQ(c.bytes(), bytes);
  c.reset();
  EXPECT_EQ(c.position(), 0);
  EXPECT_EQ(c.rolling_window(), 3);
}

// Decoding a sliding-window GroupedQueryAttention (RoPE) through a rolling cache of twice the
// window, token by token and in chunks, equals the full sequence's attention restricted to
// the window, also in int8. The keys are the same, in the same order; the bits differ where
// the kernel's blocks start at another key (the cache holds fewer positions before them).
TYPED_TEST(Decoding, RollingCacheMatchesTheFullSequenceInTheWindow) {
  using T = TypeParam;
  attn::GqaOptions o;
  o.sliding_window = 6;
  attn::GroupedQueryAttention<T> m(16, 4, 2, 0, o);
  randomize(m, 81);
  const Tensor<T> x = random_tensor<T>({2, 50, 16}, 83);
  const Tensor<T> full = m.forward(x);
  for (const Index chunk : {1, 3, 7}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    KVCache<T> cache = m.make_cache(2, 12);
    cache.set_rolling_window(6);
    const Tensor<T> rolled = in_chunks(x, chunk, [&](const Tensor<T>& c, Index) { return m.forward(c, cache); });
    EXPECT_TRUE(AllClose(rolled, full, tight<T>()));
    EXPECT_EQ(cache.position(), 50);
    EXPECT_GT(cache.first(), 0);
    if constexpr (std::is_same<T, float>::value) {
      KVCache<T, std::int8_t> q8 = m.template make_cache<std::int8_t>(2, 16), whole = m.template make_cache<std::int8_t>(2, 50);
      q8.set_rolling_window(8);  // wider than the layer's: allowed
      const auto run = [&](auto& c) { return in_chunks(x, chunk, [&](const Tensor<T>& p, Index) { return m.forward(p, c); }); };
      EXPECT_TRUE(AllClose(run(q8), run(whole), tight<T>()));
    }
  }
}

// What a rolling cache refuses, each time with the cache unchanged: a window outside
// [1, capacity], a chunk beyond the room it can make, and a layer that sees further back
// than it keeps (no sliding window, or a wider one).
TYPED_TEST(Decoding, RollingCacheRejectsMisfitsUnchanged) {
  using T = TypeParam;
  KVCache<T> c(2, 2, 8, 8);
  ExpectInvalid([&] { c.set_rolling_window(0); }, {"set_rolling_window", "window 0", "capacity 8"});
  ExpectInvalid([&] { c.set_rolling_window(9); }, {"set_rolling_window", "window 9", "capacity 8"});
  EXPECT_EQ(c.rolling_window(), 0);
  c.set_rolling_window(4);
  fill(c, 6, 85);
  const CacheState<T> before(c);
  EXPECT_EQ(c.room(), 5);
  ExpectInvalid([&] { fill(c, 6, 87); }, {"6 more positions do not fit", "length 6", "capacity 8", "rolling window 4"});
  EXPECT_TRUE(Unchanged(c, before));
  attn::GqaOptions narrow, wide;
  narrow.sliding_window = 4;
  wide.sliding_window = 5;
  const Tensor<T> x = random_tensor<T>({2, 1, 16}, 89);
  ExpectInvalid([&] { attn::GroupedQueryAttention<T>(16, 4, 2, 8).forward(x, c); },
                {"GroupedQueryAttention::forward", "rolls with a window of 4", "none"});
  ExpectInvalid([&] { attn::GroupedQueryAttention<T>(16, 4, 2, 8, wide).forward(x, c); },
                {"rolls with a window of 4", "sliding window is 5"});
  ExpectInvalid([&] { attn::MultiHeadAttention<T>(16, 2).forward(x, c); }, {"MultiHeadAttention::forward", "rolls"});
  ExpectInvalid([&] { attn::GroupedQueryAttention<T>(16, 4, 2, 8, narrow).forward(random_tensor<T>({2, 6, 16}, 91), c); },
                {"6 more tokens do not fit", "rolling window 4"});
  EXPECT_TRUE(Unchanged(c, before));
  attn::GroupedQueryAttention<T>(16, 4, 2, 8, narrow).forward(random_tensor<T>({2, 5, 16}, 93), c);  // fits exactly
  EXPECT_EQ(c.length(), 8);
  EXPECT_EQ(c.position(), 11);
}

/// Rows [from, from + c) of an (L, L) mask over the first from + c keys: the mask of that
/// chunk with a cache.
template <class T>
Tensor<T> mask_rows(const Tensor<T>& mask, Index from, Index c) {
  Tensor<T> m({c, from + c});
  for (Index i = 0; i < c; ++i)
    for (Index j = 0; j < from + c; ++j) m(i, j) = mask(from + i, j);
  return m;
}

/// An attention mask: chunk by chunk with the chunk's rows of it equals the one-shot pass
/// `full` with all of it.
template <class T, class Model>
void expect_masked_chunks_match(const Model& m, const Tensor<T>& x, const Tensor<T>& mask, const Tensor<T>& full) {
  KVCache<T> cache = m.make_cache(x.size(0), x.size(1));
  const Tensor<T> inc = in_chunks(x, 3, [&](const Tensor<T>& c, Index) {
    const Tensor<T> rows = mask_rows(mask, cache.length(), c.size(1));
    attn::AttentionMasks<T> masks;
    masks.attn_mask = attn::Mask<T>::additive(rows);
    return decode(m, c, cache, masks);
  });
  EXPECT_TRUE(AllClose(inc, full, tight<T>()));
}

TYPED_TEST(Decoding, AttentionMaskRowsPerChunkMatchOneShot) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({2, 10, 16}, 95), mask = random_tensor<T>({10, 10}, 97, 2.0);
  attn::MultiHeadAttention<T> mha(16, 4);
  randomize(mha, 99);
  attn::MhaArgs<T> args;
  args.attn_mask = attn::Mask<T>::additive(mask);
  args.causal = attn::Causal::kBottomRight;
  expect_masked_chunks_match(mha, x, mask, mha.forward(x, x, x, args).output);
  attn::GroupedQueryAttention<T> gqa(16, 4, 2);
  randomize(gqa, 101);
  attn::GqaArgs<T> gqa_args;
  gqa_args.attn_mask = args.attn_mask;
  expect_masked_chunks_match(gqa, x, mask, gqa.forward(x, gqa_args));
}

/// A small decoder layer with random parameters.
template <class T>
attn::TransformerDecoderLayer<T> decoder_layer(bool norm_first) {
  attn::TransformerLayerOptions o;
  o.dim_feedforward = 32;
  o.norm_first = norm_first;
  o.activation = norm_first ? attn::Activation::kGelu : attn::Activation::kRelu;
  attn::TransformerDecoderLayer<T> layer(16, 4, o);
  randomize(layer, 51);
  return layer;
}

// After encode_memory, the target chunk by chunk (with a memory key padding mask) equals
// forward(tgt, memory) with causal self-attention.
TYPED_TEST(Decoding, DecoderIncrementalMatchesFullSequence) {
  using T = TypeParam;
  const Tensor<T> memory = random_tensor<T>({2, 7, 16}, 53);
  Tensor<bool> padded({2, 7}, false);
  padded(1, 5) = padded(1, 6) = true;
  attn::DecoderArgs<T> args, causal;
  args.memory.key_padding_mask = attn::Mask<T>::block_where_true(padded);
  causal = args;
  causal.self.causal = attn::Causal::kTopLeft;
  for (bool norm_first : {false, true}) {
    const attn::TransformerDecoderLayer<T> layer = decoder_layer<T>(norm_first);
    for (Index len : {10, 37}) {
      const Tensor<T> tgt = random_tensor<T>({2, len, 16}, 55), full = layer.forward(tgt, memory, causal);
      for (Index chunk : {1, 3, 4}) {
        SCOPED_TRACE("norm_first " + std::to_string(norm_first) + ", length " + std::to_string(len) + ", chunk " +
                     std::to_string(chunk));
        attn::DecoderCache<T> cache = layer.make_cache(2, len, 7);
        layer.encode_memory(memory, cache);
        const Tensor<T> inc = in_chunks(tgt, chunk, [&](const Tensor<T>& c, Index) { return layer.forward(c, cache, causal); });
        EXPECT_TRUE(AllClose(inc, full, tight<T>()));
        // The full pass's arguments (tgt_is_causal: top-left) count positions from the start
        // of the sequence with a cache: bottom-right is the same mask there.
        layer.encode_memory(memory, cache);
        attn::DecoderArgs<T> bottom_right = causal;
        bottom_right.self.causal = attn::Causal::kBottomRight;
        const Tensor<T> same =
            in_chunks(tgt, chunk, [&](const Tensor<T>& c, Index) { return layer.forward(c, cache, bottom_right); });
        EXPECT_TRUE(same_bits(same, inc));
      }
      // Without causal masking a chunk sees all of itself: one chunk is the full non-causal pass.
      attn::DecoderCache<T> cache = layer.make_cache(2, len, 7);
      layer.encode_memory(memory, cache);
      EXPECT_TRUE(AllClose(layer.forward(tgt, cache, args), layer.forward(tgt, memory, args), tight<T>()));
      EXPECT_FALSE(AllClose(layer.forward(tgt, memory, args), full, 1e-3));
    }
  }
}

// encode_memory starts a new sequence: a memory shorter than the cache's capacity, then
// another memory and target through the same caches, each equal to its one-shot pass.
TYPED_TEST(Decoding, DecoderEncodeMemoryStartsANewSequence) {
  using T = TypeParam;
  const attn::TransformerDecoderLayer<T> layer = decoder_layer<T>(false);
  attn::DecoderArgs<T> causal;
  causal.self.causal = attn::Causal::kTopLeft;
  attn::DecoderCache<T> cache = layer.make_cache(2, 12, 9);
  for (Index s : {5, 9}) {
    SCOPED_TRACE("memory of " + std::to_string(s));
    const Tensor<T> memory = random_tensor<T>({2, s, 16}, 103 + s), tgt = random_tensor<T>({2, 12 - s, 16}, 107 + s);
    layer.encode_memory(memory, cache);
    EXPECT_EQ(cache.self.length(), 0);
    EXPECT_EQ(cache.memory.length(), s);
    const Tensor<T> inc = in_chunks(tgt, 2, [&](const Tensor<T>& c, Index) { return layer.forward(c, cache, causal); });
    EXPECT_TRUE(AllClose(inc, layer.forward(tgt, memory, causal), tight<T>()));
  }
}

// ---------------------------------------------------------------------------------------
// Errors on the incremental paths: std::invalid_argument, the caches unchanged
// ---------------------------------------------------------------------------------------

TEST(DecodingErrors, GqaRejectsBadConstructorArguments) {
  using G = attn::GroupedQueryAttention<float>;
  ExpectInvalid([] { G(16, 4, 3); }, {"num_heads (4)", "multiple of num_kv_heads (3)"});
  ExpectInvalid([] { G(16, 4, 0); }, {"num_kv_heads (0)", "positive"});
  attn::GqaOptions o;
  o.rotary.rotary_dim = 3;
  ExpectInvalid([&] { G(16, 4, 2, 0, o); }, {"rotary_dim (3)", "even"});
  o.rotary.rotary_dim = 6;
  ExpectInvalid([&] { G(16, 4, 2, 0, o); }, {"rotary_dim (6)", "head_dim (4)"});
  o.rotary = {};
  o.rotary.theta = 0;
  ExpectInvalid([&] { G(16, 4, 2, 0, o); }, {"theta must be > 0"});
  o.rotary = {};
  for (Index w : {0, -2}) {
    o.sliding_window = w;
    ExpectInvalid([&] { G(16, 4, 2, 0, o); }, {"sliding_window must be >= 1", std::to_string(w).c_str()});
  }
  o.sliding_window.reset();
  for (double cap : {0.0, -1.0}) {
    o.softcap = cap;
    ExpectInvalid([&] { G(16, 4, 2, 0, o); }, {"softcap must be > 0"});
  }
}

/// decode(m, x[:, from:], cache) against the one-shot outputs `full` of x from there on.
template <class T, class Model>
void expect_resumes(const Model& m, const Tensor<T>& x, KVCache<T>& cache, const Tensor<T>& full) {
  const Index nb = x.size(0), from = cache.length(), rest = x.size(1) - from;
  EXPECT_TRUE(AllClose(decode(m, part(x, 0, nb, from, rest), cache), part(full, 0, nb, from, rest), tight<T>()));
}

/// Misfits both attention layers reject on the incremental path (x (2, 8, E), `full` its
/// one-shot outputs): each leaves the cache as it was, and decoding then resumes exactly.
template <class T, class Model>
void expect_misfits_leave_cache_unchanged(const Model& m, Index kv_heads, Index head_dim, const Tensor<T>& x,
                                          const Tensor<T>& full) {
  KVCache<T> cache = m.make_cache(2, 8);
  decode(m, part(x, 0, 2, 0, 3), cache);
  const CacheState<T> before(cache);
  const Tensor<T> next = part(x, 0, 2, 3, 2);
  ExpectInvalid([&] { decode(m, part(x, 0, 2, 2, 6), cache); }, {"6 more tokens do not fit", "length 3", "capacity 8"});
  const Tensor<bool> four({2, 4}, false), rows({3, 5}, false);  // 5 keys after the append
  attn::AttentionMasks<T> bad;
  bad.key_padding_mask = attn::Mask<T>::block_where_true(four);
  ExpectInvalid([&] { decode(m, next, cache, bad); }, {"key_padding_mask", "(2, 4)"});
  bad = {};
  bad.attn_mask = attn::Mask<T>::block_where_true(rows);
  ExpectInvalid([&] { decode(m, next, cache, bad); }, {"attn_mask", "(3, 5)"});
  ExpectInvalid([&] { decode(m, part(x, 0, 1, 3, 2), cache); }, {"the cache is (batch 2"});
  EXPECT_TRUE(Unchanged(cache, before));
  for (Index nb : {2, 3})
    for (Index nk : {kv_heads, kv_heads + 1})
      for (Index d : {head_dim, head_dim + 2}) {
        if (nb == 2 && nk == kv_heads && d == head_dim) continue;
        KVCache<T> other(nb, nk, 8, d);
        fill(other, 3, 61);
        const CacheState<T> was(other);
        const std::string is = "(batch " + std::to_string(nb) + ", ", dim = "head_dim " + std::to_string(d) + ")";
        ExpectInvalid([&] { decode(m, next, other); }, {"the cache is", is.c_str(), dim.c_str()});
        EXPECT_TRUE(Unchanged(other, was));
      }
  expect_resumes(m, x, cache, full);
}

TYPED_TEST(Decoding, GqaMisfitsLeaveTheCacheUnchanged) {
  using T = TypeParam;
  attn::GroupedQueryAttention<T> m(16, 4, 2);
  randomize(m, 63);
  const Tensor<T> x = random_tensor<T>({2, 8, 16}, 65);
  expect_misfits_leave_cache_unchanged(m, 2, 4, x, m.forward(x));
}

TYPED_TEST(Decoding, MhaMisfitsLeaveTheCacheUnchanged) {
  using T = TypeParam;
  attn::MultiHeadAttention<T> m(16, 4);
  randomize(m, 67);
  const Tensor<T> x = random_tensor<T>({2, 8, 16}, 69);
  attn::MhaArgs<T> causal;
  causal.causal = attn::Causal::kBottomRight;
  expect_misfits_leave_cache_unchanged(m, 4, 4, x, m.forward(x, x, x, causal).output);
}

// With a cache, causal masking counts positions from the start of the sequence: top-left
// (the full pass's is_causal) and bottom-right are the same mask, and without causal masking
// the chunk's queries see every cached key (one chunk: the full non-causal pass).
TYPED_TEST(Decoding, MhaCachedCausalFlagsCountPositions) {
  using T = TypeParam;
  attn::MultiHeadAttention<T> m(16, 4);
  randomize(m, 72);
  const Tensor<T> x = random_tensor<T>({2, 7, 16}, 74);
  attn::MhaArgs<T> top_left, bottom_right, none;
  top_left.causal = attn::Causal::kTopLeft;
  bottom_right.causal = attn::Causal::kBottomRight;
  for (Index chunk : {1, 3}) {
    KVCache<T> a = m.make_cache(2, 7), b = m.make_cache(2, 7);
    const Tensor<T> tl = in_chunks(x, chunk, [&](const Tensor<T>& c, Index) { return m.forward(c, a, top_left).output; });
    const Tensor<T> br = in_chunks(x, chunk, [&](const Tensor<T>& c, Index) { return m.forward(c, b, bottom_right).output; });
    EXPECT_TRUE(same_bits(tl, br));
    EXPECT_TRUE(AllClose(tl, m.forward(x, top_left).output, tight<T>()));
  }
  KVCache<T> cache = m.make_cache(2, 7);
  const Tensor<T> all = m.forward(x, none).output;
  EXPECT_TRUE(AllClose(m.forward(x, cache, none).output, all, tight<T>()));
  EXPECT_FALSE(AllClose(all, m.forward(x, top_left).output, 1e-3));
}

// What MultiHeadAttention cannot decode: extra keys, kdim != embed_dim.
TEST(DecodingErrors, MhaRejectsWhatACacheCannotHold) {
  const Tensor<float> x = random_tensor<float>({2, 3, 16}, 71);
  attn::MultiHeadAttention<float> m(16, 4);
  KVCache<float> cache = m.make_cache(2, 8);
  fill(cache, 2, 73);
  const CacheState<float> before(cache);
  attn::MultiHeadAttentionOptions o;
  o.add_bias_kv = true;
  ExpectInvalid([&] { attn::MultiHeadAttention<float>(16, 4, o).forward(x, cache); }, {"add_bias_kv"});
  o = {};
  o.kdim = 8;
  ExpectInvalid([&] { attn::MultiHeadAttention<float>(16, 4, o).forward(x, cache); }, {"key has shape (2, 3, 16)", "8 features"});
  EXPECT_TRUE(Unchanged(cache, before));
}

/// Both caches of a decoder unchanged since `self` and `memory` were taken.
template <class T>
::testing::AssertionResult Unchanged(const attn::DecoderCache<T>& c, const CacheState<T>& self, const CacheState<T>& memory) {
  if (auto r = Unchanged(c.self, self); !r) return r << " (self-attention cache)";
  if (auto r = Unchanged(c.memory, memory); !r) return r << " (memory cache)";
  return ::testing::AssertionSuccess();
}

// A bad memory mask fails in the cross-attention, after the self-attention appended the
// chunk: the layer rolls the self cache back. Other misfits leave both caches as they were,
// and decoding then resumes to the one-shot outputs.
TYPED_TEST(Decoding, DecoderErrorsLeaveBothCachesUnchanged) {
  using T = TypeParam;
  const attn::TransformerDecoderLayer<T> layer = decoder_layer<T>(false);
  const Tensor<T> memory = random_tensor<T>({2, 7, 16}, 75), tgt = random_tensor<T>({2, 9, 16}, 77);
  attn::DecoderArgs<T> causal;
  causal.self.causal = attn::Causal::kTopLeft;
  const Tensor<T> full = layer.forward(tgt, memory, causal);
  attn::DecoderCache<T> cache = layer.make_cache(2, 9, 7);
  ExpectInvalid([&] { layer.forward(part(tgt, 0, 2, 0, 4), cache); }, {"encode_memory", "first"});
  EXPECT_EQ(cache.self.length(), 0);
  layer.encode_memory(memory, cache);
  layer.forward(part(tgt, 0, 2, 0, 4), cache, causal);
  const CacheState<T> self(cache.self), mem(cache.memory);
  const Tensor<T> next = part(tgt, 0, 2, 4, 2);
  const Tensor<bool> six({2, 6}, false), five({2, 5}, false);
  attn::DecoderArgs<T> bad;
  bad.memory.key_padding_mask = attn::Mask<T>::block_where_true(six);  // the memory has 7 tokens
  ExpectInvalid([&] { layer.forward(next, cache, bad); }, {"forward_memory", "key_padding_mask", "(2, 6)"});
  EXPECT_TRUE(Unchanged(cache, self, mem));
  bad = {};
  bad.self.key_padding_mask = attn::Mask<T>::block_where_true(five);  // 6 target tokens after the append
  ExpectInvalid([&] { layer.forward(next, cache, bad); }, {"key_padding_mask", "(2, 5)"});
  ExpectInvalid([&] { layer.forward(part(tgt, 0, 2, 3, 6), cache); }, {"6 more tokens do not fit"});
  ExpectInvalid([&] { layer.forward(part(tgt, 0, 1, 4, 2), cache); }, {"the cache is (batch 2"});
  ExpectInvalid([&] { layer.encode_memory(random_tensor<T>({2, 8, 16}, 79), cache); }, {"8 tokens", "capacity 7"});
  ExpectInvalid([&] { layer.encode_memory(part(memory, 0, 1, 0, 7), cache); }, {"the cache is (batch 2"});
  EXPECT_TRUE(Unchanged(cache, self, mem));
  EXPECT_TRUE(AllClose(layer.forward(part(tgt, 0, 2, 4, 5), cache, causal), part(full, 0, 2, 4, 5), tight<T>()));
}

// ---------------------------------------------------------------------------------------
// Ragged prompts: left padding masked by a key padding mask over every cached position
// ---------------------------------------------------------------------------------------

/// Batch of two: a prompt of 6 tokens, and one of 4 left-padded by 2 (masked), prefilled
/// in one chunk, then 5 tokens decoded one at a time. Each element's real tokens give what
/// the element alone, unpadded, gives in one chunk.
template <class T, class Model>
void expect_ragged_matches_alone(const Model& m, Index embed, double tol) {
  const Index pad = 2, prompt = 6, total = prompt + 5;
  const Tensor<T> x = random_tensor<T>({2, total, embed}, 81);
  KVCache<T> cache = m.make_cache(2, total);
  Tensor<T> y({2, total, embed});
  for (Index from = 0, c = prompt; from < total; from += c, c = 1) {
    Tensor<bool> padding({2, from + c}, false);
    for (Index n = 0; n < pad; ++n) padding(1, n) = true;
    attn::AttentionMasks<T> masks;
    masks.key_padding_mask = attn::Mask<T>::block_where_true(padding);
    paste(y, decode(m, part(x, 0, 2, from, c), cache, masks), from);
  }
  for (Index b = 0; b < 2; ++b) {
    SCOPED_TRACE("batch element " + std::to_string(b));
    const Index skip = b == 1 ? pad : 0;
    KVCache<T> alone = m.make_cache(1, total);
    const Tensor<T> want = decode(m, part(x, b, 1, skip, total - skip), alone);
    EXPECT_TRUE(AllClose(part(y, b, 1, skip, total - skip), want, tol));
  }
}

TYPED_TEST(Decoding, RaggedPromptsMatchUnpaddedRunsMha) {
  using T = TypeParam;
  attn::MultiHeadAttention<T> m(16, 4);
  randomize(m, 83);
  expect_ragged_matches_alone<T>(m, 16, tight<T>());
}

// forward(x, cache) puts every batch element at positions cache.length() .. (no per-element
// positions), so the padded element's real tokens sit 2 positions later than alone. Without
// rope that changes nothing; with rope only the relative positions enter the scores, so
// the outputs agree up to the rounding of other angles.
TYPED_TEST(Decoding, RaggedPromptsMatchUnpaddedRunsGqa) {
  using T = TypeParam;
  attn::GqaOptions none;
  none.rope = false;
  for (const attn::GqaOptions& o : {none, attn::GqaOptions{}}) {
    SCOPED_TRACE(o.rope ? "rope" : "no rope");
    attn::GroupedQueryAttention<T> m(16, 4, 2, 0, o);
    randomize(m, 85);
    expect_ragged_matches_alone<T>(m, 16, tight<T>());
  }
}

// ---------------------------------------------------------------------------------------
// A decode loop's memory
// ---------------------------------------------------------------------------------------

/// A prompt of 4 tokens through step(4), then 64 single tokens through step(1), on one
/// thread: from the first single token on, the workspace keeps its size (the prompt's
/// scratch is reused; nothing grows with the cached length), and the caches never move
/// (addresses() gives where their memory is).
// ---------------------------------------------------------------------------------------
// KV caches stored in bfloat16, half or int8 (float32 compute). PyTorch's numbers for them
// are in test_decoding_reference (GqaStoredCache, KVCacheReference).
// ---------------------------------------------------------------------------------------

template <class S>
class StoredCache : public ::testing::Test {};
using StorageTypes = ::testing::Types<attn::bfloat16, attn::half, std::int8_t>;
TYPED_TEST_SUITE(StoredCache, StorageTypes);

/// The largest difference storage in S makes to a row x of keys or values: half an ulp of
/// the 16-bit type relative to |x|, or for int8 half a step of the row's scale.
template <class S>
double storage_error(double x, double row_max) {
  if (std::is_same<S, std::int8_t>::value) return row_max / 127 / 2 * (1 + 1e-6);
  return std::abs(x) * (std::is_same<S, attn::bfloat16>::value ? 0x1p-8 : 0x1p-11) * (1 + 1e-6);
}

// Each appended row is rounded (16-bit) or quantised (int8: a scale per row, |q| <= 127 and
// 127 at the row's largest value) once; bytes() counts S and the scales; misfits are rejected.
TYPED_TEST(StoredCache, AppendRoundsOrQuantisesEachRowOnce) {
  using S = TypeParam;
  constexpr bool int8 = std::is_same<S, std::int8_t>::value;
  KVCache<float, S> c(2, 3, 8, 5);
  EXPECT_EQ(c.bytes(), 2 * sizeof(S) * 2 * 3 * 8 * 5 + (int8 ? 2 * sizeof(float) * 2 * 3 * 8 : 0));
  const Tensor<float> k = random_tensor<float>({2, 3, 4, 5}, 3), v = random_tensor<float>({2, 3, 4, 5}, 4);
  c.append(heads_of(k), heads_of(v));
  ASSERT_EQ(c.length(), 4);
  EXPECT_EQ(bool(c.key_scales()), int8);
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 3; ++h)
      for (Index n = 0; n < 4; ++n) {
        const auto row = k.matrix().row(((b * 3 + h) * 4) + n);
        const double row_max = row.cwiseAbs().maxCoeff();
        const S* q = c.keys().row(b, h, n);
        const double scale = int8 ? c.key_scales().row(b, h)[n] : 1.0;
        int largest = 0;
        for (Index d = 0; d < 5; ++d) {
          EXPECT_LE(std::abs(double(q[d]) * scale - row(d)), storage_error<S>(row(d), row_max)) << b << h << n << d;
          largest = std::max(largest, int(std::abs(float(q[d]))));
        }
        if (int8) {
          EXPECT_EQ(largest, 127);
        }
      }
  ExpectInvalid([&] { c.append(heads_of(k), heads_of(random_tensor<float>({2, 3, 4, 4}, 5))); }, {"append", "v (2, 3, 4, 4)"});
  const Tensor<float> five = random_tensor<float>({2, 3, 5, 5}, 6);
  ExpectInvalid([&] { c.append(heads_of(five), heads_of(five)); }, {"5 more positions do not fit", "length 4", "capacity 8"});
  EXPECT_EQ(c.length(), 4);
}

// A row holding inf or NaN is stored as NaN (int8: its scale), so attention over it gives NaN
// as it would over the float32 row; the other rows and queries that cannot see it are unharmed.
TEST(StoredCacheInt8, NonFiniteRowsAreNaN) {
  KVCache<float, std::int8_t> c(1, 1, 3, 4);
  Tensor<float> k = random_tensor<float>({1, 1, 3, 4}, 7);
  k(0, 0, 1, 2) = std::numeric_limits<float>::infinity();
  k(0, 0, 2, 0) = std::numeric_limits<float>::quiet_NaN();
  const Tensor<float> v = random_tensor<float>({1, 1, 3, 4}, 8);
  c.append(heads_of(k), heads_of(v));
  EXPECT_TRUE(std::isfinite(c.key_scales().row(0, 0)[0]));
  EXPECT_TRUE(std::isnan(c.key_scales().row(0, 0)[1]));
  EXPECT_TRUE(std::isnan(c.key_scales().row(0, 0)[2]));
  const Tensor<float> q = random_tensor<float>({1, 1, 3, 4}, 9);
  Tensor<float> out({1, 1, 3, 4});
  attn::SdpaOptions<float> causal;
  causal.causal = attn::Causal::kTopLeft;
  attn::scaled_dot_product_attention<float>(heads_of(q), c, HeadsView<float>::bhnd(out.data(), 1, 1, 3, 4), causal);
  for (Index d = 0; d < 4; ++d) {
    EXPECT_TRUE(std::isfinite(out(0, 0, 0, d)));  // sees key 0 only
    EXPECT_TRUE(std::isnan(out(0, 0, 1, d)));
    EXPECT_TRUE(std::isnan(out(0, 0, 2, d)));
  }
}

/// decode() through a cache of any storage: chunks of `chunk` tokens of x.
template <class Model, class S>
Tensor<float> decode_stored(const Model& m, const Tensor<float>& x, Index chunk, KVCache<float, S>& cache) {
  return in_chunks(x, chunk, [&](const Tensor<float>& c, Index) { return decode(m, c, cache); });
}

/// How far outputs over a cache stored in S may be from float32's, relative to max |ref|:
/// about 4x what the storage's rounding made on Zen 5 (bfloat16 1.5e-3, half 1.6e-4, int8
/// 3.5e-3), a check that each kernel reads S right, not a reference (those are PyTorch's).
template <class S>
double stored_tolerance() {
  return std::is_same<S, std::int8_t>::value ? 1.2e-2 : std::is_same<S, attn::bfloat16>::value ? 6e-3 : 6e-4;
}

// GroupedQueryAttention, MultiHeadAttention and TransformerDecoderLayer decode through caches
// stored in S, in chunks of 1, 3 (the decode tile) and 7 (the tiled kernel), close to float32.
TYPED_TEST(StoredCache, ModulesDecodeCloseToFloat) {
  using S = TypeParam;
  const Tensor<float> x = random_tensor<float>({2, 19, 16}, 71), memory = random_tensor<float>({2, 9, 16}, 73);
  attn::GroupedQueryAttention<float> gqa(16, 4, 2);
  randomize(gqa, 75);
  attn::MultiHeadAttention<float> mha(16, 4);
  randomize(mha, 77);
  attn::MhaArgs<float> causal;
  causal.causal = attn::Causal::kBottomRight;
  const attn::TransformerDecoderLayer<float> layer = decoder_layer<float>(true);
  attn::DecoderArgs<float> dcausal;
  dcausal.self.causal = attn::Causal::kTopLeft;
  const Tensor<float> gqa_full = gqa.forward(x), mha_full = mha.forward(x, x, x, causal).output,
                      layer_full = layer.forward(x, memory, dcausal);
  for (Index chunk : {1, 3, 7}) {
    SCOPED_TRACE("chunks of " + std::to_string(chunk));
    auto gc = gqa.template make_cache<S>(2, 19);
    EXPECT_TRUE(AllClose(decode_stored(gqa, x, chunk, gc), gqa_full, stored_tolerance<S>()));
    auto mc = mha.template make_cache<S>(2, 19);
    EXPECT_TRUE(AllClose(decode_stored(mha, x, chunk, mc), mha_full, stored_tolerance<S>()));
    auto dc = layer.template make_cache<S>(2, 19, 9);
    layer.encode_memory(memory, dc);
    const Tensor<float> y = in_chunks(x, chunk, [&](const Tensor<float>& c, Index) { return layer.forward(c, dc, dcausal); });
    EXPECT_TRUE(AllClose(y, layer_full, stored_tolerance<S>()));
  }
}

// Decoding over a stored cache gives the same bits for every thread count, through both kernels.
TYPED_TEST(StoredCache, BitIdenticalForEveryThreadCount) {
  using S = TypeParam;
  attn::GroupedQueryAttention<float> gqa(64, 8, 2, 16);
  randomize(gqa, 79);
  const Tensor<float> x = random_tensor<float>({2, 150, 64}, 81);
  std::vector<Tensor<float>> runs;
  for (int threads : {1, 2, 3}) {
    attn::set_num_threads(threads);
    auto cache = gqa.template make_cache<S>(2, 150);
    runs.push_back(in_chunks(x, 75, [&](const Tensor<float>& c, Index first) {
      return first == 0 ? decode(gqa, c, cache) : decode_stored(gqa, c, 1, cache);
    }));
  }
  attn::set_num_threads(0);
  EXPECT_TRUE(same_bits(runs[0], runs[1]));
  EXPECT_TRUE(same_bits(runs[0], runs[2]));
}

template <class Step, class Addresses>
void expect_steady_memory(Step&& step, Addresses&& addresses) {
  attn::release_workspace();
  attn::set_num_threads(1);  // every scratch buffer on the calling thread, where workspace_bytes() sees it
  struct Restore {
    ~Restore() { attn::set_num_threads(0); }
  } restore;
  const auto where = addresses();
  step(4);
  const std::size_t after_prompt = attn::workspace_bytes();
  step(1);
  const std::size_t kept = attn::workspace_bytes();
  EXPECT_GT(kept, 0u);
  EXPECT_EQ(kept, after_prompt);
  for (Index i = 1; i < 64; ++i) {
    step(1);
    ASSERT_EQ(attn::workspace_bytes(), kept) << "token " << i;
    ASSERT_EQ(addresses(), where) << "token " << i;
  }
}

TYPED_TEST(Decoding, DecodeLoopAllocatesNothingNew) {
  using T = TypeParam;
  attn::GroupedQueryAttention<T> gqa(16, 4, 2);
  randomize(gqa, 87);
  KVCache<T> cache = gqa.make_cache(2, 68);
  const auto gqa_step = [&](Index c) { gqa.forward(random_tensor<T>({2, c, 16}, 89), cache); };
  expect_steady_memory(gqa_step, [&] { return std::vector<const T*>{cache.keys().data, cache.values().data}; });
  EXPECT_EQ(cache.length(), 68);

  const attn::TransformerDecoderLayer<T> layer = decoder_layer<T>(true);
  attn::DecoderCache<T> dc = layer.make_cache(2, 68, 7);
  layer.encode_memory(random_tensor<T>({2, 7, 16}, 91), dc);
  const auto layer_step = [&](Index c) { layer.forward(random_tensor<T>({2, c, 16}, 93), dc); };
  expect_steady_memory(layer_step, [&] {
    return std::vector<const T*>{dc.self.keys().data, dc.self.values().data, dc.memory.keys().data, dc.memory.values().data};
  });
  EXPECT_EQ(dc.self.length(), 68);
}
// ---------------------------------------------------------------------------------------
// Ragged batches: sequences of different lengths in one cache
// ---------------------------------------------------------------------------------------

// Each sequence appends at its own end; truncate(b, n), assign and pop change one sequence
// or undo an append; key_lengths() is empty while the lengths agree.
TYPED_TEST(Decoding, RaggedCacheHoldsEachSequenceAtItsOwnEnd) {
  using T = TypeParam;
  KVCache<T> c(3, 2, 9, 4), other(2, 2, 9, 4);
  fill(c, 5, 121);
  EXPECT_FALSE(c.ragged());
  EXPECT_TRUE(c.key_lengths().empty());
  const CacheState<T> five(c);
  c.truncate(1, 2);
  c.truncate(2, 0);
  EXPECT_TRUE(c.ragged());
  EXPECT_EQ(c.length(), 5);
  EXPECT_EQ(c.position(1), 2);
  ASSERT_EQ(c.key_lengths().shape(), Shape({3}));
  EXPECT_EQ(std::vector<std::int64_t>(c.key_lengths().data(), c.key_lengths().data() + 3),
            (std::vector<std::int64_t>{5, 2, 0}));
  const Shape s{3, 2, 3, 4};
  const Tensor<T> k = random_tensor<T>(s, 123), v = random_tensor<T>(s, 125);
  c.append(heads_of(k), heads_of(v));
  const Index want[3] = {8, 5, 3};
  for (Index b = 0; b < 3; ++b) {
    ASSERT_EQ(c.length(b), want[b]);
    for (Index h = 0; h < 2; ++h) {
      const Index kept = want[b] - 3;
      EXPECT_EQ(c.keys().head(b, h).topRows(kept), heads_of(five.keys).head(b, h).topRows(kept));
      EXPECT_EQ(c.keys().head(b, h).middleRows(kept, 3), heads_of(k).head(b, h));
      EXPECT_EQ(c.values().head(b, h).middleRows(kept, 3), heads_of(v).head(b, h));
    }
  }
  EXPECT_EQ(c.length(), 8);
  ExpectInvalid([&] { c.pop(4); }, {"pop", "4 positions", "shortest sequence's length 3"});
  c.pop(3);
  EXPECT_EQ(c.length(), 5);
  EXPECT_EQ(c.length(2), 0);
  fill(other, 7, 127);
  other.truncate(1, 4);
  c.assign(2, other, 1);
  EXPECT_EQ(c.length(2), 4);
  for (Index h = 0; h < 2; ++h) EXPECT_EQ(c.values().head(2, h).topRows(4), other.values().head(1, h).topRows(4));
  ExpectInvalid([&] { c.truncate(3, 0); }, {"truncate", "sequence 3", "between 0 and 2"});
  ExpectInvalid([&] { c.truncate(0, 6); }, {"truncate", "length 6", "sequence 0's length 5"});
  ExpectInvalid([&] { c.length(-1); }, {"length", "sequence -1"});
  ExpectInvalid([&] { c.assign(0, KVCache<T>(1, 3, 9, 4), 0); }, {"assign", "3 heads", "this one of 2 heads"});
  ExpectInvalid([&] { c.set_rolling_window(4); }, {"set_rolling_window", "different lengths"});
  EXPECT_EQ(c.length(2), 4);
  c.reset();
  EXPECT_FALSE(c.ragged());
  EXPECT_EQ(c.length(1), 0);
}

/// x[b, from : from + count, :] as (1, count, E).
template <class T>
Tensor<T> sequence_rows(const Tensor<T>& x, Index b, Index from, Index count) {
  return part(x, b, 1, from, count);
}

/// Sequence b's rows first[b] + t .. + count of x (B, N, E), as one (B, count, E) chunk.
template <class T>
Tensor<T> ragged_chunk(const Tensor<T>& x, const std::vector<Index>& first, Index t, Index count) {
  Tensor<T> y({x.size(0), count, x.size(2)});
  for (Index b = 0; b < x.size(0); ++b) {
    const Tensor<T> r = sequence_rows(x, b, first[b] + t, count);
    std::copy_n(r.data(), r.numel(), y.data() + b * r.numel());
  }
  return y;
}

template <class T>
void assign_sequence(KVCache<T>& to, Index b, const KVCache<T>& from) { to.assign(b, from, 0); }
template <class T>
void assign_sequence(attn::DecoderCache<T>& to, Index b, const attn::DecoderCache<T>& from) {
  to.self.assign(b, from.self, 0);
  to.memory.assign(b, from.memory, 0);
}

/// A ragged batch decoded together equals each sequence decoded alone: sequence b's prompt
/// (its first prompts[b] tokens of x) is prefilled alone into make(b)'s batch-1 cache and
/// assigned to slot b of make(-1)'s; then chunks of 1, 2 and 5 tokens (the decode tile and
/// the tiled kernel) go through both, each sequence at its own position.
template <class T, class Make, class Step>
void expect_ragged_matches_alone(const Tensor<T>& x, const std::vector<Index>& prompts, Make&& make, Step&& step) {
  const Index nb = x.size(0), most = *std::max_element(prompts.begin(), prompts.end());
  for (const Index chunk : {1, 2, 5}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    auto batch = make(-1);
    std::vector<decltype(batch)> alone;
    for (Index b = 0; b < nb; ++b) {
      alone.push_back(make(b));
      step(sequence_rows(x, b, 0, prompts[b]), alone.back());
      assign_sequence(batch, b, alone.back());
    }
    for (Index t = 0; most + t + chunk <= x.size(1); t += chunk) {
      const Tensor<T> y = step(ragged_chunk(x, prompts, t, chunk), batch);
      for (Index b = 0; b < nb; ++b)
        EXPECT_TRUE(AllClose(sequence_rows(y, b, 0, chunk), step(sequence_rows(x, b, prompts[b] + t, chunk), alone[b]),
                             tight<T>()))
            << "sequence " << b << ", from token " << prompts[b] + t;
    }
  }
}

// GroupedQueryAttention (RoPE at each sequence's positions, a sliding window, sinks),
// MultiHeadAttention self-attention and TransformerDecoderLayer (each sequence with its own
// memory length too) decode a ragged batch as each sequence alone.
TYPED_TEST(Decoding, RaggedBatchDecodesAsEachSequenceAlone) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({3, 20, 16}, 131), memory = random_tensor<T>({3, 9, 16}, 133);
  const std::vector<Index> prompts{1, 9, 4};
  attn::GqaOptions o;
  o.sliding_window = 6;
  o.sinks = true;
  attn::GroupedQueryAttention<T> gqa(16, 4, 2, 0, o);
  randomize(gqa, 135);
  const auto cache_of = [](const auto& m) { return [&m](Index b) { return m.make_cache(b < 0 ? 3 : 1, 32); }; };
  expect_ragged_matches_alone(x, prompts, cache_of(gqa), [&](const Tensor<T>& c, KVCache<T>& k) { return decode(gqa, c, k); });
  attn::MultiHeadAttention<T> mha(16, 4);
  randomize(mha, 137);
  expect_ragged_matches_alone(x, prompts, cache_of(mha), [&](const Tensor<T>& c, KVCache<T>& k) { return decode(mha, c, k); });
  const attn::TransformerDecoderLayer<T> layer = decoder_layer<T>(true);
  const auto layer_cache = [&](Index b) {
    if (b < 0) return layer.make_cache(3, 32, 9);
    attn::DecoderCache<T> c = layer.make_cache(1, 32, 9);
    layer.encode_memory(sequence_rows(memory, b, 0, 3 + 3 * b), c);  // memories of 3, 6 and 9 tokens
    return c;
  };
  expect_ragged_matches_alone(x, prompts, layer_cache,
                              [&](const Tensor<T>& c, attn::DecoderCache<T>& k) { return layer.forward(c, k); });
}

/// Batch element b of a (B, H, N, D) tensor, its first `rows` rows of each head only.
template <class T>
HeadsView<const T> first_rows(const Tensor<T>& t, Index b, Index rows) {
  const Index h = t.size(1), n = t.size(2), d = t.size(3);
  return {t.data() + b * h * n * d, 1, h, rows, d, h * n * d, n * d, d};
}

/// A contiguous (B, H, N, D) tensor as a writable heads view.
template <class T>
HeadsView<T> out_heads(Tensor<T>& t) {
  return HeadsView<T>::bhnd(t.data(), t.size(0), t.size(1), t.size(2), t.size(3));
}

/// Batch element b of a (B, H, N, D) tensor, as (1, H, N, D).
template <class T>
Tensor<T> element(const Tensor<T>& t, Index b) {
  const Index n = t.numel() / t.size(0);
  return Tensor<T>::from_data({1, t.size(1), t.size(2), t.size(3)}, t.data() + b * n);
}

/// scaled_dot_product_attention with opt and key_lengths `lengths` against each batch
/// element alone over its first lengths[b] keys: bit for bit, or within tol when tol > 0.
template <class T>
void expect_key_lengths_act_alone(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                  const std::vector<std::int64_t>& lengths, attn::SdpaOptions<T> opt, double tol) {
  Tensor<T> out(q.shape()), w, alone(element(q, 0).shape());
  const bool weights = opt.attn_weights != nullptr;
  attn::SdpaOptions<T> ragged = opt;
  if (weights) ragged.attn_weights = &w;
  const Tensor<std::int64_t> n = Tensor<std::int64_t>::from_data({q.size(0)}, lengths.data());
  ragged.key_lengths = n.view();
  attn::scaled_dot_product_attention<T>(heads_of(q), heads_of(k), heads_of(v), out_heads(out), ragged);
  for (Index b = 0; b < q.size(0); ++b) {
    attn::scaled_dot_product_attention<T>(first_rows(q, b, q.size(2)), first_rows(k, b, lengths[b]),
                                          first_rows(v, b, lengths[b]), out_heads(alone), opt);
    EXPECT_TRUE(tol > 0 ? AllClose(element(out, b), alone, tol) : same_bits(element(out, b), alone))
        << "batch element " << b;
    if (weights) {
      for (Index h = 0; h < q.size(1); ++h)
        for (Index i = 0; i < q.size(2); ++i)
          for (Index j = lengths[b]; j < k.size(2); ++j) ASSERT_EQ(w(b, h, i, j), T(0)) << b << " " << h << " " << i;
    }
  }
}

// SdpaOptions::key_lengths: each batch element attends over its first key_lengths[b] keys,
// its queries at their end (causal, window, ALiBi), as that element alone over those keys:
// bit for bit on the decode tile (1 and 3 queries) and the tiled kernel (9), to rounding on
// the weights path (whose weights past a sequence's keys are 0) and in split-KV decoding
// (5000 keys, split otherwise when alone). Bad lengths are std::invalid_argument.
TYPED_TEST(Decoding, KeyLengthsAttendEachElementOverItsOwnKeys) {
  using T = TypeParam;
  const Tensor<T> slopes = random_tensor<T>({4}, 141, 0.1), sinks = random_tensor<T>({4}, 143);
  const Tensor<T> k = random_tensor<T>({3, 2, 300, 8}, 147), v = random_tensor<T>({3, 2, 300, 8}, 149);
  Tensor<T> weights;
  for (const Index len_q : {1, 3, 9})
    for (const bool with_weights : {false, true}) {
      SCOPED_TRACE(std::to_string(len_q) + " queries" + (with_weights ? ", weights" : ""));
      attn::SdpaOptions<T> opt;
      opt.causal = attn::Causal::kBottomRight;  // (2 keys for 3 or 9 queries: the first see none)
      opt.sliding_window = 100;
      opt.alibi_slopes = slopes.view();
      opt.sinks = sinks.view();
      if (with_weights) opt.attn_weights = &weights;
      // (the weights path's products may take another Eigen kernel over fewer keys)
      expect_key_lengths_act_alone(random_tensor<T>({3, 4, len_q, 8}, 145), k, v, {300, 2, 129}, opt,
                                   with_weights ? tight<T>() : 0);
    }
  SCOPED_TRACE("split keys");
  const Tensor<T> long_k = random_tensor<T>({2, 1, 5000, 8}, 151), long_v = random_tensor<T>({2, 1, 5000, 8}, 153);
  expect_key_lengths_act_alone(random_tensor<T>({2, 2, 1, 8}, 155), long_k, long_v, {2100, 5000}, {}, tight<T>());
  attn::SdpaOptions<T> bad;
  const Tensor<std::int64_t> two({2}, std::int64_t(1)), big({3}, std::int64_t(301));
  Tensor<T> out({3, 4, 1, 8});
  const Tensor<T> q = random_tensor<T>({3, 4, 1, 8}, 157);
  const auto run = [&] { attn::scaled_dot_product_attention<T>(heads_of(q), heads_of(k), heads_of(v), out_heads(out), bad); };
  bad.key_lengths = two.view();
  ExpectInvalid(run, {"key_lengths has shape (2,)", "(batch) = (3,)"});
  bad.key_lengths = big.view();
  ExpectInvalid(run, {"key_lengths[0] = 301", "300 keys"});
  KVCache<T> cache(3, 2, 8, 8);
  fill(cache, 4, 159);
  cache.truncate(1, 2);
  ExpectInvalid([&] { attn::scaled_dot_product_attention<T>(heads_of(q), cache, out_heads(out), bad); },
                {"a KV cache gives its own key_lengths"});
}
// ---------------------------------------------------------------------------------------
// Packed sequences (varlen)
// ---------------------------------------------------------------------------------------

/// Packs sequence b's first lengths[b] rows of x (B, N, E) one after another: (T, E), and its
/// cu_seqlens (B + 1).
template <class T>
std::pair<Tensor<T>, Tensor<std::int64_t>> pack(const Tensor<T>& x, const std::vector<Index>& lengths) {
  Tensor<std::int64_t> cu({Index(lengths.size()) + 1});
  for (std::size_t b = 0; b < lengths.size(); ++b) cu(Index(b) + 1) = cu(Index(b)) + lengths[b];
  Tensor<T> packed({cu(Index(lengths.size())), x.size(2)});
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    const Tensor<T> rows = sequence_rows(x, Index(b), 0, lengths[b]);
    std::copy_n(rows.data(), rows.numel(), packed.data() + cu(Index(b)) * x.size(2));
  }
  return {packed, cu};
}

/// Rows [first, first + count) of a packed (T, E) output, as (1, count, E).
template <class T>
Tensor<T> packed_rows(const Tensor<T>& y, Index first, Index count) {
  return Tensor<T>::from_data({1, count, y.size(1)}, y.data() + first * y.size(1));
}

// MultiHeadAttention (self-attention, causal or not, and cross-attention) and
// TransformerDecoderLayer on packed sequences of 5, 1, 0 and 9 tokens (memories of 3, 7, 2
// and 6) equal each sequence alone; GroupedQueryAttention's packed forward is checked
// against PyTorch (GqaPackedReference).
TYPED_TEST(Decoding, PackedSequencesAttendAsEachAlone) {
  using T = TypeParam;
  const std::vector<Index> lengths{5, 1, 0, 9}, memory_lengths{3, 7, 2, 6};
  const Tensor<T> x = random_tensor<T>({4, 9, 16}, 161), memory = random_tensor<T>({4, 7, 16}, 163);
  const auto [xp, cu] = pack(x, lengths);
  const auto [mp, cu_m] = pack(memory, memory_lengths);
  attn::MultiHeadAttention<T> mha(16, 4);
  randomize(mha, 165);
  const attn::TransformerDecoderLayer<T> layer = decoder_layer<T>(false);
  for (const attn::Causal causal : {attn::Causal::kNone, attn::Causal::kTopLeft}) {
    attn::MhaArgs<T> args;
    args.causal = causal;
    attn::DecoderArgs<T> layer_args;
    layer_args.self.causal = causal;
    const Tensor<T> self = mha.forward(xp, cu.view(), args).output,
                    cross = mha.forward(xp, mp, mp, cu.view(), cu_m.view(), args).output,
                    decoded = layer.forward(xp, cu.view(), mp, cu_m.view(), layer_args);
    for (std::size_t b = 0; b < lengths.size(); ++b) {
      if (lengths[b] == 0) continue;
      SCOPED_TRACE("sequence " + std::to_string(b) + (causal == attn::Causal::kNone ? "" : ", causal"));
      const Tensor<T> xb = sequence_rows(x, Index(b), 0, lengths[b]), mb = sequence_rows(memory, Index(b), 0, memory_lengths[b]);
      EXPECT_TRUE(AllClose(packed_rows(self, cu(Index(b)), lengths[b]), mha.forward(xb, args).output, tight<T>()));
      EXPECT_TRUE(AllClose(packed_rows(cross, cu(Index(b)), lengths[b]), mha.forward(xb, mb, mb, args).output, tight<T>()));
      EXPECT_TRUE(AllClose(packed_rows(decoded, cu(Index(b)), lengths[b]), layer.forward(xb, mb, layer_args), tight<T>()));
    }
  }
}

// What packed sequences refuse: cu_seqlens that do not start at 0, end at the tokens or
// grow, disagreeing sequence counts, masks and weights, and views that are not batch 1.
TYPED_TEST(Decoding, PackedSequencesRejectMisfits) {
  using T = TypeParam;
  const Tensor<T> x = random_tensor<T>({6, 16}, 167);
  attn::GroupedQueryAttention<T> gqa(16, 4, 2);
  attn::MultiHeadAttention<T> mha(16, 4);
  const auto cu = [](std::initializer_list<std::int64_t> v) { return Tensor<std::int64_t>({Index(v.size())}, v); };
  ExpectInvalid([&] { gqa.forward(x, cu({1, 6}).view()); }, {"GroupedQueryAttention::forward", "cu_seqlens must run from 0 to the 6", "1 .. 6"});
  ExpectInvalid([&] { gqa.forward(x, cu({0, 4, 2, 6}).view()); }, {"cu_seqlens decreases from 4 to 2 at sequence 1"});
  ExpectInvalid([&] { gqa.forward(x, Tensor<std::int64_t>({2, 2}).view()); }, {"cu_seqlens has shape (2, 2)"});
  ExpectInvalid([&] { mha.forward(x, x, x, cu({0, 6}).view(), cu({0, 2, 6}).view()); }, {"must count the same sequences"});
  attn::GqaArgs<T> masked;
  const Tensor<bool> padding({1, 6});
  masked.key_padding_mask = attn::Mask<T>::block_where_true(padding);
  ExpectInvalid([&] { gqa.forward(x, cu({0, 6}).view(), masked); }, {"packed sequences take no key_padding_mask"});
  attn::MhaArgs<T> weights;
  weights.need_weights = true;
  ExpectInvalid([&] { mha.forward(x, cu({0, 6}).view(), weights); }, {"need_weights"});
  ExpectInvalid([&] { mha.forward(random_tensor<T>({1, 6, 16}, 169), cu({0, 6}).view()); }, {"(tokens, features)"});
}
}  // namespace
