#pragma once
/// @file
/// @brief The bfloat16 GEMM micro-kernel of the avx512bf16 path (attn/core/isa.hpp):
/// AVX512-BF16's vdpbf16ps, which adds the products of a pair of bfloat16 values to each
/// float32 lane. W is packed in k-pairs (lane c of a panel row holds W[c][k], W[c][k + 1])
/// and x's rows too, so one broadcast pair of x meets 16 pairs of W per instruction: twice
/// the multiply-adds of a float32 FMA. Compiled in a target function whatever the build's
/// flags; gemm16_run (kernels/gemm16.ipp) drives it. Not public API.

#include <cstdint>

#include "attn/core/isa.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/packets.hpp"
#include "attn/ops/detail/simd.hpp"

#if ATTN_HAS_AVX512BF16
#include <immintrin.h>

namespace attn {
namespace detail {

/// @brief The micro-kernel policy of gemm16_run on avx512bf16: a 6 x 64 block of float32 sums
/// in 24 registers, per k-pair 4 loads of W, 6 broadcasts of x and 24 vdpbf16ps.
struct GemmBf16 {
  using A = std::uint32_t;  ///< packed x: a pair of bfloat16 (the even k in the low half)
  static constexpr int kMR = 6;
  static constexpr Index kNR = 64;
  static constexpr Index kKC = 1024;  ///< a panel of W per k-block: 128 KiB
  static constexpr Index kPanelScratch = 0;

  /// Pairs of packed x for `rows` rows (a multiple of kMR) of a k-block of kc.
  static Index a_size(Index rows, Index kc) { return rows * ((kc + 1) / 2); }

  /// Packs rows [0, rows) x columns [0, kc) of x (rows ldx apart) as pairs, in panels of kMR
  /// rows, pair-major (a[p * kMR * pairs + j * kMR + i]); zero past the ends.
  static void pack_rows(const bfloat16* x, Index rows, Index kc, Index ldx, A* a) {
    const Index pairs = (kc + 1) / 2;
    for (Index ip = 0; ip < rows; ip += kMR) {
      A* dst = a + ip * pairs;
      for (int r = 0; r < kMR; ++r) {
        const bfloat16* src = ip + r < rows ? x + (ip + r) * ldx : nullptr;
        for (Index j = 0; j < pairs; ++j) {
          const A lo = src ? bits(src[2 * j]) : 0, hi = src && 2 * j + 1 < kc ? bits(src[2 * j + 1]) : 0;
          dst[j * kMR + r] = lo | hi << 16;
        }
      }
    }
  }
  /// W's panel as packed (PackedWeight's k-pair layout).
  static const bfloat16* panel(const bfloat16* b, Index, float*) { return b; }

  static void micro(const A* a, const bfloat16* b, Index kc, float* c);

 private:
  static A bits(bfloat16 v) { return Eigen::numext::bit_cast<std::uint16_t>(v); }
};

ATTN_TARGET_BEGIN(ATTN_FEATURES_AVX512 ",avx512bf16")
/// c (6 x 64, row-major) = the products of a's and b's pairs over kc. Never inlined.
EIGEN_DONT_INLINE inline void GemmBf16::micro(const A* a, const bfloat16* b, Index kc, float* c) {
  const Index pairs = (kc + 1) / 2;
  __m512 acc[kMR][4];
  ATTN_UNROLL for (int i = 0; i < kMR; ++i)
    ATTN_UNROLL for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_setzero_ps();
  for (Index j = 0; j < pairs; ++j) {
    __m512bh bv[4];
    ATTN_UNROLL for (int v = 0; v < 4; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + j * 2 * kNR + v * 32);
    ATTN_UNROLL for (int i = 0; i < kMR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[j * kMR + i]));
      ATTN_UNROLL for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
    }
  }
  ATTN_UNROLL for (int i = 0; i < kMR; ++i)
    ATTN_UNROLL for (int v = 0; v < 4; ++v) _mm512_storeu_ps(c + i * kNR + v * 16, acc[i][v]);
}
ATTN_TARGET_END

}  // namespace detail
}  // namespace attn
#endif
