// The packet helpers of one kernel pass (no include guard: attn/ops/detail/packets.hpp
// includes it for the baseline path, kernels.hpp once per wider path, each inside its
// namespace after that path's ei, Packet, kPacketSize, kVectorRegisters and kPinRowPackets).

/// @brief The one register-pinning policy of the register tiles (register_tile.hpp): a tile of
/// I rows and V packets pins its loaded row where several rows reuse a wide row and the
/// accumulators leave room for it (at most half the registers). Measured on Zen 5: the
/// attention tiles (4 x 4) gain; the GEMM's 6 x 4 tile is 2.5x slower pinned (spills); V = 2
/// (the talking-heads tiles) is better without.
template <int I, int V>
constexpr bool pins_row_packets() {
  return kPinRowPackets && I > 1 && V >= 4 && I * V <= kVectorRegisters / 2;
}

/// @brief Keeps packet p in a register: a micro-kernel loads a row of packets once and uses
/// each packet several times; without this, GCC folds the load into every multiply-add that
/// uses it, which makes the loop load-bound (one 512-bit load per FMA on AVX-512).
template <class P>
EIGEN_ALWAYS_INLINE void keep_in_register(P& p) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
  if constexpr (sizeof(P) >= 16) __asm__("" : "+v"(p));
#else
  (void)p;
#endif
}

/// @brief The first n (< kPacketSize) elements at p, in compute_t<T>, as a packet whose other
/// lanes are 0: a row's tail goes through the same packet operations as its full packets, so
/// no element is computed by scalar code whose rounding (fused or not) the compiler would
/// choose.
template <class T>
EIGEN_ALWAYS_INLINE Packet<compute_t<T>> load_partial(const T* p, Index n) {
  using C = compute_t<T>;
  C lanes[kPacketSize<C>] = {};
  for (Index i = 0; i < n; ++i) lanes[i] = static_cast<C>(p[i]);
  return ei::ploadu<Packet<C>>(lanes);
}

/// Stores the first n (< kPacketSize) lanes of x at p (rounded to nearest even for a 16-bit T).
template <class T>
EIGEN_ALWAYS_INLINE void store_partial(T* p, const Packet<compute_t<T>>& x, Index n) {
  using C = compute_t<T>;
  C lanes[kPacketSize<C>];
  ei::pstoreu(lanes, x);
  for (Index i = 0; i < n; ++i) p[i] = T(lanes[i]);
}

/// @brief A whole packet of compute_t<T> from the elements at p: a plain load, or for a
/// 16-bit or int8 T its elements widened (exactly) in registers, where a kernel reads 16-bit
/// or quantised data in place (a decode step's keys and values).
template <class T>
EIGEN_ALWAYS_INLINE Packet<compute_t<T>> load_packet(const T* p) {
  if constexpr (is_storage16<T>::value || std::is_same<T, std::int8_t>::value) {
    alignas(64) float lanes[kPacketSize<float>];
    cv::widen(p, lanes, kPacketSize<float>);
    return ei::ploadu<Packet<float>>(lanes);
  } else {
    return ei::ploadu<Packet<T>>(p);
  }
}

/// A whole packet x stored at p: a plain store, or for a 16-bit T rounded to nearest even.
template <class T>
EIGEN_ALWAYS_INLINE void store_packet(T* p, const Packet<compute_t<T>>& x) {
  if constexpr (is_storage16<T>::value) {
    alignas(64) float lanes[kPacketSize<float>];
    ei::pstoreu(lanes, x);
    cv::narrow(lanes, p, kPacketSize<float>);
  } else {
    ei::pstoreu(p, x);
  }
}
