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

// One block per worker thread, at least 16 rows each.
inline int64_t NumBlocks(tensorflow::OpKernelContext* ctx, int64_t rows) {
  return BlocksFor(ctx->device()->tensorflow_cpu_worker_threads()->num_threads, rows);
}

}  // namespace hebbkeras_blocks

#endif  // HEBBKERAS_KERNELS_NATIVE_BLOCKS_H_
