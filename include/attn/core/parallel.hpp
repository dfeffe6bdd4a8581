#pragma once
/// @file
/// @brief Thread count for attn's kernels, and the parallel loop they use.
///
/// attn threads with OpenMP when the including translation unit is compiled with it
/// (the attn::attn CMake target adds it when ATTN_OPENMP is ON and OpenMP is found);
/// without OpenMP every loop runs on the calling thread.
///
/// Results never depend on the thread count: work is cut into items whose size is fixed by
/// the problem (never by the number of threads), each item is computed the same way
/// whichever thread runs it, and items never write to the same memory.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "attn/core/error.hpp"

namespace attn {
namespace detail {
/// 0 = default (all cores), otherwise the count set by set_num_threads.
inline std::atomic<int>& thread_setting() {
  static std::atomic<int> n{0};
  return n;
}
}  // namespace detail

/// @brief Sets the number of threads attn's kernels use (process-wide).
/// @param n >= 1, or 0 for the default (all cores: OpenMP's omp_get_max_threads()).
/// @throws std::invalid_argument if n < 0
inline void set_num_threads(int n) {
  detail::require(n >= 0, "attn::set_num_threads: n (", n, ") must be >= 0 (0 = all cores)");
  detail::thread_setting().store(n, std::memory_order_relaxed);
}

/// The number of threads attn's kernels use: 1 without OpenMP.
inline int get_num_threads() {
#if defined(_OPENMP)
  const int n = detail::thread_setting().load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
#else
  return 1;
#endif
}

namespace detail {

/// @brief Calls f(i) for every i in [0, n), on up to get_num_threads() threads.
///
/// Items are handed out dynamically; f must write only to memory that belongs to item i.
/// An exception thrown by f is rethrown on the calling thread (the first one caught; the
/// remaining items are skipped). Inside an enclosing parallel region the items run on the
/// calling thread (no nested parallelism).
///
/// Eigen products called from f run serially: with OpenMP, Eigen parallelises a product
/// made outside a parallel region by itself, with a blocking that depends on its thread
/// count (and so do the last bits of the result). The loop therefore always runs inside a
/// parallel region, even on one thread, and sets each of its threads' OpenMP thread count
/// to 1 (Eigen's default, Eigen::nbThreads(), follows it). A program that sets
/// Eigen::setNbThreads(n > 1) itself keeps Eigen's own threading on the one-thread path.
template <class F>
void parallel_for(Index n, F&& f) {
#if defined(_OPENMP)
  if (n > 0 && !omp_in_parallel()) {
    const int threads = static_cast<int>(std::min<Index>(get_num_threads(), n));
    std::exception_ptr error;
    std::atomic<bool> failed{false};
#pragma omp parallel num_threads(threads)
    {
      omp_set_num_threads(1);  // this implicit task's ICV only; discarded at the region's end
#pragma omp for schedule(dynamic, 1)
      for (Index i = 0; i < n; ++i) {
        if (failed.load(std::memory_order_relaxed)) continue;
        try {
          f(i);
        } catch (...) {
#pragma omp critical(attn_parallel_for_error)
          if (!error) error = std::current_exception();
          failed.store(true, std::memory_order_relaxed);
        }
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  for (Index i = 0; i < n; ++i) f(i);
}

}  // namespace detail
}  // namespace attn
