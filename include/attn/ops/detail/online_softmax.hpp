#pragma once
/// @file
/// @brief The online softmax toolkit every softmax in attn is built from: loading scaled
/// queries, a tile's max, exp-and-sum, the merge of a tile into a running max and sum (with
/// the accumulator's rescale factor), and the finalisation out = acc / sum. The tiled SDPA
/// kernel, the decode tile, the talking-heads kernel and the public softmax all call these,
/// and nothing else computes a softmax. Not public API.
///
/// The algorithm (FlashAttention-2's online softmax): per query a running max m, a sum l and
/// an accumulator acc (a weighted sum of value rows). For each tile of scores s_j:
///   m' = max(m, max_j s_j);   alpha = exp(m - m')   (0 while nothing was accumulated);
///   p_j = exp(s_j - m')       (exactly 0 where s_j = -inf);
///   l' = alpha l + sum_j p_j;  acc' = alpha acc + sum_j p_j v_j;
/// at the end out = acc / l. A one-shot softmax is one step from the empty state.
///
/// Two orientations: "lanes" steps hold one query per SIMD lane and walk a key-major tile
/// (element (key j, query lane) at s[j * stride + lane]); "row" steps hold one query's
/// keys contiguously and vectorise across them. Every multiply-add is an explicit packet
/// operation, so the rounding does not depend on the compiler's choices. Packet helpers are
/// always inlined and every loop over a tile is a function of its own (never inlined), so
/// the machine code of each step is the same in every translation unit.

#include <algorithm>
#include <cmath>
#include <limits>

#include <Eigen/Core>

#include "attn/core/heads_view.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/exp.hpp"
#include "attn/ops/detail/packets.hpp"

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

namespace baseline {
#include "attn/ops/detail/kernels/online_softmax.ipp"
}  // namespace baseline

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
