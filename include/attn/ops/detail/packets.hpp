#pragma once
/// @file
/// @brief Eigen's SIMD packets as attn's kernels use them: explicit vectors at any compiler
/// setting, so that the vectorisation does not depend on the auto-vectoriser. Not public API.

#include <Eigen/Core>

#include "attn/core/tensor.hpp"

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

/// Marks a lambda always inlined (after its parameter list), as EIGEN_ALWAYS_INLINE a function.
#if defined(__GNUC__) || defined(__clang__)
#define ATTN_INLINE_LAMBDA __attribute__((always_inline))
#else
#define ATTN_INLINE_LAMBDA
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

/// @brief Whether a register tile pins its row of b's packets in registers (keep_in_register)
/// instead of letting the compiler fold each load into its multiply-adds. Measured on the two
/// machine kinds attn is tuned on: AMD Zen 4 (512-bit operations on 256-bit units) gains from
/// pinning; Intel Sapphire Rapids (full-width 512-bit units) loses 16% with it (the core at
/// head_dim 64, N = 1024: 7.8 ms without, 9.2 ms with). Of the two, only Sapphire Rapids has
/// AVX512-FP16, which is how a -march=native build tells them apart. Pinning changes register
/// allocation only, never a result; -DATTN_PIN_ROW_PACKETS=0 or 1 overrides the choice (the
/// test stages build both on whichever machine they run on).
#if defined(ATTN_PIN_ROW_PACKETS)
constexpr bool kPinRowPackets = ATTN_PIN_ROW_PACKETS != 0;
#elif defined(__AVX512FP16__)
constexpr bool kPinRowPackets = false;
#else
constexpr bool kPinRowPackets = true;
#endif

/// @brief The one register-pinning policy of the register tiles (register_tile.hpp): a tile of
/// I rows and V packets pins its loaded row where several rows reuse a wide row and the
/// accumulators leave room for it (at most half the registers). Measured on Zen 5: the
/// attention tiles (4 x 4) gain; the GEMM's 6 x 4 tile is 2.5x slower pinned (spills); V = 2
/// (the talking-heads tiles) is better without.
template <int I, int V>
constexpr bool pins_row_packets() {
  return kPinRowPackets && I > 1 && V >= 4 && I * V <= kVectorRegisters / 2;
}

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

/// @brief The first n (< kPacketSize<T>) elements at p as a packet whose other lanes are 0: a
/// row's tail goes through the same packet operations as its full packets, so no element is
/// computed by scalar code whose rounding (fused or not) the compiler would choose.
template <class T>
EIGEN_ALWAYS_INLINE Packet<T> load_partial(const T* p, Index n) {
  T lanes[kPacketSize<T>] = {};
  for (Index i = 0; i < n; ++i) lanes[i] = p[i];
  return ei::ploadu<Packet<T>>(lanes);
}

/// Stores the first n (< kPacketSize<T>) lanes of x at p.
template <class T>
EIGEN_ALWAYS_INLINE void store_partial(T* p, const Packet<T>& x, Index n) {
  T lanes[kPacketSize<T>];
  ei::pstoreu(lanes, x);
  for (Index i = 0; i < n; ++i) p[i] = lanes[i];
}

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
