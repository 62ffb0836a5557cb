// Row blocks of an (N, N) pass spread over TensorFlow's CPU worker threads: shared by
// hebb_ops.cc and modulated_ops.cc (included by both, compiled into one library).
#ifndef HEBBKERAS_KERNELS_NATIVE_BLOCKS_H_
#define HEBBKERAS_KERNELS_NATIVE_BLOCKS_H_

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
#include "rows.h"

namespace hebbkeras_blocks {

// Runs fn(block, row_begin, row_end) over `blocks` row blocks on the op's pool.
template <typename Fn>
void ForBlocks(tensorflow::OpKernelContext* ctx, int64_t rows, int64_t blocks, Fn fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(blocks, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) BlockRows(rows, blocks, p, fn);
  });
}

// `per_thread` blocks per worker thread (taken by whichever thread is free: a
// thread held up elsewhere leaves its share to the others), at least 16 rows each.
inline int64_t NumBlocks(tensorflow::OpKernelContext* ctx, int64_t rows, int64_t per_thread = 1) {
  return BlocksFor(ctx->device()->tensorflow_cpu_worker_threads()->num_threads * per_thread, rows);
}

// Rows of a tile (see ForTiles): at N = 1001 in float32, 16 rows of w and alpha are
// 128 KB, which stay in a core's L2 while every episode of a batch passes over them.
constexpr int64_t kTileRows = 16;

// Calls fn(b, i) for the rows [lo, hi) of every episode b < batch, in tiles of
// kTileRows rows: every episode's rows of a tile before the next tile. Each
// episode's rows of a tile are contiguous in its (N, N) matrix (long streams
// for the prefetchers, where one row at a time from each of 32 episodes left
// them 32 short ones), and the tile's rows of w, alpha and alpha's gradient
// stay in cache across the batch. `reverse` visits the same pairs in the
// opposite order (at batch 1: the rows last to first).
template <typename Fn>
void ForTiles(int64_t lo, int64_t hi, int64_t batch, bool reverse, Fn fn) {
  const int64_t rows = kTileRows;
  const int64_t tiles = (hi - lo + rows - 1) / rows;
  for (int64_t tt = 0; tt < tiles; ++tt) {
    const int64_t t = reverse ? tiles - 1 - tt : tt;
    const int64_t r0 = lo + t * rows, r1 = std::min(hi, r0 + rows);
    for (int64_t bb = 0; bb < batch; ++bb) {
      const int64_t b = reverse ? batch - 1 - bb : bb;
      for (int64_t r = r0; r < r1; ++r) fn(b, reverse ? r0 + r1 - 1 - r : r);
    }
  }
}

// ForTiles' visiting order, one (episode, row) pair at a time.
class TileOrder {
 public:
  TileOrder(int64_t lo, int64_t hi, int64_t batch, bool reverse)
      : lo_(lo), hi_(hi), batch_(batch), reverse_(reverse),
        tiles_(batch > 0 && hi > lo ? (hi - lo + kTileRows - 1) / kTileRows : 0) {
    Enter();
  }
  bool done() const { return tt_ >= tiles_; }
  int64_t b() const { return reverse_ ? batch_ - 1 - bb_ : bb_; }
  int64_t i() const { return reverse_ ? r0_ + r1_ - 1 - r_ : r_; }
  void Next() {
    if (++r_ < r1_) return;
    r_ = r0_;
    if (++bb_ < batch_) return;
    bb_ = 0;
    ++tt_;
    Enter();
  }

 private:
  void Enter() {
    if (done()) return;
    const int64_t t = reverse_ ? tiles_ - 1 - tt_ : tt_;
    r0_ = lo_ + t * kTileRows;
    r1_ = std::min(hi_, r0_ + kTileRows);
    r_ = r0_;
  }
  int64_t lo_, hi_, batch_;
  bool reverse_;
  int64_t tiles_, tt_ = 0, bb_ = 0, r0_ = 0, r1_ = 0, r_ = 0;
};

// ForTiles, with fn(b, i, b_ahead, i_ahead) also given the pair `ahead` places later in
// the same order (b_ahead = -1 near the end, and everywhere for ahead <= 0), for the
// pass to prefetch its rows while it works on this one (PrefetchRow): the hardware prefetchers alone left each thread at
// about half its streaming bandwidth where a pass reads w and alpha beside the trace.
template <typename Fn>
void ForTilesAhead(int64_t lo, int64_t hi, int64_t batch, bool reverse, int64_t ahead, Fn fn) {
  TileOrder at(lo, hi, batch, reverse), lead(lo, hi, batch, reverse);
  for (int64_t k = 0; k < ahead && !lead.done(); ++k) lead.Next();
  for (; !at.done(); at.Next()) {
    if (ahead <= 0 || lead.done()) {
      fn(at.b(), at.i(), int64_t{-1}, int64_t{-1});
    } else {
      fn(at.b(), at.i(), lead.b(), lead.i());
      lead.Next();
    }
  }
}

// Rows ahead that a pass prefetches (two 4 KB rows at N = 1001), and the columns per
// chunk of a row: a chunk's work follows the prefetch of the same columns of the row ahead.
constexpr int64_t kRowsAhead = 2;
constexpr int64_t kChunk = 256;

// Prefetches columns [j0, j1) of `row` into L1 for writing (the passes update their
// trace rows in place); nothing for a null row.
template <typename T>
inline void PrefetchRow(const T* row, int64_t j0, int64_t j1) {
  if (row == nullptr) return;
  for (int64_t j = j0; j < j1; j += 64 / static_cast<int64_t>(sizeof(T))) {
    __builtin_prefetch(row + j, 1, 3);
  }
}

}  // namespace hebbkeras_blocks

#endif  // HEBBKERAS_KERNELS_NATIVE_BLOCKS_H_
