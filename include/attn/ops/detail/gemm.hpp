#pragma once
/// @file
/// @brief attn's GEMM for the projections: out = x W^T (+ bias) with W packed once into
/// the panel layout of the register-blocked micro-kernel, so a call packs only x. This
/// header: GemmOutput and the baseline path of the kernel text (kernels/gemm.ipp);
/// kernels.hpp has PackedWeight and the gemm that dispatches to a path. Not public API.
///
/// Blocking (BLIS's, with the names it uses): the product is cut into k-blocks of kKC
/// (so that a row panel of x, kMR x kKC, stays in L1), row blocks of row_block() rows
/// (x's packed block stays in L2) and column panels of kNR = kNV packets (a packed panel
/// of W, kKC x kNR, is streamed from L2). The micro-kernel keeps a kMR x kNR block of the
/// output in kMR * kNV registers: per k, kNV packet loads of W, kMR broadcasts of x and
/// kMR * kNV multiply-adds.
///
/// The 16-bit storage types (bfloat16, half) keep x and W in 16 bits and sum in float32:
/// their GEMM (kernels/gemm16.ipp) converts W's panels and x's rows to float32 tiles for the
/// float micro-kernel, or, on the avx512bf16 path for bfloat16, multiplies them as they are
/// with vdpbf16ps (gemm_bf16.hpp: W packed in k-pairs). Sums over several k-blocks are kept
/// in float32 between blocks, and every output is rounded once.
///
/// Work items are (row block, column block) pairs fixed by the problem's size; every
/// output element is one chain of multiply-adds over k in the same order whatever thread
/// computes it, so results are bit-identical for every thread count.

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "attn/core/heads_view.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/convert16.hpp"
#include "attn/ops/detail/packets.hpp"
#include "attn/ops/detail/register_tile.hpp"
#include "attn/ops/detail/work.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

/// @brief Where gemm writes output features [first, first + target.heads * target.head_dim)
/// of a packed weight: into a HeadsView whose (batch, length) enumerate the rows of x and
/// whose (head, column) the features. A (B*N, E) matrix is one head of E columns
/// (HeadsView::bnhd(data, B, N, 1, E, ld)); k and v for the attention kernels are
/// head-major (HeadsView::bhnd), or a KV cache's next positions.
template <class T>
struct GemmOutput {
  Index first = 0;       ///< the first output feature written
  HeadsView<T> target;  ///< where features first .. go

  Index count() const { return target.heads * target.head_dim; }
  /// Where feature first + j of row r goes.
  T* at(Index r, Index j) const {
    const HeadsView<T>& t = target;
    return t.data + (r / t.length) * t.batch_stride + (j / t.head_dim) * t.head_stride + (r % t.length) * t.row_stride +
           j % t.head_dim;
  }
  /// How many features from first + j on are contiguous in memory (to the end of j's head).
  Index run(Index j) const { return target.head_dim - j % target.head_dim; }
};

template <class T>
class PackedWeight;

/// @brief How a path packs a weight for its GEMM (PackedWeight): k-blocks of kc, panels of
/// nr features, and whether a panel's rows are k-pairs (the avx512bf16 micro-kernel's).
struct GemmLayout {
  Index nr = 1, kc = 1;
  bool pairs = false;
};

/// @brief Rows of x per GEMM work item: x's packed block, `row_bytes` per row, takes about a
/// quarter of the L2 cache (read from the machine; 1 MiB assumed where it cannot be); a
/// multiple of mr, from 4 mr to 64 mr.
inline Index gemm_row_block(Index row_bytes, Index mr) {
  static const Index l2 = [] {
    long bytes = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return bytes > 0 ? Index(bytes) : Index(1) << 20;
  }();
  return std::clamp<Index>(l2 / 4 / row_bytes / mr * mr, 4 * mr, 64 * mr);
}

namespace baseline {
#include "attn/ops/detail/kernels/gemm.ipp"
#include "attn/ops/detail/kernels/gemm16.ipp"
}  // namespace baseline

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
