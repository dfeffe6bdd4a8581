#pragma once
// The module registry: every module of include/attn/modules, once, with what the cross-cutting
// tests need to know about it: how to construct it (and its named option sets), how to run it
// (full and, where it has one, through a KV cache), how its input is laid out, which masks it
// takes and where it drops out. test_registry.cpp fails when a public module class is missing
// here; the cross-cutting tests (concurrency, edge cases, dropout, workspace, state dicts,
// threads; typed over every_module.hpp's Modules) and the fuzzer iterate ModuleTuple. No
// GoogleTest here: the fuzz targets include it too.
//
// An entry E has:
//   kName                     the class name (attn::kName)
//   kLayout                   kTokens: input (B, N, C); kChannels: (B, C, N) (AttentionBlock)
//   kMixesTokens              whether an output row reads other rows (attention) or only its own
//   kAlwaysCausal             whether the module is causal whatever the call says
//   kCausalPrefix             whether row i of a causal call depends on tokens <= i only (not so
//                             for talking heads: proj_w's bias weights the masked keys too)
//   kUnbatched                whether it takes an unbatched (N, C) input too
//   kCached                   whether it has a KV-cached forward (run_cached)
//   configs()                 the names of its option sets; make<T>(config, p) builds one, with
//                             random parameters and dropout probability p at every site
//   run<T>(m, x, call)        one forward call with the call's masks, causal flag and generator
//   run_cached<T>(m, x, c, g) the same sequence, causal, fed through a cache c tokens at a time
//   sites<T>()                its dropout sites (DropoutSite), each with the law its output follows

#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <memory>
#include <vector>

#include "tensor_utils.hpp"

namespace attn_test {
namespace registry {

using attn::Causal;
using attn::Generator;
using attn::Index;
using attn::Shape;
using attn::Tensor;

constexpr Index kFeatures = 8;  ///< C of every entry's input

/// How an entry's input is laid out.
enum class Layout {
  kTokens,    ///< (B, N, C), or (N, C) unbatched
  kChannels,  ///< (B, C, N): CNN feature maps
};

/// What a cross-cutting test passes to a module call; each entry maps it onto its own arguments.
template <class T>
struct Call {
  attn::Mask<T> key_padding_mask;  ///< (B, N) over the sequence, or none
  bool causal = false;             ///< causal masking (every entry with masks takes it)
  Generator* generator = nullptr;  ///< dropout randomness (training mode)
};

/// The input shape of an entry for batch b and length n (b < 0: unbatched).
template <class E>
Shape input_shape(Index b, Index n) {
  const Shape s = E::kLayout == Layout::kTokens ? Shape{b, n, kFeatures} : Shape{b, kFeatures, n};
  return b < 0 ? Shape(s.begin() + 1, s.end()) : s;
}

/// The flat index of feature c of token n of batch element b in an input of batch `batch`, length `len`.
template <class E>
Index flat_index(Index len, Index b, Index n, Index c) {
  return E::kLayout == Layout::kTokens ? (b * len + n) * kFeatures + c : (b * kFeatures + c) * len + n;
}

/// Tokens [from, from + count) of every batch element of a batched input.
template <class E, class T>
Tensor<T> tokens(const Tensor<T>& x, Index from, Index count) {
  const Index nb = x.size(0), len = E::kLayout == Layout::kTokens ? x.size(1) : x.size(2);
  Tensor<T> y(input_shape<E>(nb, count));
  for (Index b = 0; b < nb; ++b)
    for (Index n = 0; n < count; ++n)
      for (Index c = 0; c < kFeatures; ++c) y[flat_index<E>(count, b, n, c)] = x[flat_index<E>(len, b, from + n, c)];
  return y;
}

/// Random parameters for a module (U(-0.5, 0.5), from `seed`), loaded the way a user loads them.
template <class M>
M randomized(M m, std::uint64_t seed) {
  randomize(m, seed);
  return m;
}

/// The law a dropout site's observed output follows, from which the statistics are predicted.
enum class Law {
  /// Linear in one inverted dropout mask: the mean over seeds is the eval output, the
  /// variance is proportional to p / (1 - p); a dropped element (if observable) equals base.
  kLinear,
  /// A residual branch x + drop1(f) whose f is linear in a second mask (attention dropout
  /// inside the branch): an element equal to base (x) was dropped by drop1 (fraction p); the
  /// others have mean base + (eval - base) / (1 - p) and a variance proportional to
  /// p / (1 - p)^3, which only the inner mask gives.
  kResidualOfLinear,
  /// Two masks on the same element (x + drop2(drop1(h)) elementwise): dropped (equal to
  /// base) with probability 1 - (1 - p)^2; mean the eval output, variance proportional to
  /// 1 / (1 - p)^2 - 1.
  kTwoMasks,
};

/// A dropout site (or two tied to one probability) and how to observe it.
template <class T>
struct DropoutSite {
  std::string name;
  Law law;
  /// at(p) builds the module with probability p at this site (0 elsewhere, unless the module
  /// ties this site's probability to others: then the law says how they combine), with
  /// parameters that keep the observed output linear in the masks (the same for every p),
  /// and returns run(generator): the observed tensor in training mode, or in eval mode for
  /// a null generator.
  std::function<std::function<Tensor<T>(Generator*)>(double p)> at;
  /// What a dropped element equals (the residual input), or empty when a dropped element
  /// cannot be seen; an element equal to 0 counts as dropped when `zeros` is set.
  Tensor<T> base;
  bool zeros = false;
};

/// One site: `make(p)` gives the module, `out(module, generator)` the observed tensor.
template <class T, class Make, class Out>
DropoutSite<T> site(std::string name, Law law, Make make, Out out, Tensor<T> base = {}, bool zeros = false) {
  DropoutSite<T> s;
  s.name = std::move(name);
  s.law = law;
  s.at = [make, out](double p) {
    auto module = std::make_shared<decltype(make(p))>(make(p));
    return std::function<Tensor<T>(Generator*)>([module, out](Generator* g) {
      module->train(g != nullptr);
      return out(*module, g);
    });
  };
  s.base = std::move(base);
  s.zeros = zeros;
  return s;
}

/// Mask and generator of a Call as AttentionArgs (causal top-left).
template <class T, class Args = attn::AttentionArgs<T>>
Args attention_args(const Call<T>& c) {
  Args a;
  a.key_padding_mask = c.key_padding_mask;
  a.causal = c.causal ? Causal::kTopLeft : Causal::kNone;
  a.generator = c.generator;
  return a;
}

/// Parameters of module m with the named ones replaced by f(tensor) (for site configurations).
template <class M, class F>
void edit(M& m, const std::vector<std::string>& names, F&& f) {
  auto dict = m.state_dict();
  for (const auto& n : names) f(dict.at(n));
  m.load_state_dict(dict);
}
/// Zeroes the named parameters.
template <class M>
void zero(M& m, const std::vector<std::string>& names) {
  edit(m, names, [](auto& t) { t.flat().setZero(); });
}
/// Makes the named (n, n) weight the identity.
template <class M>
void identity(M& m, const std::string& name) {
  edit(m, {name}, [](auto& t) {
    t.flat().setZero();
    for (Index i = 0; i < t.size(0); ++i) t(i, i) = 1;
  });
}

/// A (B, N) key padding mask as the (N) mask of an unbatched input, when the input is.
template <class T>
attn::Mask<T> for_input(const attn::Mask<T>& kpm, const Tensor<T>& x) {
  return x.dim() == 2 && !kpm.empty() ? kpm.reshaped({kpm.shape().back()}) : kpm;
}

// ---------------------------------------------------------------------------------------
// The entries.
// ---------------------------------------------------------------------------------------

struct SelfAttentionEntry {
  static constexpr const char* kName = "SelfAttention";
  static constexpr Layout kLayout = Layout::kTokens;
  static constexpr bool kMixesTokens = true, kAlwaysCausal = false, kUnbatched = true, kCached = false;
  static constexpr bool kCausalPrefix = true;
  template <class T>
  using Module = attn::SelfAttention<T>;
  static std::vector<std::string> configs() { return {"embed_size 8"}; }
  template <class T>
  static Module<T> make(int = 0, double = 0.0) {
    return randomized(Module<T>(kFeatures), 101);
  }
  template <class T>
  static Tensor<T> run(const Module<T>& m, const Tensor<T>& x, const Call<T>& c) {
    auto a = attention_args(c);
    a.key_padding_mask = for_input(c.key_padding_mask, x);
    return m.forward(x, a);
  }
  template <class T>
  static Tensor<T> run_cached(const Module<T>&, const Tensor<T>&, Index, Generator*) {
    return {};
  }
  template <class T>
  static std::vector<DropoutSite<T>> sites() {
    return {};
  }
};

struct MultiHeadAttentionEntry {
  static constexpr const char* kName = "MultiHeadAttention";
  static constexpr Layout kLayout = Layout::kTokens;
  static constexpr bool kMixesTokens = true, kAlwaysCausal = false, kUnbatched = true, kCached = true;
  static constexpr bool kCausalPrefix = true;
  template <class T>
  using Module = attn::MultiHeadAttention<T>;
  static std::vector<std::string> configs() {
    return {"nn.MultiheadAttention", "separate q/k/v/out Linears", "MobileViT fused qkv_proj", "no bias"};
  }
  template <class T>
  static Module<T> make(int config = 0, double p = 0.0) {
    attn::MultiHeadAttentionOptions o;
    o.dropout = p;
    o.bias = config != 3;
    o.layout = config == 1 ? attn::MhaLayout::kSeparateLinears
                           : config == 2 ? attn::MhaLayout::kFusedQkv : attn::MhaLayout::kTorch;
    return randomized(Module<T>(kFeatures, 2, o), 102);
  }
  template <class T>
  static Tensor<T> run(const Module<T>& m, const Tensor<T>& x, const Call<T>& c) {
    attn::MhaArgs<T> a(attention_args(c));
    a.key_padding_mask = for_input(c.key_padding_mask, x);
    return m.forward(x, a).output;
  }
  template <class T>
  static Tensor<T> run_cached(const Module<T>& m, const Tensor<T>& x, Index chunk, Generator* g) {
    attn::KVCache<T> cache = m.make_cache(x.size(0), x.size(1));
    attn::MhaArgs<T> a;
    a.causal = Causal::kBottomRight;
    a.generator = g;
    return in_chunks(x, chunk, [&](const Tensor<T>& part, Index) { return m.forward(part, cache, a).output; });
  }
  template <class T>
  static std::vector<DropoutSite<T>> sites() {
    const Tensor<T> x = random_tensor<T>({2, 8, kFeatures}, 31);
    return {site<T>("attention weights", Law::kLinear, [](double p) { return make<T>(0, p); },
                    [x](const Module<T>& m, Generator* g) { return run(m, x, Call<T>{{}, false, g}); })};
  }
};

struct TalkingHeadsEntry {
  static constexpr const char* kName = "TalkingHeadsAttention";
  static constexpr Layout kLayout = Layout::kTokens;
  static constexpr bool kMixesTokens = true, kAlwaysCausal = false, kUnbatched = true, kCached = false;
  static constexpr bool kCausalPrefix = false;
  template <class T>
  using Module = attn::TalkingHeadsAttention<T>;
  static std::vector<std::string> configs() { return {"qkv_bias", "no qkv bias"}; }
  template <class T>
  static Module<T> make(int config = 0, double p = 0.0) {
    return randomized(Module<T>(kFeatures, 2, {config == 0, p, p}), 103);
  }
  template <class T>
  static Tensor<T> run(const Module<T>& m, const Tensor<T>& x, const Call<T>& c) {
    auto a = attention_args(c);
    a.key_padding_mask = for_input(c.key_padding_mask, x);
    return m.forward(x, a);
  }
  template <class T>
  static Tensor<T> run_cached(const Module<T>&, const Tensor<T>&, Index, Generator*) {
    return {};
  }
  template <class T>
  static std::vector<DropoutSite<T>> sites() {
    const Tensor<T> x = random_tensor<T>({2, 8, kFeatures}, 33);
    const auto out = [x](const Module<T>& m, Generator* g) { return run(m, x, Call<T>{{}, false, g}); };
    return {site<T>("attention weights (attn_drop)", Law::kLinear,
                    [](double p) { return randomized(Module<T>(kFeatures, 2, {true, p, 0.0}), 103); }, out),
            site<T>("output (proj_drop)", Law::kLinear,
                    [](double p) { return randomized(Module<T>(kFeatures, 2, {true, 0.0, p}), 103); }, out, Tensor<T>(),
                    true)};
  }
};

struct AttentionBlockEntry {
  static constexpr const char* kName = "AttentionBlock";
  static constexpr Layout kLayout = Layout::kChannels;
  static constexpr bool kMixesTokens = true, kAlwaysCausal = false, kUnbatched = true, kCached = false;
  static constexpr bool kCausalPrefix = true;
  template <class T>
  using Module = attn::AttentionBlock<T>;
  static std::vector<std::string> configs() { return {"embed_dim 8, 2 heads"}; }
  template <class T>
  static Module<T> make(int = 0, double p = 0.0) {
    return randomized(Module<T>(kFeatures, 2, {p, 1e-5}), 104);
  }
  template <class T>
  static Tensor<T> run(const Module<T>& m, const Tensor<T>& x, const Call<T>& c) {
    auto a = attention_args(c);
    a.key_padding_mask = for_input(c.key_padding_mask, x);
    return m.forward(x, a);
  }
  template <class T>
  static Tensor<T> run_cached(const Module<T>&, const Tensor<T>&, Index, Generator*) {
    return {};
  }
  /// The block's LayerNorm is not linear: the attention branch is scaled by 1e-3 (out_proj),
  /// so that LayerNorm(x + a) is linear in a up to terms 1e-3 times smaller than the
  /// standard errors the checks allow.
  template <class T>
  static std::vector<DropoutSite<T>> sites() {
    const Tensor<T> x = random_tensor<T>({2, kFeatures, 8}, 34);
    return {site<T>(
        "attention weights", Law::kLinear,
        [](double p) {
          auto m = make<T>(0, p);
          edit(m, {"mha.out_proj.weight", "mha.out_proj.bias"}, [](auto& t) { t.flat() *= T(1e-3); });
          return m;
        },
        [x](const Module<T>& m, Generator* g) { return run(m, x, Call<T>{{}, false, g}); })};
  }
};

struct MobileViTEncoderLayerEntry {
  static constexpr const char* kName = "MobileViTEncoderLayer";
  static constexpr Layout kLayout = Layout::kTokens;
  static constexpr bool kMixesTokens = true, kAlwaysCausal = false, kUnbatched = true, kCached = false;
  static constexpr bool kCausalPrefix = true;
  template <class T>
  using Module = attn::MobileViTEncoderLayer<T>;
  static std::vector<std::string> configs() { return {"ffn_latent_dim 16, 2 heads"}; }
  template <class T>
  static Module<T> make(int = 0, double p = 0.0) {
    return randomized(Module<T>(kFeatures, 16, 2, {p, p, p}), 105);
  }
  template <class T>
  static Tensor<T> run(const Module<T>& m, const Tensor<T>& x, const Call<T>& c) {
    auto a = attention_args(c);
    a.key_padding_mask = for_input(c.key_padding_mask, x);
    return m.forward(x, a);
  }
  template <class T>
  static Tensor<T> run_cached(const Module<T>&, const Tensor<T>&, Index, Generator*) {
    return {};
  }
  /// The FFN branch reads the attention branch's result through a LayerNorm (not linear), so
  /// each site silences the other branch with zero weights; "hidden units" makes fc2 the
  /// identity (ffn_latent_dim = embed_dim), so a dropped hidden unit leaves x exactly.
  template <class T>
  static std::vector<DropoutSite<T>> sites() {
    const Tensor<T> x = random_tensor<T>({2, 8, kFeatures}, 35);
    const auto out = [x](const Module<T>& m, Generator* g) { return run(m, x, Call<T>{{}, false, g}); };
    enum Which { kWeights, kAttentionBranch, kFfnBranch, kHidden };
    const auto make_at = [](Which w) {
      return [w](double p) {
        const double attn_p = w == kWeights ? p : 0.0, res_p = w == kAttentionBranch || w == kFfnBranch ? p : 0.0;
        Module<T> m = randomized(Module<T>(kFeatures, kFeatures, 2, {attn_p, res_p, w == kHidden ? p : 0.0}), 105);
        if (w == kFfnBranch || w == kHidden) {
          zero(m, {"pre_norm_mha.1.out_proj.weight", "pre_norm_mha.1.out_proj.bias"});
          if (w == kHidden) {
            identity(m, "pre_norm_ffn.4.weight");
            zero(m, {"pre_norm_ffn.4.bias"});
          }
        } else {
          zero(m, {"pre_norm_ffn.4.weight", "pre_norm_ffn.4.bias"});
        }
        return m;
      };
    };
    return {site<T>("attention weights (attn_dropout)", Law::kLinear, make_at(kWeights), out),
            site<T>("attention branch (dropout)", Law::kLinear, make_at(kAttentionBranch), out, x),
            site<T>("feed-forward branch (dropout)", Law::kLinear, make_at(kFfnBranch), out, x),
            site<T>("hidden units (ffn_dropout)", Law::kLinear, make_at(kHidden), out, x)};
  }
};

/// What the torch.nn layers' sites share: the layer is pre-norm (x + drop(f(norm(x)))), so
/// each branch is linear in its masks once the other branches are silenced, and one dropout
/// probability drives every site of a branch (the law says how they combine).
struct TorchLayerSites {
  template <class T>
  static attn::TransformerLayerOptions options(double p) {
    attn::TransformerLayerOptions o;
    o.dim_feedforward = kFeatures;  // linear2 can be the identity
    o.dropout = p;
    o.activation = attn::Activation::kGelu;  // never exactly 0, so a dropped hidden unit can be told
    o.norm_first = true;
    return o;
  }
};

struct TransformerEncoderLayerEntry {
  static constexpr const char* kName = "TransformerEncoderLayer";
  static constexpr Layout kLayout = Layout::kTokens;
  static constexpr bool kMixesTokens = true, kAlwaysCausal = false, kUnbatched = true, kCached = false;
  static constexpr bool kCausalPrefix = true;
  template <class T>
  using Module = attn::TransformerEncoderLayer<T>;
  static std::vector<std::string> configs() { return {"post-norm, relu", "pre-norm, gelu"}; }
  template <class T>
  static Module<T> make(int config = 0, double p = 0.0) {
    attn::TransformerLayerOptions o;
    o.dim_feedforward = 16;
    o.dropout = p;
    o.norm_first = config == 1;
    o.activation = config == 1 ? attn::Activation::kGelu : attn::Activation::kRelu;
    return randomized(Module<T>(kFeatures, 2, o), 106);
  }
  template <class T>
  static Tensor<T> run(const Module<T>& m, const Tensor<T>& x, const Call<T>& c) {
    auto a = attention_args(c);
    a.key_padding_mask = for_input(c.key_padding_mask, x);
    return m.forward(x, a);
  }
  template <class T>
  static Tensor<T> run_cached(const Module<T>&, const Tensor<T>&, Index, Generator*) {
    return {};
  }
  template <class T>
  static std::vector<DropoutSite<T>> sites() {
    const Tensor<T> x = random_tensor<T>({2, 8, kFeatures}, 36);
    const auto out = [x](const Module<T>& m, Generator* g) { return run(m, x, Call<T>{{}, false, g}); };
    const auto layer = [](double p) { return randomized(Module<T>(kFeatures, 2, TorchLayerSites::options<T>(p)), 106); };
    return {site<T>("self-attention weights and dropout1", Law::kResidualOfLinear,
                    [layer](double p) {
                      auto m = layer(p);
                      zero(m, {"linear2.weight", "linear2.bias"});
                      return m;
                    },
                    out, x),
            site<T>("feed-forward hidden units and dropout2", Law::kTwoMasks,
                    [layer](double p) {
                      auto m = layer(p);
                      zero(m, {"self_attn.out_proj.weight", "self_attn.out_proj.bias", "linear2.bias"});
                      identity(m, "linear2.weight");
                      return m;
                    },
                    out, x)};
  }
};

struct TransformerDecoderLayerEntry {
  static constexpr const char* kName = "TransformerDecoderLayer";
  static constexpr Layout kLayout = Layout::kTokens;
  static constexpr bool kMixesTokens = true, kAlwaysCausal = false, kUnbatched = true, kCached = true;
  static constexpr bool kCausalPrefix = true;
  template <class T>
  using Module = attn::TransformerDecoderLayer<T>;
  static std::vector<std::string> configs() { return {"post-norm, relu", "pre-norm, gelu"}; }
  template <class T>
  static Module<T> make(int config = 0, double p = 0.0) {
    attn::TransformerLayerOptions o;
    o.dim_feedforward = 16;
    o.dropout = p;
    o.norm_first = config == 1;
    o.activation = config == 1 ? attn::Activation::kGelu : attn::Activation::kRelu;
    return randomized(Module<T>(kFeatures, 2, o), 107);
  }
  /// The memory the decoder attends to for input x: 5 tokens, x's batch (unbatched for an
  /// unbatched x), fixed values.
  template <class T>
  static Tensor<T> memory(const Tensor<T>& x) {
    const Tensor<T> m = random_tensor<T>({std::max<Index>(x.dim() == 3 ? x.size(0) : 1, 0), 5, kFeatures}, 77);
    return x.dim() == 3 ? m : Tensor<T>(m).reshaped({5, kFeatures});
  }
  template <class T>
  static Tensor<T> run(const Module<T>& m, const Tensor<T>& x, const Call<T>& c) {
    attn::DecoderArgs<T> a;
    a.self.key_padding_mask = for_input(c.key_padding_mask, x);
    a.self.causal = c.causal ? Causal::kTopLeft : Causal::kNone;
    a.generator = c.generator;
    return m.forward(x, memory(x), a);
  }
  template <class T>
  static Tensor<T> run_cached(const Module<T>& m, const Tensor<T>& x, Index chunk, Generator* g) {
    attn::DecoderCache<T> cache = m.make_cache(x.size(0), x.size(1), 5);
    m.encode_memory(memory(x), cache);
    attn::DecoderArgs<T> a;
    a.self.causal = Causal::kTopLeft;
    a.generator = g;
    return in_chunks(x, chunk, [&](const Tensor<T>& part, Index) { return m.forward(part, cache, a); });
  }
  template <class T>
  static std::vector<DropoutSite<T>> sites() {
    const Tensor<T> x = random_tensor<T>({2, 8, kFeatures}, 37);
    const auto out = [x](const Module<T>& m, Generator* g) { return run(m, x, Call<T>{{}, false, g}); };
    const auto layer = [](double p) { return randomized(Module<T>(kFeatures, 2, TorchLayerSites::options<T>(p)), 107); };
    const std::vector<std::string> self = {"self_attn.out_proj.weight", "self_attn.out_proj.bias"},
                                   cross = {"multihead_attn.out_proj.weight", "multihead_attn.out_proj.bias"},
                                   ffn = {"linear2.weight", "linear2.bias"};
    const auto silenced = [layer](std::vector<std::string> names) {
      return [layer, names](double p) {
        auto m = layer(p);
        zero(m, names);
        return m;
      };
    };
    std::vector<std::string> self_and_cross = self;
    self_and_cross.insert(self_and_cross.end(), cross.begin(), cross.end());
    self_and_cross.push_back("linear2.bias");
    std::vector<std::string> not_self = cross, not_cross = self;
    not_self.insert(not_self.end(), ffn.begin(), ffn.end());
    not_cross.insert(not_cross.end(), ffn.begin(), ffn.end());
    return {site<T>("self-attention weights and dropout1", Law::kResidualOfLinear, silenced(not_self), out, x),
            site<T>("cross-attention weights and dropout2", Law::kResidualOfLinear, silenced(not_cross), out, x),
            site<T>("feed-forward hidden units and dropout3", Law::kTwoMasks,
                    [layer, self_and_cross](double p) {
                      auto m = layer(p);
                      zero(m, self_and_cross);
                      identity(m, "linear2.weight");
                      return m;
                    },
                    out, x)};
  }
};

struct GroupedQueryAttentionEntry {
  static constexpr const char* kName = "GroupedQueryAttention";
  static constexpr Layout kLayout = Layout::kTokens;
  static constexpr bool kMixesTokens = true, kAlwaysCausal = true, kUnbatched = false, kCached = true;
  static constexpr bool kCausalPrefix = true;
  template <class T>
  using Module = attn::GroupedQueryAttention<T>;
  static std::vector<std::string> configs() {
    return {"4 heads, 2 kv heads, rope", "interleaved rope over 2 of 4 dims, theta 500",
            "multi-query, no rope, window 3, softcap 5, qkv bias, sinks"};
  }
  template <class T>
  static Module<T> make(int config = 0, double p = 0.0) {
    attn::GqaOptions o;
    o.dropout = p;
    if (config == 1) {
      o.rotary.interleaved = true;
      o.rotary.rotary_dim = 2;
      o.rotary.theta = 500.0;
    }
    if (config == 2) {
      o.rope = false;
      o.sliding_window = 3;
      o.softcap = 5.0;
      o.qkv_bias = true;
      o.sinks = true;
    }
    return randomized(Module<T>(kFeatures, 4, config == 2 ? 1 : 2, 4, o), 108);
  }
  template <class T>
  static Tensor<T> run(const Module<T>& m, const Tensor<T>& x, const Call<T>& c) {
    attn::GqaArgs<T> a;
    a.key_padding_mask = c.key_padding_mask;
    a.generator = c.generator;
    return m.forward(x, a);
  }
  template <class T>
  static Tensor<T> run_cached(const Module<T>& m, const Tensor<T>& x, Index chunk, Generator* g) {
    attn::KVCache<T> cache = m.make_cache(x.size(0), x.size(1));
    attn::GqaArgs<T> a;
    a.generator = g;
    return in_chunks(x, chunk, [&](const Tensor<T>& part, Index) { return m.forward(part, cache, a); });
  }
  template <class T>
  static std::vector<DropoutSite<T>> sites() {
    const Tensor<T> x = random_tensor<T>({2, 8, kFeatures}, 38);
    return {site<T>("attention weights", Law::kLinear, [](double p) { return make<T>(0, p); },
                    [x](const Module<T>& m, Generator* g) { return run(m, x, Call<T>{{}, false, g}); })};
  }
};

struct LinearEntry {
  static constexpr const char* kName = "Linear";
  static constexpr Layout kLayout = Layout::kTokens;
  static constexpr bool kMixesTokens = false, kAlwaysCausal = false, kUnbatched = true, kCached = false;
  static constexpr bool kCausalPrefix = true;
  template <class T>
  using Module = attn::Linear<T>;
  static std::vector<std::string> configs() { return {"bias", "no bias"}; }
  template <class T>
  static Module<T> make(int config = 0, double = 0.0) {
    return randomized(Module<T>(kFeatures, kFeatures, config == 0), 109);
  }
  template <class T>
  static Tensor<T> run(const Module<T>& m, const Tensor<T>& x, const Call<T>&) {
    return m.forward(x);
  }
  template <class T>
  static Tensor<T> run_cached(const Module<T>&, const Tensor<T>&, Index, Generator*) {
    return {};
  }
  template <class T>
  static std::vector<DropoutSite<T>> sites() {
    return {};
  }
};

struct LayerNormEntry {
  static constexpr const char* kName = "LayerNorm";
  static constexpr Layout kLayout = Layout::kTokens;
  static constexpr bool kMixesTokens = false, kAlwaysCausal = false, kUnbatched = true, kCached = false;
  static constexpr bool kCausalPrefix = true;
  template <class T>
  using Module = attn::LayerNorm<T>;
  static std::vector<std::string> configs() { return {"affine", "no affine"}; }
  template <class T>
  static Module<T> make(int config = 0, double = 0.0) {
    return randomized(Module<T>(kFeatures, 1e-5, config == 0), 110);
  }
  template <class T>
  static Tensor<T> run(const Module<T>& m, const Tensor<T>& x, const Call<T>&) {
    return m.forward(x);
  }
  template <class T>
  static Tensor<T> run_cached(const Module<T>&, const Tensor<T>&, Index, Generator*) {
    return {};
  }
  template <class T>
  static std::vector<DropoutSite<T>> sites() {
    return {};
  }
};

/// Every module.
using ModuleTuple = std::tuple<SelfAttentionEntry, MultiHeadAttentionEntry, TalkingHeadsEntry, AttentionBlockEntry,
                               MobileViTEncoderLayerEntry, TransformerEncoderLayerEntry, TransformerDecoderLayerEntry,
                               GroupedQueryAttentionEntry, LinearEntry, LayerNormEntry>;

/// Calls f(E{}) for every entry E.
template <class F>
void for_each_entry(F&& f) {
  std::apply([&](auto... e) { (f(e), ...); }, ModuleTuple{});
}

}  // namespace registry
}  // namespace attn_test
