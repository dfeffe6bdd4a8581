#pragma once
/// @file
/// @brief The tiled attention kernel: FlashAttention-2's online softmax on SIMD packets,
/// a (query block x key tile) tile of scores at a time, no (L, S) buffer. Not public API.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include <Eigen/Core>

#include "attn/core/heads_view.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/checks.hpp"
#include "attn/ops/detail/online_softmax.hpp"
#include "attn/ops/detail/register_tile.hpp"
#include "attn/ops/detail/sdpa_bf16.hpp"
#include "attn/ops/detail/sdpa_rows.hpp"
#include "attn/ops/detail/tile.hpp"
#include "attn/ops/detail/work.hpp"

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

namespace baseline {
#include "attn/ops/detail/kernels/sdpa_tiled.ipp"
}  // namespace baseline

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
