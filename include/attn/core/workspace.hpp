#pragma once
/// @file
/// @brief Scratch memory reused across calls: each thread keeps the buffers its largest call
/// needed, so a steady stream of forward passes allocates (and page-faults) nothing new.
///
/// What is kept: every thread that ran attn code (the calling threads and the OpenMP
/// threads of attn's parallel loops) keeps one block as large as the most scratch memory it
/// held at once: a module's intermediate activations (projections, attention output, FFN
/// hidden layer) on the calling thread, and the kernels' per-thread tiles on every thread.
/// workspace_bytes() tells the calling thread's size; release_workspace() gives the memory
/// back. Results never depend on it, and forward stays const and re-entrant: threads do not
/// share workspaces.

#include <algorithm>
#include <cstddef>
#include <new>
#include <vector>

#include "attn/core/error.hpp"
#include "attn/core/parallel.hpp"

namespace attn {
namespace detail {

/// @brief One thread's scratch memory: a stack of blocks, taken and given back in LIFO order
/// (WorkBuffer does both). When nothing is taken, several blocks are merged into one of
/// their total size, so the next call of the same size fits in one block.
class Workspace {
 public:
  /// The calling thread's workspace.
  static Workspace& this_thread() {
    thread_local Workspace w;
    return w;
  }

  /// Where the stack is now (take() moves it, give_back() returns to it).
  struct Mark {
    std::size_t block = 0, used = 0;
  };
  Mark mark() const { return {current_, blocks_.empty() ? 0 : blocks_[current_].used}; }

  /// `bytes` of memory aligned for any SIMD type, uninitialised.
  void* take(std::size_t bytes) {
    bytes = (bytes + kAlign - 1) / kAlign * kAlign;
    if (blocks_.empty()) blocks_.push_back(Block(bytes));
    while (blocks_[current_].size - blocks_[current_].used < bytes) {
      if (current_ + 1 < blocks_.size() && blocks_[current_ + 1].size >= bytes) {
        ++current_;  // the blocks after the current one are unused
      } else {  // the unused blocks after the current one are too small: one as large as all
        const std::size_t size = std::max(bytes, reserved());  // so the total never shrinks
        blocks_.erase(blocks_.begin() + static_cast<std::ptrdiff_t>(current_) + 1, blocks_.end());
        blocks_.push_back(Block(size));
        ++current_;
      }
    }
    Block& b = blocks_[current_];
    void* p = b.data + b.used;
    b.used += bytes;
    ++taken_;
    return p;
  }

  /// Returns everything taken since `m`.
  void give_back(const Mark& m) {
    for (std::size_t i = m.block + 1; i < blocks_.size(); ++i) blocks_[i].used = 0;
    current_ = m.block;
    if (!blocks_.empty()) blocks_[current_].used = m.used;
    if (--taken_ == 0 && blocks_.size() > 1) {  // merged, so that the next call fits in one block
      const std::size_t total = reserved();
      blocks_.clear();
      blocks_.push_back(Block(total));
      current_ = 0;
    }
  }

  /// Bytes this thread keeps.
  std::size_t reserved() const {
    std::size_t n = 0;
    for (const Block& b : blocks_) n += b.size;
    return n;
  }

  /// Frees the memory if none of it is taken.
  void release() {
    if (taken_ == 0) blocks_.clear(), current_ = 0;
  }

 private:
  static constexpr std::size_t kAlign = 64;
  struct Block {
    unsigned char* data = nullptr;
    std::size_t size = 0, used = 0;
    explicit Block(std::size_t n)
        : data(static_cast<unsigned char*>(::operator new(n, std::align_val_t(kAlign)))), size(n) {}
    Block(Block&& o) noexcept : data(o.data), size(o.size), used(o.used) { o.data = nullptr; }
    Block& operator=(Block&& o) noexcept {
      std::swap(data, o.data), std::swap(size, o.size), std::swap(used, o.used);
      return *this;
    }
    Block(const Block&) = delete;
    Block& operator=(const Block&) = delete;
    ~Block() {
      if (data) ::operator delete(data, std::align_val_t(kAlign));
    }
  };
  std::vector<Block> blocks_;
  std::size_t current_ = 0, taken_ = 0;
};

/// @brief n elements of T from the calling thread's Workspace, given back when this object
/// is destroyed. Buffers must be destroyed in the reverse order of their creation (locals
/// and members are).
template <class T>
class WorkBuffer {
 public:
  explicit WorkBuffer(Index n)
      : ws_(&Workspace::this_thread()), mark_(ws_->mark()),
        data_(static_cast<T*>(ws_->take(sizeof(T) * static_cast<std::size_t>(std::max<Index>(n, 1))))), size_(n) {}
  ~WorkBuffer() { ws_->give_back(mark_); }
  WorkBuffer(const WorkBuffer&) = delete;
  WorkBuffer& operator=(const WorkBuffer&) = delete;

  T* data() const { return data_; }
  Index size() const { return size_; }

 private:
  Workspace* ws_;
  Workspace::Mark mark_;
  T* data_;
  Index size_;
};

}  // namespace detail

/// @brief Bytes of scratch memory the calling thread keeps for attn's next calls.
inline std::size_t workspace_bytes() { return detail::Workspace::this_thread().reserved(); }

/// @brief Gives the scratch memory kept for attn's calls back to the system: the calling
/// thread's, and that of the threads of attn's parallel loops. The next call allocates it
/// again. Must not run while another attn call runs in the same process.
inline void release_workspace() {
  detail::Workspace::this_thread().release();
  detail::ThreadPool::instance().on_every_thread([] { detail::Workspace::this_thread().release(); });
}

}  // namespace attn
