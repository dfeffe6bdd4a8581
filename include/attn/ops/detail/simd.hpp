#pragma once
/// @file
/// @brief The packet operations of the kernel paths compiled for wider instruction sets
/// than the build's own (attn/core/isa.hpp): AVX2 and AVX-512 float packets with the names
/// and meanings of Eigen's (Eigen::internal::pset1, ploadu, pmadd ...), so that one kernel
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

/// One float packet set: packet type P of S lanes; the functions Eigen's kernels call.
#define ATTN_FLOAT_PACKET_SET(P, S, prefix)                                                                   \
  template <class T>                                                                                          \
  struct packet_traits {                                                                                      \
    using type = T; /* types without a packet of this set: scalars */                                        \
  };                                                                                                          \
  template <>                                                                                                 \
  struct packet_traits<float> {                                                                               \
    using type = P;                                                                                           \
  };                                                                                                          \
  template <class Packet>                                                                                     \
  struct unpacket_traits;                                                                                     \
  template <>                                                                                                 \
  struct unpacket_traits<P> {                                                                                 \
    using type = float;                                                                                       \
    static constexpr int size = S;                                                                            \
  };                                                                                                          \
  template <class Packet>                                                                                     \
  inline __attribute__((always_inline)) Packet pset1(float x) {                                               \
    return prefix##_set1_ps(x);                                                                               \
  }                                                                                                           \
  template <class Packet>                                                                                     \
  inline __attribute__((always_inline)) Packet ploadu(const float* p) {                                       \
    return prefix##_loadu_ps(p);                                                                              \
  }                                                                                                           \
  inline __attribute__((always_inline)) void pstoreu(float* p, const P& x) { prefix##_storeu_ps(p, x); }      \
  inline __attribute__((always_inline)) P padd(const P& a, const P& b) { return prefix##_add_ps(a, b); }      \
  /* a * b + c, fused */                                                                                      \
  inline __attribute__((always_inline)) P pmadd(const P& a, const P& b, const P& c) {                         \
    return prefix##_fmadd_ps(a, b, c);                                                                        \
  }

#if ATTN_STAMP_AVX2
ATTN_TARGET_BEGIN(ATTN_FEATURES_AVX2)
namespace attn {
namespace simd {
namespace avx2 {
ATTN_FLOAT_PACKET_SET(__m256, 8, _mm256)
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
ATTN_FLOAT_PACKET_SET(__m512, 16, _mm512)
}  // namespace avx512
}  // namespace simd
}  // namespace attn
ATTN_TARGET_END
#endif

#undef ATTN_FLOAT_PACKET_SET

#if defined(__GNUC__) && !defined(__clang__)
_Pragma("GCC diagnostic pop")
#endif
