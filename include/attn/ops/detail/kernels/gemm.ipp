// The GEMM of one kernel pass (no include guard: gemm.hpp includes it for the baseline
// path, kernels.hpp once per wider path; see kernels/packets.ipp). The weight's packed layout
// (PackedWeight, kernels.hpp) follows the pass's GemmBlocking.

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
void gemm_run(const T* x, Index m, Index ldx, const PackedWeight<T>& w, const GemmOutput<T>* outputs, Index n_outputs) {
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
