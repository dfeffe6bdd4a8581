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
#include <vector>

#include "attn/core/heads_view.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/detail/packets.hpp"
#include "attn/ops/detail/register_tile.hpp"
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

/// @brief The outputs of one panel of kNR features starting at feature f0. When the whole
/// panel falls in one head of one output (`single`), a block of rows within one batch
/// element is stored in place (`direct`).
template <class T>
struct GemmPanel {
  Index f0;
  const GemmOutput<T>* outputs;
  Index n_outputs;
  const GemmOutput<T>* single = nullptr;

  /// Where rows row0 .. row0 + rows - 1 of the panel go, rows_stride apart, or null if they
  /// are not one contiguous-column block of one output.
  T* direct(Index row0, Index rows, Index& ld) const {
    if (!single || row0 / single->target.length != (row0 + rows - 1) / single->target.length) return nullptr;
    ld = single->target.row_stride;
    return single->at(row0, f0 - single->first);
  }

  /// Calls f(address, panel column, columns) for every contiguous run of panel columns that
  /// row r sends to one place.
  template <class F>
  void runs(Index r, F&& f) const {
    constexpr Index kNR = GemmBlocking<T>::kNR;
    for (Index o = 0; o < n_outputs; ++o) {
      const GemmOutput<T>& out = outputs[o];
      for (Index fe = std::max(f0, out.first); fe < std::min(f0 + kNR, out.first + out.count());) {
        const Index n = std::min(out.run(fe - out.first), f0 + kNR - fe);
        f(out.at(r, fe - out.first), fe - f0, n);
        fe += n;
      }
    }
  }
};

/// @brief The micro-kernel: an MR x kNR block (+)= a_panel^T b_panel over kc, of which rows
/// [0, rows) are written (as output rows row0..) to the panel's outputs. a is a packed panel
/// of x (a[k * MR + i]), b a packed panel of W (b[k * kNR + j]); the products are one
/// register_tile, b's rows prefetched 16 ahead. With `accumulate` the outputs' values are
/// the starting sums; `bias` (kNR values), if given, is added at the end. Never inlined, so
/// its register allocation is the same in every caller and translation unit.
template <class T, int MR>
EIGEN_DONT_INLINE void gemm_micro(const T* a, const T* b, Index kc, const GemmPanel<T>& panel, Index row0, Index rows,
                                  bool accumulate, const T* bias) {
  using P = Packet<T>;
  using BL = GemmBlocking<T>;
  constexpr int S = kPacketSize<T>, NV = BL::kNV;
  P acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = ei::pset1<P>(T(0));
  register_tile<T, MR, NV>(a, 1, MR, b, BL::kNR, kc, acc, {0, 16});
  // A full block of contiguous columns of one output is stored in place; anything else goes
  // through a tile.
  Index ld = BL::kNR;
  T* const in_place = rows == MR ? panel.direct(row0, rows, ld) : nullptr;
  const bool direct = in_place != nullptr;
  T tile[MR * BL::kNR];
  T* out = direct ? in_place : tile;
  if (!direct) ld = BL::kNR;
  if (!direct) {
    std::fill(tile, tile + MR * BL::kNR, T(0));
    if (accumulate)
      for (Index i = 0; i < rows; ++i)
        panel.runs(row0 + i, [&](const T* at, Index j, Index n) { std::copy(at, at + n, tile + i * BL::kNR + j); });
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      P r = accumulate ? ei::padd(ei::ploadu<P>(out + i * ld + v * S), acc[i][v]) : acc[i][v];
      if (bias) r = ei::padd(r, ei::ploadu<P>(bias + v * S));
      ei::pstoreu(out + i * ld + v * S, r);
    }
  if (!direct)
    for (Index i = 0; i < rows; ++i)
      panel.runs(row0 + i, [&](T* at, Index j, Index n) { std::copy(tile + i * BL::kNR + j, tile + i * BL::kNR + j + n, at); });
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

/// The panels of kNR features that gemm computes for these outputs, each with its outputs.
template <class T>
std::vector<GemmPanel<T>> gemm_panels(const GemmOutput<T>* outputs, Index n_outputs) {
  constexpr Index kNR = GemmBlocking<T>::kNR;
  std::vector<GemmPanel<T>> panels;
  for (Index o = 0; o < n_outputs; ++o) {
    const GemmOutput<T>& out = outputs[o];
    for (Index p = out.first / kNR; p * kNR < out.first + out.count(); ++p) {
      if (std::any_of(panels.begin(), panels.end(), [&](const GemmPanel<T>& q) { return q.f0 == p * kNR; })) continue;
      const Index f0 = p * kNR, d = out.target.head_dim;
      const bool one_head = f0 >= out.first && f0 + kNR <= out.first + out.count() &&
                            (f0 - out.first) / d == (f0 + kNR - 1 - out.first) / d;
      panels.push_back({f0, outputs, n_outputs, n_outputs == 1 && one_head ? &out : nullptr});
    }
  }
  return panels;
}

/// @brief For every output o: rows [0, m) of x (m, k) W^T + bias, features [o.first,
/// o.first + o.count), written where o says (outputs must not share features); x rows ldx
/// apart. One pass over x serves every output (the fused q/k/v projection writes q, k and v
/// each in its own layout).
template <class T>
void gemm(const T* x, Index m, Index ldx, const PackedWeight<T>& w, const GemmOutput<T>* outputs, Index n_outputs) {
  using BL = GemmBlocking<T>;
  const Index k = w.cols();
  const std::vector<GemmPanel<T>> panels = gemm_panels(outputs, n_outputs);
  const Index n_panels = static_cast<Index>(panels.size());
  if (m == 0 || n_panels == 0) return;
  if (k == 0) {  // an empty sum: the bias (or 0)
    for (const GemmPanel<T>& panel : panels)
      for (Index r = 0; r < m; ++r)
        panel.runs(r, [&](T* at, Index j, Index n) {
          for (Index c = 0; c < n; ++c) at[c] = w.bias(0) ? w.bias(0)[panel.f0 + j + c] : T(0);
        });
    return;
  }
  const Index mc = std::min(BL::row_block(), (m + BL::kMR - 1) / BL::kMR * BL::kMR);
  const Index row_blocks = (m + mc - 1) / mc;
  // Few row blocks (short inputs): the panels are split too, so that there are about 8 items.
  const Index col_blocks = row_blocks >= 8 ? 1 : std::min(n_panels, (8 + row_blocks - 1) / row_blocks);
  const Index per_block = (n_panels + col_blocks - 1) / col_blocks;
  const auto item = [&](Index it) {
    const WorkBuffer<T> packed_rows(mc * std::min(k, BL::kKC));  // this item's rows of x, packed
    T* a = packed_rows.data();
    const Index i0 = (it / col_blocks) * mc, rows = std::min(mc, m - i0);
    const Index q0 = (it % col_blocks) * per_block, q1 = std::min(n_panels, q0 + per_block);
    for (Index k0 = 0; k0 < k; k0 += BL::kKC) {
      const Index kc = std::min(BL::kKC, k - k0);
      gemm_pack_rows(x + i0 * ldx + k0, rows, kc, ldx, a);
      for (Index q = q0; q < q1; ++q) {
        const Index p = panels[q].f0 / BL::kNR;
        for (Index ip = 0; ip < rows; ip += BL::kMR)
          gemm_micro<T, BL::kMR>(a + ip * kc, w.panel(k0, p), kc, panels[q], i0 + ip,
                                 std::min<Index>(BL::kMR, rows - ip), k0 > 0, k0 + kc == k ? w.bias(p) : nullptr);
      }
    }
  };
  const Index items = row_blocks * col_blocks;
  if (double(m) * double(n_panels * BL::kNR) * double(k) >= kMinParallelWork)
    parallel_for(items, item);
  else
    for (Index it = 0; it < items; ++it) item(it);
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

}  // namespace detail
}  // namespace attn

ATTN_PACKET_CODE_END
