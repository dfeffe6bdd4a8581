// One wider kernel pass (no include guard): kernels.hpp includes it inside a target region
// with ATTN_PASS (the path's name: avx2, avx512) and ATTN_PASS_REGISTERS (its vector
// registers) defined. The kernel texts compile there on the path's packet set
// (attn/ops/detail/simd.hpp) instead of Eigen's, and its 16-bit conversions (convert16.hpp); names a pass does not define (prefetch,
// kPinRowPackets, GemmOutput, AttentionCall, Tile, for_each_block ...) come from
// attn::detail.

namespace attn {
namespace detail {
namespace ATTN_PASS {

namespace ei = ::attn::simd::ATTN_PASS;
template <class T>
using Packet = typename ei::packet_traits<T>::type;
template <class T>
constexpr int kPacketSize = ei::unpacket_traits<Packet<T>>::size;
constexpr int kVectorRegisters = ATTN_PASS_REGISTERS;
namespace cv = ::attn::detail::convert16::ATTN_PASS;

#include "attn/ops/detail/kernels/packets.ipp"
#include "attn/ops/detail/kernels/exp.ipp"
#include "attn/ops/detail/kernels/online_softmax.ipp"
#include "attn/ops/detail/kernels/register_tile.ipp"
#include "attn/ops/detail/kernels/gemm.ipp"
#include "attn/ops/detail/kernels/gemm16.ipp"
#include "attn/ops/detail/kernels/sdpa_rows.ipp"
#include "attn/ops/detail/kernels/sdpa_tiled.ipp"
#include "attn/ops/detail/kernels/talking_heads_tiles.ipp"
#include "attn/ops/detail/kernels/talking_heads.ipp"
#include "attn/ops/detail/kernels/entry_points.ipp"

}  // namespace ATTN_PASS
}  // namespace detail
}  // namespace attn
