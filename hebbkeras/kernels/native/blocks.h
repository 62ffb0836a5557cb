// Row blocks of an (N, N) pass spread over TensorFlow's CPU worker threads: shared by
// hebb_ops.cc and modulated_ops.cc (included by both, compiled into one library).
#ifndef HEBBKERAS_KERNELS_NATIVE_BLOCKS_H_
#define HEBBKERAS_KERNELS_NATIVE_BLOCKS_H_

#include <algorithm>
#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"

namespace hebbkeras_blocks {

// Runs fn(block, row_begin, row_end) over `blocks` row blocks on the op's pool.
template <typename Fn>
void ForBlocks(tensorflow::OpKernelContext* ctx, int64_t rows, int64_t blocks, Fn fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int64_t per = (rows + blocks - 1) / blocks;
  pool->ParallelFor(blocks, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) fn(p, p * per, std::min(rows, (p + 1) * per));
  });
}

// One block per worker thread, at least 16 rows each.
inline int64_t NumBlocks(tensorflow::OpKernelContext* ctx, int64_t rows) {
  const int64_t threads = ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
  return std::max<int64_t>(1, std::min<int64_t>(threads, rows / 16));
}

// out[k] = scale * sum_p partial[p, k]: the column sums of the row blocks.
template <typename T>
void SumBlocks(const T* partial, int64_t blocks, int64_t size, T scale, T* out) {
  for (int64_t k = 0; k < size; ++k) {
    T s = 0;
    for (int64_t p = 0; p < blocks; ++p) s += partial[p * size + k];
    out[k] = scale * s;
  }
}

}  // namespace hebbkeras_blocks

#endif  // HEBBKERAS_KERNELS_NATIVE_BLOCKS_H_
