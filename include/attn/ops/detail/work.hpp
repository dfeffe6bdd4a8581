#pragma once
/// @file
/// @brief How the kernels cut a call into work items, with each thread's scratch memory.
/// Not public API.
///
/// Items are fixed by the problem's size alone (never by the thread count) and each is
/// computed the same way on whichever thread runs it, so results are bit-identical for
/// every thread count (see attn/core/parallel.hpp).

#include <algorithm>
#include <cmath>

#include "attn/core/parallel.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"

namespace attn {
namespace detail {

/// Multiply-adds below which a piece of work is not worth a thread (~10 us): a call
/// smaller than this runs as one item, and items are at least this large.
constexpr double kMinParallelWork = double(1 << 18);

/// @brief `units` units of equal cost cut into items of `per_item` consecutive units, so
/// that an item holds at least kMinParallelWork multiply-adds (or every unit).
struct WorkSplit {
  Index units = 0, per_item = 1;

  /// @param unit_cost multiply-adds of one unit
  static WorkSplit of(Index units, double unit_cost) {
    WorkSplit w;
    w.units = units;
    const double per = std::ceil(kMinParallelWork / std::max(unit_cost, 1.0));
    w.per_item = std::max<Index>(1, std::min<Index>(std::max<Index>(units, 1), static_cast<Index>(per)));
    return w;
  }
  Index items() const { return (units + per_item - 1) / per_item; }
  Index begin(Index item) const { return item * per_item; }
  Index end(Index item) const { return std::min(units, (item + 1) * per_item); }
};

/// (batch, head, first query) of a unit of attention work.
struct QueryBlock {
  Index b, h, i0;
};

/// @brief The units of an attention call: one per (batch, head, block of `rows` queries),
/// numbered batch-major, then head, then query block. A kernel that handles all heads of
/// a block at once (talking heads) counts one head.
struct QueryBlocks {
  Index batch, heads, length, rows;

  Index per_head() const { return (length + rows - 1) / rows; }
  Index count() const { return batch * heads * per_head(); }
  QueryBlock operator[](Index u) const {
    const Index bh = u / per_head();
    return {bh / heads, bh % heads, (u % per_head()) * rows};
  }
  /// Queries in the block starting at i0.
  Index rows_at(Index i0) const { return std::min(rows, length - i0); }
};

/// @brief Runs f(block, scratch) for every unit of `blocks` with parallel_for, in items
/// that each hold at least kMinParallelWork (unit_cost multiply-adds per unit); scratch is
/// scratch_size elements of the running thread's workspace (attn/core/workspace.hpp), reused
/// by every call on that thread.
template <class T, class F>
void for_each_block(const QueryBlocks& blocks, double unit_cost, Index scratch_size, F&& f) {
  const WorkSplit split = WorkSplit::of(blocks.count(), unit_cost);
  parallel_for(split.items(), [&](Index item) {
    const WorkBuffer<T> scratch(scratch_size);
    for (Index u = split.begin(item); u < split.end(item); ++u) f(blocks[u], scratch.data());
  });
}

}  // namespace detail
}  // namespace attn
