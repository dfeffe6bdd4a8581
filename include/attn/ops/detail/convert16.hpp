#pragma once
/// @file
/// @brief Conversions between float32 and the 16-bit storage types (bfloat16, half) for the
/// kernels that compute in float32 on 16-bit data: widen (exact) and narrow (rounded to
/// nearest even, as Eigen's and PyTorch's conversions; a NaN stays a NaN); and widen for the
/// int8 of a quantised KV cache. One set per
/// instruction set: scalar (Eigen's conversions), AVX2 with F16C, and AVX-512; the kernel
/// passes (kernels.hpp) call their own set as `cv`, and the baseline path the widest set
/// its build's flags allow. Not public API.

#include <cstdint>

#include "attn/core/isa.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/simd.hpp"

#if ATTN_DISPATCH
#include <immintrin.h>
#endif

namespace attn {
namespace detail {
namespace convert16 {

namespace scalar {
/// dst[i] = float(src[i]) for i < n.
template <class S>
inline void widen(const S* src, float* dst, Index n) {
  for (Index i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
/// dst[i] = S(src[i]), rounded to nearest even, for i < n.
template <class S>
inline void narrow(const float* src, S* dst, Index n) {
  for (Index i = 0; i < n; ++i) dst[i] = S(src[i]);
}
}  // namespace scalar

#if ATTN_DISPATCH
// Every CPU with AVX2 and FMA has F16C (Intel since Ivy Bridge, AMD since Piledriver).
ATTN_TARGET_BEGIN(ATTN_FEATURES_AVX2 ",f16c")
namespace avx2 {
/// The bfloat16 bits of 8 floats, rounded to nearest even (a NaN becomes the quiet NaN of its
/// sign, as Eigen's conversion), in the low 16 bits of each lane.
inline __m256i bf16_bits(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x), high = _mm256_srli_epi32(bits, 16);
  const __m256i bias = _mm256_add_epi32(_mm256_and_si256(high, _mm256_set1_epi32(1)), _mm256_set1_epi32(0x7fff));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
  const __m256i nan = _mm256_or_si256(_mm256_and_si256(high, _mm256_set1_epi32(0x8000)), _mm256_set1_epi32(0x7fc0));
  return _mm256_blendv_epi8(rounded, nan, _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
}
inline __m128i load8(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
inline void store8(void* p, __m128i x) { _mm_storeu_si128(static_cast<__m128i*>(p), x); }

inline void widen(const bfloat16* src, float* dst, Index n) {
  Index i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load8(src + i)), 16)));
  scalar::widen(src + i, dst + i, n - i);
}
inline void widen(const half* src, float* dst, Index n) {
  Index i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(load8(src + i)));
  scalar::widen(src + i, dst + i, n - i);
}
inline void widen(const std::int8_t* src, float* dst, Index n) {
  Index i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i)))));
  scalar::widen(src + i, dst + i, n - i);
}
inline void narrow(const float* src, bfloat16* dst, Index n) {
  Index i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i b = bf16_bits(_mm256_loadu_ps(src + i));
    store8(dst + i, _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
  }
  scalar::narrow(src + i, dst + i, n - i);
}
inline void narrow(const float* src, half* dst, Index n) {
  Index i = 0;
  for (; i + 8 <= n; i += 8) store8(dst + i, _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  scalar::narrow(src + i, dst + i, n - i);
}
}  // namespace avx2
ATTN_TARGET_END

ATTN_TARGET_BEGIN(ATTN_FEATURES_AVX512)
// The zero-masking forms with every lane kept (kAll) are the plain instructions (see simd.hpp).
namespace avx512 {
constexpr __mmask16 kAll = __mmask16(-1);
/// avx2::bf16_bits for 16 floats.
inline __m512i bf16_bits(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x), high = _mm512_maskz_srli_epi32(kAll, bits, 16);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(high, _mm512_set1_epi32(1)), _mm512_set1_epi32(0x7fff));
  const __m512i rounded = _mm512_maskz_srli_epi32(kAll, _mm512_add_epi32(bits, bias), 16);
  const __m512i nan = _mm512_or_si512(_mm512_and_si512(high, _mm512_set1_epi32(0x8000)), _mm512_set1_epi32(0x7fc0));
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), rounded, nan);
}
inline __m256i load16(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline void store16(void* p, __m256i x) { _mm256_storeu_si256(static_cast<__m256i*>(p), x); }

inline void widen(const bfloat16* src, float* dst, Index n) {
  Index i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i wide = _mm512_maskz_cvtepu16_epi32(kAll, load16(src + i));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, wide, 16)));
  }
  scalar::widen(src + i, dst + i, n - i);
}
inline void widen(const half* src, float* dst, Index n) {
  Index i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_maskz_cvtph_ps(kAll, load16(src + i)));
  scalar::widen(src + i, dst + i, n - i);
}
inline void widen(const std::int8_t* src, float* dst, Index n) {
  Index i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i wide = _mm512_maskz_cvtepi8_epi32(kAll, _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    _mm512_storeu_ps(dst + i, _mm512_maskz_cvtepi32_ps(kAll, wide));
  }
  scalar::widen(src + i, dst + i, n - i);
}
inline void narrow(const float* src, bfloat16* dst, Index n) {
  Index i = 0;
  for (; i + 16 <= n; i += 16)
    store16(dst + i, _mm512_maskz_cvtepi32_epi16(kAll, bf16_bits(_mm512_loadu_ps(src + i))));
  scalar::narrow(src + i, dst + i, n - i);
}
inline void narrow(const float* src, half* dst, Index n) {
  Index i = 0;
  for (; i + 16 <= n; i += 16)
    store16(dst + i, _mm512_maskz_cvtps_ph(kAll, _mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  scalar::narrow(src + i, dst + i, n - i);
}
}  // namespace avx512
ATTN_TARGET_END
#endif

/// The set the baseline path uses: the widest its build's flags allow.
#if ATTN_DISPATCH && ATTN_BUILD_AVX512
namespace build = avx512;
#elif ATTN_DISPATCH && ATTN_BUILD_AVX2 && defined(__F16C__)
namespace build = avx2;
#else
namespace build = scalar;
#endif

}  // namespace convert16
}  // namespace detail
}  // namespace attn
