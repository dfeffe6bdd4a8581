// The entry points of one kernel pass, which kernels.hpp's with_kernels hands to its callers
// (no include guard: kernels.hpp includes it once per pass; see kernels/packets.ipp).

/// @brief This pass's kernels: what the dispatch in kernels.hpp calls.
struct Kernels {
  /// The GEMM's blocking, which fixes the packed weight's layout.
  template <class T>
  using Gemm = GemmBlocking<T>;

  /// gemm_run on this pass (w packed with Gemm<T>'s layout).
  template <class T>
  static void gemm(const T* x, Index m, Index ldx, const PackedWeight<T>& w, const GemmOutput<T>* outputs,
                   Index n_outputs) {
    gemm_run(x, m, ldx, w, outputs, n_outputs);
  }
};
