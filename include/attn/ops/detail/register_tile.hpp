#pragma once
/// @file
/// @brief The register tile: sums of outer products of scalars (broadcast) and rows of SIMD
/// packets, accumulated in registers. The projections' GEMM micro-kernel (gemm.hpp), the
/// tiled SDPA kernel (q k^T and p v) and the talking-heads kernel all run their products on
/// register_tile, with one register-pinning policy (pins_row_packets). This header: the
/// baseline path of the text, kernels/register_tile.ipp (kernels.hpp compiles it for the
/// other paths). Not public API.

#include <algorithm>

#include "attn/core/tensor.hpp"
#include "attn/ops/detail/packets.hpp"

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

namespace baseline {
#include "attn/ops/detail/kernels/register_tile.ipp"
}  // namespace baseline

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
