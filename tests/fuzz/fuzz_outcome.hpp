#pragma once
// What one input did in the fuzz target (fuzz_safetensors.cpp), for the replay driver
// (replay_main.cpp), which checks that the seed corpus does what its file names say.

#include <cstddef>
#include <cstdint>

namespace attn_fuzz {

struct Outcome {
  bool opened = false;   ///< SafetensorsFile accepted the file (its tensors were then all read)
  int strict_loads = 0;  ///< modules that loaded the file's tensors with strict = true
  int whole_file_strict_loads = 0;  ///< of those, loads of the whole file (no prefix: every tensor a parameter)
  int forwards = 0;      ///< forward passes run on loaded modules
};

/// Runs one input through the fuzz target (as LLVMFuzzerTestOneInput does).
Outcome run_input(const std::uint8_t* data, std::size_t size);

}  // namespace attn_fuzz
