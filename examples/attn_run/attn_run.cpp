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
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
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
    "usage: attn_run --module self_attention|multi_head_attention|talking_heads|attention_block|transformer_encoder\n"
    "                        |linear|sdpa\n"
    "                --embed-dim E [--num-heads H] [--kdim K] [--vdim V] [--ffn-dim F]\n"
    "                [--in-features K --out-features N]\n"
    "                [--qkv-bias] [--no-bias] [--add-bias-kv] [--add-zero-attn]\n"
    "                --weights W.safetensors [--prefix P] --inputs X.safetensors --output Y.safetensors\n"
    "                [--need-weights] [--per-head-weights] [--threads N] [--repeat N]\n"
    "\n"
    "Runs one module (in eval mode) on the inputs and writes its outputs.\n"
    "\n"
    "Modules and the constructor flags they take (as the PyTorch constructors):\n"
    "  self_attention        single-head SelfAttention(E) (query/key/value Linears): --embed-dim\n"
    "  multi_head_attention  nn.MultiheadAttention(E, H, batch_first=True): --embed-dim, --num-heads,\n"
    "                        [--kdim K] [--vdim V] [--no-bias] [--add-bias-kv] [--add-zero-attn];\n"
    "                        also separate q/k/v/out Linears (q.weight ...) and MobileViT's\n"
    "                        fused qkv_proj (qkv_proj.weight ...),\n"
    "                        told apart by the weight names\n"
    "  talking_heads         timm TalkingHeadAttn(E, H = 8, qkv_bias): --embed-dim [--num-heads] [--qkv-bias]\n"
    "  attention_block       AttentionBlock(E, H) (MHA + residual + LayerNorm): --embed-dim --num-heads;\n"
    "                        x is (N, C, L)\n"
    "  transformer_encoder   MobileViT's TransformerEncoder(E, F, H = 8): --embed-dim --ffn-dim [--num-heads]\n"
    "  linear                nn.Linear(K, N, bias): --in-features --out-features [--no-bias]; x is (..., K)\n"
    "  sdpa                  the attention core, softmax(q k^T / sqrt(D)) v, on query (B, H, L, D), key\n"
    "                        (B, H, S, D), value (B, H, S, Dv) (and the optional masks); no --weights\n"
    "\n"
    "Files (safetensors):\n"
    "  --weights   the module's state_dict under PyTorch's names; with --prefix P only the tensors\n"
    "              named P... are used, P removed (e.g. --prefix blocks.0.attn.). Loading is strict.\n"
    "  --inputs    x (B, N, E) (attention_block: (N, C, L)); multi_head_attention: query (B, L, E),\n"
    "              key (B, S, K), value (B, S, V) (key and value may be left out for self-attention).\n"
    "              Optional: key_padding_mask (B, S) and attn_mask (any shape that broadcasts to\n"
    "              (B, H, L, S), or (B*H, L, S)), bool or\n"
    "              uint8 (true = masked out) or float (added to the logits): nn.MultiheadAttention's\n"
    "              conventions. Computation is in the dtype of x / query (F32 or F64).\n"
    "  --output    output; with --need-weights (multi_head_attention only) also attn_weights,\n"
    "              averaged over heads (B, L, S), or per head (B, H, L, S) with --per-head-weights\n"
    "              (which implies --need-weights).\n"
    "\n"
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
  bool qkv_bias = false, no_bias = false, add_bias_kv = false, add_zero_attn = false;
  std::string weights, prefix, inputs, output;
  bool need_weights = false, per_head_weights = false;
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
      {"weights", [&](const std::string& v) { o.weights = v; }},
      {"prefix", [&](const std::string& v) { o.prefix = v; }},
      {"inputs", [&](const std::string& v) { o.inputs = v; }},
      {"output", [&](const std::string& v) { o.output = v; }},
      {"threads", [&](const std::string& v) { o.threads = static_cast<int>(parse_number("threads", v, 0, 4096)); }},
      {"repeat", [&](const std::string& v) { o.repeat = parse_number("repeat", v, 0, 1000000000L); }},
  };
  const std::map<std::string, bool*> switches{
      {"qkv-bias", &o.qkv_bias},         {"no-bias", &o.no_bias},
      {"add-bias-kv", &o.add_bias_kv},   {"add-zero-attn", &o.add_zero_attn},
      {"need-weights", &o.need_weights}, {"per-head-weights", &o.per_head_weights},
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
         "per-head-weights"},
        {"embed-dim", "num-heads"}}},
      {"talking_heads", {{"embed-dim", "num-heads", "qkv-bias"}, {"embed-dim"}}},
      {"attention_block", {{"embed-dim", "num-heads"}, {"embed-dim", "num-heads"}}},
      {"transformer_encoder", {{"embed-dim", "num-heads", "ffn-dim"}, {"embed-dim", "ffn-dim"}}},
      {"linear", {{"in-features", "out-features", "no-bias"}, {"in-features", "out-features"}}},
      {"sdpa", {{}, {}}},
  };
  return table;
}

/// Checks what parse_args cannot: required flags, flags the module does not take, and
/// the constructor arguments. Fills in the modules' default head counts.
void validate(Options& o) {
  const bool sdpa = o.module == "sdpa";  // the attention core has no weights
  std::set<std::string> common{"module", "inputs", "output", "threads", "repeat"};
  if (!sdpa) common.insert({"weights", "prefix"});
  for (const char* f : {"module", "inputs", "output"})
    if (!o.given.count(f)) throw UsageError(std::string("--") + f + " is required");
  if (!sdpa && !o.given.count("weights")) throw UsageError("--weights is required");
  auto it = module_flags().find(o.module);
  if (it == module_flags().end())
    throw UsageError("unknown module '" + o.module +
                     "' (expected self_attention, multi_head_attention, talking_heads, attention_block, "
                     "transformer_encoder, linear or sdpa)");
  for (const auto& f : o.given)
    if (!common.count(f) && !it->second.allowed.count(f)) {
      std::string hint;
      if (f == "need-weights" || f == "per-head-weights") hint = ": only multi_head_attention returns weights";
      throw UsageError("--" + f + " does not apply to --module " + o.module + hint);
    }
  for (const auto& f : it->second.required)
    if (!o.given.count(f)) throw UsageError("--module " + o.module + " needs --" + f);
  if (o.per_head_weights) o.need_weights = true;
  if (!o.given.count("num-heads")) o.num_heads = o.module == "self_attention" ? 1 : 8;  // PyTorch defaults
  if (o.given.count("embed-dim") && o.embed_dim % o.num_heads != 0)
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
};

bool is_float(DType t) { return t == DType::kF32 || t == DType::kF64 || t == DType::kF16 || t == DType::kBF16; }

/// The inputs file, its tensors converted to T. Views into these tensors must not outlive it.
template <class T>
struct Inputs {
  std::map<std::string, attn::Tensor<T>> values;  // x / query / key / value, float masks
  std::map<std::string, attn::Tensor<bool>> bools;  // bool masks
  attn::AttentionArgs<T> args;

  Inputs(const attn::io::SafetensorsFile& f, const std::vector<std::string>& data_names,
         const std::string& module) {
    std::set<std::string> known(data_names.begin(), data_names.end());
    known.insert({"key_padding_mask", "attn_mask"});
    for (const auto& n : f.names())
      if (!known.count(n)) {
        std::string list;
        for (const auto& d : data_names) list += d + ", ";
        throw std::runtime_error(f.path() + ": tensor '" + n + "' is not an input of " + module + " (expected " +
                                 list + "key_padding_mask, attn_mask)");
      }
    for (const auto& n : data_names)
      if (f.contains(n)) values.emplace(n, f.get<T>(n));
    args.key_padding_mask = mask(f, "key_padding_mask");
    args.attn_mask = mask(f, "attn_mask");
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

/// The attention core on the inputs query, key, value (B, H, N, D) and the optional masks.
template <class T>
std::function<Result<T>()> sdpa_forward(const Options& o, const Inputs<T>& in) {
  for (const char* n : {"query", "key", "value"})
    if (!in.values.count(n)) throw std::runtime_error(o.inputs + ": no tensor named '" + n + "'");
  const attn::Tensor<T>&q = in.values.at("query"), &k = in.values.at("key"), &v = in.values.at("value");
  attn::SdpaOptions<T> opt;
  opt.key_padding_mask = in.args.key_padding_mask;
  opt.attn_mask = in.args.attn_mask;
  return [&q, &k, &v, opt] { return Result<T>{attn::scaled_dot_product_attention<T>(q, k, v, opt), {}}; };
}

/// Loads the weights (strict) and returns the forward pass as a function.
template <class T>
std::function<Result<T>()> make_forward(const Options& o, const Inputs<T>& in, const attn::StateDict<T>& weights) {
  auto load = [&](attn::Module<T>& m) { m.load_state_dict(weights); };
  if (o.module == "multi_head_attention") {
    attn::MultiHeadAttentionOptions mo;
    mo.bias = !o.no_bias;
    mo.add_bias_kv = o.add_bias_kv;
    mo.add_zero_attn = o.add_zero_attn;
    mo.kdim = o.kdim;
    mo.vdim = o.vdim;
    auto m = std::make_shared<attn::MultiHeadAttention<T>>(o.embed_dim, o.num_heads, mo);
    load(*m);
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
    static_cast<attn::AttentionArgs<T>&>(args) = in.args;
    args.need_weights = o.need_weights;
    args.average_attn_weights = !o.per_head_weights;
    return [m, &q, &k, vp, args] {
      attn::MhaOutput<T> r = m->forward(q, k, *vp, args);
      return Result<T>{std::move(r.output), std::move(r.attn_weights)};
    };
  }
  if (o.module == "sdpa") return sdpa_forward(o, in);
  if (!in.values.count("x")) throw std::runtime_error(o.inputs + ": no tensor named 'x'");
  const attn::Tensor<T>& x = in.values.at("x");
  if (o.module == "linear") {
    auto m = std::make_shared<attn::Linear<T>>(o.in_features, o.out_features, !o.no_bias);
    load(*m);
    return [m, &x] { return Result<T>{m->forward(x), {}}; };
  }
  const attn::AttentionArgs<T> args = in.args;
  auto single = [&](auto m) -> std::function<Result<T>()> {
    load(*m);
    return [m, &x, args] { return Result<T>{m->forward(x, args), {}}; };
  };
  if (o.module == "self_attention") return single(std::make_shared<attn::SelfAttention<T>>(o.embed_dim));
  if (o.module == "talking_heads")
    return single(std::make_shared<attn::TalkingHeadsAttention<T>>(o.embed_dim, o.num_heads, o.qkv_bias));
  if (o.module == "attention_block") return single(std::make_shared<attn::AttentionBlock<T>>(o.embed_dim, o.num_heads));
  return single(std::make_shared<attn::TransformerEncoderLayer<T>>(o.embed_dim, o.ffn_dim, o.num_heads));
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

template <class T>
void run(const Options& o, const attn::io::SafetensorsFile& inputs_file) {
  const bool mha = o.module == "multi_head_attention" || o.module == "sdpa";
  const Inputs<T> in(inputs_file, mha ? std::vector<std::string>{"query", "key", "value"} : std::vector<std::string>{"x"},
                     o.module);
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
    const std::string main_input = o.module == "multi_head_attention" || o.module == "sdpa" ? "query" : "x";
    if (!inputs.contains(main_input)) throw std::runtime_error(o.inputs + ": no tensor named '" + main_input + "'");
    const DType dtype = inputs.info(main_input).dtype;
    if (dtype == DType::kF32)
      run<float>(o, inputs);
    else if (dtype == DType::kF64)
      run<double>(o, inputs);
    else
      throw std::runtime_error(o.inputs + ": " + main_input + " has dtype " + attn::io::dtype_name(dtype) +
                               "; attn_run computes in F32 or F64");
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
