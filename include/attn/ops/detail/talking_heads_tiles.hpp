#pragma once
/// @file
/// @brief Vector steps of the talking-heads kernel on key-major tiles. Not public API.
///
/// A block of R query rows is processed for all heads at once. Every tile is key-major:
/// element (key j, query row r) is at [j * R + r], so the R rows of one key form a short
/// contiguous vector of R / P SIMD packets. Softmax reductions over the keys are
/// element-wise maxima and sums of those vectors; the head mixes are element-wise
/// multiply-adds across heads; q k^T and p v are register tiles (register_tile.hpp).

#include <algorithm>
#include <limits>

#include "attn/core/tensor.hpp"
#include "attn/ops/detail/online_softmax.hpp"
#include "attn/ops/detail/packets.hpp"

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

namespace baseline {
#include "attn/ops/detail/kernels/talking_heads_tiles.ipp"
}  // namespace baseline

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
