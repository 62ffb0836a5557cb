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

}  // namespace hebbkeras_blocks

#endif  // HEBBKERAS_KERNELS_NATIVE_BLOCKS_H_
