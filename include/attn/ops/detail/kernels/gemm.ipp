// The GEMM of one kernel pass (no include guard: gemm.hpp includes it for the baseline
// path, kernels.hpp once per wider path; see kernels/packets.ipp). The weight's packed layout
// (PackedWeight, kernels.hpp) follows the pass's GemmBlocking. The 16-bit storage types'
// GEMM (kernels/gemm16.ipp) shares its panels, outputs and work items.

/// @brief Register and cache blocking of the GEMM for T on the target ISA.
template <class T>
struct GemmBlocking {
  static constexpr int kMR = 6;                                  ///< rows of a register block
  static constexpr int kNV = kVectorRegisters == 32 ? 4 : 2;     ///< packets of a register block's row
  static constexpr Index kNR = kNV * kPacketSize<T>;             ///< columns of a panel
  static constexpr Index kKC = 2048 / Index(sizeof(T));          ///< depth of a k-block: a kMR x kKC panel of x is 12 KiB

  /// Rows of x per work item (gemm_row_block: x's packed block in a quarter of the L2 cache).
  static Index row_block() { return gemm_row_block(kKC * Index(sizeof(T)), kMR); }
};

/// @brief The outputs of one panel of nr features starting at feature f0. When the whole
/// panel falls in one head of one output (`single`), a block of rows within one batch
/// element is stored in place (`direct`).
template <class T>
struct GemmPanel {
  Index f0, nr;
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
    for (Index o = 0; o < n_outputs; ++o) {
      const GemmOutput<T>& out = outputs[o];
      for (Index fe = std::max(f0, out.first); fe < std::min(f0 + nr, out.first + out.count());) {
        const Index n = std::min(out.run(fe - out.first), f0 + nr - fe);
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
  ATTN_UNROLL for (int i = 0; i < MR; ++i)
    ATTN_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = ei::pset1<P>(T(0));
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
  ATTN_UNROLL for (int i = 0; i < MR; ++i)
    ATTN_UNROLL for (int v = 0; v < NV; ++v) {
      P r = accumulate ? ei::padd(ei::ploadu<P>(out + i * ld + v * S), acc[i][v]) : acc[i][v];
      if (bias) r = ei::padd(r, ei::ploadu<P>(bias + v * S));
      ei::pstoreu(out + i * ld + v * S, r);
    }
  if (!direct)
    for (Index i = 0; i < rows; ++i)
      panel.runs(row0 + i, [&](T* at, Index j, Index n) { std::copy(tile + i * BL::kNR + j, tile + i * BL::kNR + j + n, at); });
}

/// Packs rows [0, rows) x columns [0, kc) of x (rows ldx apart) into panels of kMR rows,
/// k-major (a[p * kMR * kc + k * kMR + i]), zero rows past the end; x's elements converted
/// to T.
template <class T, class X>
void gemm_pack_rows(const X* x, Index rows, Index kc, Index ldx, T* a) {
  constexpr int MR = GemmBlocking<T>::kMR;
  for (Index ip = 0; ip < rows; ip += MR) {
    T* dst = a + ip * kc;
    for (int r = 0; r < MR; ++r) {
      if (ip + r < rows) {
        const X* src = x + (ip + r) * ldx;
        for (Index k = 0; k < kc; ++k) dst[k * MR + r] = static_cast<T>(src[k]);
      } else {
        for (Index k = 0; k < kc; ++k) dst[k * MR + r] = T(0);
      }
    }
  }
}

/// The panels of nr features that gemm computes for these outputs, each with its outputs.
template <class T>
std::vector<GemmPanel<T>> gemm_panels(const GemmOutput<T>* outputs, Index n_outputs, Index nr) {
  std::vector<GemmPanel<T>> panels;
  for (Index o = 0; o < n_outputs; ++o) {
    const GemmOutput<T>& out = outputs[o];
    for (Index p = out.first / nr; p * nr < out.first + out.count(); ++p) {
      if (std::any_of(panels.begin(), panels.end(), [&](const GemmPanel<T>& q) { return q.f0 == p * nr; })) continue;
      const Index f0 = p * nr, d = out.target.head_dim;
      const bool one_head = f0 >= out.first && f0 + nr <= out.first + out.count() &&
                            (f0 - out.first) / d == (f0 + nr - 1 - out.first) / d;
      panels.push_back({f0, nr, outputs, n_outputs, n_outputs == 1 && one_head ? &out : nullptr});
    }
  }
  return panels;
}

/// @brief gemm's work items: row blocks of mc rows (a multiple of the micro-kernel's mr),
/// each cut into col_blocks ranges of panels when there are few row blocks (short inputs),
/// so that there are about 8 items. Item `it` is row block it / col_blocks and panel range
/// it % col_blocks.
struct GemmItems {
  Index m, n_panels, mc, row_blocks, col_blocks, per_block;

  /// @param row_block the rows of x a work item packs (a multiple of mr)
  static GemmItems of(Index m, Index n_panels, Index mr, Index row_block) {
    GemmItems g{m, n_panels, std::min(row_block, (m + mr - 1) / mr * mr), 0, 0, 0};
    g.row_blocks = (m + g.mc - 1) / g.mc;
    g.col_blocks = g.row_blocks >= 8 ? 1 : std::min(n_panels, (8 + g.row_blocks - 1) / g.row_blocks);
    g.per_block = (n_panels + g.col_blocks - 1) / g.col_blocks;
    return g;
  }
  Index items() const { return row_blocks * col_blocks; }
  Index row0(Index it) const { return (it / col_blocks) * mc; }                 ///< item's first row
  Index rows(Index it) const { return std::min(mc, m - row0(it)); }             ///< item's rows
  Index panel0(Index it) const { return (it % col_blocks) * per_block; }        ///< item's first panel
  Index panel1(Index it) const { return std::min(n_panels, panel0(it) + per_block); }  ///< past its last

  /// Runs item(it) for every item: threaded when the product (m x nr columns per panel x k)
  /// is worth it.
  template <class F>
  void run(Index nr, Index k, F&& item) const {
    if (double(m) * double(n_panels * nr) * double(k) >= kMinParallelWork)
      parallel_for(items(), item);
    else
      for (Index it = 0; it < items(); ++it) item(it);
  }
};

/// The result of an empty sum (k = 0): every output is w's bias (or 0).
template <class T>
void gemm_bias_only(const std::vector<GemmPanel<T>>& panels, Index m, const PackedWeight<T>& w) {
  for (const GemmPanel<T>& panel : panels)
    for (Index r = 0; r < m; ++r)
      panel.runs(r, [&](T* at, Index j, Index n) {
        const T* bias = w.bias(panel.f0 / panel.nr);
        for (Index c = 0; c < n; ++c) at[c] = bias ? bias[j + c] : T(0);
      });
}

/// @brief For every output o: rows [0, m) of x (m, k) W^T + bias, features [o.first,
/// o.first + o.count), written where o says (outputs must not share features); x rows ldx
/// apart. One pass over x serves every output (the fused q/k/v projection writes q, k and v
/// each in its own layout).
template <class T>
void gemm_run(const T* x, Index m, Index ldx, const PackedWeight<T>& w, const GemmOutput<T>* outputs, Index n_outputs) {
  using BL = GemmBlocking<T>;
  const Index k = w.cols();
  const std::vector<GemmPanel<T>> panels = gemm_panels(outputs, n_outputs, BL::kNR);
  if (m == 0 || panels.empty()) return;
  if (k == 0) return gemm_bias_only(panels, m, w);
  const GemmItems g = GemmItems::of(m, Index(panels.size()), BL::kMR, BL::row_block());
  g.run(BL::kNR, k, [&](Index it) {
    const WorkBuffer<T> packed_rows(g.mc * std::min(k, BL::kKC));  // this item's rows of x, packed
    T* a = packed_rows.data();
    const Index i0 = g.row0(it), rows = g.rows(it);
    for (Index k0 = 0; k0 < k; k0 += BL::kKC) {
      const Index kc = std::min(BL::kKC, k - k0);
      gemm_pack_rows(x + i0 * ldx + k0, rows, kc, ldx, a);
      for (Index q = g.panel0(it); q < g.panel1(it); ++q) {
        const Index p = panels[q].f0 / BL::kNR;
        for (Index ip = 0; ip < rows; ip += BL::kMR)
          gemm_micro<T, BL::kMR>(a + ip * kc, w.panel(k0, p), kc, panels[q], i0 + ip,
                                 std::min<Index>(BL::kMR, rows - ip), k0 > 0, k0 + kc == k ? w.bias(p) : nullptr);
      }
    }
  });
}
