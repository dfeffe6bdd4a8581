#pragma once
/// @file
/// @brief The one exp of attn's softmaxes: exp of a non-positive argument (x - row max),
/// exactly 0 at -inf. Every softmax in attn goes through online_softmax.hpp, which takes its
/// exp from here. Not public API.
///
/// Accuracy contract (tests/test_kernels.cpp, VectorisedExpAccuracy, checks it against the
/// correctly rounded exp wherever the result is a normal number): float within 1 ulp,
/// double within 2 ulp, for x <= 0; exp(-inf) = 0 exactly, exp(0) = 1 exactly, NaN gives
/// NaN. Below the normal range the result is 0: for every x < -87.7 in float and
/// x < -708.4 in double (std::exp would give subnormal numbers down to -104 and -745).

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include "attn/core/tensor.hpp"
#include "attn/ops/detail/packets.hpp"

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

namespace baseline {
#include "attn/ops/detail/kernels/exp.ipp"
}  // namespace baseline

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
