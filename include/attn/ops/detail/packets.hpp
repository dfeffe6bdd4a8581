#pragma once
/// @file
/// @brief Eigen's SIMD packets as attn's kernels use them: explicit vectors at any compiler
/// setting, so that the vectorisation does not depend on the auto-vectoriser. Not public API.

#include <Eigen/Core>

static_assert(EIGEN_VERSION_AT_LEAST(3, 4, 0), "attn needs Eigen >= 3.4 (its packet math and PropagateNaN)");

// Eigen's packet types (__m512 ...) carry attributes that GCC warns about when they are
// template arguments, as Eigen's own packet functions take them: code on packets sits
// between ATTN_PACKET_CODE_BEGIN and ATTN_PACKET_CODE_END.
#if defined(__GNUC__) && !defined(__clang__)
#define ATTN_PACKET_CODE_BEGIN \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wignored-attributes\"")
#define ATTN_PACKET_CODE_END _Pragma("GCC diagnostic pop")
#else
#define ATTN_PACKET_CODE_BEGIN
#define ATTN_PACKET_CODE_END
#endif

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

/// Eigen's packet functions (pload, pmadd, pexp ...).
namespace ei = Eigen::internal;

/// The widest SIMD packet of T Eigen uses on this target (T itself without SIMD).
template <class T>
using Packet = typename ei::packet_traits<T>::type;
/// Elements of Packet<T>.
template <class T>
constexpr int kPacketSize = ei::unpacket_traits<Packet<T>>::size;

/// SIMD registers of the target (AVX-512 has 32, SSE and AVX 16).
#if defined(__AVX512F__)
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif

/// @brief Whether the SDPA tile's micro-kernel pins a row of b's packets in registers
/// (keep_in_register) instead of letting the compiler fold each load into its multiply-adds.
/// Measured on the two machine kinds attn is tuned on: AMD Zen 4 (512-bit operations on
/// 256-bit units) gains from pinning; Intel Sapphire Rapids (full-width 512-bit units) loses
/// 16% with it (the core at head_dim 64, N = 1024: 7.8 ms without, 9.2 ms with). Of the two,
/// only Sapphire Rapids has AVX512-FP16, which is how a -march=native build tells them apart.
#if defined(__AVX512FP16__)
constexpr bool kPinRowPackets = false;
#else
constexpr bool kPinRowPackets = true;
#endif

/// @brief Keeps packet p in a register: a micro-kernel loads a row of packets once and uses
/// each packet several times; without this, GCC folds the load into every multiply-add that
/// uses it, which makes the loop load-bound (one 512-bit load per FMA on AVX-512).
template <class P>
EIGEN_ALWAYS_INLINE void keep_in_register(P& p) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
  if constexpr (sizeof(P) >= 16) __asm__("" : "+v"(p));
#else
  (void)p;
#endif
}

/// @brief Asks for the cache line at p ahead of its use (a hint; no effect where the
/// compiler has no prefetch builtin). For streams the hardware prefetcher follows too
/// slowly: rows of a KV cache read once per decode step.
EIGEN_ALWAYS_INLINE void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
