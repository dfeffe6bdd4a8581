#pragma once
/// @file
/// @brief attn's GEMM for the projections: out = x W^T (+ bias) with W packed once into
/// the panel layout of the register-blocked micro-kernel, so a call packs only x. Not
/// public API.
///
/// Blocking (BLIS's, with the names it uses): the product is cut into k-blocks of kKC
/// (so that a row panel of x, kMR x kKC, stays in L1), row blocks of row_block() rows
/// (x's packed block stays in L2) and column panels of kNR = kNV packets (a packed panel
/// of W, kKC x kNR, is streamed from L2). The micro-kernel keeps a kMR x kNR block of the
/// output in kMR * kNV registers: per k, kNV packet loads of W, kMR broadcasts of x and
/// kMR * kNV multiply-adds.
///
/// Work items are (row block, column block) pairs fixed by the problem's size; every
/// output element is one chain of multiply-adds over k in the same order whatever thread
/// computes it, so results are bit-identical for every thread count.

#include <algorithm>
#include <cstddef>

#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/packets.hpp"
#include "attn/ops/detail/work.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

ATTN_PACKET_CODE_BEGIN

namespace attn {
namespace detail {

/// @brief Register and cache blocking of the GEMM for T on the target ISA.
template <class T>
struct GemmBlocking {
  static constexpr int kMR = 6;                                  ///< rows of a register block
  static constexpr int kNV = kVectorRegisters == 32 ? 4 : 2;     ///< packets of a register block's row
  static constexpr Index kNR = kNV * kPacketSize<T>;             ///< columns of a panel
  static constexpr Index kKC = 2048 / Index(sizeof(T));          ///< depth of a k-block: a kMR x kKC panel of x is 12 KiB

  /// Rows of x per work item: x's packed (rows, kKC) block takes about a quarter of the
  /// L2 cache (read from the machine; 1 MiB assumed where it cannot be), a multiple of kMR.
  static Index row_block() {
    static const Index rows = [] {
      long l2 = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
      l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
      if (l2 <= 0) l2 = 1 << 20;
      const Index r = Index(l2) / 4 / (kKC * Index(sizeof(T)));
      return std::clamp<Index>(r / kMR * kMR, 4 * kMR, 64 * kMR);
    }();
    return rows;
  }
};

/// @brief A weight W (n, k) in PyTorch's Linear layout (out_features, in_features), and
/// its bias, packed for gemm(): for each k-block, for each panel of kNR output features,
/// the block's rows of W^T, kNR values each (features past n are zero).
template <class T>
class PackedWeight {
 public:
  using B = GemmBlocking<T>;

  PackedWeight() = default;
  /// Packs w (n rows of k values, rows `ld` apart) and bias (n values, or null).
  PackedWeight(const T* w, Index n, Index k, Index ld, const T* bias = nullptr) { pack(w, n, k, ld, bias); }

  /// (Re)packs w (n rows of k values, rows `ld` apart) and bias (n values, or null).
  void pack(const T* w, Index n, Index k, Index ld, const T* bias = nullptr) {
    n_ = n, k_ = k, panels_ = (n + B::kNR - 1) / B::kNR;
    data_.resize(panels_ * B::kNR * k);
    for (Index k0 = 0; k0 < k; k0 += B::kKC) {
      const Index kc = std::min(B::kKC, k - k0);
      for (Index p = 0; p < panels_; ++p) {
        T* dst = data_.data() + k0 * panels_ * B::kNR + p * kc * B::kNR;
        for (Index c = 0; c < B::kNR; ++c) {
          const Index col = p * B::kNR + c;
          for (Index kk = 0; kk < kc; ++kk) dst[kk * B::kNR + c] = col < n ? w[col * ld + k0 + kk] : T(0);
        }
      }
    }
    bias_.setZero(bias ? panels_ * B::kNR : 0);
    if (bias) std::copy(bias, bias + n, bias_.data());
  }

  Index rows() const { return n_; }     ///< n: output features
  Index cols() const { return k_; }     ///< k: input features
  Index panels() const { return panels_; }
  /// Panel p of the k-block starting at k0 (kc x kNR values, row-major).
  const T* panel(Index k0, Index p) const {
    return data_.data() + k0 * panels_ * B::kNR + p * std::min(B::kKC, k_ - k0) * B::kNR;
  }
  /// The bias of panel p's features (kNR values), or null without bias.
  const T* bias(Index p) const { return bias_.size() ? bias_.data() + p * B::kNR : nullptr; }

 private:
  Vector<T> data_, bias_;
  Index n_ = 0, k_ = 0, panels_ = 0;
};

/// Columns [lo, hi) of a panel's kNR, and the output column the first of them goes to.
struct PanelColumns {
  Index lo, hi, out;
};

/// @brief The micro-kernel: out (+)= a_panel^T b_panel over kc for an MR x kNR block, of
/// which rows [0, rows) and panel columns [cols.lo, cols.hi) are kept, written to c (row i,
/// column cols.out + j - cols.lo, rows ldc apart). a is a packed panel of x (a[k * MR + i]),
/// b a packed panel of W (b[k * kNR + j]). With `accumulate` c's values are the starting
/// sums; `bias` (kNR values), if given, is added at the end.
template <class T, int MR>
void gemm_micro(const T* a, const T* b, Index kc, T* c, Index ldc, Index rows, PanelColumns cols, bool accumulate,
                const T* bias) {
  using P = Packet<T>;
  using BL = GemmBlocking<T>;
  constexpr int S = kPacketSize<T>, NV = BL::kNV;
  P acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = ei::pset1<P>(T(0));
  for (Index k = 0; k < kc; ++k) {
    P bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = ei::ploadu<P>(b + k * BL::kNR + v * S);
    for (int i = 0; i < MR; ++i) {
      const P av = ei::pset1<P>(a[k * MR + i]);
      for (int v = 0; v < NV; ++v) acc[i][v] = ei::pmadd(av, bv[v], acc[i][v]);
    }
  }
  // A block cut by the edge of c goes through a full-size tile.
  const bool full = rows == MR && cols.lo == 0 && cols.hi == BL::kNR;
  T tile[MR * BL::kNR];
  T* out = full ? c + cols.out : tile;
  const Index ld = full ? ldc : BL::kNR, n = cols.hi - cols.lo;
  if (!full) {
    std::fill(tile, tile + MR * BL::kNR, T(0));
    if (accumulate)
      for (Index i = 0; i < rows; ++i) std::copy(c + i * ldc + cols.out, c + i * ldc + cols.out + n, tile + i * BL::kNR + cols.lo);
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      P r = accumulate ? ei::padd(ei::ploadu<P>(out + i * ld + v * S), acc[i][v]) : acc[i][v];
      if (bias) r = ei::padd(r, ei::ploadu<P>(bias + v * S));
      ei::pstoreu(out + i * ld + v * S, r);
    }
  if (!full)
    for (Index i = 0; i < rows; ++i)
      std::copy(tile + i * BL::kNR + cols.lo, tile + i * BL::kNR + cols.hi, c + i * ldc + cols.out);
}

/// Packs rows [0, rows) x columns [0, kc) of x (rows ldx apart) into panels of kMR rows,
/// k-major (a[p * kMR * kc + k * kMR + i]), zero rows past the end.
template <class T>
void gemm_pack_rows(const T* x, Index rows, Index kc, Index ldx, T* a) {
  constexpr int MR = GemmBlocking<T>::kMR;
  for (Index ip = 0; ip < rows; ip += MR) {
    T* dst = a + ip * kc;
    for (int r = 0; r < MR; ++r) {
      if (ip + r < rows) {
        const T* src = x + (ip + r) * ldx;
        for (Index k = 0; k < kc; ++k) dst[k * MR + r] = src[k];
      } else {
        for (Index k = 0; k < kc; ++k) dst[k * MR + r] = T(0);
      }
    }
  }
}

/// @brief c (m, count) = x (m, k) W[first : first + count]^T + bias[first : first + count]:
/// output features [first, first + count) of the packed W (all of them by default); x rows
/// ldx apart, c rows ldc apart.
template <class T>
void gemm(const T* x, Index m, Index ldx, const PackedWeight<T>& w, T* c, Index ldc, Index first = 0,
          Index count = -1) {
  using BL = GemmBlocking<T>;
  const Index k = w.cols(), n = count < 0 ? w.rows() - first : count;
  if (m == 0 || n == 0) return;
  const Index p_first = first / BL::kNR, panels = (first + n + BL::kNR - 1) / BL::kNR - p_first;
  const auto columns = [&](Index p) {  // the part of panel p that is output
    const Index f0 = std::max(first, p * BL::kNR), f1 = std::min(first + n, (p + 1) * BL::kNR);
    return PanelColumns{f0 - p * BL::kNR, f1 - p * BL::kNR, f0 - first};
  };
  if (k == 0) {  // an empty sum: the bias (or 0)
    for (Index i = 0; i < m; ++i)
      for (Index j = 0; j < n; ++j) c[i * ldc + j] = w.bias(0) ? w.bias(0)[first + j] : T(0);
    return;
  }
  const Index mc = std::min(BL::row_block(), (m + BL::kMR - 1) / BL::kMR * BL::kMR);
  const Index row_blocks = (m + mc - 1) / mc;
  // Few row blocks (short inputs): the panels are split too, so that there are about 8 items.
  const Index col_blocks = row_blocks >= 8 ? 1 : std::min(panels, (8 + row_blocks - 1) / row_blocks);
  const Index per_block = (panels + col_blocks - 1) / col_blocks;
  ThreadScratch<T> scratch(mc * std::min(k, BL::kKC));
  const auto item = [&](Index it) {
    Vector<T> spare;
    T* a = scratch.get(spare);
    const Index i0 = (it / col_blocks) * mc, rows = std::min(mc, m - i0);
    const Index p0 = p_first + (it % col_blocks) * per_block, p1 = std::min(p_first + panels, p0 + per_block);
    for (Index k0 = 0; k0 < k; k0 += BL::kKC) {
      const Index kc = std::min(BL::kKC, k - k0);
      gemm_pack_rows(x + i0 * ldx + k0, rows, kc, ldx, a);
      for (Index p = p0; p < p1; ++p)
        for (Index ip = 0; ip < rows; ip += BL::kMR)
          gemm_micro<T, BL::kMR>(a + ip * kc, w.panel(k0, p), kc, c + (i0 + ip) * ldc, ldc,
                                 std::min<Index>(BL::kMR, rows - ip), columns(p), k0 > 0,
                                 k0 + kc == k ? w.bias(p) : nullptr);
    }
  };
  const Index items = row_blocks * col_blocks;
  if (double(m) * double(n) * double(k) >= kMinParallelWork)
    parallel_for(items, item);
  else
    for (Index it = 0; it < items; ++it) item(it);
}

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
