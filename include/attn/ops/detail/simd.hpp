#pragma once
/// @file
/// @brief The packet operations of the kernel paths compiled for wider instruction sets
/// than the build's own (attn/core/isa.hpp): AVX2 and AVX-512 float packets (and the 32-bit
/// integer packets the exp builds 2^n in) with the names and meanings of Eigen's
/// (Eigen::internal::pset1, ploadu, pmadd, pselect ...), so that one kernel
/// text compiles on Eigen's packets for the baseline path and on these for the others
/// (kernels.hpp). Each set is defined inside a target region. Not public API.

#include <immintrin.h>

#include "attn/core/isa.hpp"

/// Code between ATTN_TARGET_BEGIN("feature,...") and ATTN_TARGET_END is compiled for those
/// instruction-set features (every function, template and lambda in it).
#define ATTN_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define ATTN_TARGET_BEGIN(features) ATTN_PRAGMA(clang attribute push(__attribute__((target(features))), apply_to = function))
#define ATTN_TARGET_END ATTN_PRAGMA(clang attribute pop)
#else
#define ATTN_TARGET_BEGIN(features) ATTN_PRAGMA(GCC push_options) ATTN_PRAGMA(GCC target(features))
#define ATTN_TARGET_END ATTN_PRAGMA(GCC pop_options)
#endif
/// The features of the avx2 and avx512 paths (what attn::detail::cpu_runs checks).
#define ATTN_FEATURES_AVX2 "avx2,fma"
#define ATTN_FEATURES_AVX512 "avx2,fma,avx512f,avx512dq,avx512bw,avx512vl"

#if defined(__GNUC__) && !defined(__clang__)
_Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wignored-attributes\"")
#endif

/// One float packet set: packet type P of S lanes and its integer packet PI (32-bit lanes);
/// the functions Eigen's kernels call, with Eigen's meanings. Each set adds the ones whose
/// intrinsics differ: pmax (a where either is NaN), pcast (truncating), plogical_shift_left,
/// pcmp_eq / pcmp_lt (all-ones lanes where true) and pselect. Functions the kernels name
/// only in branches a float packet never takes (pexp) are declared and never defined.
#define ATTN_FLOAT_PACKET_SET(P, PI, S, prefix, si_to_ps)                                                    \
  template <class T>                                                                                          \
  struct packet_traits {                                                                                      \
    using type = T; /* types without a packet of this set: scalars */                                        \
  };                                                                                                          \
  template <>                                                                                                 \
  struct packet_traits<float> {                                                                               \
    using type = P;                                                                                           \
  };                                                                                                          \
  template <class Packet>                                                                                     \
  struct unpacket_traits {                                                                                    \
    using type = Packet;                                                                                      \
    static constexpr int size = 1;                                                                            \
  };                                                                                                          \
  template <>                                                                                                 \
  struct unpacket_traits<P> {                                                                                 \
    using type = float;                                                                                       \
    using integer_packet = PI;                                                                                \
    static constexpr int size = S;                                                                            \
  };                                                                                                          \
  template <>                                                                                                 \
  struct unpacket_traits<PI> {                                                                                \
    using type = int;                                                                                         \
    static constexpr int size = S;                                                                            \
  };                                                                                                          \
  template <class Packet>                                                                                     \
  Packet pset1(const typename unpacket_traits<Packet>::type& x);                                              \
  template <>                                                                                                 \
  inline __attribute__((always_inline)) P pset1<P>(const float& x) {                                          \
    return prefix##_set1_ps(x);                                                                               \
  }                                                                                                           \
  template <>                                                                                                 \
  inline __attribute__((always_inline)) PI pset1<PI>(const int& x) {                                          \
    return prefix##_set1_epi32(x);                                                                            \
  }                                                                                                           \
  template <class Packet>                                                                                     \
  inline __attribute__((always_inline)) Packet ploadu(const float* p) {                                       \
    return prefix##_loadu_ps(p);                                                                              \
  }                                                                                                           \
  inline __attribute__((always_inline)) void pstoreu(float* p, const P& x) { prefix##_storeu_ps(p, x); }      \
  inline __attribute__((always_inline)) float pfirst(const P& a) { return prefix##_cvtss_f32(a); }            \
  inline __attribute__((always_inline)) P padd(const P& a, const P& b) { return prefix##_add_ps(a, b); }      \
  inline __attribute__((always_inline)) P psub(const P& a, const P& b) { return prefix##_sub_ps(a, b); }      \
  inline __attribute__((always_inline)) P pmul(const P& a, const P& b) { return prefix##_mul_ps(a, b); }      \
  inline __attribute__((always_inline)) P pdiv(const P& a, const P& b) { return prefix##_div_ps(a, b); }      \
  /* a * b + c, fused */                                                                                      \
  inline __attribute__((always_inline)) P pmadd(const P& a, const P& b, const P& c) {                         \
    return prefix##_fmadd_ps(a, b, c);                                                                        \
  }                                                                                                           \
  inline __attribute__((always_inline)) PI padd(const PI& a, const PI& b) { return prefix##_add_epi32(a, b); } \
  template <class From, class To>                                                                             \
  To pcast(const From& a);                                                                                    \
  template <class To, class From>                                                                             \
  To preinterpret(const From& a);                                                                             \
  template <>                                                                                                 \
  inline __attribute__((always_inline)) P preinterpret<P, PI>(const PI& a) {                                  \
    return si_to_ps(a);                                                                                       \
  }                                                                                                           \
  template <class Packet>                                                                                     \
  Packet pexp(const Packet& x);

#if ATTN_STAMP_AVX2
ATTN_TARGET_BEGIN(ATTN_FEATURES_AVX2)
namespace attn {
namespace simd {
namespace avx2 {
ATTN_FLOAT_PACKET_SET(__m256, __m256i, 8, _mm256, _mm256_castsi256_ps)
inline __attribute__((always_inline)) __m256 pmax(const __m256& a, const __m256& b) { return _mm256_max_ps(b, a); }
template <>
inline __attribute__((always_inline)) __m256i pcast<__m256, __m256i>(const __m256& a) {
  return _mm256_cvttps_epi32(a);
}
template <int N>
inline __attribute__((always_inline)) __m256i plogical_shift_left(const __m256i& a) {
  return _mm256_slli_epi32(a, N);
}
inline __attribute__((always_inline)) __m256 pcmp_eq(const __m256& a, const __m256& b) {
  return _mm256_cmp_ps(a, b, _CMP_EQ_OQ);
}
inline __attribute__((always_inline)) __m256 pcmp_lt(const __m256& a, const __m256& b) {
  return _mm256_cmp_ps(a, b, _CMP_LT_OQ);
}
/// a where mask's lanes are all ones, else b.
inline __attribute__((always_inline)) __m256 pselect(const __m256& mask, const __m256& a, const __m256& b) {
  return _mm256_blendv_ps(b, a, mask);
}
}  // namespace avx2
}  // namespace simd
}  // namespace attn
ATTN_TARGET_END
#endif

#if ATTN_STAMP_AVX512
ATTN_TARGET_BEGIN(ATTN_FEATURES_AVX512)
namespace attn {
namespace simd {
namespace avx512 {
ATTN_FLOAT_PACKET_SET(__m512, __m512i, 16, _mm512, _mm512_castsi512_ps)
// The zero-masking forms with every lane kept are the plain instructions; the plain
// intrinsics pass _mm512_undefined_*(), which GCC 12 reports as used uninitialized.
inline __attribute__((always_inline)) __m512 pmax(const __m512& a, const __m512& b) {
  return _mm512_maskz_max_ps(__mmask16(-1), b, a);
}
template <>
inline __attribute__((always_inline)) __m512i pcast<__m512, __m512i>(const __m512& a) {
  return _mm512_maskz_cvttps_epi32(__mmask16(-1), a);
}
template <int N>
inline __attribute__((always_inline)) __m512i plogical_shift_left(const __m512i& a) {
  return _mm512_maskz_slli_epi32(__mmask16(-1), a, N);
}
// Comparisons give vectors, as Eigen's do (the compiler keeps them in mask registers where
// they only feed a select).
inline __attribute__((always_inline)) __m512 pcmp_eq(const __m512& a, const __m512& b) {
  return _mm512_castsi512_ps(_mm512_movm_epi32(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ)));
}
inline __attribute__((always_inline)) __m512 pcmp_lt(const __m512& a, const __m512& b) {
  return _mm512_castsi512_ps(_mm512_movm_epi32(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ)));
}
/// a where mask's lanes are all ones, else b.
inline __attribute__((always_inline)) __m512 pselect(const __m512& mask, const __m512& a, const __m512& b) {
  return _mm512_mask_blend_ps(_mm512_movepi32_mask(_mm512_castps_si512(mask)), b, a);
}
}  // namespace avx512
}  // namespace simd
}  // namespace attn
ATTN_TARGET_END
#endif

#undef ATTN_FLOAT_PACKET_SET

#if defined(__GNUC__) && !defined(__clang__)
_Pragma("GCC diagnostic pop")
#endif
