// Replays inputs through the fuzz target without libFuzzer, so the seed corpus and every
// kept crash input run as a ctest test under any compiler (and under the sanitizers).
//
//   attn_fuzz_replay <file or directory>...
//
// Directories are read (not recursively) in name order. A crash or sanitizer report aborts.
// The seed corpus (tests/fuzz/make_corpus.py) names each file after what it is, and the
// replay checks that the target did that with it, so a reader or loader that turned down
// good files cannot pass on them:
//   valid_*   the reader accepts the file; one that holds a module's state dict (all but
//             kNoModule below) loads strictly into at least one module, which runs;
//   load_*    the reader accepts the file, and no module loads the whole file strictly (a
//             submodule's prefix of it may load: load_missing_bias's "query." is a Linear);
//   bad_*     the reader rejects the file (but those in kAcceptedBad).
// Other names (tests/fuzz/regressions/) need only run. Prints one line per input and the
// number run; exit status 0 if every input ran and met its expectation, 1 otherwise (also
// when an argument cannot be read or no input was found).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz_outcome.hpp"

namespace {

/// valid_* corpus files that hold no module's state dict (metadata, masks, odd shapes).
const char* const kNoModule[] = {"valid_edge_shapes", "valid_empty_header", "valid_masks_every_int_dtype",
                                 "valid_only_metadata"};

/// bad_* corpus files the reader accepts today. bad_nul_in_header is "{}" padded with NUL
/// bytes instead of spaces: the JSON parser stops at the first NUL. Whether the reader should
/// reject it (the corpus says so) is open; until then it only has to run.
const char* const kAcceptedBad[] = {"bad_nul_in_header"};

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

/// The problem with an outcome, given the file's name ("" if none).
std::string check(const std::string& stem, const attn_fuzz::Outcome& o) {
  if (starts_with(stem, "valid_")) {
    if (!o.opened) return "the reader rejected a valid file";
    if (std::find(std::begin(kNoModule), std::end(kNoModule), stem) != std::end(kNoModule)) return "";
    if (o.strict_loads == 0) return "no module loaded it strictly";
    if (o.forwards == 0) return "no loaded module ran";
  } else if (starts_with(stem, "load_")) {
    if (!o.opened) return "the reader rejected a well-formed file";
    if (o.whole_file_strict_loads != 0) return "a module loaded it strictly (it must be rejected)";
  } else if (starts_with(stem, "bad_")) {
    const bool known = std::find(std::begin(kAcceptedBad), std::end(kAcceptedBad), stem) != std::end(kAcceptedBad);
    if (o.opened && !known) return "the reader accepted a malformed file";
  }
  return "";
}

bool run_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "attn_fuzz_replay: cannot read %s\n", path.string().c_str());
    return false;
  }
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const attn_fuzz::Outcome o =
      attn_fuzz::run_input(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  const std::string problem = check(path.stem().string(), o);
  std::fprintf(stderr, "attn_fuzz_replay: %s %s (%zu bytes): %s, %d strict loads, %d forward passes\n",
               problem.empty() ? "ok  " : "FAIL", path.string().c_str(), bytes.size(),
               o.opened ? "opened" : "rejected", o.strict_loads, o.forwards);
  if (!problem.empty()) std::fprintf(stderr, "attn_fuzz_replay:      %s\n", problem.c_str());
  return problem.empty();
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t count = 0, failed = 0;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg(argv[i]);
    std::error_code ec;
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(arg, ec)) {
      for (const auto& entry : std::filesystem::directory_iterator(arg, ec))
        if (entry.is_regular_file()) files.push_back(entry.path());
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(arg);
    }
    for (const auto& f : files) {
      if (!run_file(f)) ok = false, ++failed;
      ++count;
    }
  }
  std::printf("attn_fuzz_replay: %zu inputs run, %zu failed their expectation\n", count, failed);
  return ok && count > 0 ? 0 : 1;
}
