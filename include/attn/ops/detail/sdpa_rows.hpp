#pragma once
/// @file
/// @brief The tile kernel for a few queries (decoding: one new token per sequence, or a
/// short chunk): query-major, vectorised across the head dimension. Not public API.

#include <algorithm>
#include <cmath>
#include <limits>

#include <Eigen/Core>

#include "attn/core/heads_view.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/checks.hpp"
#include "attn/ops/detail/online_softmax.hpp"
#include "attn/ops/detail/packets.hpp"
#include "attn/ops/detail/tile.hpp"
#include "attn/ops/detail/work.hpp"

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

namespace baseline {
#include "attn/ops/detail/kernels/sdpa_rows.ipp"
}  // namespace baseline

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
