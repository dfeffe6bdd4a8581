// The register tile of one kernel pass (no include guard: register_tile.hpp includes it for
// the baseline path, kernels.hpp once per wider path; see kernels/packets.ipp).

/// Rows of a register block V packets wide whose accumulators fill half of the vector
/// registers (the other half holds the loaded row and the broadcasts).
template <class T, int V>
constexpr int register_rows() {
  return std::max(1, kVectorRegisters / 2 / V);
}

/// How far ahead a register tile asks for the rows it will read (0: not at all): rows of b
/// (one hint per packet), and rows of a where a walks down them (a_row = 1: columns of v,
/// read a row per step). For streams the hardware prefetcher follows too slowly.
struct Ahead {
  Index a_rows = 0, b_rows = 0;
};

/// @brief acc[i][v] += sum_{m < n} a[i * a_row + m * a_step] * b[m * b_stride + v * P] for
/// I rows i and V packets v of P = kPacketSize<T> columns: per m, V packet loads of b, I
/// broadcasts of a and I * V multiply-adds (pmadd: fused where the target has FMA).
///
/// Every element is one chain of multiply-adds in the order of m, whatever I and V: results
/// do not depend on the blocking. Always inlined into the kernels that own the tile's
/// loops, which are not inlined themselves (so the tile's register allocation does not
/// depend on the code or the translation unit around it).
template <class T, int I, int V>
EIGEN_ALWAYS_INLINE void register_tile(const T* a, Index a_row, Index a_step, const T* b, Index b_stride, Index n,
                                       Packet<T> (&acc)[I][V], Ahead ahead = {}) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>;
  for (Index m = 0; m < n; ++m) {
    P bv[V];
    if (ahead.a_rows > 0) prefetch(a + (m + ahead.a_rows) * a_step);
    if (ahead.b_rows > 0)
      ATTN_UNROLL for (int v = 0; v < V; ++v) prefetch(b + (m + ahead.b_rows) * b_stride + v * S);
    ATTN_UNROLL for (int v = 0; v < V; ++v) {
      bv[v] = ei::ploadu<P>(b + m * b_stride + v * S);
      if (pins_row_packets<I, V>()) keep_in_register(bv[v]);
    }
    ATTN_UNROLL for (int i = 0; i < I; ++i) {
      const P av = ei::pset1<P>(a[i * a_row + m * a_step]);
      ATTN_UNROLL for (int v = 0; v < V; ++v) acc[i][v] = ei::pmadd(av, bv[v], acc[i][v]);
    }
  }
}

/// The default of outer_products' `seen`: nothing.
struct NoSeen {
  template <class P>
  void operator()(int, const P&) const {}
};

/// @brief One register tile stored to memory: c[i][x] (+)= sum_{m < n} a[i * a_row + m *
/// a_step] * b[m][x] for I rows i and the V * kPacketSize<T> columns x (b[m] at b + m *
/// b_stride, c[i] at c + i * c_stride). With Accumulate, c's values are the starting sums;
/// without, 0. `seen(v, p)` is called with every packet p stored in column packet v (the
/// SDPA tile takes its running max there, without a second pass over c).
template <class T, int I, int V, bool Accumulate, class Seen>
EIGEN_ALWAYS_INLINE void outer_product_block(const T* a, Index a_row, Index a_step, const T* b, Index b_stride, Index n,
                                             T* c, Index c_stride, Seen& seen, Ahead ahead = {}) {
  using P = Packet<T>;
  constexpr int S = kPacketSize<T>;
  P acc[I][V];
  ATTN_UNROLL for (int i = 0; i < I; ++i)
    ATTN_UNROLL for (int v = 0; v < V; ++v) acc[i][v] = Accumulate ? ei::ploadu<P>(c + i * c_stride + v * S) : ei::pset1<P>(T(0));
  register_tile<T, I, V>(a, a_row, a_step, b, b_stride, n, acc, ahead);
  ATTN_UNROLL for (int i = 0; i < I; ++i)
    ATTN_UNROLL for (int v = 0; v < V; ++v) {
      ei::pstoreu(c + i * c_stride + v * S, acc[i][v]);
      seen(v, acc[i][v]);
    }
}

/// @brief outer_product_block for `rows` rows: blocks of I rows, then single rows, always
/// inlined (for kernel steps, themselves never inlined, that call it per head on short
/// tiles); outer_products is the same as a function of its own. The callers' a has a unit
/// stride one way (rows of k: a_step = 1; columns of v: a_row = 1), which each gets a copy of
/// the loops compiled for (the broadcasts' addresses then take no multiplies); v's rows are
/// asked for 16 ahead (measured: the tiled core at N = 8192 and talking heads at N = 4096
/// ran 5-10% faster).
template <class T, int I, int V, bool Accumulate, class Seen = NoSeen>
EIGEN_ALWAYS_INLINE void outer_product_rows(const T* a, Index a_row, Index a_step, Index rows, const T* b,
                                            Index b_stride, Index n, T* c, Index c_stride, Seen&& seen = {}) {
  const auto blocks = [&](Index ar, Index as, Ahead ahead) ATTN_INLINE_LAMBDA {
    Index i = 0;
    for (; i + I <= rows; i += I)
      outer_product_block<T, I, V, Accumulate>(a + i * ar, ar, as, b, b_stride, n, c + i * c_stride, c_stride, seen,
                                               ahead);
    for (; i < rows; ++i)
      outer_product_block<T, 1, V, Accumulate>(a + i * ar, ar, as, b, b_stride, n, c + i * c_stride, c_stride, seen,
                                               ahead);
  };
  if (a_row == 1)
    blocks(1, a_step, {16, 0});  // columns of v: rows streamed, asked for 16 ahead
  else if (a_step == 1)
    blocks(a_row, 1, {});
  else
    blocks(a_row, a_step, {});
}

/// outer_product_rows as a function of its own (never inlined): its loops compile the same
/// wherever it is called from.
template <class T, int I, int V, bool Accumulate, class Seen = NoSeen>
EIGEN_DONT_INLINE void outer_products(const T* a, Index a_row, Index a_step, Index rows, const T* b, Index b_stride,
                                      Index n, T* c, Index c_stride, Seen&& seen = {}) {
  outer_product_rows<T, I, V, Accumulate>(a, a_row, a_step, rows, b, b_stride, n, c, c_stride, seen);
}
