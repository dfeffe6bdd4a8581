// Replays inputs through the fuzz target without libFuzzer, so the seed corpus and every
// kept crash input run as a ctest test under any compiler (and under the sanitizers).
//
//   attn_fuzz_replay <file or directory>...
//
// Directories are read (not recursively) in name order. Prints the number of inputs run;
// exit status 0 if every input ran (a crash or sanitizer report aborts instead), 1 if an
// argument cannot be read or no input was found.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

bool run_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "attn_fuzz_replay: cannot read %s\n", path.string().c_str());
    return false;
  }
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::fprintf(stderr, "attn_fuzz_replay: %s (%zu bytes)\n", path.string().c_str(), bytes.size());
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t count = 0;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg(argv[i]);
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::directory_iterator(arg, ec))
        if (entry.is_regular_file()) files.push_back(entry.path());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) {
        ok = run_file(f) && ok;
        ++count;
      }
    } else {
      ok = run_file(arg) && ok;
      ++count;
    }
  }
  std::printf("attn_fuzz_replay: %zu inputs run\n", count);
  return ok && count > 0 ? 0 : 1;
}
