#pragma once
/// @file
/// @brief The vdpbf16ps products of the bfloat16 attention tiles on the avx512bf16 path
/// (kernels/sdpa_tiled.ipp: SdpaTilesBf16). A tile block holds 64 queries (four packets of
/// 16 float32 lanes), key-major as SdpaTiles: q is packed in pairs along the head dimension
/// (lane q of pair row p holds q[q][2p], q[q][2p + 1]), k is read in place (a key's pairs are
/// adjacent in its row), p is packed in pairs along the keys and v in pairs along the keys
/// too, so every product is one vdpbf16ps: twice the multiply-adds of a float32 FMA. Compiled
/// in target functions whatever the build's flags. Not public API.

#include <cstdint>
#include <cstring>
#include <limits>

#include "attn/core/isa.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/packets.hpp"
#include "attn/ops/detail/simd.hpp"

#if ATTN_HAS_AVX512BF16
#include <immintrin.h>

namespace attn {
namespace detail {

/// @brief The three products of a bfloat16 tile block of kQueries queries.
struct SdpaBf16 {
  using Pair = std::uint32_t;  ///< two bfloat16, the first in the low half
  static constexpr Index kQueries = 64;

  /// @brief s[j][q] = scale * sum over pairs p of k_j's pair p . qt2[p][q], for `cols` keys j
  /// (key j's row at k + j * k_stride, `pairs` pairs long) and kQueries queries; max[q] =
  /// the largest s[j][q] (max holds kQueries floats).
  static void scores(const bfloat16* k, Index k_stride, Index cols, const Pair* qt2, Index pairs, float scale,
                     float* s, float* max);
  /// p2[jp][q] = the pair (s[2 jp][q], s[2 jp + 1][q]) rounded to bfloat16 (to nearest even),
  /// for jp < (cols + 1) / 2; a missing last key is 0.
  static void pair_rows(const float* s, Index cols, Pair* p2);
  /// acc[c][q] += sum over jp < pairs of v2[c * v2_stride + jp] . p2[jp][q], for c < dim_v.
  static void values(const Pair* v2, Index v2_stride, Index pairs, Index dim_v, const Pair* p2, float* acc);

  static Pair bits(bfloat16 v) { return Eigen::numext::bit_cast<std::uint16_t>(v); }
};

ATTN_TARGET_BEGIN(ATTN_FEATURES_AVX512 ",avx512bf16")

// The zero-masking forms with every lane kept (kAll) are the plain instructions (GCC 12
// warns that the plain forms' undefined source may be used: see simd.hpp).
namespace bf16_tiles {
constexpr int kV = 4;  ///< packets of 16 queries
constexpr __mmask16 kAll = __mmask16(-1);

/// I keys from k (rows k_stride apart) against the block's queries: s and max as scores().
template <int I>
EIGEN_ALWAYS_INLINE void score_rows(const bfloat16* k, Index k_stride, const SdpaBf16::Pair* qt2, Index pairs,
                                    __m512 scale, float* s, __m512* max) {
  __m512 acc[I][kV];
  ATTN_UNROLL for (int i = 0; i < I; ++i)
    ATTN_UNROLL for (int v = 0; v < kV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (Index p = 0; p < pairs; ++p) {
    __m512bh b[kV];
    ATTN_UNROLL for (int v = 0; v < kV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(qt2 + p * SdpaBf16::kQueries + v * 16);
    ATTN_UNROLL for (int i = 0; i < I; ++i) {
      std::int32_t pair;
      std::memcpy(&pair, k + i * k_stride + 2 * p, sizeof pair);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      ATTN_UNROLL for (int v = 0; v < kV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], a, b[v]);
    }
  }
  ATTN_UNROLL for (int i = 0; i < I; ++i)
    ATTN_UNROLL for (int v = 0; v < kV; ++v) {
      const __m512 x = _mm512_mul_ps(acc[i][v], scale);
      _mm512_storeu_ps(s + i * SdpaBf16::kQueries + v * 16, x);
      max[v] = _mm512_maskz_max_ps(kAll, max[v], x);
    }
}

/// I value columns from row c of v2 against the block's p pairs, added to acc's rows.
template <int I>
EIGEN_ALWAYS_INLINE void value_rows(const SdpaBf16::Pair* v2, Index v2_stride, Index pairs, const SdpaBf16::Pair* p2,
                                    float* acc) {
  __m512 sum[I][kV];
  ATTN_UNROLL for (int i = 0; i < I; ++i)
    ATTN_UNROLL for (int v = 0; v < kV; ++v) sum[i][v] = _mm512_loadu_ps(acc + i * SdpaBf16::kQueries + v * 16);
  for (Index jp = 0; jp < pairs; ++jp) {
    __m512bh b[kV];
    ATTN_UNROLL for (int v = 0; v < kV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(p2 + jp * SdpaBf16::kQueries + v * 16);
    ATTN_UNROLL for (int i = 0; i < I; ++i) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(v2[i * v2_stride + jp]));
      ATTN_UNROLL for (int v = 0; v < kV; ++v) sum[i][v] = _mm512_dpbf16_ps(sum[i][v], a, b[v]);
    }
  }
  ATTN_UNROLL for (int i = 0; i < I; ++i)
    ATTN_UNROLL for (int v = 0; v < kV; ++v) _mm512_storeu_ps(acc + i * SdpaBf16::kQueries + v * 16, sum[i][v]);
}

/// 16 floats rounded to bfloat16 (to nearest even), each in the low half of a 32-bit lane.
EIGEN_ALWAYS_INLINE __m512i low_halves(__m512 x) {
  return _mm512_maskz_cvtepu16_epi32(kAll, (__m256i)_mm512_cvtneps_pbh(x));
}
}  // namespace bf16_tiles

EIGEN_DONT_INLINE inline void SdpaBf16::scores(const bfloat16* k, Index k_stride, Index cols, const Pair* qt2,
                                               Index pairs, float scale, float* s, float* max) {
  using namespace bf16_tiles;
  __m512 m[kV];
  ATTN_UNROLL for (int v = 0; v < kV; ++v) m[v] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 sc = _mm512_set1_ps(scale);
  Index j = 0;
  for (; j + 4 <= cols; j += 4) score_rows<4>(k + j * k_stride, k_stride, qt2, pairs, sc, s + j * kQueries, m);
  for (; j < cols; ++j) score_rows<1>(k + j * k_stride, k_stride, qt2, pairs, sc, s + j * kQueries, m);
  ATTN_UNROLL for (int v = 0; v < kV; ++v) _mm512_storeu_ps(max + v * 16, m[v]);
}

EIGEN_DONT_INLINE inline void SdpaBf16::pair_rows(const float* s, Index cols, Pair* p2) {
  using namespace bf16_tiles;
  for (Index jp = 0; jp < (cols + 1) / 2; ++jp)
    ATTN_UNROLL for (int v = 0; v < kV; ++v) {
      const __m512 a = _mm512_loadu_ps(s + 2 * jp * kQueries + v * 16);
      const __m512 b = 2 * jp + 1 < cols ? _mm512_loadu_ps(s + (2 * jp + 1) * kQueries + v * 16) : _mm512_setzero_ps();
      const __m512i pair = _mm512_or_si512(low_halves(a), _mm512_maskz_slli_epi32(kAll, low_halves(b), 16));
      _mm512_storeu_si512(p2 + jp * kQueries + v * 16, pair);
    }
}

EIGEN_DONT_INLINE inline void SdpaBf16::values(const Pair* v2, Index v2_stride, Index pairs, Index dim_v,
                                               const Pair* p2, float* acc) {
  using namespace bf16_tiles;
  Index c = 0;
  for (; c + 4 <= dim_v; c += 4) value_rows<4>(v2 + c * v2_stride, v2_stride, pairs, p2, acc + c * kQueries);
  for (; c < dim_v; ++c) value_rows<1>(v2 + c * v2_stride, v2_stride, pairs, p2, acc + c * kQueries);
}

ATTN_TARGET_END

}  // namespace detail
}  // namespace attn
#endif
