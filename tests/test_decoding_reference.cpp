// The decoding features against PyTorch (tests/reference/make_reference.py): GroupedQueryAttention
// against examples/torch_reference.py's LlamaAttention, the attention core's grouped heads,
// sliding window, softcap and ALiBi against attention_reference (and its backward pass against
// torch.autograd's gradients: the core_backward_* cases), TransformerEncoderLayer and
// TransformerDecoderLayer against torch.nn's own layers. GroupedQueryAttention, the decoder
// layer and MultiHeadAttention self-attention also run incrementally through a KV cache, chunk
// by chunk, and the concatenated outputs are compared with PyTorch's full-sequence outputs.
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;

/// The chunk sizes of the incremental runs on a sequence of `len` tokens: 1, 3 and the
/// first size from 7 on that does not divide len (the last chunk is shorter).
std::vector<Index> chunk_sizes(Index len) {
  Index odd = 7;
  while (len % odd == 0) ++odd;
  return {1, 3, odd};
}

/// The first n columns of a (B, S) key padding mask: what covers a cache of n tokens.
Tensor<bool> first_columns(const Tensor<bool>& m, Index n) {
  Tensor<bool> p({m.size(0), n});
  for (Index b = 0; b < m.size(0); ++b)
    for (Index j = 0; j < n; ++j) p(b, j) = m(b, j);
  return p;
}

/// A stored BOOL mask, or an empty tensor if the file has none of that name.
Tensor<bool> stored_bools(const Case& c, const std::string& name) {
  return c.has(name) ? c.file().get_bool(name) : Tensor<bool>();
}

/// The file's input masks, by tensor name ("input.<name>" without "input."), sorted, space-separated.
::testing::AssertionResult HasInputMasks(const Case& c, const std::string& spec) {
  std::vector<std::string> names;
  for (const auto& n : c.file().names())
    if (n.rfind("input.", 0) == 0 && n.size() > 10 && n.compare(n.size() - 4, 4, "mask") == 0)
      names.push_back(n.substr(6));
  std::sort(names.begin(), names.end());
  std::string found;
  for (const auto& n : names) found += (found.empty() ? "" : " ") + n;
  if (found == spec) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << c.name() << " holds masks \"" << found << "\", the test expects \"" << spec
                                       << "\"";
}

::testing::AssertionResult MetaNumberIs(const Case& c, const std::string& key, double value) {
  if (value == 0) return c.MetaIs(key, "none");
  const double v = std::stod(c.meta(key));
  if (v == value) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << c.name() << ": metadata " << key << " is " << v << ", the test runs "
                                       << value;
}

// ---------------------------------------------------------------------------
// GroupedQueryAttention vs LlamaAttention
// ---------------------------------------------------------------------------

/// A gqa_attention case and the options the test runs (asserted against the file).
struct GqaSpec {
  const char* name;
  Index num_kv_heads;
  const char* rope;  ///< "none", "half" (rotate_half) or "interleaved"
  Index rotary_dim;  ///< 0: all of head_dim
  double theta;
  Index window;      ///< 0: none
  double softcap;    ///< 0: none
  bool qkv_bias;
  Index head_dim;    ///< 0: E / H
  const char* masks;
  bool sinks = false;  ///< gpt-oss attention sinks (param.sinks)
};

std::ostream& operator<<(std::ostream& os, const GqaSpec& s) { return os << s.name; }

/// The layer a GqaSpec states, its sizes from the file, its weights loaded.
template <class T>
attn::GroupedQueryAttention<T> make_gqa(const Case& c, const GqaSpec& spec) {
  attn::GqaOptions o;
  o.qkv_bias = spec.qkv_bias;
  o.rope = std::string(spec.rope) != "none";
  o.rotary.rotary_dim = spec.rotary_dim;
  o.rotary.theta = spec.theta;
  o.rotary.interleaved = std::string(spec.rope) == "interleaved";
  if (spec.window > 0) o.sliding_window = spec.window;
  if (spec.softcap > 0) o.softcap = spec.softcap;
  o.sinks = spec.sinks;
  attn::GroupedQueryAttention<T> m(c.meta_int("embed_dim"), c.meta_int("num_heads"), spec.num_kv_heads,
                                   spec.head_dim, o);
  m.load_state_dict(c.params<T>());
  return m;
}

void check_gqa_meta(const Case& c, const GqaSpec& spec) {
  const bool rope = std::string(spec.rope) != "none";
  ASSERT_TRUE(c.MetaIs("module", "gqa_attention"));
  ASSERT_TRUE(c.MetaIs("causal", "bottom_right"));
  ASSERT_TRUE(c.MetaIs("num_kv_heads", std::to_string(spec.num_kv_heads)));
  ASSERT_TRUE(c.MetaIs("rope", rope ? "true" : "false"));
  ASSERT_TRUE(c.MetaIs("rope_interleaved", std::string(spec.rope) == "interleaved" ? "true" : "false"));
  const Index d = spec.head_dim > 0 ? spec.head_dim : c.meta_int("embed_dim") / c.meta_int("num_heads");
  ASSERT_TRUE(c.MetaIs("head_dim", std::to_string(d)));
  ASSERT_TRUE(c.MetaIs("rotary_dim", std::to_string(!rope ? 0 : spec.rotary_dim > 0 ? spec.rotary_dim : d)));
  ASSERT_TRUE(MetaNumberIs(c, "rope_theta", spec.theta));
  ASSERT_TRUE(MetaNumberIs(c, "sliding_window", double(spec.window)));
  ASSERT_TRUE(MetaNumberIs(c, "softcap", spec.softcap));
  ASSERT_TRUE(c.MetaIs("qkv_bias", spec.qkv_bias ? "true" : "false"));
  ASSERT_TRUE(c.HasMasks(spec.masks));
  ASSERT_EQ(c.has("param.sinks"), spec.sinks);
}

/// The layer on spec's case, whole or (incremental) chunk by chunk through a KV cache stored
/// in S.
template <class T, class S = T>
void check_gqa(const GqaSpec& spec, bool incremental) {
  SCOPED_TRACE(spec.name);
  const Case c(spec.name);
  check_gqa_meta(c, spec);
  if (::testing::Test::HasFatalFailure()) return;
  const attn::GroupedQueryAttention<T> m = make_gqa<T>(c, spec);
  const Tensor<T> x = c.get<T>("input.x");
  const double tol = tolerance<T>(c.is_double());
  const Tensor<bool> kpm = stored_bools(c, "input.key_padding_mask");
  if (!incremental) {
    attn::GqaArgs<T> args;
    if (!kpm.empty()) args.key_padding_mask = attn::Mask<T>::block_where_true(kpm);
    ExpectMatchesReference(c, m.forward(x, args), tol);
    return;
  }
  for (Index step : chunk_sizes(x.size(1))) {
    attn::KVCache<T, S> cache = m.template make_cache<S>(x.size(0), x.size(1));
    const Tensor<T> y = in_chunks(x, step, [&](const Tensor<T>& chunk, Index first) {
      attn::GqaArgs<T> args;
      const Tensor<bool> seen = kpm.empty() ? Tensor<bool>() : first_columns(kpm, first + chunk.size(1));
      if (!kpm.empty()) args.key_padding_mask = attn::Mask<T>::block_where_true(seen);
      return m.forward(chunk, cache, args);
    });
    EXPECT_EQ(cache.length(), x.size(1));
    ExpectMatchesReference(c, y, tol, "chunks of " + std::to_string(step));
  }
}

const GqaSpec kGqaCases[] = {
    // name                          K  rope           R  theta   W   cap  bias   D  masks
    {"gqa_llama_f32", 2, "half", 0, 1e4, 0, 0, false, 0, ""},
    {"gqa_llama_f64", 2, "half", 0, 1e4, 0, 0, false, 0, ""},
    {"gqa_mqa_f64", 1, "half", 0, 1e4, 0, 0, false, 0, ""},
    {"gqa_mha_f32", 4, "half", 0, 1e4, 0, 0, false, 0, ""},
    {"gqa_interleaved_f32", 2, "interleaved", 0, 1e4, 0, 0, false, 0, ""},
    {"gqa_partial_rotary_f64", 2, "half", 4, 1e4, 0, 0, false, 0, ""},
    {"gqa_partial_interleaved_f32", 2, "interleaved", 6, 1e4, 0, 0, false, 0, ""},
    {"gqa_no_rope_f32", 2, "none", 0, 1e4, 0, 0, false, 0, ""},
    {"gqa_theta_f64", 1, "half", 0, 5e5, 0, 0, false, 0, ""},
    {"gqa_window_small_f32", 2, "half", 0, 1e4, 4, 0, false, 0, ""},
    {"gqa_window_large_f64", 2, "half", 0, 1e4, 50, 0, false, 0, ""},
    {"gqa_softcap_f32", 2, "half", 0, 1e4, 0, 5, false, 0, ""},
    {"gqa_qkv_bias_f32", 2, "half", 0, 1e4, 0, 0, true, 0, ""},
    {"gqa_head_dim_f64", 2, "half", 0, 1e4, 0, 0, false, 10, ""},
    {"gqa_kpm_f32", 2, "half", 0, 1e4, 0, 0, false, 0, "kpm:bool"},
    {"gqa_long_window_f32", 2, "half", 0, 1e4, 48, 0, false, 0, ""},
    {"gqa_long_combined_f64", 1, "interleaved", 8, 5e5, 37, 6, true, 12, ""},
    {"gqa_combined_f32", 2, "half", 4, 1e6, 20, 8, true, 6, ""},
    {"gqa_sinks_f32", 2, "half", 0, 1e4, 6, 0, true, 0, "", true},
    {"gqa_sinks_f64", 3, "half", 0, 1e4, 0, 0, false, 4, "", true},
};

class GqaReference : public ::testing::TestWithParam<GqaSpec> {};
TEST_P(GqaReference, Float) { check_gqa<float>(GetParam(), false); }
TEST_P(GqaReference, Double) { check_gqa<double>(GetParam(), false); }
TEST_P(GqaReference, IncrementalFloat) { check_gqa<float>(GetParam(), true); }
TEST_P(GqaReference, IncrementalDouble) { check_gqa<double>(GetParam(), true); }

INSTANTIATE_TEST_SUITE_P(PyTorch, GqaReference, ::testing::ValuesIn(kGqaCases),
                         [](const ::testing::TestParamInfo<GqaSpec>& info) { return std::string(info.param.name); });

// A ragged batch against PyTorch: sequence b's first P_b tokens (1 for the first sequence,
// L - 1 for the last, spread between) are prefilled alone into a batch-1 cache and assigned
// to slot b of one batch cache; then all sequences decode together in chunks of 1, 3 and 6
// tokens (the decode tile and the tiled kernel), each at its own position (RoPE, causal
// masking, window), sequences past their end fed zeros. Every output of every sequence
// against LlamaAttention's full-sequence output. Cases with one sequence or a mask are left
// out: they have no ragged batch.
template <class T>
void check_gqa_ragged(const GqaSpec& spec) {
  const Case c(spec.name);
  const Tensor<T> x = c.get<T>("input.x");
  const Index nb = x.size(0), len = x.size(1), e = x.size(2);
  if (nb < 2 || std::string(spec.masks) != "") return;
  SCOPED_TRACE(spec.name);
  const attn::GroupedQueryAttention<T> m = make_gqa<T>(c, spec);
  std::vector<Index> prompt(nb);
  for (Index b = 0; b < nb; ++b) prompt[b] = 1 + b * (len - 2) / (nb - 1);
  for (const Index chunk : {1, 3, 6}) {
    attn::KVCache<T> cache = m.make_cache(nb, 2 * len + chunk);
    Tensor<T> y({nb, len, e});
    for (Index b = 0; b < nb; ++b) {
      attn::KVCache<T> alone = m.make_cache(1, prompt[b]);
      const Tensor<T> out = m.forward(part(x, b, 1, 0, prompt[b]), alone);
      std::copy_n(out.data(), out.numel(), y.data() + b * len * e);
      cache.assign(b, alone, 0);
    }
    for (Index t = 0; prompt[0] + t < len; t += chunk) {
      Tensor<T> in({nb, chunk, e});
      for (Index b = 0; b < nb; ++b)
        for (Index n = 0; n < chunk && prompt[b] + t + n < len; ++n)
          std::copy_n(x.data() + (b * len + prompt[b] + t + n) * e, e, in.data() + (b * chunk + n) * e);
      const Tensor<T> out = m.forward(in, cache);
      for (Index b = 0; b < nb; ++b)
        for (Index n = 0; n < chunk && prompt[b] + t + n < len; ++n)
          std::copy_n(out.data() + (b * chunk + n) * e, e, y.data() + (b * len + prompt[b] + t + n) * e);
    }
    EXPECT_EQ(cache.length(nb - 1) - cache.length(0), prompt[nb - 1] - prompt[0]);
    ExpectMatchesReference(c, y, tolerance<T>(c.is_double()), "ragged, chunks of " + std::to_string(chunk));
  }
}

TEST(GqaRaggedReference, Float) {
  for (const GqaSpec& spec : kGqaCases) check_gqa_ragged<float>(spec);
}
TEST(GqaRaggedReference, Double) {
  for (const GqaSpec& spec : kGqaCases) check_gqa_ragged<double>(spec);
}

// Packed sequences (varlen prefill) against PyTorch: every sequence of the case whole, and
// each one's first n_b tokens (n_b from 1 to L - 1), packed into one (T, E) input with
// cu_seqlens; the whole ones' outputs against LlamaAttention's, the prefixes' against the
// same rows of it (causal: a prefix's outputs are the sequence's first ones). Cases with a
// mask are left out (packed sequences take none).
template <class T>
void check_gqa_packed(const GqaSpec& spec) {
  const Case c(spec.name);
  if (std::string(spec.masks) != "") return;
  SCOPED_TRACE(spec.name);
  const attn::GroupedQueryAttention<T> m = make_gqa<T>(c, spec);
  const Tensor<T> x = c.get<T>("input.x"), want = c.get<T>("output.output");
  const Index nb = x.size(0), len = x.size(1), e = x.size(2);
  std::vector<std::pair<Index, Index>> parts;  // (sequence, tokens)
  for (Index b = 0; b < nb; ++b) parts.push_back({b, len});
  for (Index b = 0; b < nb; ++b) parts.push_back({b, 1 + (b * 7 + len / 2) % (len - 1)});
  std::vector<std::int64_t> cu{0};
  for (const auto& p : parts) cu.push_back(cu.back() + p.second);
  Tensor<T> packed({Index(cu.back()), e});
  for (std::size_t i = 0; i < parts.size(); ++i)
    std::copy_n(x.data() + parts[i].first * len * e, parts[i].second * e, packed.data() + cu[i] * e);
  const Tensor<T> y = m.forward(packed, Tensor<std::int64_t>::from_data({Index(cu.size())}, cu.data()).view());
  ASSERT_EQ(y.shape(), packed.shape());
  ExpectMatchesReference(c, Tensor<T>::from_data(x.shape(), y.data()), tolerance<T>(c.is_double()), "packed");
  for (std::size_t i = std::size_t(nb); i < parts.size(); ++i)
    EXPECT_TRUE(AllClose(Tensor<T>::from_data({1, parts[i].second, e}, y.data() + cu[i] * e),
                         part(want, parts[i].first, 1, 0, parts[i].second), tolerance<T>(c.is_double())))
        << "the first " << parts[i].second << " tokens of sequence " << parts[i].first;
}

TEST(GqaPackedReference, Float) {
  for (const GqaSpec& spec : kGqaCases) check_gqa_packed<float>(spec);
}
TEST(GqaPackedReference, Double) {
  for (const GqaSpec& spec : kGqaCases) check_gqa_packed<double>(spec);
}

// GroupedQueryAttention cast to bfloat16 against LlamaAttention in bfloat16 (the 16-bit
// rule of ExpectMatchesReference), whole and through the cache.
const GqaSpec kGqa16Cases[] = {{"gqa_bf16", 2, "half", 0, 1e4, 0, 0, true, 0, ""}};
class GqaReference16 : public ::testing::TestWithParam<GqaSpec> {};
TEST_P(GqaReference16, Bfloat16) { check_gqa<attn::bfloat16>(GetParam(), false); }
TEST_P(GqaReference16, IncrementalBfloat16) { check_gqa<attn::bfloat16>(GetParam(), true); }
INSTANTIATE_TEST_SUITE_P(PyTorch, GqaReference16, ::testing::ValuesIn(kGqa16Cases),
                         [](const ::testing::TestParamInfo<GqaSpec>& info) { return std::string(info.param.name); });

// GroupedQueryAttention<float> over a KV cache stored in bfloat16, half or int8, chunk by
// chunk (chunks of 1 and 3 through the decode tile, which widens k and v in registers, chunks
// of 7 through the tiled kernel, which widens them into its packed copy), against
// LlamaAttention whose keys and values go through the same storage (kv_store): at least as
// accurate as PyTorch against float64 without the storage (ExpectMatchesReference's rule).
template <class S>
void check_gqa_stored(const GqaSpec& spec, const char* dtype) {
  ASSERT_TRUE(Case(spec.name).MetaIs("kv_cache_dtype", dtype));
  check_gqa<float, S>(spec, true);
}
TEST(GqaStoredCache, Bfloat16) {
  check_gqa_stored<attn::bfloat16>({"gqa_kv_bf16_f32", 2, "half", 0, 1e4, 0, 0, false, 0, ""}, "bfloat16");
}
TEST(GqaStoredCache, Half) {
  check_gqa_stored<attn::half>({"gqa_kv_f16_f32", 2, "half", 0, 1e4, 0, 0, false, 0, ""}, "float16");
}
TEST(GqaStoredCache, Int8) {
  check_gqa_stored<std::int8_t>({"gqa_kv_int8_f32", 2, "half", 0, 1e4, 0, 0, true, 0, ""}, "int8");
}

// KVCache<float, int8>'s quantisation of each row is PyTorch's (quantize_int8 in
// examples/torch_reference.py), bit for bit: the scales and the integers, ties rounded to even.
TEST(KVCacheReference, Int8QuantisationIsPyTorchs) {
  const Case c("kv_int8_rows_f32");
  ASSERT_TRUE(c.MetaIs("module", "kv_int8"));
  const Tensor<float> rows = c.get<float>("input.rows"), q = c.get<float>("output.q"), scale = c.get<float>("output.scale");
  const Index n = rows.size(0), d = rows.size(1);
  attn::KVCache<float, std::int8_t> cache(1, 1, n, d);
  const auto h = attn::HeadsView<const float>::bhnd(rows.data(), 1, 1, n, d);
  cache.append(h, h);
  for (Index i = 0; i < n; ++i) {
    ASSERT_EQ(cache.key_scales().row(0, 0)[i], scale(i, 0)) << "row " << i;
    ASSERT_EQ(cache.value_scales().row(0, 0)[i], scale(i, 0)) << "row " << i;
    for (Index j = 0; j < d; ++j) ASSERT_EQ(float(cache.keys().row(0, 0, i)[j]), q(i, j)) << "row " << i << " col " << j;
  }
}

// ---------------------------------------------------------------------------
// The attention core: grouped heads, sliding window, softcap, ALiBi
// ---------------------------------------------------------------------------

struct CoreSpec {
  const char* name;
  Index num_kv_heads;
  attn::Causal causal;
  Index window;    ///< 0: none
  double softcap;  ///< 0: none
  bool alibi;
  const char* masks;
  bool sinks = false;  ///< input.sinks (gpt-oss attention sinks)
};

std::ostream& operator<<(std::ostream& os, const CoreSpec& s) { return os << s.name; }

template <class T>
void check_core(const CoreSpec& spec) {
  SCOPED_TRACE(spec.name);
  const Case c(spec.name);
  ASSERT_TRUE(c.MetaIs("module", "attention_core"));
  ASSERT_TRUE(c.MetaIs("num_kv_heads", std::to_string(spec.num_kv_heads)));
  ASSERT_TRUE(c.MetaIs("causal", causal_name(spec.causal)));
  ASSERT_TRUE(MetaNumberIs(c, "sliding_window", double(spec.window)));
  ASSERT_TRUE(MetaNumberIs(c, "softcap", spec.softcap));
  ASSERT_TRUE(c.MetaIs("alibi", spec.alibi ? "true" : "false"));
  ASSERT_TRUE(c.MetaIs("scale", "default"));
  ASSERT_TRUE(c.HasMasks(spec.masks));
  ASSERT_EQ(c.has("input.alibi_slopes"), spec.alibi);
  ASSERT_EQ(c.has("input.sinks"), spec.sinks);
  const Tensor<T> q = c.get<T>("input.query"), k = c.get<T>("input.key"), v = c.get<T>("input.value");
  ASSERT_EQ(k.size(1), spec.num_kv_heads);
  const Tensor<T> slopes = spec.alibi ? c.get<T>("input.alibi_slopes") : Tensor<T>();
  const Tensor<T> sinks = spec.sinks ? c.get<T>("input.sinks") : Tensor<T>();
  Tensor<bool> kb, ab;
  Tensor<T> kf, af, weights;
  attn::SdpaOptions<T> opt;
  opt.key_padding_mask = c.mask<T>("input.key_padding_mask", kb, kf);
  opt.causal = spec.causal;
  if (spec.window > 0) opt.sliding_window = spec.window;
  if (spec.softcap > 0) opt.softcap = static_cast<T>(spec.softcap);
  if (spec.alibi) opt.alibi_slopes = slopes;
  opt.sinks = sinks;
  const double tol = tolerance<T>(c.is_double());
  const Tensor<T> expected = c.get<T>("output.output");
  Tensor<T> lse;
  if (c.has("output.lse")) opt.lse = &lse;
  EXPECT_TRUE(AllClose(attn::scaled_dot_product_attention<T>(q, k, v, opt), expected, tol)) << "tiled kernel";
  if (opt.lse) {
    EXPECT_TRUE(AllClose(lse, c.get<T>("output.lse"), tol)) << "tiled kernel's lse";
  }
  opt.attn_weights = &weights;
  EXPECT_TRUE(AllClose(attn::scaled_dot_product_attention<T>(q, k, v, opt), expected, tol)) << "with weights";
  if (opt.lse) {
    EXPECT_TRUE(AllClose(lse, c.get<T>("output.lse"), tol)) << "lse with weights";
  }
  if (c.has("output.grad_query")) {  // torch.autograd's gradients of sum(out * grad_output)
    opt.attn_weights = nullptr;
    opt.lse = &lse;
    const Tensor<T> out = attn::scaled_dot_product_attention<T>(q, k, v, opt);
    opt.lse = nullptr;
    const attn::SdpaGradients<T> g =
        attn::scaled_dot_product_attention_backward<T>(q, k, v, out, c.get<T>("input.grad_output"), lse, opt);
    EXPECT_TRUE(AllClose(g.query, c.get<T>("output.grad_query"), tol)) << "dq";
    EXPECT_TRUE(AllClose(g.key, c.get<T>("output.grad_key"), tol)) << "dk";
    EXPECT_TRUE(AllClose(g.value, c.get<T>("output.grad_value"), tol)) << "dv";
  }
}

using attn::Causal;
constexpr auto kNoCausal = Causal::kNone, kTopLeft = Causal::kTopLeft, kBottomRight = Causal::kBottomRight;

const CoreSpec kCoreCases[] = {
    {"core_gqa_f32", 2, kNoCausal, 0, 0, false, ""},
    {"core_gqa_cross_f64", 1, kNoCausal, 0, 0, false, ""},
    {"core_window_f32", 2, kNoCausal, 5, 0, false, ""},
    {"core_window_bottom_right_f64", 2, kBottomRight, 6, 0, false, ""},
    {"core_window_top_left_f32", 2, kTopLeft, 4, 0, false, ""},
    {"core_softcap_f64", 2, kNoCausal, 0, 2, false, ""},
    {"core_alibi_f32", 4, kNoCausal, 0, 0, true, ""},
    {"core_alibi_bottom_right_f64", 2, kBottomRight, 0, 0, true, ""},
    {"core_combined_f64", 3, kNoCausal, 7, 3, true, "kpm:bool"},
    {"core_combined_long_f32", 2, kBottomRight, 40, 4, true, ""},
    {"core_sinks_f32", 2, kBottomRight, 0, 0, false, "", true},
    {"core_sinks_decode_f64", 2, kBottomRight, 16, 0, false, "kpm:bool", true},
    {"core_lse_long_f32", 2, kNoCausal, 0, 4, false, ""},
    {"core_backward_gqa_f64", 2, kNoCausal, 0, 0, false, ""},
    {"core_backward_window_top_left_f32", 2, kTopLeft, 4, 0, false, ""},
    {"core_backward_combined_f64", 3, kNoCausal, 7, 3, true, "kpm:bool"},
    {"core_backward_sinks_f64", 2, kBottomRight, 0, 0, false, "", true},
    {"core_backward_long_f32", 2, kBottomRight, 40, 4, true, ""},
};

class AttentionCoreReference : public ::testing::TestWithParam<CoreSpec> {};
TEST_P(AttentionCoreReference, Float) { check_core<float>(GetParam()); }
TEST_P(AttentionCoreReference, Double) { check_core<double>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(PyTorch, AttentionCoreReference, ::testing::ValuesIn(kCoreCases),
                         [](const ::testing::TestParamInfo<CoreSpec>& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------
// Attention states: attention over key ranges, merged, is attention over all of them
// ---------------------------------------------------------------------------

/// Keys [from, to) of k or v (B, K, S, D), or queries [from, to) of q.
template <class T>
Tensor<T> rows(const Tensor<T>& x, Index from, Index to) {
  Tensor<T> y({x.size(0), x.size(1), to - from, x.size(3)});
  for (Index b = 0; b < x.size(0); ++b)
    for (Index h = 0; h < x.size(1); ++h)
      for (Index j = from; j < to; ++j)
        for (Index d = 0; d < x.size(3); ++d) y(b, h, j - from, d) = x(b, h, j, d);
  return y;
}

/// The lse (B, H, L) of queries [from, to).
template <class T>
Tensor<T> lse_rows(const Tensor<T>& lse, Index from, Index to) {
  const Index b = lse.size(0), h = lse.size(1);
  return rows(Tensor<T>(lse).reshaped({b, h, lse.size(2), 1}), from, to).reshaped({b, h, to - from});
}

/// core_lse_long_f32's keys cut at `cuts` into ranges, each attended to alone with its lse
/// (queries [q0, q1): 3 of them run the decode tile, more the tiled kernel), the states merged
/// one by one in place, against PyTorch's attention over all keys and its logsumexp.
template <class T>
void check_merged_ranges(std::vector<Index> cuts, Index q0, Index q1) {
  SCOPED_TRACE(::testing::Message() << "queries " << q0 << ".." << q1 << ", " << cuts.size() << " cuts");
  const Case c("core_lse_long_f32");
  ASSERT_TRUE(c.MetaIs("module", "attention_core"));
  ASSERT_TRUE(MetaNumberIs(c, "softcap", 4));
  ASSERT_TRUE(c.MetaIs("causal", "none"));  // (positions would move with the cuts)
  const Tensor<T> q = rows(c.get<T>("input.query"), q0, q1), k = c.get<T>("input.key"), v = c.get<T>("input.value");
  attn::SdpaOptions<T> opt;
  opt.softcap = T(4);
  cuts.insert(cuts.begin(), 0);
  cuts.push_back(k.size(2));
  Tensor<T> out, lse, part_lse;
  for (std::size_t r = 0; r + 1 < cuts.size(); ++r) {
    opt.lse = r == 0 ? &lse : &part_lse;
    Tensor<T> part = attn::scaled_dot_product_attention<T>(q, rows(k, cuts[r], cuts[r + 1]),
                                                           rows(v, cuts[r], cuts[r + 1]), opt);
    if (r == 0)
      out = std::move(part);
    else
      attn::merge_attention_state_inplace<T>(out, lse, part, part_lse);
  }
  const double tol = tolerance<T>(c.is_double());
  EXPECT_TRUE(AllClose(out, rows(c.get<T>("output.output"), q0, q1), tol)) << "merged output";
  EXPECT_TRUE(AllClose(lse, lse_rows(c.get<T>("output.lse"), q0, q1), tol)) << "merged lse";
}

TEST(AttentionStatesReference, TwoRangesMergeToAllKeys) {
  for (Index cut : {1, 77, 128, 199}) {
    check_merged_ranges<float>({cut}, 0, 70);
    check_merged_ranges<double>({cut}, 0, 70);
  }
}
TEST(AttentionStatesReference, ManyRangesMergeToAllKeys) {
  check_merged_ranges<float>({13, 50, 51, 130}, 0, 70);
  check_merged_ranges<float>({13, 50, 51, 130}, 5, 8);  // the decode tile
  check_merged_ranges<double>({64, 128}, 60, 63);
}

// ---------------------------------------------------------------------------
// torch.nn.TransformerEncoderLayer and TransformerDecoderLayer
// ---------------------------------------------------------------------------

struct LayerSpec {
  const char* name;
  const char* activation;  ///< "relu" or "gelu"
  bool norm_first;
  double eps;
  attn::Causal causal;
  const char* masks;  ///< HasInputMasks spelling
};

std::ostream& operator<<(std::ostream& os, const LayerSpec& s) { return os << s.name; }

/// Asserts the file's layer metadata; returns the options the spec states, sizes from the file.
attn::TransformerLayerOptions layer_options(const Case& c, const LayerSpec& spec, const char* module) {
  EXPECT_TRUE(c.MetaIs("module", module));
  EXPECT_TRUE(c.MetaIs("activation", spec.activation));
  EXPECT_TRUE(c.MetaIs("norm_first", spec.norm_first ? "true" : "false"));
  EXPECT_TRUE(MetaNumberIs(c, "layer_norm_eps", spec.eps));
  EXPECT_TRUE(c.MetaIs("causal", causal_name(spec.causal)));
  EXPECT_TRUE(HasInputMasks(c, spec.masks));
  attn::TransformerLayerOptions o;
  o.dim_feedforward = c.meta_int("ffn_dim");
  o.dropout = 0.0;
  o.activation = std::string(spec.activation) == "gelu" ? attn::Activation::kGelu : attn::Activation::kRelu;
  o.layer_norm_eps = spec.eps;
  o.norm_first = spec.norm_first;
  return o;
}

template <class T>
void check_encoder(const LayerSpec& spec) {
  SCOPED_TRACE(spec.name);
  const Case c(spec.name);
  const attn::TransformerLayerOptions o = layer_options(c, spec, "transformer_encoder_layer");
  if (::testing::Test::HasFailure()) return;
  attn::TransformerEncoderLayer<T> layer(c.meta_int("embed_dim"), c.meta_int("num_heads"), o);
  layer.load_state_dict(c.params<T>());
  Tensor<bool> kb, ab;
  Tensor<T> kf, af;
  attn::AttentionArgs<T> args;
  args.key_padding_mask = c.mask<T>("input.src_key_padding_mask", kb, kf);
  args.attn_mask = c.mask<T>("input.src_mask", ab, af);
  args.causal = spec.causal;
  ExpectMatchesReference(c, layer.forward(c.get<T>("input.src"), args), tolerance<T>(c.is_double()));
}

const LayerSpec kEncoderCases[] = {
    {"tel_relu_post_f32", "relu", false, 1e-5, kNoCausal, ""},
    {"tel_gelu_pre_f64", "gelu", true, 1e-6, kNoCausal, ""},
    {"tel_kpm_f32", "gelu", false, 1e-3, kNoCausal, "src_key_padding_mask"},
    {"tel_masks_causal_f64", "relu", true, 1e-5, kTopLeft, "src_key_padding_mask src_mask"},
    {"tel_long_f32", "relu", true, 1e-5, kNoCausal, "src_key_padding_mask"},
};

class EncoderLayerReference : public ::testing::TestWithParam<LayerSpec> {};
TEST_P(EncoderLayerReference, Float) { check_encoder<float>(GetParam()); }
TEST_P(EncoderLayerReference, Double) { check_encoder<double>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(PyTorch, EncoderLayerReference, ::testing::ValuesIn(kEncoderCases),
                         [](const ::testing::TestParamInfo<LayerSpec>& info) { return std::string(info.param.name); });
const LayerSpec kEncoder16Cases[] = {{"tel_bf16", "gelu", false, 1e-5, kNoCausal, "src_key_padding_mask"}};
class EncoderLayerReference16 : public ::testing::TestWithParam<LayerSpec> {};
TEST_P(EncoderLayerReference16, Bfloat16) { check_encoder<attn::bfloat16>(GetParam()); }
INSTANTIATE_TEST_SUITE_P(PyTorch, EncoderLayerReference16, ::testing::ValuesIn(kEncoder16Cases),
                         [](const ::testing::TestParamInfo<LayerSpec>& info) { return std::string(info.param.name); });

/// The decoder's full forward, or (incremental) encode_memory then chunks through the caches.
template <class T>
void check_decoder(const LayerSpec& spec, bool incremental) {
  SCOPED_TRACE(spec.name);
  const Case c(spec.name);
  const attn::TransformerLayerOptions o = layer_options(c, spec, "transformer_decoder_layer");
  if (::testing::Test::HasFailure()) return;
  attn::TransformerDecoderLayer<T> layer(c.meta_int("embed_dim"), c.meta_int("num_heads"), o);
  layer.load_state_dict(c.params<T>());
  const Tensor<T> tgt = c.get<T>("input.tgt"), memory = c.get<T>("input.memory");
  const Tensor<bool> tgt_kpm = stored_bools(c, "input.tgt_key_padding_mask"),
                     mem_kpm = stored_bools(c, "input.memory_key_padding_mask");
  attn::DecoderArgs<T> args;
  if (!mem_kpm.empty()) args.memory.key_padding_mask = attn::Mask<T>::block_where_true(mem_kpm);
  args.self.causal = spec.causal;  // with a cache: over the positions so far
  const double tol = tolerance<T>(c.is_double());
  if (!incremental) {
    if (!tgt_kpm.empty()) args.self.key_padding_mask = attn::Mask<T>::block_where_true(tgt_kpm);
    ExpectMatchesReference(c, layer.forward(tgt, memory, args), tol);
    return;
  }
  ASSERT_NE(spec.causal, kNoCausal) << "a cache decodes causally";
  for (Index step : chunk_sizes(tgt.size(1))) {
    attn::DecoderCache<T> cache = layer.make_cache(tgt.size(0), tgt.size(1), memory.size(1));
    layer.encode_memory(memory, cache);
    const Tensor<T> y = in_chunks(tgt, step, [&](const Tensor<T>& chunk, Index first) {
      attn::DecoderArgs<T> a = args;
      const Tensor<bool> seen = tgt_kpm.empty() ? Tensor<bool>() : first_columns(tgt_kpm, first + chunk.size(1));
      if (!tgt_kpm.empty()) a.self.key_padding_mask = attn::Mask<T>::block_where_true(seen);
      return layer.forward(chunk, cache, a);
    });
    ExpectMatchesReference(c, y, tol, "chunks of " + std::to_string(step));
  }
}

const LayerSpec kDecoderCases[] = {
    {"tdl_relu_post_f32", "relu", false, 1e-5, kTopLeft, ""},
    {"tdl_gelu_pre_f64", "gelu", true, 1e-6, kTopLeft, ""},
    {"tdl_masks_f32", "relu", false, 1e-3, kTopLeft, "memory_key_padding_mask tgt_key_padding_mask"},
    {"tdl_long_f32", "gelu", true, 1e-5, kTopLeft, "memory_key_padding_mask"},
};
const LayerSpec kDecoderNoncausalCases[] = {
    {"tdl_no_causal_f64", "gelu", false, 1e-5, kNoCausal, "memory_key_padding_mask"},
};

class DecoderLayerReference : public ::testing::TestWithParam<LayerSpec> {};
TEST_P(DecoderLayerReference, Float) { check_decoder<float>(GetParam(), false); }
TEST_P(DecoderLayerReference, Double) { check_decoder<double>(GetParam(), false); }
class DecoderLayerIncremental : public ::testing::TestWithParam<LayerSpec> {};
TEST_P(DecoderLayerIncremental, Float) { check_decoder<float>(GetParam(), true); }
TEST_P(DecoderLayerIncremental, Double) { check_decoder<double>(GetParam(), true); }

auto layer_name = [](const ::testing::TestParamInfo<LayerSpec>& info) { return std::string(info.param.name); };
INSTANTIATE_TEST_SUITE_P(PyTorch, DecoderLayerReference, ::testing::ValuesIn(kDecoderCases), layer_name);
INSTANTIATE_TEST_SUITE_P(PyTorchNoncausal, DecoderLayerReference, ::testing::ValuesIn(kDecoderNoncausalCases),
                         layer_name);
INSTANTIATE_TEST_SUITE_P(PyTorch, DecoderLayerIncremental, ::testing::ValuesIn(kDecoderCases), layer_name);

// The layers cast to bfloat16 (the 16-bit rule of ExpectMatchesReference), whole and incremental.
const LayerSpec kDecoder16Cases[] = {{"tdl_bf16", "relu", true, 1e-5, kTopLeft, "memory_key_padding_mask"}};
class DecoderLayerReference16 : public ::testing::TestWithParam<LayerSpec> {};
TEST_P(DecoderLayerReference16, Bfloat16) { check_decoder<attn::bfloat16>(GetParam(), false); }
TEST_P(DecoderLayerReference16, IncrementalBfloat16) { check_decoder<attn::bfloat16>(GetParam(), true); }
INSTANTIATE_TEST_SUITE_P(PyTorch, DecoderLayerReference16, ::testing::ValuesIn(kDecoder16Cases), layer_name);

// ---------------------------------------------------------------------------
// MultiHeadAttention self-attention through a KV cache vs nn.MultiheadAttention, causal
// ---------------------------------------------------------------------------

template <class T>
void check_mha_incremental(const char* name, const char* masks) {
  SCOPED_TRACE(name);
  const Case c(name);
  ASSERT_TRUE(c.MetaIs("module", "multi_head_attention"));
  ASSERT_TRUE(c.MetaIs("layout", "torch"));
  ASSERT_TRUE(c.MetaIs("causal", "top_left"));  // L == S: the same as bottom-right
  ASSERT_TRUE(c.MetaIs("add_bias_kv", "false"));
  ASSERT_TRUE(c.MetaIs("add_zero_attn", "false"));
  ASSERT_TRUE(c.HasMasks(masks));
  const Tensor<T> x = c.get<T>("input.query");
  ASSERT_TRUE(x.flat() == c.get<T>("input.key").flat() && x.flat() == c.get<T>("input.value").flat())
      << "a KV cache is self-attention";
  attn::MultiHeadAttention<T> mha(c.meta_int("embed_dim"), c.meta_int("num_heads"));
  mha.load_state_dict(c.params<T>());
  const Tensor<bool> kpm = stored_bools(c, "input.key_padding_mask");
  for (Index step : chunk_sizes(x.size(1))) {
    attn::KVCache<T> cache = mha.make_cache(x.size(0), x.size(1));
    const Tensor<T> y = in_chunks(x, step, [&](const Tensor<T>& chunk, Index first) {
      attn::MhaArgs<T> args;
      args.causal = attn::Causal::kBottomRight;
      const Tensor<bool> seen = kpm.empty() ? Tensor<bool>() : first_columns(kpm, first + chunk.size(1));
      if (!kpm.empty()) args.key_padding_mask = attn::Mask<T>::block_where_true(seen);
      return mha.forward(chunk, cache, args).output;
    });
    EXPECT_TRUE(AllClose(y, c.get<T>("output.output"), tolerance<T>(c.is_double()))) << "chunks of " << step;
  }
}

template <class T>
class MhaIncremental : public ::testing::Test {};
TYPED_TEST_SUITE(MhaIncremental, Scalars);

TYPED_TEST(MhaIncremental, MatchesCausalPyTorch) {
  check_mha_incremental<TypeParam>("mha_causal_top_left_f32", "");
  check_mha_incremental<TypeParam>("mha_fast_causal_top_left_f32", "");
  check_mha_incremental<TypeParam>("mha_fast_causal_kpm_f64", "kpm:bool");
}

}  // namespace
