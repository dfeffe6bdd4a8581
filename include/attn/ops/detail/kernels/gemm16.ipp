// The GEMM of the 16-bit storage types (bfloat16, half) on one kernel pass (no include
// guard: gemm.hpp includes it for the baseline path, kernels.hpp once per wider path; see
// kernels/packets.ipp). x, W and the outputs are 16-bit; products are summed in float32 and
// each output is rounded once (to nearest even), after the bias is added in float32.

/// @brief The 16-bit GEMM's portable micro-kernel: x's rows and W's panels converted to
/// float32 tiles, multiplied by this pass's float GEMM tile. W is packed as float's
/// (GemmBlocking<float>'s panels, in S).
template <class S>
struct Gemm16Float {
  using BL = GemmBlocking<float>;
  using A = float;  ///< packed x
  static constexpr int kMR = BL::kMR;
  static constexpr Index kNR = BL::kNR, kKC = BL::kKC;
  static constexpr Index kPanelScratch = kKC * kNR;  ///< floats of a converted panel

  /// Elements of packed x for `rows` rows (a multiple of kMR) of a k-block of kc.
  static Index a_size(Index rows, Index kc) { return rows * kc; }
  static void pack_rows(const S* x, Index rows, Index kc, Index ldx, float* a) { gemm_pack_rows(x, rows, kc, ldx, a); }
  /// W's panel (kc x kNR) as float32, in `scratch`.
  static const float* panel(const S* b, Index kc, float* scratch) {
    cv::widen(b, scratch, kc * kNR);
    return scratch;
  }
  /// c (kMR x kNR, row-major) = a's panel times b's over kc. Never inlined, as gemm_micro.
  static EIGEN_DONT_INLINE void micro(const float* a, const float* b, Index kc, float* c) {
    using P = Packet<float>;
    constexpr int lanes = kPacketSize<float>, NV = BL::kNV;
    P acc[kMR][NV];
    ATTN_UNROLL for (int i = 0; i < kMR; ++i)
      ATTN_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = ei::pset1<P>(0.f);
    register_tile<float, kMR, NV>(a, 1, kMR, b, kNR, kc, acc, {0, 16});
    ATTN_UNROLL for (int i = 0; i < kMR; ++i)
      ATTN_UNROLL for (int v = 0; v < NV; ++v) ei::pstoreu(c + i * kNR + v * lanes, acc[i][v]);
  }
};

/// c[i] += b[i] for the NR floats of c and b (NR a multiple of the packet size).
template <Index NR>
EIGEN_ALWAYS_INLINE void gemm16_add(float* c, const float* b) {
  using P = Packet<float>;
  ATTN_UNROLL for (Index v = 0; v < NR; v += kPacketSize<float>)
    ei::pstoreu(c + v, ei::padd(ei::ploadu<P>(c + v), ei::ploadu<P>(b + v)));
}

/// Rows row0 .. row0 + rows - 1 of a finished block of sums c (MR x NR floats), plus the
/// panel's bias (NR values, or null), rounded to S and written to the panel's outputs.
template <class S, int MR, Index NR>
void gemm16_store(float* c, const GemmPanel<S>& panel, Index row0, Index rows, const S* bias) {
  if (bias) {
    alignas(64) float b[NR];
    cv::widen(bias, b, NR);
    for (Index i = 0; i < rows; ++i) gemm16_add<NR>(c + i * NR, b);
  }
  for (Index i = 0; i < rows; ++i)
    panel.runs(row0 + i, [&](S* at, Index j, Index n) { cv::narrow(c + i * NR + j, at, n); });
}

/// @brief gemm_run for a 16-bit S with micro-kernel Micro (Gemm16Float<S>, or GemmBf16 on
/// avx512bf16): the same panels and work items. A k-block's sums are added to the float32
/// sums of the blocks before it (kept per item), and written once, after the last.
template <class S, class Micro>
void gemm16_run(const S* x, Index m, Index ldx, const PackedWeight<S>& w, const GemmOutput<S>* outputs,
                Index n_outputs) {
  constexpr int MR = Micro::kMR;
  constexpr Index NR = Micro::kNR, KC = Micro::kKC;
  const Index k = w.cols();
  const std::vector<GemmPanel<S>> panels = gemm_panels(outputs, n_outputs, NR);
  if (m == 0 || panels.empty()) return;
  if (k == 0) return gemm_bias_only(panels, m, w);
  const GemmItems g = GemmItems::of(m, Index(panels.size()), MR,
                                    gemm_row_block(Micro::a_size(MR, KC) * Index(sizeof(typename Micro::A)) / MR, MR));
  g.run(NR, k, [&](Index it) {
    const Index i0 = g.row0(it), rows = g.rows(it), q0 = g.panel0(it), rows_pad = (rows + MR - 1) / MR * MR;
    const WorkBuffer<typename Micro::A> a(Micro::a_size(rows_pad, std::min(k, KC)));
    const WorkBuffer<float> converted(Micro::kPanelScratch);
    const WorkBuffer<float> sums(k > KC ? rows_pad * (g.panel1(it) - q0) * NR : 0);  // of the k-blocks so far
    alignas(64) float c[MR * NR];
    for (Index k0 = 0; k0 < k; k0 += KC) {
      const Index kc = std::min(KC, k - k0);
      Micro::pack_rows(x + i0 * ldx + k0, rows, kc, ldx, a.data());
      for (Index q = q0; q < g.panel1(it); ++q) {
        const Index p = panels[q].f0 / NR;
        const auto* b = Micro::panel(w.panel(k0, p), kc, converted.data());
        for (Index ip = 0; ip < rows; ip += MR) {
          Micro::micro(a.data() + Micro::a_size(ip, kc), b, kc, c);
          float* before = k > KC ? sums.data() + ((q - q0) * rows_pad + ip) * NR : nullptr;
          if (k0 > 0)
            for (int i = 0; i < MR; ++i) gemm16_add<NR>(c + i * NR, before + i * NR);
          if (k0 + kc == k)
            gemm16_store<S, MR, NR>(c, panels[q], i0 + ip, std::min<Index>(MR, rows - ip), w.bias(p));
          else
            std::copy(c, c + MR * NR, before);
        }
      }
    }
  });
}
