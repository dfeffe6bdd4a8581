// attn_run: runs one attn module on inputs read from a safetensors file and writes its
// outputs to a safetensors file. Weights use PyTorch's state_dict names, so a module
// exported from PyTorch (examples/export_weights.py) can be checked against PyTorch's
// own output. `attn_run --help` describes the command line.
//
// Exit status: 0 success; 2 the command line is wrong (unknown, repeated or missing flags,
// bad numbers, a flag the module does not take, heads that do not divide the embedding);
// 1 the files or their contents are wrong (unreadable file, missing / unexpected /
// misshaped weight, input shapes or masks that do not fit the module). On any error a
// one-line message goes to stderr and no output file is created: the output is written to
// a temporary name in the same directory and renamed only when complete.

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <stdexcept>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(_WIN32)
#include <process.h>
#define ATTN_RUN_GETPID _getpid
#else
#include <unistd.h>
#define ATTN_RUN_GETPID getpid
#endif

#include <attn/attn.hpp>
#include <attn/io/safetensors.hpp>

namespace {

using attn::Index;
using attn::io::DType;

const char* const kUsage =
    "usage: attn_run --module self_attention|multi_head_attention|talking_heads|attention_block\n"
    "                        |mobilevit_encoder_layer|transformer_encoder_layer|transformer_decoder_layer\n"
    "                        |gqa_attention|linear|sdpa\n"
    "                --embed-dim E [--num-heads H] [--kdim K] [--vdim V] [--ffn-dim F]\n"
    "                [--num-kv-heads K] [--head-dim D] [--rope-theta T | --no-rope] [--rotary-dim R]\n"
    "                [--rope-interleaved] [--sliding-window W] [--softcap C] [--sinks]\n"
    "                [--activation relu|gelu] [--norm-first] [--causal] [--incremental C]\n"
    "                [--kv-cache-dtype float32|bfloat16|float16|int8] [--page-size P]\n"
    "                [--in-features K --out-features N]\n"
    "                [--qkv-bias] [--no-bias] [--add-bias-kv] [--add-zero-attn]\n"
    "                --weights W.safetensors [--prefix P] --inputs X.safetensors --output Y.safetensors\n"
    "                [--need-weights] [--per-head-weights] [--return-lse] [--dtype D] [--threads N]\n"
    "                [--repeat N]\n"
    "\n"
    "Runs one module (in eval mode) on the inputs and writes its outputs.\n"
    "\n"
    "Modules and the constructor flags they take (as the PyTorch constructors):\n"
    "  self_attention        single-head SelfAttention(E) (query/key/value Linears): --embed-dim\n"
    "  multi_head_attention  nn.MultiheadAttention(E, H, batch_first=True): --embed-dim, --num-heads,\n"
    "                        [--kdim K] [--vdim V] [--no-bias] [--add-bias-kv] [--add-zero-attn];\n"
    "                        also separate q/k/v/out Linears (q.weight ...) and MobileViT's\n"
    "                        fused qkv_proj (qkv_proj.weight ...),\n"
    "                        told apart by the weight names;\n"
    "                        --causal: causal self-attention; --incremental C: self-attention fed\n"
    "                        through a KV cache C tokens at a time (causal)\n"
    "  talking_heads         timm TalkingHeadAttn(E, H = 8, qkv_bias): --embed-dim [--num-heads] [--qkv-bias]\n"
    "  attention_block       AttentionBlock(E, H) (MHA + residual + LayerNorm): --embed-dim --num-heads;\n"
    "                        x is (N, C, L)\n"
    "  mobilevit_encoder_layer  MobileViT's TransformerEncoder(E, F, H = 8): --embed-dim --ffn-dim\n"
    "                        [--num-heads]; also as transformer_encoder (its former name)\n"
    "  transformer_encoder_layer  nn.TransformerEncoderLayer(E, H, F, dropout, activation,\n"
    "                        norm_first, batch_first=True): --embed-dim --num-heads --ffn-dim\n"
    "                        [--activation relu|gelu] [--norm-first]\n"
    "  transformer_decoder_layer  nn.TransformerDecoderLayer(...), the same flags; inputs tgt and\n"
    "                        memory, causal over tgt; [--incremental C]\n"
    "  gqa_attention         Llama / Mistral / Qwen2 attention: --embed-dim --num-heads --num-kv-heads\n"
    "                        [--head-dim D] [--rope-theta T | --no-rope] [--rotary-dim R]\n"
    "                        [--rope-interleaved] [--qkv-bias] [--sliding-window W] [--softcap C]\n"
    "                        [--sinks] [--incremental C]; input x, causal; --sinks: gpt-oss attention\n"
    "                        sinks, a weight `sinks` (H) of one logit per head\n"
    "  linear                nn.Linear(K, N, bias): --in-features --out-features [--no-bias]; x is (..., K)\n"
    "  sdpa                  the attention core, softmax(q k^T / sqrt(D)) v, on query (B, H, L, D), key\n"
    "                        (B, H, S, D), value (B, H, S, Dv) (and the optional masks); no --weights;\n"
    "                        --return-lse: also lse (B, H, L), each query's log-sum-exp of its logits\n"
    "                        (float32 for a 16-bit --dtype)\n"
    "\n"
    "Files (safetensors):\n"
    "  --weights   the module's state_dict under PyTorch's names; with --prefix P only the tensors\n"
    "              named P... are used, P removed (e.g. --prefix blocks.0.attn.). Loading is strict.\n"
    "  --inputs    x (B, N, E) (attention_block: (N, C, L)); multi_head_attention: query (B, L, E),\n"
    "              key (B, S, K), value (B, S, V) (key and value may be left out for self-attention).\n"
    "              Optional: key_padding_mask (B, S) and attn_mask (any shape that broadcasts to\n"
    "              (B, H, L, S), or (B*H, L, S)), bool or\n"
    "              uint8 (true = masked out) or float (added to the logits): nn.MultiheadAttention's\n"
    "              conventions. Computation is in the dtype of x / query, or --dtype's.\n"
    "              Packed sequences of different lengths (no padding): cu_seqlens (I64, B + 1), the\n"
    "              first row of each sequence, then the total, with x (T, E) (gqa_attention), query\n"
    "              (T, E) (multi_head_attention; cu_seqlens_k for key and value if they differ) or\n"
    "              tgt (T, E) and cu_seqlens_memory for memory (transformer_decoder_layer). Each\n"
    "              sequence attends within itself only; no masks.\n"
    "  --output    output; with --need-weights (multi_head_attention only) also attn_weights,\n"
    "              averaged over heads (B, L, S), or per head (B, H, L, S) with --per-head-weights\n"
    "              (which implies --need-weights); with --return-lse (sdpa) also lse.\n"
    "\n"
    "  --dtype D    float32, float64, bfloat16 or float16: the dtype of the computation, of the\n"
    "               weights and activations it stores, and of the output (default: that of x /\n"
    "               query). Weights and inputs of any float dtype (F32, F64, BF16, F16) are converted\n"
    "               once, on load (rounded to nearest even). bfloat16 and float16 keep weights and\n"
    "               activations in 16 bits and compute inside each op in float32.\n"
    "  --kv-cache-dtype S  with --incremental: the KV cache stores keys and values in S (float32,\n"
    "               bfloat16, float16, or int8 with a float32 scale per token and head, quantised\n"
    "               when appended); attention reads them in S and computes in the --dtype\n"
    "               (float32 or 16-bit; default: the cache stores the --dtype)\n"
    "  --page-size P  with --incremental: the KV cache is paged, in pages of P positions\n"
    "               (KVCache with KVPages; the same bits as the contiguous cache)\n"
    "  --threads N  threads for attn's kernels (0 = all cores, the default)\n"
    "  --repeat N   after the first forward pass, run it N more times and print\n"
    "               'forward median: <ms> ms (N runs)' (forward pass only, no I/O)\n"
    "\n"
    "Exit status: 0 ok; 2 command-line error; 1 file or data error. On error: one line on\n"
    "stderr and no output file.\n";

/// A mistake in the command line (exit status 2).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string module;
  Index embed_dim = 0, num_heads = 0, kdim = 0, vdim = 0, ffn_dim = 0, in_features = 0, out_features = 0;
  Index num_kv_heads = 0, head_dim = 0, rotary_dim = 0, sliding_window = 0, incremental = 0, page_size = 0;
  double rope_theta = 10000.0, softcap = 0.0;
  std::string activation = "relu";
  bool qkv_bias = false, no_bias = false, add_bias_kv = false, add_zero_attn = false;
  bool no_rope = false, rope_interleaved = false, norm_first = false, causal = false;
  std::string weights, prefix, inputs, output, dtype, kv_cache_dtype;
  bool need_weights = false, per_head_weights = false, return_lse = false, sinks = false;
  int threads = 0;
  long repeat = 0;
  std::set<std::string> given;  // flags that appeared, without "--"
  bool help = false;
};

long parse_number(const std::string& flag, const std::string& text, long min, long max) {
  std::size_t used = 0;
  long v = 0;
  try {
    v = std::stol(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || text[0] == '+' || text[0] == ' ')
    throw UsageError("--" + flag + " expects an integer, got '" + text + "'");
  if (v < min || v > max)
    throw UsageError("--" + flag + " must be between " + std::to_string(min) + " and " + std::to_string(max) +
                     ", got " + text);
  return v;
}

double parse_positive(const std::string& flag, const std::string& text) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || !(v > 0) || !std::isfinite(v))
    throw UsageError("--" + flag + " expects a number > 0, got '" + text + "'");
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  constexpr long kMaxDim = 1L << 30;
  const std::map<std::string, std::function<void(const std::string&)>> with_value{
      {"module", [&](const std::string& v) { o.module = v; }},
      {"embed-dim", [&](const std::string& v) { o.embed_dim = parse_number("embed-dim", v, 1, kMaxDim); }},
      {"num-heads", [&](const std::string& v) { o.num_heads = parse_number("num-heads", v, 1, kMaxDim); }},
      {"kdim", [&](const std::string& v) { o.kdim = parse_number("kdim", v, 1, kMaxDim); }},
      {"vdim", [&](const std::string& v) { o.vdim = parse_number("vdim", v, 1, kMaxDim); }},
      {"ffn-dim", [&](const std::string& v) { o.ffn_dim = parse_number("ffn-dim", v, 1, kMaxDim); }},
      {"in-features", [&](const std::string& v) { o.in_features = parse_number("in-features", v, 1, kMaxDim); }},
      {"out-features", [&](const std::string& v) { o.out_features = parse_number("out-features", v, 1, kMaxDim); }},
      {"num-kv-heads", [&](const std::string& v) { o.num_kv_heads = parse_number("num-kv-heads", v, 1, kMaxDim); }},
      {"head-dim", [&](const std::string& v) { o.head_dim = parse_number("head-dim", v, 1, kMaxDim); }},
      {"rotary-dim", [&](const std::string& v) { o.rotary_dim = parse_number("rotary-dim", v, 1, kMaxDim); }},
      {"sliding-window", [&](const std::string& v) { o.sliding_window = parse_number("sliding-window", v, 1, kMaxDim); }},
      {"incremental", [&](const std::string& v) { o.incremental = parse_number("incremental", v, 1, kMaxDim); }},
      {"page-size", [&](const std::string& v) { o.page_size = parse_number("page-size", v, 1, kMaxDim); }},
      {"rope-theta", [&](const std::string& v) { o.rope_theta = parse_positive("rope-theta", v); }},
      {"softcap", [&](const std::string& v) { o.softcap = parse_positive("softcap", v); }},
      {"activation", [&](const std::string& v) { o.activation = v; }},
      {"weights", [&](const std::string& v) { o.weights = v; }},
      {"prefix", [&](const std::string& v) { o.prefix = v; }},
      {"inputs", [&](const std::string& v) { o.inputs = v; }},
      {"output", [&](const std::string& v) { o.output = v; }},
      {"dtype", [&](const std::string& v) { o.dtype = v; }},
      {"kv-cache-dtype", [&](const std::string& v) { o.kv_cache_dtype = v; }},
      {"threads", [&](const std::string& v) { o.threads = static_cast<int>(parse_number("threads", v, 0, 4096)); }},
      {"repeat", [&](const std::string& v) { o.repeat = parse_number("repeat", v, 0, 1000000000L); }},
  };
  const std::map<std::string, bool*> switches{
      {"qkv-bias", &o.qkv_bias},         {"no-bias", &o.no_bias},
      {"add-bias-kv", &o.add_bias_kv},   {"add-zero-attn", &o.add_zero_attn},
      {"need-weights", &o.need_weights}, {"per-head-weights", &o.per_head_weights},
      {"no-rope", &o.no_rope},           {"rope-interleaved", &o.rope_interleaved},
      {"norm-first", &o.norm_first},     {"causal", &o.causal},
      {"return-lse", &o.return_lse},     {"sinks", &o.sinks},
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      o.help = true;
      return o;
    }
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) throw UsageError("unexpected argument '" + arg + "'");
    std::string name = arg.substr(2), value;
    bool has_inline_value = false;
    const std::size_t eq = name.find('=');
    if (eq != std::string::npos) {  // --flag=value
      value = name.substr(eq + 1);
      name.erase(eq);
      has_inline_value = true;
    }
    if (!o.given.insert(name).second && (with_value.count(name) || switches.count(name)))
      throw UsageError("--" + name + " is given more than once");
    if (auto s = switches.find(name); s != switches.end()) {
      if (has_inline_value) throw UsageError("--" + name + " takes no value");
      *s->second = true;
    } else if (auto w = with_value.find(name); w != with_value.end()) {
      if (!has_inline_value) {
        if (i + 1 >= argc) throw UsageError("--" + name + " needs a value");
        value = argv[++i];
      }
      w->second(value);
    } else {
      throw UsageError("unknown option '--" + name + "'");
    }
  }
  return o;
}

/// Which flags each module takes beyond the common ones, and which of them it requires.
struct ModuleFlags {
  std::set<std::string> allowed, required;
};

const std::map<std::string, ModuleFlags>& module_flags() {
  static const std::map<std::string, ModuleFlags> table{
      {"self_attention", {{"embed-dim"}, {"embed-dim"}}},
      {"multi_head_attention",
       {{"embed-dim", "num-heads", "kdim", "vdim", "no-bias", "add-bias-kv", "add-zero-attn", "need-weights",
         "per-head-weights", "causal", "incremental", "kv-cache-dtype", "page-size"},
        {"embed-dim", "num-heads"}}},
      {"talking_heads", {{"embed-dim", "num-heads", "qkv-bias"}, {"embed-dim"}}},
      {"attention_block", {{"embed-dim", "num-heads"}, {"embed-dim", "num-heads"}}},
      {"mobilevit_encoder_layer", {{"embed-dim", "num-heads", "ffn-dim"}, {"embed-dim", "ffn-dim"}}},
      {"transformer_encoder_layer",
       {{"embed-dim", "num-heads", "ffn-dim", "activation", "norm-first"}, {"embed-dim", "num-heads", "ffn-dim"}}},
      {"transformer_decoder_layer",
       {{"embed-dim", "num-heads", "ffn-dim", "activation", "norm-first", "incremental", "kv-cache-dtype", "page-size"},
        {"embed-dim", "num-heads", "ffn-dim"}}},
      {"gqa_attention",
       {{"embed-dim", "num-heads", "num-kv-heads", "head-dim", "rope-theta", "no-rope", "rotary-dim", "rope-interleaved",
         "qkv-bias", "sliding-window", "softcap", "incremental", "kv-cache-dtype", "page-size", "sinks"},
        {"embed-dim", "num-heads", "num-kv-heads"}}},
      {"linear", {{"in-features", "out-features", "no-bias"}, {"in-features", "out-features"}}},
      {"sdpa", {{"return-lse"}, {}}},
  };
  return table;
}

/// The flags of the decoding modules that depend on each other.
void validate_decoding_flags(const Options& o) {
  if (o.no_rope && (o.given.count("rope-theta") || o.given.count("rotary-dim") || o.rope_interleaved))
    throw UsageError("--no-rope excludes --rope-theta, --rotary-dim and --rope-interleaved");
  if (o.given.count("num-kv-heads") && o.num_heads % o.num_kv_heads != 0)
    throw UsageError("--num-heads " + std::to_string(o.num_heads) + " is not a multiple of --num-kv-heads " +
                     std::to_string(o.num_kv_heads));
  if (o.given.count("rotary-dim")) {
    const Index d = o.given.count("head-dim") ? o.head_dim : o.embed_dim / std::max<Index>(o.num_heads, 1);
    if (o.rotary_dim % 2 != 0 || o.rotary_dim > d)
      throw UsageError("--rotary-dim " + std::to_string(o.rotary_dim) + " must be even and at most the head dim " +
                       std::to_string(d));
  }
  if (o.activation != "relu" && o.activation != "gelu")
    throw UsageError("--activation expects relu or gelu, got '" + o.activation + "'");
  if (o.incremental > 0 && o.need_weights) throw UsageError("--incremental does not return attention weights");
  if (o.given.count("kv-cache-dtype")) {
    static const std::set<std::string> kinds{"float32", "bfloat16", "float16", "int8"};
    if (!kinds.count(o.kv_cache_dtype))
      throw UsageError("--kv-cache-dtype expects float32, bfloat16, float16 or int8, got '" + o.kv_cache_dtype + "'");
    if (o.incremental == 0) throw UsageError("--kv-cache-dtype needs --incremental (the cache is what it stores)");
    if (o.dtype == "float64") throw UsageError("--kv-cache-dtype needs a float32 or 16-bit computation, not float64");
  }
  if (o.page_size > 0 && o.incremental == 0) throw UsageError("--page-size needs --incremental (it pages the KV cache)");
}

/// The safetensors dtype of a --dtype name, or nothing.
std::optional<DType> dtype_of(const std::string& name) {
  if (name == "float32") return DType::kF32;
  if (name == "float64") return DType::kF64;
  if (name == "bfloat16") return DType::kBF16;
  if (name == "float16") return DType::kF16;
  return std::nullopt;
}

/// Checks what parse_args cannot: required flags, flags the module does not take, and
/// the constructor arguments. Fills in the modules' default head counts.
void validate(Options& o) {
  if (o.module == "transformer_encoder") o.module = "mobilevit_encoder_layer";  // its former name
  const bool sdpa = o.module == "sdpa";  // the attention core has no weights
  std::set<std::string> common{"module", "inputs", "output", "threads", "repeat", "dtype"};
  if (!sdpa) common.insert({"weights", "prefix"});
  for (const char* f : {"module", "inputs", "output"})
    if (!o.given.count(f)) throw UsageError(std::string("--") + f + " is required");
  if (!sdpa && !o.given.count("weights")) throw UsageError("--weights is required");
  auto it = module_flags().find(o.module);
  if (it == module_flags().end())
    throw UsageError("unknown module '" + o.module +
                     "' (expected self_attention, multi_head_attention, talking_heads, attention_block, "
                     "mobilevit_encoder_layer, transformer_encoder_layer, transformer_decoder_layer, gqa_attention, "
                     "linear or sdpa)");
  for (const auto& f : o.given)
    if (!common.count(f) && !it->second.allowed.count(f)) {
      std::string hint;
      if (f == "need-weights" || f == "per-head-weights") hint = ": only multi_head_attention returns weights";
      throw UsageError("--" + f + " does not apply to --module " + o.module + hint);
    }
  for (const auto& f : it->second.required)
    if (!o.given.count(f)) throw UsageError("--module " + o.module + " needs --" + f);
  if (o.given.count("dtype") && !dtype_of(o.dtype))
    throw UsageError("--dtype expects float32, float64, bfloat16 or float16, got '" + o.dtype + "'");
  if (o.per_head_weights) o.need_weights = true;
  if (!o.given.count("num-heads")) o.num_heads = o.module == "self_attention" ? 1 : 8;  // PyTorch defaults
  validate_decoding_flags(o);
  if (o.given.count("embed-dim") && !o.given.count("head-dim") && o.embed_dim % o.num_heads != 0)
    throw UsageError("--num-heads " + std::to_string(o.num_heads) + " does not divide --embed-dim " +
                     std::to_string(o.embed_dim));
  if (o.output == o.weights || o.output == o.inputs)
    throw UsageError("--output must not be the --weights or --inputs file");
}

/// What one forward pass produces.
template <class T>
struct Result {
  attn::Tensor<T> output;
  attn::Tensor<T> attn_weights;  // empty unless --need-weights
  attn::Tensor<attn::compute_t<T>> lse{};  // empty unless --return-lse
};

bool is_float(DType t) { return t == DType::kF32 || t == DType::kF64 || t == DType::kF16 || t == DType::kBF16; }

/// The inputs file, its tensors converted to T. Views into these tensors must not outlive it.
template <class T>
struct Inputs {
  std::map<std::string, attn::Tensor<T>> values;  // x / query / key / value, float masks
  std::map<std::string, attn::Tensor<bool>> bools;  // bool masks
  std::map<std::string, attn::Tensor<std::int64_t>> offsets;  // cu_seqlens*
  attn::AttentionMasks<T> masks;

  Inputs(const attn::io::SafetensorsFile& f, const std::vector<std::string>& data_names,
         const std::string& module) {
    std::set<std::string> known(data_names.begin(), data_names.end());
    const std::vector<std::string> packed = offset_names(module);
    known.insert({"key_padding_mask", "attn_mask"});
    known.insert(packed.begin(), packed.end());
    for (const auto& n : f.names())
      if (!known.count(n)) {
        std::string list;
        for (const auto& d : data_names) list += d + ", ";
        for (const auto& d : packed) list += d + ", ";
        throw std::runtime_error(f.path() + ": tensor '" + n + "' is not an input of " + module + " (expected " +
                                 list + "key_padding_mask, attn_mask)");
      }
    for (const auto& n : data_names)
      if (f.contains(n)) values.emplace(n, f.get<T>(n));
    masks.key_padding_mask = mask(f, "key_padding_mask");
    masks.attn_mask = mask(f, "attn_mask");
    for (const auto& n : packed)
      if (f.contains(n)) {
        const std::vector<std::int64_t> v = f.get_int64(n);
        offsets.emplace(n, attn::Tensor<std::int64_t>::from_data(f.info(n).shape, v.data()));
      }
  }

  /// The cu_seqlens tensors a module takes.
  static std::vector<std::string> offset_names(const std::string& module) {
    if (module == "gqa_attention") return {"cu_seqlens"};
    if (module == "multi_head_attention") return {"cu_seqlens", "cu_seqlens_k"};
    if (module == "transformer_decoder_layer") return {"cu_seqlens", "cu_seqlens_memory"};
    return {};
  }
  /// The cu_seqlens tensor `name`, or null when the inputs have none.
  const attn::Tensor<std::int64_t>* offset(const std::string& name) const {
    const auto it = offsets.find(name);
    return it == offsets.end() ? nullptr : &it->second;
  }

 private:
  attn::Mask<T> mask(const attn::io::SafetensorsFile& f, const std::string& name) {
    if (!f.contains(name)) return {};
    if (is_float(f.info(name).dtype)) {
      const auto& t = values.emplace(name, f.get<T>(name)).first->second;
      return attn::Mask<T>::additive(t.view());
    }
    const auto& t = bools.emplace(name, f.get_bool(name)).first->second;
    return attn::Mask<T>::block_where_true(t.view());
  }
};

/// True if a and b hold the same shape and the same bits.
template <class T>
bool same_values(const attn::Tensor<T>& a, const attn::Tensor<T>& b) {
  return a.shape() == b.shape() &&
         std::equal(a.data(), a.data() + a.numel(), b.data(), [](T x, T y) { return std::memcmp(&x, &y, sizeof(T)) == 0; });
}

/// A (B, L, E) sequence fed through f C tokens at a time (f(chunk, end) gives (B, c, E') for
/// the chunk of positions end - c .. end - 1), the outputs concatenated: what --incremental
/// runs through a KV cache.
template <class T, class F>
attn::Tensor<T> chunked(const attn::Tensor<T>& x, Index c, F&& f) {
  const Index nb = x.size(0), len = x.size(1), e = x.size(2);
  attn::Tensor<T> out;
  for (Index j0 = 0; j0 < len; j0 += c) {
    const Index n = std::min(c, len - j0);
    attn::Tensor<T> chunk({nb, n, e});
    for (Index b = 0; b < nb; ++b) std::copy_n(x.data() + (b * len + j0) * e, n * e, chunk.data() + b * n * e);
    const attn::Tensor<T> y = f(chunk, j0 + n);
    const Index eo = y.size(2);
    if (j0 == 0) out = attn::Tensor<T>({nb, len, eo});
    for (Index b = 0; b < nb; ++b) std::copy_n(y.data() + b * n * eo, n * eo, out.data() + (b * len + j0) * eo);
  }
  return out;
}

/// The key padding mask (B, L) of an incremental run, cut for each chunk to the keys cached
/// so far (the first `end`); an attn_mask has no incremental meaning here and is refused.
template <class T>
class ChunkMasks {
 public:
  ChunkMasks(const attn::AttentionMasks<T>& args, Index batch, Index len) : mask_(args.key_padding_mask) {
    if (!args.attn_mask.empty()) throw std::runtime_error("--incremental takes a key_padding_mask but no attn_mask");
    if (!mask_.empty() && mask_.shape() != attn::Shape{batch, len})
      throw std::runtime_error("--incremental: key_padding_mask has shape " + attn::to_string(mask_.shape()) +
                               ", expected (batch, length) = " + attn::to_string({batch, len}));
  }

  /// The mask of keys 0 .. end - 1 (empty if there is none).
  attn::Mask<T> upto(Index end) {
    if (mask_.empty()) return mask_;
    const Index nb = mask_.shape()[0], len = mask_.shape()[1];
    if (mask_.kind() == attn::Mask<T>::Kind::kAdditive) {
      additive_ = attn::Tensor<T>({nb, end});
      for (Index b = 0; b < nb; ++b) std::copy_n(mask_.additive_data() + b * len, end, additive_.data() + b * end);
      return attn::Mask<T>::additive(additive_.view());
    }
    bools_ = attn::Tensor<bool>({nb, end});
    for (Index b = 0; b < nb; ++b) std::copy_n(mask_.bool_data() + b * len, end, bools_.data() + b * end);
    return mask_.kind() == attn::Mask<T>::Kind::kKeepWhereTrue ? attn::Mask<T>::keep_where_true(bools_.view())
                                                                : attn::Mask<T>::block_where_true(bools_.view());
  }

 private:
  attn::Mask<T> mask_;
  attn::Tensor<T> additive_;
  attn::Tensor<bool> bools_;
};

/// --incremental: x fed through a KV cache `c` tokens at a time by step(chunk); before each
/// chunk, the key padding mask in `self` (the arguments step passes on) is cut to the tokens
/// cached after it.
template <class T, class Step>
attn::Tensor<T> incremental(const attn::Tensor<T>& x, Index c, attn::AttentionMasks<T>& self, Step&& step) {
  ChunkMasks<T> masks(self, x.size(0), x.size(1));
  return chunked(x, c, [&](const attn::Tensor<T>& chunk, Index end) {
    self.key_padding_mask = masks.upto(end);
    return step(chunk);
  });
}

attn::TransformerLayerOptions layer_options(const Options& o) {
  attn::TransformerLayerOptions lo;
  lo.dim_feedforward = o.ffn_dim;
  lo.activation = o.activation == "gelu" ? attn::Activation::kGelu : attn::Activation::kRelu;
  lo.norm_first = o.norm_first;
  return lo;
}

/// f(S{}) for the KV cache storage type S --kv-cache-dtype names ("": the compute type T).
template <class T, class F>
auto with_kv_storage(const std::string& name, F&& f) {
  if constexpr (!std::is_same<attn::compute_t<T>, float>::value) {  // float64: the cache stores T
    if (!name.empty()) throw std::runtime_error("--kv-cache-dtype needs a float32 or 16-bit computation");
  } else {
    if (name == "float32") return f(float{});
    if (name == "bfloat16") return f(attn::bfloat16{});
    if (name == "float16") return f(attn::half{});
    if (name == "int8") return f(std::int8_t{});
  }
  return f(T{});
}

/// The KV cache of --incremental for module m: m.make_cache<S>(batch, length, extra...),
/// paged with --page-size P (a pool of batch x ceil(length / P) pages of P positions).
template <class S, class M, class... Extra>
auto make_cache(const M& m, Index page_size, Index batch, Index length, Extra... extra) {
  if (page_size == 0) return m.template make_cache<S>(batch, length, extra...);
  const attn::KVPages pool{page_size, batch * ((length + page_size - 1) / page_size)};
  return m.template make_cache<S>(batch, length, extra..., pool);
}

/// The inputs' cu_seqlens `name` when they pack sequences (which excludes --incremental), else null.
template <class T>
const attn::Tensor<std::int64_t>* packed(const Options& o, const Inputs<T>& in, const std::string& name) {
  const attn::Tensor<std::int64_t>* cu = in.offset(name);
  if (cu && o.incremental > 0)
    throw std::runtime_error(o.inputs + ": packed sequences (" + name + ") run whole, not --incremental");
  return cu;
}

/// gqa_attention: causal over x, whole, packed or --incremental through a KV cache.
template <class T>
std::function<Result<T>()> gqa_forward(const Options& o, const attn::Tensor<T>& x, const Inputs<T>& in,
                                      const attn::StateDict<T>& weights) {
  attn::GqaOptions go;
  go.qkv_bias = o.qkv_bias;
  go.rope = !o.no_rope;
  go.rotary.theta = o.rope_theta;
  go.rotary.rotary_dim = o.rotary_dim;
  go.rotary.interleaved = o.rope_interleaved;
  if (o.sliding_window > 0) go.sliding_window = o.sliding_window;
  if (o.softcap > 0) go.softcap = o.softcap;
  go.sinks = o.sinks;
  auto m = std::make_shared<attn::GroupedQueryAttention<T>>(o.embed_dim, o.num_heads, o.num_kv_heads, o.head_dim, go);
  m->load_state_dict(weights);
  attn::GqaArgs<T> args;
  static_cast<attn::AttentionMasks<T>&>(args) = in.masks;
  if (const attn::Tensor<std::int64_t>* cu = packed(o, in, "cu_seqlens"))
    return [m, &x, args, cu] { return Result<T>{m->forward(x, cu->view(), args), {}}; };
  if (o.incremental == 0) return [m, &x, args] { return Result<T>{m->forward(x, args), {}}; };
  return [m, &x, args, c = o.incremental, kv = o.kv_cache_dtype, page = o.page_size] {
    return with_kv_storage<T>(kv, [&](auto s) {
      auto cache = make_cache<decltype(s)>(*m, page, x.size(0), x.size(1));
      attn::GqaArgs<T> a = args;
      return Result<T>{incremental(x, c, a, [&](const attn::Tensor<T>& chunk) { return m->forward(chunk, cache, a); }),
                       {}};
    });
  };
}

/// transformer_decoder_layer: tgt over memory, causal over tgt, whole or --incremental.
template <class T>
std::function<Result<T>()> decoder_forward(const Options& o, const Inputs<T>& in, const attn::StateDict<T>& weights) {
  for (const char* n : {"tgt", "memory"})
    if (!in.values.count(n)) throw std::runtime_error(o.inputs + ": no tensor named '" + n + "'");
  auto m = std::make_shared<attn::TransformerDecoderLayer<T>>(o.embed_dim, o.num_heads, layer_options(o));
  m->load_state_dict(weights);
  const attn::Tensor<T>&tgt = in.values.at("tgt"), &memory = in.values.at("memory");
  attn::DecoderArgs<T> args;
  static_cast<attn::AttentionMasks<T>&>(args.self) = in.masks;
  args.self.causal = attn::Causal::kTopLeft;  // tgt_is_causal (with the cache: over the positions so far)
  if (const attn::Tensor<std::int64_t>* cu = packed(o, in, "cu_seqlens")) {
    const attn::Tensor<std::int64_t>* cu_m = in.offset("cu_seqlens_memory");
    if (!cu_m) throw std::runtime_error(o.inputs + ": packed tgt (cu_seqlens) needs cu_seqlens_memory for memory");
    return [m, &tgt, &memory, args, cu, cu_m] {
      return Result<T>{m->forward(tgt, cu->view(), memory, cu_m->view(), args), {}};
    };
  }
  if (o.incremental == 0) return [m, &tgt, &memory, args] { return Result<T>{m->forward(tgt, memory, args), {}}; };
  return [m, &tgt, &memory, args, c = o.incremental, kv = o.kv_cache_dtype, page = o.page_size] {
    return with_kv_storage<T>(kv, [&](auto s) {
      auto cache = make_cache<decltype(s)>(*m, page, tgt.size(0), tgt.size(1), memory.size(1));
      m->encode_memory(memory, cache);
      attn::DecoderArgs<T> a = args;
      return Result<T>{
          incremental(tgt, c, a.self, [&](const attn::Tensor<T>& chunk) { return m->forward(chunk, cache, a); }), {}};
    });
  };
}

/// The attention core on the inputs query, key, value (B, H, N, D) and the optional masks.
template <class T>
std::function<Result<T>()> sdpa_forward(const Options& o, const Inputs<T>& in) {
  for (const char* n : {"query", "key", "value"})
    if (!in.values.count(n)) throw std::runtime_error(o.inputs + ": no tensor named '" + n + "'");
  const attn::Tensor<T>&q = in.values.at("query"), &k = in.values.at("key"), &v = in.values.at("value");
  attn::SdpaOptions<T> opt;
  opt.key_padding_mask = in.masks.key_padding_mask;
  opt.attn_mask = in.masks.attn_mask;
  return [&q, &k, &v, opt, lse = o.return_lse]() mutable {
    Result<T> r;
    if (lse) opt.lse = &r.lse;
    r.output = attn::scaled_dot_product_attention<T>(q, k, v, opt);
    return r;
  };
}

/// multi_head_attention: query, key and value (key and value may be the query), whole or
/// --incremental through a KV cache (self-attention).
template <class T>
std::function<Result<T>()> mha_forward(const Options& o, const Inputs<T>& in, const attn::StateDict<T>& weights) {
  attn::MultiHeadAttentionOptions mo;
  mo.bias = !o.no_bias;
  mo.add_bias_kv = o.add_bias_kv;
  mo.add_zero_attn = o.add_zero_attn;
  mo.kdim = o.kdim;
  mo.vdim = o.vdim;
  auto m = std::make_shared<attn::MultiHeadAttention<T>>(o.embed_dim, o.num_heads, mo);
  m->load_state_dict(weights);
  if (!in.values.count("query")) throw std::runtime_error(o.inputs + ": no tensor named 'query'");
  const bool has_k = in.values.count("key") != 0, has_v = in.values.count("value") != 0;
  if (has_k != has_v)
    throw std::runtime_error(o.inputs + ": has '" + std::string(has_k ? "key" : "value") + "' but not '" +
                             (has_k ? "value" : "key") + "' (give both, or neither for self-attention)");
  const attn::Tensor<T>& q = in.values.at("query");
  // Key / value equal to query (or value equal to key) are passed as the same tensor, as
  // PyTorch is called with mha(x, x, x): attn then projects them with one GEMM.
  const attn::Tensor<T>& k = has_k && !same_values(in.values.at("key"), q) ? in.values.at("key") : q;
  const attn::Tensor<T>* vp = &q;
  if (has_v) {
    const attn::Tensor<T>& v = in.values.at("value");
    vp = same_values(v, k) ? &k : same_values(v, q) ? &q : &v;
  }
  attn::MhaArgs<T> args;
  static_cast<attn::AttentionMasks<T>&>(args) = in.masks;
  args.need_weights = o.need_weights;
  args.average_attn_weights = !o.per_head_weights;
  if (o.causal || o.incremental > 0) args.causal = attn::Causal::kBottomRight;
  if (const attn::Tensor<std::int64_t>* cu = packed(o, in, "cu_seqlens")) {
    const attn::Tensor<std::int64_t>* cu_k = in.offset("cu_seqlens_k") ? in.offset("cu_seqlens_k") : cu;
    return [m, &q, &k, vp, args, cu, cu_k] {
      return Result<T>{m->forward(q, k, *vp, cu->view(), cu_k->view(), args).output, {}};
    };
  }
  if (o.incremental > 0) {
    if (&k != &q || vp != &q)
      throw std::runtime_error(o.inputs + ": --incremental is self-attention: key and value must be the query");
    return [m, &q, args, c = o.incremental, kv = o.kv_cache_dtype, page = o.page_size] {
      return with_kv_storage<T>(kv, [&](auto s) {
        auto cache = make_cache<decltype(s)>(*m, page, q.size(0), q.size(1));
        attn::MhaArgs<T> a = args;
        return Result<T>{
            incremental(q, c, a, [&](const attn::Tensor<T>& chunk) { return m->forward(chunk, cache, a).output; }),
            {}};
      });
    };
  }
  return [m, &q, &k, vp, args] {
    attn::MhaOutput<T> r = m->forward(q, k, *vp, args);
    return Result<T>{std::move(r.output), std::move(r.attn_weights)};
  };
}

/// Loads the weights (strict) and returns the forward pass as a function.
template <class T>
std::function<Result<T>()> make_forward(const Options& o, const Inputs<T>& in, const attn::StateDict<T>& weights) {
  auto load = [&](attn::Module<T>& m) { m.load_state_dict(weights); };
  if (o.module == "multi_head_attention") return mha_forward(o, in, weights);
  if (o.module == "transformer_decoder_layer") return decoder_forward(o, in, weights);
  if (o.module == "sdpa") return sdpa_forward(o, in);
  if (!in.values.count("x")) throw std::runtime_error(o.inputs + ": no tensor named 'x'");
  const attn::Tensor<T>& x = in.values.at("x");
  if (o.module == "linear") {
    auto m = std::make_shared<attn::Linear<T>>(o.in_features, o.out_features, !o.no_bias);
    load(*m);
    return [m, &x] { return Result<T>{m->forward(x), {}}; };
  }
  attn::AttentionArgs<T> args;
  static_cast<attn::AttentionMasks<T>&>(args) = in.masks;
  auto single = [&](auto m) -> std::function<Result<T>()> {
    load(*m);
    return [m, &x, args] { return Result<T>{m->forward(x, args), {}}; };
  };
  if (o.module == "self_attention") return single(std::make_shared<attn::SelfAttention<T>>(o.embed_dim));
  if (o.module == "talking_heads")
    return single(std::make_shared<attn::TalkingHeadsAttention<T>>(o.embed_dim, o.num_heads,
                                                                   attn::TalkingHeadsOptions{o.qkv_bias}));
  if (o.module == "attention_block") return single(std::make_shared<attn::AttentionBlock<T>>(o.embed_dim, o.num_heads));
  if (o.module == "transformer_encoder_layer")
    return single(std::make_shared<attn::TransformerEncoderLayer<T>>(o.embed_dim, o.num_heads, layer_options(o)));
  if (o.module == "gqa_attention") return gqa_forward(o, x, in, weights);
  return single(std::make_shared<attn::MobileViTEncoderLayer<T>>(o.embed_dim, o.ffn_dim, o.num_heads));
}

/// Writes to a temporary file next to `path`, then renames it: `path` exists only if
/// complete. The temporary file is removed on failure.
void write_atomically(const attn::io::SafetensorsWriter& writer, const std::string& path) {
  const std::string tmp = path + ".tmp." + std::to_string(static_cast<long>(ATTN_RUN_GETPID()));
  try {
    writer.write(tmp);
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      throw std::runtime_error("cannot rename " + tmp + " to " + path);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

/// The data inputs of a module, the one whose dtype the computation takes first.
std::vector<std::string> input_names(const std::string& module) {
  if (module == "multi_head_attention" || module == "sdpa") return {"query", "key", "value"};
  if (module == "transformer_decoder_layer") return {"tgt", "memory"};
  return {"x"};
}

template <class T>
void run(const Options& o, const attn::io::SafetensorsFile& inputs_file) {
  const bool mha = o.module == "multi_head_attention" || o.module == "sdpa";
  const Inputs<T> in(inputs_file, input_names(o.module), o.module);
  if (mha && inputs_file.contains("key") && inputs_file.info("key").dtype != inputs_file.info("query").dtype)
    throw std::runtime_error(o.inputs + ": key has dtype " + attn::io::dtype_name(inputs_file.info("key").dtype) +
                             ", query " + attn::io::dtype_name(inputs_file.info("query").dtype));
  if (mha && inputs_file.contains("value") && inputs_file.info("value").dtype != inputs_file.info("query").dtype)
    throw std::runtime_error(o.inputs + ": value has dtype " + attn::io::dtype_name(inputs_file.info("value").dtype) +
                             ", query " + attn::io::dtype_name(inputs_file.info("query").dtype));

  attn::StateDict<T> weights;
  if (o.module != "sdpa") {
    const attn::io::SafetensorsFile weights_file(o.weights);
    weights = weights_file.state_dict<T>(o.prefix);
    if (weights.empty())
      throw std::runtime_error(o.weights + ": no floating-point tensor" +
                               (o.prefix.empty() ? std::string() : " whose name starts with '" + o.prefix + "'"));
  }
  const std::function<Result<T>()> forward = make_forward<T>(o, in, weights);

  Result<T> result = forward();
  if (o.repeat > 0) {
    std::vector<double> ms;
    ms.reserve(static_cast<std::size_t>(o.repeat));
    for (long i = 0; i < o.repeat; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const Result<T> r = forward();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const std::size_t n = ms.size();
    const double median = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
    std::printf("forward median: %.4f ms (%ld runs)\n", median, o.repeat);
    std::fflush(stdout);
  }

  attn::io::SafetensorsWriter writer;
  writer.add("output", result.output);
  if (o.need_weights) writer.add("attn_weights", result.attn_weights);
  if (o.return_lse) writer.add("lse", result.lse);
  write_atomically(writer, o.output);
}

/// The message on one line (the library's messages may list several problems).
std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse_args(argc, argv);
    if (o.help) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    validate(o);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "attn_run: %s (attn_run --help for usage)\n", one_line(e.what()).c_str());
    return 2;
  }
  try {
    attn::set_num_threads(o.threads);
    const attn::io::SafetensorsFile inputs(o.inputs);
    const std::string main_input = input_names(o.module).front();
    if (!inputs.contains(main_input)) throw std::runtime_error(o.inputs + ": no tensor named '" + main_input + "'");
    const DType dtype = o.dtype.empty() ? inputs.info(main_input).dtype : *dtype_of(o.dtype);
    if (dtype == DType::kF32)
      run<float>(o, inputs);
    else if (dtype == DType::kF64)
      run<double>(o, inputs);
    else if (dtype == DType::kBF16)
      run<attn::bfloat16>(o, inputs);
    else if (dtype == DType::kF16)
      run<attn::half>(o, inputs);
    else
      throw std::runtime_error(o.inputs + ": " + main_input + " has dtype " + attn::io::dtype_name(dtype) +
                               "; attn_run computes in F32, F64, BF16 or F16");
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "attn_run: out of memory: the %s's parameters or activations for --embed-dim %lld and these "
                 "inputs do not fit in memory\n",
                 o.module.c_str(), static_cast<long long>(o.embed_dim));
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attn_run: %s\n", one_line(e.what()).c_str());
    return 1;
  }
  return 0;
}
