// attn_run (examples/attn_run) under bad input: every malformed weights or inputs file,
// every missing or misshaped tensor, every size that does not fit, every bad command line
// gives exit status 1 (files and data) or 2 (command line), exactly one line on stderr,
// no output file (nor a temporary one), and no sanitizer report. In the sanitized tree
// (ATTN_SANITIZE, see tests/run.sh) the attn_run run here is the sanitized one, so a
// memory error or undefined behaviour on any of these inputs fails the test.
//
// The files are made here, byte by byte where they must be broken. attn_run's own
// end-to-end and error tests (examples/attn_run/e2e_test.py) need Python; these need nothing.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <attn/io/safetensors.hpp>

#if defined(ATTN_RUN_PATH) && (defined(__unix__) || defined(__APPLE__))
#define ATTN_HAVE_ATTN_RUN 1
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
extern char** environ;
#endif

namespace {

namespace fs = std::filesystem;
using attn::Tensor;
using attn::io::DType;
using attn::io::SafetensorsWriter;

#if defined(ATTN_HAVE_ATTN_RUN)

struct Result {
  int status = -1;  ///< exit status, or -1 if killed by a signal
  std::string err;
};

/// Runs attn_run with `args`; stdout is discarded, stderr captured.
Result run_attn_run(const std::vector<std::string>& args, const fs::path& err_file) {
  std::vector<std::string> all{ATTN_RUN_PATH};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  Result r;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    r.err = "posix_spawn failed";
    return r;
  }
  int wstatus = 0;
  while (waitpid(pid, &wstatus, 0) < 0) {
  }
  r.status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
  std::ifstream in(err_file, std::ios::binary);
  r.err.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return r;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// A safetensors file with the given header text and data (the size field is the header's).
std::string raw_file(const std::string& header, const std::string& data = "") {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(static_cast<std::uint64_t>(header.size()) >> (8 * i));
  return bytes + header + data;
}

class AttnRunBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / (std::string("attn_run_bad_input_") + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // SelfAttention(4) weights and an input (2, 3, 4); MultiheadAttention(8, 2) weights and
    // an input (2, 3, 8).
    attn::SelfAttention<float> sa(4);
    SafetensorsWriter w;
    w.add(sa.state_dict());
    w.write(path("sa_weights"));
    SafetensorsWriter wm;
    wm.add(attn::MultiHeadAttention<float>(8, 2).state_dict());
    wm.write(path("mha_weights"));
    SafetensorsWriter x;
    x.add("x", Tensor<float>({2, 3, 4}, 0.5f));
    x.write(path("x"));
    SafetensorsWriter q;
    q.add("query", Tensor<float>({2, 3, 8}, 0.25f));
    q.write(path("query"));
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  std::string path(const std::string& name) const { return (dir_ / (name + ".safetensors")).string(); }
  std::string output() const { return path("output"); }

  /// The self_attention command line with weights / inputs replaced where given.
  std::vector<std::string> sa_args(const std::string& weights, const std::string& inputs) const {
    return {"--module", "self_attention", "--embed-dim", "4", "--weights", weights, "--inputs", inputs,
            "--output", output()};
  }
  std::vector<std::string> mha_args(const std::string& weights, const std::string& inputs,
                                    std::vector<std::string> extra = {}) const {
    std::vector<std::string> a{"--module", "multi_head_attention", "--embed-dim", "8", "--num-heads", "2",
                               "--weights", weights, "--inputs", inputs, "--output", output()};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  /// Runs attn_run and checks the failure contract; `mentions` must be in the message.
  void expect_failure(const std::vector<std::string>& args, int status, const std::string& mentions) {
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().filename().string().rfind("output", 0) == 0) fs::remove(e.path());
    const Result r = run_attn_run(args, dir_ / "stderr.txt");
    std::string cmd;
    for (const auto& a : args) cmd += " " + a;
    SCOPED_TRACE("attn_run" + cmd + "\nstderr: " + r.err);
    EXPECT_EQ(r.status, status);
    EXPECT_EQ(r.err.find("Sanitizer"), std::string::npos) << "sanitizer report";
    EXPECT_EQ(r.err.find("runtime error:"), std::string::npos) << "UBSan report";
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.rfind("attn_run: ", 0), 0u) << "message does not start with 'attn_run: '";
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "message is not exactly one line";
    EXPECT_NE(r.err.find(mentions), std::string::npos) << "message does not mention '" << mentions << "'";
    for (const auto& e : fs::directory_iterator(dir_))
      EXPECT_NE(e.path().filename().string().rfind("output", 0), 0u) << "left behind: " << e.path();
  }

  fs::path dir_;
};

TEST_F(AttnRunBadInput, ValidRunsSucceed) {
  // The baseline the failures below differ from, and batch 0 (an empty output).
  Result r = run_attn_run(sa_args(path("sa_weights"), path("x")), dir_ / "stderr.txt");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  EXPECT_EQ(attn::io::SafetensorsFile(output()).get<float>("output").shape(), (attn::Shape{2, 3, 4}));
  SafetensorsWriter empty;
  empty.add("x", Tensor<float>({0, 3, 4}));
  empty.write(path("x_empty"));
  r = run_attn_run(sa_args(path("sa_weights"), path("x_empty")), dir_ / "stderr.txt");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(attn::io::SafetensorsFile(output()).get<float>("output").shape(), (attn::Shape{0, 3, 4}));
}

/// Malformed files, each used once as the weights and once as the inputs.
const std::vector<std::pair<std::string, std::string>>& malformed_files() {
  static const std::vector<std::pair<std::string, std::string>> files{
      {"empty", ""},
      {"short", std::string("\x08\0\0", 3)},
      {"header_size_past_end", std::string("\xe8\x03\0\0\0\0\0\0{}", 10)},
      {"header_size_huge", std::string("\xff\xff\xff\xff\xff\xff\xff\xff{}", 10)},
      {"garbage", std::string(64, '\xff')},
      {"not_json", raw_file("{\"x\": [")},
      {"header_array", raw_file("[1, 2]")},
      {"unknown_dtype", raw_file(R"({"x":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}})", "\1")},
      {"negative_shape", raw_file(R"({"x":{"dtype":"F32","shape":[-2,4],"data_offsets":[0,8]}})", std::string(8, '\0'))},
      {"huge_shape", raw_file(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]}})",
                              std::string(16, '\0'))},
      {"offsets_past_end", raw_file(R"({"x":{"dtype":"F32","shape":[2,3,4],"data_offsets":[0,96]}})", std::string(8, '\0'))},
      {"offsets_reversed", raw_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", std::string(4, '\0'))},
      {"bytes_do_not_fit_shape", raw_file(R"({"x":{"dtype":"F32","shape":[2,3,4],"data_offsets":[0,8]}})", std::string(8, '\0'))},
      {"overlap", raw_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           std::string(12, '\0'))},
      {"duplicate_name", raw_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                  std::string(8, '\0'))},
      {"deep_nesting", raw_file(std::string(2000, '[') + std::string(2000, ']'))},
  };
  return files;
}

TEST_F(AttnRunBadInput, MalformedWeightsFiles) {
  for (const auto& f : malformed_files()) {
    SCOPED_TRACE(f.first);
    write_bytes(path("bad_" + f.first), f.second);
    expect_failure(sa_args(path("bad_" + f.first), path("x")), 1, "bad_" + f.first);
  }
  expect_failure(sa_args(path("no_such_file"), path("x")), 1, "no_such_file");
  expect_failure(sa_args(dir_.string(), path("x")), 1, dir_.filename().string());  // a directory
}

TEST_F(AttnRunBadInput, MalformedInputsFiles) {
  for (const auto& f : malformed_files()) {
    SCOPED_TRACE(f.first);
    write_bytes(path("bad_" + f.first), f.second);
    expect_failure(sa_args(path("sa_weights"), path("bad_" + f.first)), 1, "bad_" + f.first);
  }
  expect_failure(sa_args(path("sa_weights"), path("no_such_file")), 1, "no_such_file");
}

TEST_F(AttnRunBadInput, MissingMisshapedOrWronglyTypedWeights) {
  attn::StateDict<float> dict = attn::SelfAttention<float>(4).state_dict();
  {
    attn::StateDict<float> missing = dict;
    missing.erase("value.bias");
    SafetensorsWriter w;
    w.add(missing);
    w.write(path("missing"));
  }
  expect_failure(sa_args(path("missing"), path("x")), 1, "value.bias");
  {
    attn::StateDict<float> misshaped = dict;
    misshaped["key.weight"] = Tensor<float>({4, 5});
    SafetensorsWriter w;
    w.add(misshaped);
    w.write(path("misshaped"));
  }
  expect_failure(sa_args(path("misshaped"), path("x")), 1, "key.weight");
  {
    attn::StateDict<float> extra = dict;
    extra["query.extra"] = Tensor<float>({1});
    SafetensorsWriter w;
    w.add(extra);
    w.write(path("unexpected"));
  }
  expect_failure(sa_args(path("unexpected"), path("x")), 1, "query.extra");
  {
    SafetensorsWriter w;  // integer "weights": not floating point, so nothing to load
    for (const auto& kv : dict)
      w.add(kv.first, kv.second.shape(), std::vector<std::int64_t>(static_cast<std::size_t>(kv.second.numel()), 1));
    w.write(path("int_weights"));
  }
  expect_failure(sa_args(path("int_weights"), path("x")), 1, "int_weights");
  // Weights of another module: everything missing and unexpected.
  expect_failure(sa_args(path("mha_weights"), path("x")), 1, "query.weight");
  // MHA weights for the wrong embedding size.
  expect_failure(mha_args(path("sa_weights"), path("query")), 1, "in_proj_weight");
}

TEST_F(AttnRunBadInput, MissingMisshapedOrWronglyTypedInputs) {
  SafetensorsWriter none;
  none.add("y", Tensor<float>({2, 3, 4}));
  none.write(path("no_x"));
  expect_failure(sa_args(path("sa_weights"), path("no_x")), 1, "'x'");
  expect_failure(mha_args(path("mha_weights"), path("x")), 1, "query");
  SafetensorsWriter narrow;
  narrow.add("x", Tensor<float>({2, 3, 5}));
  narrow.write(path("narrow"));
  expect_failure(sa_args(path("sa_weights"), path("narrow")), 1, "(2, 3, 5)");
  SafetensorsWriter rank;
  rank.add("x", Tensor<float>({1, 2, 3, 4}));
  rank.write(path("rank4"));
  expect_failure(sa_args(path("sa_weights"), path("rank4")), 1, "(1, 2, 3, 4)");
  SafetensorsWriter scalar;
  scalar.add("x", Tensor<float>(attn::Shape{}));
  scalar.write(path("scalar"));
  expect_failure(sa_args(path("sa_weights"), path("scalar")), 1, "x");
  SafetensorsWriter ints;
  ints.add("x", {2, 3, 4}, std::vector<std::int64_t>(24, 1));
  ints.write(path("int_x"));
  expect_failure(sa_args(path("sa_weights"), path("int_x")), 1, "I64");
  SafetensorsWriter key_only;
  key_only.add("query", Tensor<float>({2, 3, 8}));
  key_only.add("key", Tensor<float>({2, 4, 8}));
  key_only.write(path("key_only"));
  expect_failure(mha_args(path("mha_weights"), path("key_only")), 1, "value");
  SafetensorsWriter batch;
  batch.add("query", Tensor<float>({2, 3, 8}));
  batch.add("key", Tensor<float>({3, 4, 8}));
  batch.add("value", Tensor<float>({3, 4, 8}));
  batch.write(path("batch_mismatch"));
  expect_failure(mha_args(path("mha_weights"), path("batch_mismatch")), 1, "(3, 4, 8)");
  SafetensorsWriter dtypes;
  dtypes.add("query", Tensor<float>({2, 3, 8}));
  dtypes.add("key", Tensor<double>({2, 4, 8}));
  dtypes.add("value", Tensor<double>({2, 4, 8}));
  dtypes.write(path("mixed_dtypes"));
  expect_failure(mha_args(path("mha_weights"), path("mixed_dtypes")), 1, "F64");
}

TEST_F(AttnRunBadInput, MasksOfTheWrongShapeOrType) {
  const Tensor<float> x({2, 3, 4}, 0.5f);
  auto with_mask = [&](const std::string& name, auto&& add) {
    SafetensorsWriter w;
    w.add("x", x);
    add(w);
    w.write(path(name));
  };
  with_mask("kpm_shape", [](SafetensorsWriter& w) { w.add("key_padding_mask", Tensor<bool>({2, 4}, false)); });
  expect_failure(sa_args(path("sa_weights"), path("kpm_shape")), 1, "key_padding_mask");
  with_mask("am_shape", [](SafetensorsWriter& w) { w.add("attn_mask", Tensor<bool>({3, 2}, false)); });
  expect_failure(sa_args(path("sa_weights"), path("am_shape")), 1, "attn_mask");
  with_mask("am_rank", [](SafetensorsWriter& w) { w.add("attn_mask", Tensor<float>({1, 1, 1, 3, 3})); });
  expect_failure(sa_args(path("sa_weights"), path("am_rank")), 1, "attn_mask");
  with_mask("am_batch", [](SafetensorsWriter& w) { w.add("attn_mask", Tensor<bool>({5, 3, 3}, false)); });
  expect_failure(sa_args(path("sa_weights"), path("am_batch")), 1, "attn_mask");
  // MHA with B = 2, H = 2: a 3-D mask is (H, L, S) = (2, 3, 3) broadcast over the batch, or
  // (B*H, L, S) = (4, 3, 3); (3, 3, 3) is neither.
  SafetensorsWriter m;
  m.add("query", Tensor<float>({2, 3, 8}));
  m.add("attn_mask", Tensor<bool>({3, 3, 3}, false));
  m.write(path("mha_mask"));
  expect_failure(mha_args(path("mha_weights"), path("mha_mask")), 1, "attn_mask");
}

TEST_F(AttnRunBadInput, SizesThatDoNotFit) {
  const std::string w = path("mha_weights"), q = path("query");
  // Heads that do not divide the embedding; sizes out of range; numbers that are not numbers.
  expect_failure({"--module", "multi_head_attention", "--embed-dim", "8", "--num-heads", "3", "--weights", w,
                  "--inputs", q, "--output", output()}, 2, "--num-heads 3");
  for (const char* bad : {"0", "-8", "8x", "", "1e3", "99999999999999999999999", "2147483648", "0x8", " 8"}) {
    SCOPED_TRACE(bad);
    expect_failure({"--module", "multi_head_attention", "--embed-dim", bad, "--num-heads", "2", "--weights", w,
                    "--inputs", q, "--output", output()}, 2, "--embed-dim");
  }
  expect_failure(mha_args(w, q, {"--threads", "-1"}), 2, "--threads");
  expect_failure(mha_args(w, q, {"--repeat", "many"}), 2, "--repeat");
  // A size that passes the command line but whose parameters cannot be allocated:
  // (E, E) with E = 2^30 overflows nothing but is 4 EiB: "out of memory", one line, not a
  // crash. Under AddressSanitizer, malloc must return null for it as glibc's does
  // (allocator_may_return_null) instead of reporting; ASan's own output (a warning that the
  // allocation failed) goes to a log file, which must hold no error report.
  const char* asan = std::getenv("ASAN_OPTIONS");
  const std::string saved = asan ? asan : "";
  const std::string log = (dir_ / "asan").string();
  setenv("ASAN_OPTIONS", (saved + (saved.empty() ? "" : ":") + "allocator_may_return_null=1:log_path=" + log).c_str(), 1);
  expect_failure({"--module", "self_attention", "--embed-dim", "1073741824", "--weights", path("sa_weights"),
                  "--inputs", path("x"), "--output", output()}, 1,
                 "out of memory: the self_attention's parameters");
  if (asan)
    setenv("ASAN_OPTIONS", saved.c_str(), 1);
  else
    unsetenv("ASAN_OPTIONS");
  for (const auto& e : fs::directory_iterator(dir_)) {
    if (e.path().filename().string().rfind("asan", 0) != 0) continue;
    std::ifstream in(e.path());
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(text.find("ERROR"), std::string::npos) << text;
  }
}

TEST_F(AttnRunBadInput, BadCommandLines) {
  const std::string w = path("sa_weights"), x = path("x");
  expect_failure({"--module", "lstm", "--embed-dim", "4", "--weights", w, "--inputs", x, "--output", output()}, 2, "lstm");
  expect_failure({"--embed-dim", "4", "--weights", w, "--inputs", x, "--output", output()}, 2, "--module");
  expect_failure({"--module", "self_attention", "--weights", w, "--inputs", x, "--output", output()}, 2, "--embed-dim");
  std::vector<std::string> a = sa_args(w, x);
  a.push_back("--bogus");
  expect_failure(a, 2, "--bogus");
  a = sa_args(w, x);
  a.push_back("--repeat");  // no value
  expect_failure(a, 2, "--repeat");
  a = sa_args(w, x);
  a.insert(a.end(), {"--embed-dim", "4"});  // twice
  expect_failure(a, 2, "--embed-dim");
  a = sa_args(w, x);
  a.push_back("--need-weights");  // not self_attention's
  expect_failure(a, 2, "--need-weights");
  a = sa_args(w, x);
  a.push_back("stray");
  expect_failure(a, 2, "stray");
  expect_failure({"--module", "self_attention", "--embed-dim", "4", "--weights", w, "--inputs", x, "--output", w}, 2,
                 "--output");
}

TEST_F(AttnRunBadInput, DecodingFlagsAndInputs) {
  const std::string w = path("mha_weights"), q = path("query");
  // --incremental: the key padding mask must cover the whole sequence (it is cut per chunk);
  // an attn_mask has no incremental meaning; no attention weights.
  SafetensorsWriter m;
  m.add("query", Tensor<float>({2, 3, 8}, 0.25f));
  m.add("attn_mask", Tensor<bool>({3, 3}, false));
  m.write(path("query_am"));
  expect_failure(mha_args(w, path("query_am"), {"--incremental", "2"}), 1, "attn_mask");
  SafetensorsWriter k;
  k.add("query", Tensor<float>({2, 3, 8}, 0.25f));
  k.add("key_padding_mask", Tensor<bool>({2, 4}, false));
  k.write(path("query_kpm"));
  expect_failure(mha_args(w, path("query_kpm"), {"--incremental", "2"}), 1, "key_padding_mask");
  expect_failure(mha_args(w, q, {"--incremental", "2", "--need-weights"}), 2, "--incremental");
  expect_failure(mha_args(w, q, {"--incremental", "0"}), 2, "--incremental");
  // --kv-cache-dtype: one of four storage types, only with --incremental, not under float64.
  expect_failure(mha_args(w, q, {"--incremental", "2", "--kv-cache-dtype", "int4"}), 2, "--kv-cache-dtype expects");
  expect_failure(mha_args(w, q, {"--kv-cache-dtype", "int8"}), 2, "needs --incremental");
  expect_failure(mha_args(w, q, {"--incremental", "2", "--kv-cache-dtype", "int8", "--dtype", "float64"}), 2,
                 "float64");
  // gqa_attention's options, checked before any file is read.
  const auto gqa = [&](std::vector<std::string> extra) {
    std::vector<std::string> a{"--module", "gqa_attention", "--embed-dim", "8", "--num-heads", "4",
                               "--weights", w, "--inputs", q, "--output", output()};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  expect_failure(gqa({"--num-kv-heads", "3"}), 2, "--num-kv-heads 3");
  expect_failure(gqa({"--num-kv-heads", "2", "--rotary-dim", "1"}), 2, "--rotary-dim 1");
  expect_failure(gqa({"--num-kv-heads", "2", "--rotary-dim", "4"}), 2, "--rotary-dim 4");  // > head_dim 2
  expect_failure(gqa({"--num-kv-heads", "2", "--no-rope", "--rope-theta", "500"}), 2, "--no-rope");
  expect_failure(gqa({"--num-kv-heads", "2", "--sliding-window", "0"}), 2, "--sliding-window");
  expect_failure(gqa({"--num-kv-heads", "2", "--softcap", "-1"}), 2, "--softcap");
  expect_failure(gqa({"--num-kv-heads", "2", "--activation", "gelu"}), 2, "--activation");
  expect_failure({"--module", "transformer_encoder_layer", "--embed-dim", "8", "--num-heads", "2", "--ffn-dim", "4",
                  "--activation", "tanh", "--weights", w, "--inputs", q, "--output", output()},
                 2, "--activation");
}

#else

TEST(AttnRunBadInput, Skipped) { GTEST_SKIP() << "attn_run is not built in this tree (needs examples and attn::io)"; }

#endif

}  // namespace
