#pragma once
/// @file
/// @brief The kernel paths and the run-time choice between them (attn/core/isa.hpp): the
/// kernel texts in kernels/*.ipp compile once in attn::detail on Eigen's packets for the
/// build's own instruction set (the baseline path), and once more in attn::detail::avx2 and
/// attn::detail::avx512, inside target regions, on those paths' packet sets (simd.hpp),
/// where the build lacks them. with_kernels hands a caller the entry points (Kernels) of a
/// path. Every float kernel dispatches here: the projections' GEMM (a weight is packed for
/// the path chosen when it is packed and always runs on it), the tiled attention kernel and
/// decode tile (sdpa_tiled), the talking-heads kernel (talking_heads) and the softmax rows
/// (softmax_rows). Not public API.

#include <algorithm>
#include <type_traits>

#include "attn/core/isa.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/checks.hpp"
#include "attn/ops/detail/exp.hpp"
#include "attn/ops/detail/gemm.hpp"
#include "attn/ops/detail/gemm_bf16.hpp"
#include "attn/ops/detail/online_softmax.hpp"
#include "attn/ops/detail/packets.hpp"
#include "attn/ops/detail/register_tile.hpp"
#include "attn/ops/detail/sdpa_bf16.hpp"
#include "attn/ops/detail/sdpa_rows.hpp"
#include "attn/ops/detail/sdpa_tiled.hpp"
#include "attn/ops/detail/simd.hpp"
#include "attn/ops/detail/talking_heads_kernel.hpp"
#include "attn/ops/detail/talking_heads_tiles.hpp"
#include "attn/ops/detail/tile.hpp"
#include "attn/ops/detail/work.hpp"

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {
namespace baseline {
#include "attn/ops/detail/kernels/entry_points.ipp"
}  // namespace baseline
}  // namespace detail
}  // namespace attn

#if ATTN_STAMP_AVX2
#define ATTN_PASS avx2
#define ATTN_PASS_REGISTERS 16
ATTN_TARGET_BEGIN(ATTN_FEATURES_AVX2)
#include "attn/ops/detail/kernels/pass.ipp"
ATTN_TARGET_END
#undef ATTN_PASS
#undef ATTN_PASS_REGISTERS
#endif

#if ATTN_STAMP_AVX512
#define ATTN_PASS avx512
#define ATTN_PASS_REGISTERS 32
ATTN_TARGET_BEGIN(ATTN_FEATURES_AVX512)
#include "attn/ops/detail/kernels/pass.ipp"
ATTN_TARGET_END
#undef ATTN_PASS
#undef ATTN_PASS_REGISTERS
#endif

namespace attn {
namespace detail {

/// @brief f(kernels) with the entry points (Kernels) of path isa for T's kernels, or of the
/// baseline path where this build has no such path or T is float64 (the wider paths' packet
/// sets are float's; the 16-bit types run float's kernels). avx512bf16 runs avx512's.
template <class T, class F>
decltype(auto) with_kernels(KernelIsa isa, F&& f) {
  if constexpr (!std::is_same<T, double>::value) {
#if ATTN_STAMP_AVX512
    if (isa == KernelIsa::avx512 || isa == KernelIsa::avx512bf16) return f(avx512::Kernels{});
#endif
#if ATTN_STAMP_AVX2
    if (isa == KernelIsa::avx2) return f(avx2::Kernels{});
#endif
  }
  (void)isa;
  return f(baseline::Kernels{});
}

/// @brief A weight W (n, k) in PyTorch's Linear layout (out_features, in_features), and
/// its bias, packed for gemm() on the path of T's kernels when it is packed: for each
/// k-block of kc, for each panel of nr output features, the block's rows of W^T, nr values
/// each, or on avx512bf16 (bfloat16) its k-pairs: pair j of feature c at (j * nr + c) * 2
/// (features past n and a last odd k are zero; kc and nr are the path's GemmLayout).
template <class T>
class PackedWeight {
 public:
  PackedWeight() = default;
  /// Packs w (n rows of k values, rows `ld` apart) and bias (n values, or null).
  PackedWeight(const T* w, Index n, Index k, Index ld, const T* bias = nullptr) { pack(w, n, k, ld, bias); }

  /// (Re)packs w (n rows of k values, rows `ld` apart) and bias (n values, or null).
  void pack(const T* w, Index n, Index k, Index ld, const T* bias = nullptr) {
    isa_ = kernel_isa_for<T>();
    layout_ = with_kernels<T>(isa_, [&](auto kernels) {
      return decltype(kernels)::template gemm_layout<T>(isa_ == KernelIsa::avx512bf16);
    });
    const Index nr = layout_.nr;
    n_ = n, k_ = k, panels_ = (n + nr - 1) / nr;
    data_.resize(panels_ * nr * block_depth(k));
    for (Index k0 = 0; k0 < k; k0 += layout_.kc) {
      const Index kc = std::min(layout_.kc, k - k0);
      for (Index p = 0; p < panels_; ++p) {
        T* dst = data_.data() + k0 * panels_ * nr + p * block_depth(kc) * nr;
        std::fill(dst, dst + block_depth(kc) * nr, T(0));
        for (Index c = 0; c < nr && p * nr + c < n; ++c)
          for (Index kk = 0; kk < kc; ++kk) dst[at(kk, c)] = w[(p * nr + c) * ld + k0 + kk];
      }
    }
    bias_.setZero(bias ? panels_ * nr : 0);
    if (bias) std::copy(bias, bias + n, bias_.data());
  }

  KernelIsa isa() const { return isa_; }  ///< the path it is packed for
  Index rows() const { return n_; }       ///< n: output features
  Index cols() const { return k_; }       ///< k: input features
  Index panels() const { return panels_; }
  /// Panel p of the k-block starting at k0 (kc x nr values, or its k-pairs).
  const T* panel(Index k0, Index p) const {
    return data_.data() + k0 * panels_ * layout_.nr + p * block_depth(std::min(layout_.kc, k_ - k0)) * layout_.nr;
  }
  /// The bias of panel p's features (nr values), or null without bias.
  const T* bias(Index p) const { return bias_.size() ? bias_.data() + p * layout_.nr : nullptr; }

 private:
  /// Rows of a k-block of kc in the packed panels (k-pairs round up).
  Index block_depth(Index kc) const { return layout_.pairs ? (kc + 1) / 2 * 2 : kc; }
  /// Where W[c][k0 + kk] goes in its block's panel.
  Index at(Index kk, Index c) const {
    return layout_.pairs ? ((kk / 2) * layout_.nr + c) * 2 + kk % 2 : kk * layout_.nr + c;
  }

  Vector<T> data_, bias_;
  KernelIsa isa_ = KernelIsa::baseline;
  GemmLayout layout_;
  Index n_ = 0, k_ = 0, panels_ = 0;
};

/// @brief For every output o: rows [0, m) of x (m, k) W^T + bias, features [o.first,
/// o.first + o.count), written where o says (outputs must not share features); x rows ldx
/// apart; on the path w is packed for (kernels/gemm.ipp: gemm_run).
template <class T>
void gemm(const T* x, Index m, Index ldx, const PackedWeight<T>& w, const GemmOutput<T>* outputs, Index n_outputs) {
  with_kernels<T>(w.isa(), [&](auto kernels) { decltype(kernels)::gemm(x, m, ldx, w, outputs, n_outputs); });
}

/// gemm into one plain output: c (m, count) = x W[first : first + count]^T + bias[...] (all
/// features by default), c rows ldc apart.
template <class T>
void gemm(const T* x, Index m, Index ldx, const PackedWeight<T>& w, T* c, Index ldc, Index first = 0,
          Index count = -1) {
  const Index n = count < 0 ? w.rows() - first : count;
  const GemmOutput<T> out{first, HeadsView<T>::bnhd(c, 1, m, 1, n, ldc)};
  gemm(x, m, ldx, w, &out, 1);
}

/// @brief The tiled attention kernel (kernels/sdpa_tiled.ipp: SdpaTiles, and SdpaRows for a
/// few queries) on the path of T's kernels.
template <class T, class S>
void sdpa_tiled(const AttentionCall<T, S>& call) {
  const KernelIsa isa = kernel_isa_for<T>();
  with_kernels<T>(isa, [&](auto kernels) { decltype(kernels)::sdpa_tiled(call, isa == KernelIsa::avx512bf16); });
}

/// @brief The talking-heads kernel (kernels/talking_heads.ipp) on the path of T's kernels.
template <class T>
void talking_heads(const TalkingHeadsCall<T>& c, TalkingHeadsScheme scheme) {
  with_kernels<T>(kernel_isa_for<T>(), [&](auto kernels) { decltype(kernels)::talking_heads(c, scheme); });
}

/// The end of a plain softmax row: its sum as it is.
struct KeepSum {
  template <class C>
  C operator()(Index, C, C l) const {
    return l;
  }
};

/// @brief Softmax of `rows` rows of n contiguous values (rows `stride` apart) in place, on the
/// path of T's kernels (online_softmax's softmax_row_inplace); row r's sum goes through
/// end(r, max, sum) before the division (AttentionCall::end_row: sinks and log-sum-exp).
template <class T, class End = KeepSum>
void softmax_rows(T* x, Index rows, Index n, Index stride, const End& end = {}) {
  with_kernels<T>(kernel_isa_for<T>(),
                  [&](auto kernels) { decltype(kernels)::softmax_rows(x, rows, n, stride, end); });
}

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
