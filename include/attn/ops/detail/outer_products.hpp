#pragma once
/// @file
/// @brief The register-tile micro-kernel of the attention tiles: a sum of outer products
/// of scalars (broadcast) and rows of SIMD packets. The tiled SDPA kernel (q k^T and p v)
/// and the talking-heads kernel (the same two products, per head) both run on it. Not
/// public API.

#include <algorithm>

#include "attn/core/tensor.hpp"
#include "attn/ops/detail/packets.hpp"

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

/// Rows of a register block V packets wide whose accumulators fill half of the vector
/// registers (the other half holds the loaded row and the broadcasts).
template <class T, int V>
constexpr int register_rows() {
  return std::max(1, kVectorRegisters / 2 / V);
}

/// The default of outer_product_block's `seen`: nothing.
struct NoSeen {
  template <class P>
  void operator()(int, const P&) const {}
};

/// @brief c[i][x] (+)= sum_{m < n} a[i * a_row + m * a_step] * b[m][x] for I rows i and the
/// V * kPacketSize<T> columns x, accumulated in I x V registers.
///
/// b[m] starts at b + m * b_stride and c[i] at c + i * c_stride. Every element is one chain
/// of multiply-adds in the order of m, whatever I and V: the results do not depend on the
/// blocking. With Accumulate, c's values are the starting sums; without, 0. `seen(v, p)`
/// is called with every packet p stored in column packet v (the SDPA tile takes its
/// running max there, without a second pass over c). Always inlined: with short sums (head
/// dimension 8) a call costs as much as the block.
template <class T, int I, int V, bool Accumulate, class Seen = NoSeen>
EIGEN_ALWAYS_INLINE void outer_product_block(const T* a, Index a_row, Index a_step, const T* b, Index b_stride, Index n, T* c,
                         Index c_stride, Seen&& seen = {}) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>;
  P acc[I][V];
  for (int i = 0; i < I; ++i)
    for (int v = 0; v < V; ++v) acc[i][v] = Accumulate ? ei::ploadu<P>(c + i * c_stride + v * S) : ei::pset1<P>(T(0));
  for (Index m = 0; m < n; ++m) {
    P bv[V];
    for (int v = 0; v < V; ++v) {
      bv[v] = ei::ploadu<P>(b + m * b_stride + v * S);
      if (kPinRowPackets && I > 1 && V >= 4) keep_in_register(bv[v]);  // measured: V = 2 (talking heads) is better without
    }
    for (int i = 0; i < I; ++i) {
      const P av = ei::pset1<P>(a[i * a_row + m * a_step]);
      for (int v = 0; v < V; ++v) acc[i][v] = ei::pmadd(av, bv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < I; ++i)
    for (int v = 0; v < V; ++v) {
      ei::pstoreu(c + i * c_stride + v * S, acc[i][v]);
      seen(v, acc[i][v]);
    }
}

/// outer_product_block for `rows` rows: blocks of I rows, then single rows.
template <class T, int I, int V, bool Accumulate, class Seen = NoSeen>
void outer_products(const T* a, Index a_row, Index a_step, Index rows, const T* b, Index b_stride, Index n, T* c,
                    Index c_stride, Seen&& seen = {}) {
  Index i = 0;
  for (; i + I <= rows; i += I)
    outer_product_block<T, I, V, Accumulate>(a + i * a_row, a_row, a_step, b, b_stride, n, c + i * c_stride, c_stride,
                                             seen);
  for (; i < rows; ++i)
    outer_product_block<T, 1, V, Accumulate>(a + i * a_row, a_row, a_step, b, b_stride, n, c + i * c_stride, c_stride,
                                             seen);
}

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
