// The softmax exp of one kernel pass (no include guard: exp.hpp includes it for the baseline
// path, kernels/pass.ipp once per wider path; see kernels/packets.ipp).

/// Whether Eigen has an integer packet type matching P (the float exp builds 2^n in it).
template <class P, class = void>
struct has_integer_packet : std::false_type {};  // Eigen has none for some targets (ZVector, MSA)
template <class P>
struct has_integer_packet<P, std::void_t<typename ei::unpacket_traits<P>::integer_packet>> : std::true_type {};

/// @brief exp(x) for a packet of softmax arguments x <= 0 (or -inf, or NaN), under the
/// accuracy contract of exp.hpp.
///
/// float: Cody-Waite reduction x = n ln2 + r (|r| <= ln2/2, two FMAs), Cephes' degree-7
/// polynomial for exp(r), and 2^n built in the exponent bits with n >= -127: results for
/// x < -87.68 are 0, which also makes exp(-inf) exactly 0 without a compare.
/// double (and float on targets without integer packets): Eigen's pexp, with arguments
/// below the normal range (and -inf) selected to 0.
template <class P>
EIGEN_ALWAYS_INLINE P exp_nonpositive(const P& x) {
  using Scalar = typename ei::unpacket_traits<P>::type;
  if constexpr (std::is_same<Scalar, float>::value && ei::unpacket_traits<P>::size > 1 &&
                has_integer_packet<P>::value) {
    using PI = typename ei::unpacket_traits<P>::integer_packet;
    const P xc = ei::pmax(x, ei::pset1<P>(-88.0f));  // pmax keeps its first argument when that is NaN
    const P shifter = ei::pset1<P>(12582912.0f);   // 1.5 * 2^23: adding it rounds to an integer
    const P n = ei::psub(ei::pmadd(xc, ei::pset1<P>(1.44269504088896341f), shifter), shifter);
    P r = ei::pmadd(n, ei::pset1<P>(-0.693359375f), xc);
    r = ei::pmadd(n, ei::pset1<P>(2.12194440e-4f), r);
    P y = ei::pmadd(ei::pset1<P>(1.9875691500e-4f), r, ei::pset1<P>(1.3981999507e-3f));
    y = ei::pmadd(y, r, ei::pset1<P>(8.3334519073e-3f));
    y = ei::pmadd(y, r, ei::pset1<P>(4.1665795894e-2f));
    y = ei::pmadd(y, r, ei::pset1<P>(1.6666665459e-1f));
    y = ei::pmadd(y, r, ei::pset1<P>(5.0000001201e-1f));
    y = ei::pmadd(y, ei::pmul(r, r), ei::padd(r, ei::pset1<P>(1.0f)));
    // 2^n for n >= -127: n = -127 (x < -87.68) gives the bits of 0.0f.
    const PI bits = ei::plogical_shift_left<23>(ei::padd(ei::pcast<P, PI>(n), ei::pset1<PI>(127)));
    return ei::pmul(y, ei::preinterpret<P>(bits));
  } else if constexpr (ei::unpacket_traits<P>::size == 1) {  // no SIMD: P is the scalar
    return x == -std::numeric_limits<Scalar>::infinity() ? Scalar(0) : std::exp(x);
  } else {
    // Below ln(DBL_MIN) the result would be subnormal: 0, as float's below -87.68 (also
    // exp(-inf) = 0; pexp clamps its argument and would give ~4e-309).
    const P underflow = ei::pset1<P>(std::is_same<Scalar, float>::value ? Scalar(-87.6) : Scalar(-708.4));
    return ei::pselect(ei::pcmp_lt(x, underflow), ei::pset1<P>(Scalar(0)), ei::pexp(x));
  }
}

/// The lanes of p added in lane order (not predux, whose AVX-512 form trips GCC 12's
/// -Wuninitialized).
template <class P>
EIGEN_ALWAYS_INLINE typename ei::unpacket_traits<P>::type sum_lanes(const P& p) {
  using Scalar = typename ei::unpacket_traits<P>::type;
  constexpr int kSize = ei::unpacket_traits<P>::size;
  Scalar lanes[kSize];
  ei::pstoreu(lanes, p);
  Scalar total = Scalar(0);
  for (int t = 0; t < kSize; ++t) total += lanes[t];
  return total;
}
