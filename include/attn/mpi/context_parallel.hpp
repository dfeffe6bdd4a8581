#pragma once
/// @file
/// @brief Context-parallel attention across MPI ranks: each rank holds a slice of the keys
/// and values. Needs MPI (target attn::mpi, CMake option ATTN_MPI; Debian: libopenmpi-dev).

#include <mpi.h>

#include <cstdint>
#include <exception>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "attn/core/attention_options.hpp"
#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"
#include "attn/ops/attention_states.hpp"
#include "attn/ops/scaled_dot_product_attention.hpp"

namespace attn {
namespace mpi {
namespace detail {

/// The MPI datatype of float or double.
template <class C>
MPI_Datatype datatype() {
  static_assert(std::is_same<C, float>::value || std::is_same<C, double>::value, "float or double");
  return std::is_same<C, float>::value ? MPI_FLOAT : MPI_DOUBLE;
}

/// Whether `value` is the same on every rank of comm (collective).
inline bool same_on_all(MPI_Comm comm, std::int64_t value) {
  std::int64_t low = value, high = value;
  MPI_Allreduce(&value, &low, 1, MPI_INT64_T, MPI_MIN, comm);
  MPI_Allreduce(&value, &high, 1, MPI_INT64_T, MPI_MAX, comm);
  return low == high;
}

}  // namespace detail

/// @brief Context-parallel attention (the merge of ring attention's partial results, done
/// with one all-gather): every rank of `comm` holds the same queries and its own slice of
/// the keys and values, in rank order. Each rank attends its queries to its slice
/// (scaled_dot_product_attention with the log-sum-exp), the ranks exchange their (output,
/// lse) states (MPI_Allgather), and every rank merges them in rank order
/// (merge_attention_state_inplace), so every rank returns the same bits: attention over all
/// ranks' keys, as one process computes it over the concatenated keys up to rounding. A
/// rank may hold no keys. Collective: every rank of comm must call it.
/// @param comm the ranks, each with its slice of the keys, in order
/// @param q (B, H, L, D), the same on every rank; @param k (B, K, S_r, D); @param v (B, K, S_r, Dv)
/// @param opt scale, softcap, key_padding_mask over the rank's own keys (B, S_r), and sinks
/// (counted once, by rank 0); nothing that needs a key's position among all ranks' (causal,
/// sliding window, ALiBi, attn_mask, key_lengths), no dropout, weights or lse
/// @return (B, H, L, Dv)
/// @throws std::invalid_argument on every rank when a rank's shapes or options do not fit
template <class T>
Tensor<T> context_parallel_attention(MPI_Comm comm, const TensorView<const T>& q, const TensorView<const T>& k,
                                     const TensorView<const T>& v, const SdpaOptions<T>& opt = {}) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "attn::mpi::context_parallel_attention: T is float or double");
  constexpr const char* where = "attn::mpi::context_parallel_attention";
  const bool fits = q.dim() == 4 && opt.causal == Causal::kNone && !opt.sliding_window && opt.alibi_slopes.empty() &&
                    opt.attn_mask.empty() && opt.key_lengths.empty() && opt.dropout_p == 0 && !opt.attn_weights &&
                    !opt.lse;
  const std::int64_t outputs = fits ? q.size(0) * q.size(1) * q.size(2) * (v.dim() == 4 ? v.size(3) : 0) : -1;
  ::attn::detail::require(detail::same_on_all(comm, outputs) && outputs >= 0, where,
                          ": every rank needs the same q (B, H, L, D) (this rank's ", q.shape(), ", v ", v.shape(),
                          ") and no causal masking, sliding window, ALiBi, attn_mask, key_lengths, dropout, "
                          "weights or lse (they need every rank's keys)");
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  SdpaOptions<T> local = opt;
  Tensor<T> lse;
  local.lse = &lse;
  if (rank != 0) local.sinks = {};
  Tensor<T> o;
  std::exception_ptr error;  // this rank's, rethrown once every rank knows whether one failed
  try {
    o = scaled_dot_product_attention<T>(q, k, v, local);
  } catch (const std::invalid_argument&) {
    error = std::current_exception();
  }
  int mine = error ? 0 : 1, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, comm);
  if (error) std::rethrow_exception(error);
  ::attn::detail::require(all == 1, where, ": another rank's keys, values or options do not fit");
  const Index n = static_cast<Index>(outputs), rows = lse.numel();
  std::vector<T> all_o(static_cast<std::size_t>(n * ranks)), all_lse(static_cast<std::size_t>(rows * ranks));
  MPI_Allgather(o.data(), int(n), detail::datatype<T>(), all_o.data(), int(n), detail::datatype<T>(), comm);
  MPI_Allgather(lse.data(), int(rows), detail::datatype<T>(), all_lse.data(), int(rows), detail::datatype<T>(), comm);
  Tensor<T> out = Tensor<T>::from_data(o.shape(), all_o.data()), out_lse = Tensor<T>::from_data(lse.shape(), all_lse.data());
  for (int r = 1; r < ranks; ++r)
    merge_attention_state_inplace<T>(out.view(), out_lse.view(), TensorView<const T>(all_o.data() + r * n, o.shape()),
                                     TensorView<const T>(all_lse.data() + r * rows, lse.shape()));
  return out;
}

}  // namespace mpi
}  // namespace attn
