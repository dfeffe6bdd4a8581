// The paged KV cache (KVCache constructed with KVPages):
//   - it holds what a contiguous cache holds after the same appends, truncations, pops,
//     assigns and forks, and takes pages from the pool only for the positions held;
//   - fork shares pages, and the first append into a shared partial page copies it;
//   - a pool that runs out refuses the append and leaves the cache as it was;
//   - attention over a paged cache gives the bits attention over a contiguous one gives: the
//     decode tile, the tiled kernel, the bfloat16 tiles and the weights kernel, for every
//     storage type, page size, mask option and ragged lengths; so do the modules' decoding;
//   - what cannot read paged views says so.

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;
using attn::HeadsView;
using attn::KVCache;
using attn::KVPages;
using attn::Shape;

/// The rows of a (possibly paged) heads view, as a contiguous (B, H, N, D) tensor.
template <class S>
Tensor<S> rows_of(const HeadsView<const S>& v) {
  Tensor<S> t({v.batch, v.heads, v.length, v.head_dim});
  for (Index b = 0; b < v.batch; ++b)
    for (Index h = 0; h < v.heads; ++h)
      for (Index n = 0; n < v.length; ++n) std::copy_n(v.row(b, h, n), v.head_dim, &t(b, h, n, 0));
  return t;
}

/// Uniform in [lo, hi), drawn in float and rounded to T.
template <class T>
Tensor<T> random_as(const Shape& shape, std::uint64_t seed, double lo = -1, double hi = 1) {
  const Tensor<float> x = attn::random_uniform<float>(shape, seed, lo, hi);
  Tensor<T> y(shape);
  std::transform(x.data(), x.data() + x.numel(), y.data(), [](float f) { return T(f); });
  return y;
}

/// Random keys and values (B, K, count, D) in T.
template <class T, class S>
void append_random(KVCache<T, S>& c, Index count, std::uint64_t seed) {
  const Shape s{c.batch(), c.kv_heads(), count, c.head_dim()};
  const Tensor<T> k = random_as<T>(s, seed), v = random_as<T>(s, seed + 1);
  c.append(HeadsView<const T>::bhnd(k.data(), s[0], s[1], s[2], s[3]),
           HeadsView<const T>::bhnd(v.data(), s[0], s[1], s[2], s[3]));
}

/// Whether two caches hold the same sequences: lengths, and each sequence's keys, values and
/// int8 scales bit for bit.
template <class T, class S>
::testing::AssertionResult SameContents(const KVCache<T, S>& a, const KVCache<T, S>& b) {
  if (a.batch() != b.batch()) return ::testing::AssertionFailure() << "batch differs";
  for (Index s = 0; s < a.batch(); ++s) {
    if (a.length(s) != b.length(s))
      return ::testing::AssertionFailure() << "sequence " << s << ": length " << a.length(s) << " vs " << b.length(s);
    for (Index h = 0; h < a.kv_heads(); ++h)
      for (Index n = 0; n < a.length(s); ++n) {
        const auto same = [&](const S* x, const S* y) { return std::equal(x, x + a.head_dim(), y); };
        if (!same(a.keys().row(s, h, n), b.keys().row(s, h, n)) ||
            !same(a.values().row(s, h, n), b.values().row(s, h, n)))
          return ::testing::AssertionFailure() << "sequence " << s << ", head " << h << ", position " << n << " differs";
        if (KVCache<T, S>::kQuantised && (*a.key_scales().row(s, h, n) != *b.key_scales().row(s, h, n) ||
                                          *a.value_scales().row(s, h, n) != *b.value_scales().row(s, h, n)))
          return ::testing::AssertionFailure() << "sequence " << s << ", position " << n << ": scales differ";
      }
  }
  return ::testing::AssertionSuccess();
}

/// The same edits on two caches: appends, a ragged truncation, a pop, a fork, an assign.
template <class T, class S>
void edit(KVCache<T, S>& c, const KVCache<T, S>& donor) {
  append_random(c, 150, 11);
  c.truncate(1, 37);
  c.truncate(2, 0);
  append_random(c, 5, 13);  // 155, 42, 5
  c.fork(3, 1);             // a paged cache shares sequence 1's pages
  append_random(c, 3, 15);  // ... and copies the shared partial page for both
  c.pop(1);
  c.assign(2, donor, 0);
}

// ---------------------------------------------------------------------------------------
// The cache
// ---------------------------------------------------------------------------------------

// After the same edits a paged cache of any page size holds what a contiguous one holds, in
// as many pages as its positions need; truncate and reset give the pages back.
TEST(PagedCache, HoldsWhatAContiguousCacheHolds) {
  KVCache<float> donor(1, 2, 64, 6);
  append_random(donor, 29, 17);
  for (const Index page : {1, 5, 16, 128, 300}) {
    SCOPED_TRACE("page size " + std::to_string(page));
    KVCache<float> flat(4, 2, 300, 6), paged(4, 2, 300, 6, KVPages{page, 4 * 300});
    edit(flat, donor);
    edit(paged, donor);
    EXPECT_TRUE(SameContents(paged, flat));
    EXPECT_TRUE(paged.paged() && !flat.paged());
    EXPECT_EQ(paged.page_size(), page);
    const auto pages = [page](Index n) { return (n + page - 1) / page; };
    // Sequence 3 forked 1 at 42, then both appended 3 and popped 1: they share the full pages
    // of the first 42 positions.
    const Index shared = 42 / page, used = pages(157) + pages(29) + 2 * pages(44) - shared;
    EXPECT_EQ(paged.pages() - paged.free_pages(), used);
    EXPECT_EQ(paged.bytes_in_use(), paged.bytes() / std::size_t(paged.pages()) * std::size_t(used));
    KVCache<float> back(4, 2, 300, 6);  // a paged sequence copied into a contiguous cache
    for (Index b = 0; b < 4; ++b) back.assign(b, paged, b);
    EXPECT_TRUE(SameContents(back, flat));
    paged.truncate(0, 0);
    EXPECT_EQ(paged.pages() - paged.free_pages(), used - pages(157));
    paged.reset();
    EXPECT_EQ(paged.free_pages(), paged.pages());
  }
}

// fork shares every page; the first append into a shared partial page copies it (the last
// sequence holding it keeps it), and each sequence then holds its own appended positions.
TEST(PagedCache, ForkSharesPagesAndCopiesAPartialPageOnWrite) {
  KVCache<float> c(3, 2, 16, 4, KVPages{4, 8});
  append_random(c, 6, 21);  // 2 pages each
  c.truncate(1, 0);
  c.truncate(2, 0);
  EXPECT_EQ(c.free_pages(), 6);
  const Tensor<float> prefix = rows_of(c.keys());
  c.fork(1, 0);
  c.fork(2, 0);
  EXPECT_EQ(c.free_pages(), 6) << "forks share pages";
  EXPECT_EQ(c.keys().row(1, 1, 5), c.keys().row(0, 1, 5));
  append_random(c, 1, 23);
  EXPECT_EQ(c.free_pages(), 4) << "two of the three sequences copy the shared partial page";
  EXPECT_EQ(c.keys().row(1, 0, 0), c.keys().row(0, 0, 0)) << "the full first page stays shared";
  for (Index b = 0; b < 3; ++b) {
    for (Index n = 0; n < 6; ++n) EXPECT_EQ(*c.keys().row(b, 1, n), prefix(0, 1, n, 0)) << b << " " << n;
    EXPECT_NE(c.keys().row(b, 0, 6), c.keys().row((b + 1) % 3, 0, 6));
  }
  EXPECT_NE(*c.keys().row(0, 0, 6), *c.keys().row(1, 0, 6)) << "each sequence appended its own keys";
  c.truncate(0, 0);
  EXPECT_EQ(c.free_pages(), 5) << "the first page is still held by two sequences";
}

// A pool that cannot take an append refuses it, naming the free pages, and the cache is as it
// was; room() says how much fits. A paged cache does not roll; a bad pool is refused.
TEST(PagedCache, RefusesWhatThePoolCannotHold) {
  KVCache<float> c(2, 2, 32, 4, KVPages{4, 3});
  EXPECT_EQ(c.room(), 4) << "two sequences of 4 take 2 of the 3 pages; 5 would take 4";
  append_random(c, 3, 31);
  KVCache<float> copy = c;
  ExpectInvalid([&] { append_random(c, 2, 33); }, {"2 more positions do not fit", "1 free pages of 4 positions"});
  EXPECT_TRUE(SameContents(c, copy));
  EXPECT_EQ(c.free_pages(), 1);
  ExpectInvalid([&] { c.require_fits("layer", 2, 2, 4, 2); }, {"layer", "2 more tokens", "free pages"});
  ExpectInvalid([&] { c.set_rolling_window(4); }, {"set_rolling_window", "paged"});
  KVCache<float> big(1, 2, 32, 4);
  append_random(big, 9, 35);
  ExpectInvalid([&] { c.assign(0, big, 0); }, {"assign", "needs 3 pages", "1 free", "frees 1"});
  EXPECT_TRUE(SameContents(c, copy));
  ExpectInvalid([] { KVCache<float>(1, 2, 8, 4, KVPages{0, 3}); }, {"KVCache", "pages of at least 1 position"});
  ExpectInvalid([] { KVCache<float>(1, 2, 8, 4, KVPages{4, -1}); }, {"KVCache", "pages (-1)"});
}

// ---------------------------------------------------------------------------------------
// Attention over pages
// ---------------------------------------------------------------------------------------

/// The option sets every check runs: none, causal, a window with ALiBi and softcap, sinks,
/// dropout, and the weights (the straightforward kernel).
template <class T>
struct Options {
  explicit Options(Index heads)
      : slopes(random_as<T>({heads}, 41, 0, 1)), sinks(random_as<T>({heads}, 43)) {}
  Tensor<T> slopes, sinks;
  Tensor<T> weights;
  attn::Generator generator{47};
  attn::SdpaOptions<T> get(int which) {
    attn::SdpaOptions<T> o;
    if (which == 1) o.causal = attn::Causal::kBottomRight;
    if (which == 2) o.sliding_window = 20, o.softcap = 5.0f, o.alibi_slopes = slopes.view();
    if (which == 3) o.sinks = sinks.view();
    if (which == 4) o.dropout_p = 0.25f, o.generator = &(generator = attn::Generator(47));
    if (which == 5) o.attn_weights = &weights;
    return o;
  }
  static constexpr int kCount = 6;
};

/// For queries of 1, 3 and 70 rows (the decode tile, the tiled kernel) and every option set,
/// attention over a paged cache equals attention over a contiguous cache bit for bit, after
/// edit() made the sequences ragged and forked.
template <class T, class S>
void expect_paged_attention_same_bits(Index page) {
  SCOPED_TRACE("page size " + std::to_string(page));
  KVCache<T, S> donor(1, 2, 64, 12), flat(4, 2, 300, 12), paged(4, 2, 300, 12, KVPages{page, 4 * 300});
  append_random(donor, 29, 51);
  edit(flat, donor);
  edit(paged, donor);
  Options<T> options(4);
  for (const Index len : {1, 3, 70})
    for (int which = 0; which < Options<T>::kCount; ++which) {
      SCOPED_TRACE("queries " + std::to_string(len) + ", options " + std::to_string(which));
      const Tensor<T> q = random_as<T>({4, 4, len, 12}, 53);
      const auto run = [&](const KVCache<T, S>& c, Tensor<T>& weights) {
        Tensor<T> out({4, 4, len, 12});
        attn::SdpaOptions<T> o = options.get(which);
        attn::scaled_dot_product_attention<T>(HeadsView<const T>::bhnd(q.data(), 4, 4, len, 12), c,
                                              HeadsView<T>::bhnd(out.data(), 4, 4, len, 12), o);
        weights = options.weights;
        return out;
      };
      Tensor<T> w_flat, w_paged;
      EXPECT_TRUE(same_bits(run(paged, w_paged), run(flat, w_flat)));
      EXPECT_TRUE(same_bits(w_paged, w_flat));
    }
}

template <class T>
class PagedAttention : public ::testing::Test {};
TYPED_TEST_SUITE(PagedAttention, Scalars);

TYPED_TEST(PagedAttention, SameBitsAsContiguous) {
  for (const Index page : {1, 7, 16, 128, 200}) expect_paged_attention_same_bits<TypeParam, TypeParam>(page);
}

// 16-bit and int8 caches of float32 layers (read widened or scaled in registers), and a
// bfloat16 layer's own cache (on avx512bf16 the bfloat16 tiles, whose k is read in rows).
TEST(PagedAttentionStorage, SameBitsAsContiguous) {
  for (const Index page : {5, 16}) {
    expect_paged_attention_same_bits<float, attn::bfloat16>(page);
    expect_paged_attention_same_bits<float, attn::half>(page);
    expect_paged_attention_same_bits<float, std::int8_t>(page);
    expect_paged_attention_same_bits<attn::bfloat16, attn::bfloat16>(page);
  }
}

// The modules decode through a paged cache with the bits of a contiguous one: a prompt, then
// single tokens and a chunk of 5 (GroupedQueryAttention with RoPE, a window and sinks;
// MultiHeadAttention; TransformerDecoderLayer).
TEST(PagedAttentionModules, DecodeAsWithAContiguousCache) {
  const Tensor<float> x = random_tensor<float>({2, 24, 16}, 61), memory = random_tensor<float>({2, 7, 16}, 63);
  const auto steps = [&](auto&& forward) {
    std::vector<Tensor<float>> out;
    for (const auto& [from, count] : std::vector<std::pair<Index, Index>>{{0, 11}, {11, 1}, {12, 1}, {13, 5}, {18, 1}})
      out.push_back(forward(part(x, 0, 2, from, count)));
    return out;
  };
  const auto expect_same = [](const std::vector<Tensor<float>>& a, const std::vector<Tensor<float>>& b) {
    for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(same_bits(a[i], b[i])) << "step " << i;
  };
  attn::GqaOptions o;
  o.sliding_window = 9;
  o.sinks = true;
  attn::GroupedQueryAttention<float> gqa(16, 4, 2, 0, o);
  randomize(gqa, 65);
  auto g_flat = gqa.make_cache(2, 32), g_paged = gqa.make_cache(2, 32, KVPages{4, 16});
  expect_same(steps([&](const Tensor<float>& c) { return gqa.forward(c, g_paged); }),
              steps([&](const Tensor<float>& c) { return gqa.forward(c, g_flat); }));
  attn::MultiHeadAttention<float> mha(16, 4);
  randomize(mha, 67);
  auto m_flat = mha.make_cache(2, 32), m_paged = mha.make_cache(2, 32, KVPages{3, 22});
  const auto mha_step = [&](KVCache<float>& c) {
    return [&](const Tensor<float>& chunk) {
      attn::MhaArgs<float> args;
      args.causal = attn::Causal::kBottomRight;
      args.need_weights = true;  // (the straightforward kernel)
      return mha.forward(chunk, c, args).output;
    };
  };
  expect_same(steps(mha_step(m_paged)), steps(mha_step(m_flat)));
  attn::TransformerLayerOptions lo;
  lo.dim_feedforward = 32;
  lo.dropout = 0;
  attn::TransformerDecoderLayer<float> layer(16, 4, lo);
  randomize(layer, 69);
  auto d_flat = layer.make_cache(2, 32, 7), d_paged = layer.make_cache(2, 32, 7, KVPages{8, 8});
  layer.encode_memory(memory, d_flat);
  layer.encode_memory(memory, d_paged);
  expect_same(steps([&](const Tensor<float>& c) { return layer.forward(c, d_paged); }),
              steps([&](const Tensor<float>& c) { return layer.forward(c, d_flat); }));
}

// What reads a head as one matrix refuses paged k and v; q and the output are never paged; a
// page table entry outside the pool is refused.
TEST(PagedAttentionErrors, WhatCannotReadPagesSaysSo) {
  KVCache<float> c(1, 2, 8, 4, KVPages{4, 2});
  append_random(c, 6, 71);
  const Tensor<float> q = random_tensor<float>({1, 2, 3, 4}, 73);
  Tensor<float> out({1, 2, 3, 4});
  const auto qv = HeadsView<const float>::bhnd(q.data(), 1, 2, 3, 4);
  const auto ov = HeadsView<float>::bhnd(out.data(), 1, 2, 3, 4);
  const attn::RowMatrix<float> mix = attn::RowMatrix<float>::Identity(2, 2);
  const attn::Vector<float> zero = attn::Vector<float>::Zero(2);
  const attn::TalkingHeadsMix<float> m{{mix.data(), 2, 2}, {zero.data(), 2}, {mix.data(), 2, 2}, {zero.data(), 2}};
  ExpectInvalid([&] { attn::talking_heads_attention<float>(qv, c.keys(), c.values(), ov, m); },
                {"talking_heads_attention", "must not be paged"});
  const std::vector<std::int64_t> cu{0, 3}, cu_k{0, 6};
  ExpectInvalid(
      [&] {
        attn::scaled_dot_product_attention_varlen<float>(qv, c.keys(), c.values(), ov, {cu.data(), {2}},
                                                         {cu_k.data(), {2}});
      },
      {"varlen", "must not be paged"});
  HeadsView<const float> paged_q = c.keys();
  paged_q.length = 3;
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(paged_q, c.keys(), c.values(), ov); },
                {"q and the output cannot be paged"});
  const std::int32_t table[2] = {1, 2};  // page 2 of a pool of 2
  HeadsView<const float> k = c.keys();
  k.pages.table = table;
  ExpectInvalid([&] { attn::scaled_dot_product_attention<float>(qv, k, c.values(), ov); },
                {"k's page table gives page 2 (of 2) to position 4 of batch element 0"});
}

}  // namespace
