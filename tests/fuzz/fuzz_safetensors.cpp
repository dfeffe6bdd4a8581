// Fuzz target for the safetensors reader (attn/io/safetensors.hpp) and the state-dict
// loading behind it.
//
// Each input is taken as a whole .safetensors file. It is parsed, every tensor is read in
// every way the reader offers (get<float>, get<double>, get_bool, get_int64), the file's
// state dicts are loaded into every module of the registry in every option set (strict and
// not, with and without a prefix) and, when a load succeeds, the module runs one forward pass
// with the loaded weights, and a decode through its KV cache where it has one.
//
// Expected failures are std::runtime_error from the reader (a malformed file, a tensor of
// the wrong dtype) and std::invalid_argument from load_state_dict (missing, unexpected or
// misshaped parameters). Anything else is a bug: a crash, a sanitizer report, another
// exception type (std::bad_alloc from a huge declared shape, std::invalid_argument from the
// reader), or a tensor that does not match its header. Such an exception escapes and
// aborts the run, which libFuzzer reports as a crash.
//
// Built two ways (tests/fuzz/CMakeLists.txt): with clang's libFuzzer (ATTN_BUILD_FUZZERS)
// and, with any compiler, with replay_main.cpp as a driver that runs the seed corpus and
// every kept crash input (tests/fuzz/corpus, tests/fuzz/regressions) as a ctest test.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <attn/attn.hpp>
#include <attn/io/safetensors.hpp>

#include "fuzz_outcome.hpp"
#if !defined(ATTN_FUZZ_READER_ONLY)
#include "../registry.hpp"
#endif

namespace {

/// What the current input did (reported to the replay driver, which checks the corpus).
attn_fuzz::Outcome g_outcome;
/// Whether the dict being loaded is the whole file (not a submodule's part of it).
bool g_whole_file = false;

/// A file whose contents are replaced on every input: a memfd (no disk I/O) where the
/// kernel has memfd_create, else a temporary file. The reader opens it by path.
class ScratchFile {
 public:
  ScratchFile() {
#if defined(__linux__) && defined(MFD_CLOEXEC)
    fd_ = ::memfd_create("attn_fuzz", MFD_CLOEXEC);
    if (fd_ >= 0) path_ = "/proc/self/fd/" + std::to_string(fd_);
#endif
    if (fd_ < 0) {
      char name[] = "/tmp/attn_fuzz_XXXXXX";
      fd_ = ::mkstemp(name);
      if (fd_ < 0) {
        std::perror("attn fuzz: cannot create a scratch file");
        std::abort();
      }
      path_ = name;
      unlink_ = true;
    }
  }
  ~ScratchFile() {
    ::close(fd_);
    if (unlink_) ::unlink(path_.c_str());
  }
  const std::string& write(const std::uint8_t* data, std::size_t size) {
    if (::ftruncate(fd_, 0) != 0) fatal("ftruncate");
    std::size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) fatal("pwrite");
      done += static_cast<std::size_t>(n);
    }
    return path_;
  }

 private:
  [[noreturn]] static void fatal(const char* what) {
    std::perror(what);
    std::abort();
  }
  int fd_ = -1;
  bool unlink_ = false;
  std::string path_;
};

/// A broken invariant (not an expected error): reported as a crash.
[[noreturn]] void invariant_failed(const std::string& what) {
  std::fprintf(stderr, "attn fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

bool is_float(attn::io::DType t) {
  using attn::io::DType;
  return t == DType::kF32 || t == DType::kF64 || t == DType::kF16 || t == DType::kBF16;
}

/// Reads one tensor every way; checks the result against the header.
void read_tensor(const attn::io::SafetensorsFile& file, const std::string& name) {
  const attn::io::TensorInfo& info = file.info(name);
  const attn::Index numel = attn::detail::checked_numel(info.shape, "fuzz");
  if (static_cast<std::uint64_t>(numel) * attn::io::dtype_size(info.dtype) != info.end - info.begin)
    invariant_failed("tensor '" + name + "': byte range does not hold its shape");
  auto check = [&](const attn::Shape& shape, attn::Index n, const char* how) {
    if (shape != info.shape || n != numel) invariant_failed("tensor '" + name + "': " + how + " gave the wrong shape");
  };
  const bool floating = is_float(info.dtype);
  try {
    const attn::Tensor<float> f = file.get<float>(name);
    check(f.shape(), f.numel(), "get<float>");
    const attn::Tensor<double> d = file.get<double>(name);
    check(d.shape(), d.numel(), "get<double>");
    if (!floating) invariant_failed("tensor '" + name + "': get<float> accepted a non-float dtype");
  } catch (const std::runtime_error&) {
    if (floating) invariant_failed("tensor '" + name + "': get<float> refused a float dtype");
  }
  try {
    const attn::Tensor<bool> b = file.get_bool(name);
    check(b.shape(), b.numel(), "get_bool");
    if (floating) invariant_failed("tensor '" + name + "': get_bool accepted a float dtype");
  } catch (const std::runtime_error&) {
    if (!floating) invariant_failed("tensor '" + name + "': get_bool refused an integer dtype");
  }
  try {
    const std::vector<std::int64_t> v = file.get_int64(name);
    if (static_cast<attn::Index>(v.size()) != numel) invariant_failed("tensor '" + name + "': get_int64 size");
    if (floating) invariant_failed("tensor '" + name + "': get_int64 accepted a float dtype");
  } catch (const std::runtime_error&) {
    if (!floating) invariant_failed("tensor '" + name + "': get_int64 refused an integer dtype");
  }
}

/// Loads `dict` into a fresh module made by `make` (strict and not); after a load that
/// took at least one tensor from the dict, runs `run` on it (and counts it). Only
/// std::invalid_argument is an expected failure.
template <class Make, class Run>
void load_into(const attn::StateDict<float>& dict, const std::string& prefix, Make make, Run run) {
  for (bool strict : {true, false}) {
    auto module = make();
    try {
      module.load_state_dict(dict, prefix, strict);
    } catch (const std::invalid_argument&) {
      continue;
    }
    bool took_any = false;  // names after loading: MultiHeadAttention picks its layout by them
    for (const auto& kv : module.state_dict()) took_any = took_any || dict.count(prefix + kv.first) != 0;
    if (!took_any) continue;  // the module is as constructed (one without parameters loads any dict)
    if (strict) ++g_outcome.strict_loads;
    if (strict && g_whole_file && prefix.empty()) ++g_outcome.whole_file_strict_loads;
    run(module);
    ++g_outcome.forwards;
  }
}

#if defined(ATTN_FUZZ_READER_ONLY)
// fuzz_safetensors_reader: the reader alone (parsing, every get, state_dict(prefix)), many
// times faster per input than the full target, for long runs.
void load_modules(const attn::StateDict<float>&, const std::string&) {}
#else
/// Every module of the registry (tests/registry.hpp) in every option set: one forward pass,
/// and for the modules with a KV cache the same sequence two tokens at a time (attn_run's
/// --incremental); and MultiHeadAttention as cross-attention with kdim, vdim, bias_kv and the
/// zero key, which the registry's self-attention calls do not reach.
void load_modules(const attn::StateDict<float>& dict, const std::string& prefix) {
  namespace registry = attn_test::registry;
  registry::for_each_entry([&](auto entry) {
    using E = decltype(entry);
    const attn::Tensor<float> x = attn_test::random_tensor<float>(registry::input_shape<E>(1, 3), 1);
    for (int config = 0; config < int(E::configs().size()); ++config)
      load_into(dict, prefix, [config] { return E::template make<float>(config); }, [&](const auto& m) {
        E::run(m, x, registry::Call<float>{});
        if (E::kCached) E::run_cached(m, x, 2, nullptr);
      });
  });
  load_into(dict, prefix,
            [] {
              attn::MultiHeadAttentionOptions o;
              o.kdim = 4;
              o.vdim = 6;
              o.add_bias_kv = true;
              o.add_zero_attn = true;
              return attn::MultiHeadAttention<float>(8, 2, o);
            },
            [&](const attn::MultiHeadAttention<float>& m) {
              attn::MhaArgs<float> args;
              args.need_weights = true;
              m.forward(attn_test::random_tensor<float>({1, 3, 8}, 2), attn_test::random_tensor<float>({1, 5, 4}, 3),
                        attn_test::random_tensor<float>({1, 5, 6}, 4), args);
            });
}
#endif

void fuzz_one(const std::string& path) {
  std::unique_ptr<attn::io::SafetensorsFile> file;
  try {
    file = std::make_unique<attn::io::SafetensorsFile>(path);
  } catch (const std::runtime_error&) {
    return;  // a malformed file: the expected outcome for most inputs
  }
  g_outcome.opened = true;
  std::size_t tensors = 0;
  for (const std::string& name : file->names()) {
    if (!file->contains(name)) invariant_failed("names() lists '" + name + "' but contains() denies it");
    read_tensor(*file, name);
    ++tensors;
  }
  if (file->contains("__metadata__")) invariant_failed("__metadata__ taken for a tensor");
  (void)tensors;

  const attn::StateDict<float> dict = file->state_dict<float>();
  const attn::StateDict<double> dict_double = file->state_dict<double>();
  if (dict.size() != dict_double.size()) invariant_failed("state_dict<float> and <double> differ in size");
  g_whole_file = true;
  load_modules(dict, "");
  g_whole_file = false;
  load_modules(dict, "p.");
  // Every submodule prefix of the first name ("blocks.", "blocks.0.", "blocks.0.attn.", ...),
  // loaded both through the member prefix and through SafetensorsFile::state_dict(prefix).
  if (!file->names().empty()) {
    const std::string first = file->names().front();
    int prefixes = 0;
    for (std::size_t dot = first.find('.'); dot != std::string::npos && prefixes < 4;
         dot = first.find('.', dot + 1), ++prefixes) {
      const std::string prefix = first.substr(0, dot + 1);
      const attn::StateDict<float> sub = file->state_dict<float>(prefix);
      for (const auto& kv : sub)
        if (!dict.count(prefix + kv.first)) invariant_failed("state_dict(prefix) invented '" + kv.first + "'");
      load_modules(dict, prefix);
      load_modules(sub, "");
    }
  }
#if !defined(ATTN_FUZZ_READER_ONLY)
  // Double precision, one module.
  try {
    attn::SelfAttention<double> sa(8);
    sa.load_state_dict(dict_double);
    ++g_outcome.strict_loads;
    sa.forward(attn::Tensor<double>({2, 8}, 1.0));
    ++g_outcome.forwards;
  } catch (const std::invalid_argument&) {
  }
#endif
}

}  // namespace

attn_fuzz::Outcome attn_fuzz::run_input(const std::uint8_t* data, std::size_t size) {
  static ScratchFile scratch;
  attn::set_num_threads(1);  // one thread: deterministic and fast on small inputs
  g_outcome = {};
  fuzz_one(scratch.write(data, size));
  return g_outcome;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  attn_fuzz::run_input(data, size);
  return 0;
}
