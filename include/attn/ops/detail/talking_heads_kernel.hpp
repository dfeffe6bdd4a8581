#pragma once
/// @file
/// @brief The talking-heads attention kernel: blocks of query rows with all heads, two
/// sweeps over the key tiles (exact normalisers, then the weights times v). The vector
/// steps are in talking_heads_tiles.hpp. Not public API.

#include <algorithm>
#include <limits>

#include "attn/core/tensor.hpp"
#include "attn/ops/detail/checks.hpp"
#include "attn/ops/detail/online_softmax.hpp"
#include "attn/ops/detail/register_tile.hpp"
#include "attn/ops/detail/talking_heads_tiles.hpp"
#include "attn/ops/detail/tile.hpp"
#include "attn/ops/detail/work.hpp"

namespace attn {
namespace detail {

/// How a block's softmax normalisers are made exact (the results are bit-identical).
enum class TalkingHeadsScheme {
  kAuto,      ///< kRowBlock while the numerators of a block take <= 8 MiB, else kTwoPass
  kRowBlock,  ///< keep the numerators of all keys (H * S * R elements per thread)
  kTwoPass,   ///< recompute them in pass 2 (logits, proj_l, masks and exp twice)
};

/// The head mixes' parameters as the kernel reads them: (H, H) weights row-major (PyTorch's
/// Linear layout) and (H) biases.
template <class T>
struct HeadMixes {
  const T *logits_weight, *logits_bias;    ///< proj_l: before the softmax
  const T *weights_weight, *weights_bias;  ///< proj_w: after it
};

/// Everything one talking-heads call shares between its work items (read-only).
template <class T>
struct TalkingHeadsCall {
  const AttentionCall<T>& call;
  HeadMixes<T> mix;
  T* weights = nullptr;          ///< (B, H, L, S) output of the weights, or null
  Index key_tile = 0;            ///< keys per tile: a tile of all heads stays in L1
  bool keep_numerators = false;  ///< row-block scheme (else two passes over the keys)

  Index key_tiles() const { return (call.k.length + key_tile - 1) / key_tile; }
};

namespace baseline {
#include "attn/ops/detail/kernels/talking_heads.ipp"
}  // namespace baseline

}  // namespace detail
}  // namespace attn
