#pragma once
/// @file
/// @brief Eigen's SIMD packets as attn's kernels use them: explicit vectors at any compiler
/// setting, so that the vectorisation does not depend on the auto-vectoriser. Not public API.

#include <Eigen/Core>

#include "attn/core/tensor.hpp"
#include "attn/ops/detail/convert16.hpp"

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

/// Before a loop over a register tile's rows or packets (a trip count fixed at compile
/// time): unrolled completely at -O2 too, so its accumulators stay in registers (GCC
/// unrolls such loops by itself only at -O3).
#if defined(__GNUC__) || defined(__clang__)
#define ATTN_UNROLL _Pragma("GCC unroll 32")
#else
#define ATTN_UNROLL
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

/// @brief The baseline path: the kernel texts (kernels/*.ipp) compiled on the packets above.
/// (A namespace of its own, as the other paths' attn::detail::avx2 ..., so that argument-
/// dependent lookup from attn::detail's types never finds two paths' functions.)
namespace baseline {
namespace cv = convert16::build;
#include "attn/ops/detail/kernels/packets.ipp"
}  // namespace baseline
using namespace baseline;

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
