// The entry points of one kernel pass, which kernels.hpp's with_kernels hands to its callers
// (no include guard: kernels.hpp includes it once per pass; see kernels/packets.ipp).

/// @brief This pass's kernels: what the dispatch in kernels.hpp calls.
struct Kernels {
  /// The layout gemm() reads T's weights in on this pass (`native`: on the avx512bf16 path).
  template <class T>
  static GemmLayout gemm_layout(bool native) {
    (void)native;
    if constexpr (is_storage16<T>::value) {
#if ATTN_HAS_AVX512BF16
      if (std::is_same<T, bfloat16>::value && native) return {GemmBf16::kNR, GemmBf16::kKC, true};
#endif
      return {Gemm16Float<T>::kNR, Gemm16Float<T>::kKC, false};
    } else {
      return {GemmBlocking<T>::kNR, GemmBlocking<T>::kKC, false};
    }
  }

  /// gemm_run on this pass (w packed with gemm_layout<T>'s layout); gemm16_run for the
  /// 16-bit types, on vdpbf16ps where w is packed for avx512bf16.
  template <class T>
  static void gemm(const T* x, Index m, Index ldx, const PackedWeight<T>& w, const GemmOutput<T>* outputs,
                   Index n_outputs) {
    if constexpr (!is_storage16<T>::value) {
      gemm_run(x, m, ldx, w, outputs, n_outputs);
    } else {
#if ATTN_HAS_AVX512BF16
      if constexpr (std::is_same<T, bfloat16>::value)
        if (w.isa() == KernelIsa::avx512bf16) return gemm16_run<T, GemmBf16>(x, m, ldx, w, outputs, n_outputs);
#endif
      gemm16_run<T, Gemm16Float<T>>(x, m, ldx, w, outputs, n_outputs);
    }
  }

  /// The tiled attention kernel (kernels/sdpa_tiled.ipp) on this pass (`native`: on the
  /// avx512bf16 path, where bfloat16 tiles multiply on vdpbf16ps).
  template <class T, class S>
  static void sdpa_tiled(const AttentionCall<T, S>& call, bool native) {
    run_sdpa_tiled(call, native);
  }

  /// The talking-heads kernel (kernels/talking_heads.ipp) on this pass.
  template <class T>
  static void talking_heads(const TalkingHeadsCall<T>& c, TalkingHeadsScheme scheme) {
    run_talking_heads(c, scheme);
  }

  /// softmax_row_inplace on `rows` rows of n contiguous values, rows `stride` apart; row r's
  /// sum goes through end(r, max, sum) before the division.
  template <class T, class End>
  static void softmax_rows(T* x, Index rows, Index n, Index stride, const End& end) {
    for (Index r = 0; r < rows; ++r)
      softmax_row_inplace(x + r * stride, n, [&](T m, T l) { return end(r, m, l); });
  }

  /// exp_shifted_inplace on this pass (the exp's accuracy tests call it on every path).
  template <class T>
  static T exp_shifted(T* x, Index n, T shift) {
    return exp_shifted_inplace(x, n, shift);
  }
};
