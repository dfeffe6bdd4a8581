#pragma once
/// @file
/// @brief Which instruction set attn's kernels run: chosen at run time from the CPU.
///
/// A program compiled without -march (CMake's Release flags: SSE2 on x86-64) still runs
/// attn's float kernels on AVX2 or AVX-512 when the CPU has them: the kernels are compiled
/// once more for each of those instruction sets inside target regions (GCC and Clang on
/// x86-64), and the first call picks the widest one the CPU and the operating system
/// support. A program compiled for AVX-512 (-march=native on such a CPU) needs no other
/// path and has only its own (`baseline`).
///
/// The 16-bit storage types (bfloat16, half) run the same float kernels on tiles converted to
/// float32, except where a path multiplies them natively: avx512bf16 (AVX512-BF16's
/// vdpbf16ps, float32 accumulators) for the bfloat16 GEMM. That path is compiled in
/// whatever the build's flags (a target function), and runs the float kernels of avx512.
///
/// Forcing a path: the environment variable ATTN_KERNEL_ISA (baseline, avx2, avx512 or avx512bf16),
/// read once at the first kernel call, or attn::set_kernel_isa. Results are
/// deterministic for one path and thread count-independent on every path; different
/// paths round differently (packet widths, fused multiply-adds).
///
/// The float kernels dispatch: the projections' GEMM (attn::linear, the modules'
/// PackedLinear), the attention kernels (scaled_dot_product_attention's tiled kernel and
/// decode tile, talking_heads_attention) and softmax. float64 runs on the baseline path, as
/// does the element-wise work between kernels (layer norm, activations, rotary embedding,
/// the logits' softcap and masks). The wider paths pin register-tile rows as the Zen
/// kernels do (ops/detail/packets.hpp: kPinRowPackets); a -march=native build on Sapphire
/// Rapids uses its own policy.

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/core/error.hpp"

/// Whether this build compiles the kernels again for wider instruction sets than its own
/// (GCC or Clang on x86-64; -DATTN_NO_DISPATCH turns it off).
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(ATTN_NO_DISPATCH)
#define ATTN_DISPATCH 1
#else
#define ATTN_DISPATCH 0
#endif
/// The build's own instruction set reaches AVX-512 (F, DQ, BW, VL).
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define ATTN_BUILD_AVX512 1
#else
#define ATTN_BUILD_AVX512 0
#endif
/// The build's own instruction set reaches AVX2 with FMA.
#if defined(__AVX2__) && defined(__FMA__)
#define ATTN_BUILD_AVX2 1
#else
#define ATTN_BUILD_AVX2 0
#endif
/// The kernels are compiled once more for AVX-512 (in a target region).
#define ATTN_STAMP_AVX512 (ATTN_DISPATCH && !ATTN_BUILD_AVX512)
/// The kernels are compiled once more for AVX2 (in a target region); -DATTN_NO_AVX2_PATH
/// leaves that path out (tests/run.sh's sanitized tree does on AVX-512 CPUs, to compile faster).
#if defined(ATTN_NO_AVX2_PATH)
#define ATTN_STAMP_AVX2 0
#else
#define ATTN_STAMP_AVX2 (ATTN_DISPATCH && !ATTN_BUILD_AVX2 && !ATTN_BUILD_AVX512)
#endif
/// The AVX512-BF16 kernels (a target region whatever the build's flags) are compiled in:
/// with run-time paths, on compilers that have the intrinsics (GCC 10, Clang 9 and later).
#if ATTN_DISPATCH && (defined(__clang__) ? __clang_major__ >= 9 : __GNUC__ >= 10)
#define ATTN_HAS_AVX512BF16 1
#else
#define ATTN_HAS_AVX512BF16 0
#endif

namespace attn {

/// @brief A path of attn's kernels.
enum class KernelIsa {
  baseline,  ///< the instruction set the program is compiled for (Eigen's packets for its flags)
  avx2,      ///< AVX2 with FMA: 256-bit packets, 16 registers (compiled in when the build lacks AVX2)
  avx512,    ///< AVX-512 F/DQ/BW/VL: 512-bit packets, 32 registers (compiled in when the build lacks it)
  avx512bf16,  ///< avx512 and AVX512-BF16: bfloat16 products on vdpbf16ps (float kernels as avx512)
};

/// The name of a path, as ATTN_KERNEL_ISA spells it.
inline const char* to_string(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::avx2: return "avx2";
    case KernelIsa::avx512: return "avx512";
    case KernelIsa::avx512bf16: return "avx512bf16";
    default: return "baseline";
  }
}

namespace detail {

/// Whether the CPU and the operating system run this path (the compiler's CPU check also
/// checks that the OS saves the vector registers).
inline bool cpu_runs(KernelIsa isa) {
#if ATTN_DISPATCH
  switch (isa) {
    case KernelIsa::avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case KernelIsa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    case KernelIsa::avx512bf16: return cpu_runs(KernelIsa::avx512) && __builtin_cpu_supports("avx512bf16");
    default: return true;
  }
#else
  return isa == KernelIsa::baseline;
#endif
}

/// Whether this build has the path compiled in.
constexpr bool compiled_in(KernelIsa isa) {
  return isa == KernelIsa::baseline || (isa == KernelIsa::avx2 && ATTN_STAMP_AVX2) ||
         (isa == KernelIsa::avx512 && ATTN_STAMP_AVX512) || (isa == KernelIsa::avx512bf16 && ATTN_HAS_AVX512BF16);
}

/// The paths this program can run, baseline first.
inline std::vector<KernelIsa> runnable_isas() {
  std::vector<KernelIsa> out;
  for (KernelIsa isa : {KernelIsa::baseline, KernelIsa::avx2, KernelIsa::avx512, KernelIsa::avx512bf16})
    if (compiled_in(isa) && cpu_runs(isa)) out.push_back(isa);
  return out;
}

/// The path named `name`, which must be runnable (`what` names the source in errors).
inline KernelIsa runnable_isa(const std::string& name, const char* what) {
  std::string runnable;
  for (KernelIsa isa : runnable_isas()) {
    if (name == to_string(isa)) return isa;
    runnable += std::string(runnable.empty() ? "" : ", ") + to_string(isa);
  }
  throw std::invalid_argument(std::string(what) + ": '" + name + "' is not a kernel path this program can run here (" +
                              runnable + "; avx2 and avx512 exist only in builds without them in -march)");
}

/// -1 until the first kernel call; then the chosen path.
inline std::atomic<int>& isa_setting() {
  static std::atomic<int> isa{-1};
  return isa;
}

}  // namespace detail

/// @brief The paths this program can run on this CPU (baseline always), in increasing width.
inline std::vector<KernelIsa> available_kernel_isas() { return detail::runnable_isas(); }

/// @brief Forces attn's kernels onto a path (process-wide; weights packed before keep the
/// path they were packed for).
/// @throws std::invalid_argument if this program or CPU cannot run it
inline void set_kernel_isa(KernelIsa isa) {
  detail::runnable_isa(to_string(isa), "attn::set_kernel_isa");
  detail::isa_setting().store(static_cast<int>(isa), std::memory_order_relaxed);
}

/// @brief The path attn's kernels run: set_kernel_isa's, else ATTN_KERNEL_ISA's, else the
/// widest one available.
/// @throws std::invalid_argument if ATTN_KERNEL_ISA names a path this program cannot run
inline KernelIsa kernel_isa() {
  int isa = detail::isa_setting().load(std::memory_order_relaxed);
  if (isa < 0) {
    const char* env = std::getenv("ATTN_KERNEL_ISA");
    isa = static_cast<int>(env && *env ? detail::runnable_isa(env, "ATTN_KERNEL_ISA")
                                       : detail::runnable_isas().back());
    detail::isa_setting().store(isa, std::memory_order_relaxed);
  }
  return static_cast<KernelIsa>(isa);
}

namespace detail {
/// The path of T's kernels: kernel_isa() for float and the 16-bit storage types (whose
/// kernels are float's); float64 runs on the baseline path.
template <class T>
KernelIsa kernel_isa_for() {
  return std::is_same<T, double>::value ? KernelIsa::baseline : kernel_isa();
}
}  // namespace detail

}  // namespace attn
