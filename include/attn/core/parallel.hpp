#pragma once
/// @file
/// @brief Thread count for attn's kernels, and the parallel loop they use.
///
/// attn threads when the including translation unit is compiled with OpenMP (the attn::attn
/// CMake target adds it when ATTN_OPENMP is ON and OpenMP is found); without OpenMP every
/// loop runs on the calling thread. The loops run on attn's own pool of threads, not in
/// OpenMP parallel regions: OpenMP gives the default thread count (omp_get_max_threads(),
/// so OMP_NUM_THREADS) and keeps Eigen's products inside a loop on one thread.
///
/// Results never depend on the thread count: work is cut into items whose size is fixed by
/// the problem (never by the number of threads), each item is computed the same way
/// whichever thread runs it, and items never write to the same memory.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <type_traits>

#if defined(__unix__)
#include <pthread.h>
#endif

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

/// True on a thread that is running items of a parallel loop (nested loops run serially).
inline bool& in_parallel_loop() {
  static thread_local bool inside = false;
  return inside;
}

/// Marks the calling thread as running items while it lives. With OpenMP it also sets the
/// thread's OpenMP thread count to 1, so Eigen's products run serially (Eigen parallelises
/// a product by itself with a blocking, and last bits, that depend on its thread count;
/// Eigen::nbThreads() follows omp_get_max_threads() unless the program set its own).
class ItemScope {
 public:
  ItemScope() : outer_(in_parallel_loop()) {
    in_parallel_loop() = true;
#if defined(_OPENMP)
    omp_threads_ = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
  }
  ~ItemScope() {
    in_parallel_loop() = outer_;
#if defined(_OPENMP)
    omp_set_num_threads(omp_threads_);
#endif
  }
  ItemScope(const ItemScope&) = delete;
  ItemScope& operator=(const ItemScope&) = delete;

 private:
  bool outer_;
#if defined(_OPENMP)
  int omp_threads_ = 1;
#endif
};

/// @brief attn's threads: helpers that join the calling thread's parallel loops.
///
/// One loop runs at a time (a second caller runs its items alone: same results). A loop is
/// published in `ticket_`, (generation << 32) | next item, with its fields beside it under
/// a sequence lock (the generation is odd while they are written). Threads claim items
/// one at a time by compare-and-swap on the ticket, which only succeeds while the loop
/// they read is the current one, and the loop is over when `done_` reaches its item count,
/// whichever threads ran the items: a helper that comes late finds nothing left, so nobody
/// waits for a thread that is not running (one on a core busy with other work). Helpers are
/// started when first needed and never stopped; between loops they poll for 200 us, yielding
/// the core, then sleep.
class ThreadPool {
 public:
  using Call = void (*)(void* body, Index item);

  /// The process's pool (never destroyed: its threads sleep until the process ends).
  static ThreadPool& instance() {
    static ThreadPool* pool = new ThreadPool;
    return *pool;
  }

  /// Runs call(body, i) for i in [0, n) on the calling thread and up to `helpers` pool
  /// threads, rethrowing the first exception; returns false, having run nothing, when
  /// another thread's loop holds the pool.
  bool run(Index n, Call call, void* body, int helpers) {
    std::unique_lock<std::mutex> owner(owner_, std::try_to_lock);
    if (!owner) return false;
    const std::uint64_t gen = publish(n, call, body, helpers, false);
    {
      ItemScope scope;
      work(gen, n, call, body);
    }
    finish(n);
    return true;
  }

  /// Runs f() once on every pool thread started so far, and waits for all of them.
  template <class F>
  void on_every_thread(F f) {
    if (forked_.load()) return;  // a fork() child has no pool threads (owner_ may be a lost thread's)
    std::lock_guard<std::mutex> owner(owner_);
    const int threads = started_.load();
    publish(threads, [](void* body, Index) { (*static_cast<F*>(body))(); }, &f, threads, true);
    finish(threads);
  }

 private:
  static constexpr std::uint64_t kItemBits = 32;
  static std::uint64_t generation(std::uint64_t ticket) { return ticket >> kItemBits; }
  static std::uint64_t next_generation(std::uint64_t gen, std::uint64_t step) {
    return (gen + step) & ((std::uint64_t(1) << (64 - kItemBits)) - 1);
  }
  static Index item(std::uint64_t ticket) { return Index(ticket & ((std::uint64_t(1) << kItemBits) - 1)); }

  ThreadPool() {
#if defined(__unix__)
    // A child of fork() has none of the pool's threads, and starts none: in the child of a
    // threaded process only async-signal-safe calls are safe (a lock another thread held
    // during the fork, in malloc say, stays locked), so its loops run on the calling thread.
    // The helpers that were sleeping, or held the pool's lock on their way to sleep, did not
    // come along: the child counts none and gets a new lock and condition variable.
    pthread_atfork(nullptr, nullptr, [] {
      ThreadPool& p = instance();
      new (&p.mutex_) std::mutex;
      new (&p.wake_) std::condition_variable;
      p.sleeping_.store(0);
      p.started_.store(0);
      p.forked_.store(true);
    });
#endif
  }

  /// Writes a loop's fields under the sequence lock, starts missing helpers, wakes sleeping
  /// ones; returns the loop's generation.
  std::uint64_t publish(Index n, Call call, void* body, int helpers, bool each) {
    try {
      for (int id = started_.load(); id < helpers && !forked_.load(); started_.store(++id))
        std::thread([this, id] { serve(id); }).detach();
    } catch (const std::system_error&) {  // no more threads: the loop runs on those there are
    }
    const std::uint64_t writing = next_generation(generation(ticket_.load(std::memory_order_relaxed)), 1);
    const std::uint64_t gen = next_generation(writing, 1);
    // Release stores: a reader that sees a field's new value sees the odd ticket before it.
    ticket_.store(writing << kItemBits, std::memory_order_relaxed);
    constexpr auto order = std::memory_order_release;
    n_.store(n, order), call_.store(call, order), body_.store(body, order), helpers_.store(helpers, order);
    each_.store(each, order), done_.store(0, order), failed_.store(false, order), error_ = nullptr;
    ticket_.store(gen << kItemBits);  // seq_cst: ordered before reading sleeping_ (see serve)
    if (helpers > 0 && sleeping_.load() > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
    return gen;
  }

  /// Claims and runs items of loop `gen` until none is left (or a newer loop started).
  void work(std::uint64_t gen, Index n, Call call, void* body) {
    std::uint64_t t = ticket_.load(std::memory_order_relaxed);
    while (generation(t) == gen && item(t) < n) {
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acquire, std::memory_order_relaxed)) continue;
      run_item(call, body, item(t));
      t = ticket_.load(std::memory_order_relaxed);
    }
  }

  void run_item(Call call, void* body, Index i) {
    if (!failed_.load(std::memory_order_relaxed)) {
      try {
        call(body, i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
    }
    done_.fetch_add(1, std::memory_order_release);
  }

  /// Waits until all n items have run (their writes are then visible here); rethrows.
  void finish(Index n) {
    while (done_.load(std::memory_order_acquire) != n) std::this_thread::yield();
    if (error_) std::rethrow_exception(error_);
  }

  /// Helper `id`'s life: wait for a new loop, read it, join it if it wants this helper.
  void serve(int id) {
    ItemScope scope;
    std::uint64_t seen = 0;
    for (;;) {
      const auto fresh = [&] {
        const std::uint64_t g = generation(ticket_.load());
        return g != seen && g % 2 == 0;
      };
      // Poll by yielding the core (a helper sharing its core with the caller, or with another
      // process, gives it the core instead of burning the time slice), then sleep.
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      while (!fresh() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
      if (!fresh()) {
        std::unique_lock<std::mutex> lock(mutex_);
        sleeping_.fetch_add(1);  // seq_cst: either publish sees it or this sees the ticket
        wake_.wait(lock, fresh);
        sleeping_.fetch_sub(1);
      }
      // Acquire loads: the ticket is read again after the fields, and unchanged means they
      // are the loop of generation gen (not torn by a newer publish).
      constexpr auto order = std::memory_order_acquire;
      const std::uint64_t gen = generation(ticket_.load(order));
      const Index n = n_.load(order);
      const Call call = call_.load(order);
      void* const body = body_.load(order);
      const int helpers = helpers_.load(order);
      const bool each = each_.load(order);
      if (gen % 2 != 0 || generation(ticket_.load(std::memory_order_relaxed)) != gen) continue;  // torn
      seen = gen;
      if (id >= helpers) continue;
      if (each)
        run_item(call, body, id);
      else
        work(gen, n, call, body);
    }
  }

  std::mutex owner_;  ///< held by the thread whose loop runs
  std::atomic<std::uint64_t> ticket_{0};
  std::atomic<Index> n_{0}, done_{0};
  std::atomic<Call> call_{nullptr};
  std::atomic<void*> body_{nullptr};
  std::atomic<int> helpers_{0}, started_{0}, sleeping_{0};
  std::atomic<bool> each_{false}, failed_{false}, forked_{false};  ///< forked_: in a fork() child
  std::mutex mutex_;  ///< guards error_; sleeping helpers wait on it
  std::condition_variable wake_;
  std::exception_ptr error_;  ///< the first exception thrown by an item of the current loop
};

/// @brief Calls f(i) for every i in [0, n), on up to get_num_threads() threads.
///
/// Items are handed out dynamically, one at a time; f must write only to memory that
/// belongs to item i. The call returns when every item has run, without waiting for
/// helper threads that found nothing left. An exception thrown by f is rethrown on the
/// calling thread (the first one caught; the remaining items are skipped). Inside another
/// loop's item, inside an OpenMP parallel region, or while another thread's loop holds the
/// pool, the items run on the calling thread.
///
/// Eigen products called from f run serially (see ItemScope), on every path: a program that
/// sets Eigen::setNbThreads(n > 1) itself gets Eigen's threading back inside items.
template <class F>
void parallel_for(Index n, F&& f) {
  if (n <= 0) return;
#if defined(_OPENMP)
  const int threads = static_cast<int>(std::min<Index>(get_num_threads(), n));
  if (threads > 1 && n < (Index(1) << 31) && !in_parallel_loop() && !omp_in_parallel()) {
    using Body = std::remove_reference_t<F>;
    void* body = const_cast<void*>(static_cast<const void*>(&f));
    const auto call = [](void* b, Index i) { (*static_cast<Body*>(b))(i); };
    if (ThreadPool::instance().run(n, call, body, threads - 1)) return;
  }
#endif
  ItemScope scope;
  for (Index i = 0; i < n; ++i) f(i);
}

}  // namespace detail
}  // namespace attn
