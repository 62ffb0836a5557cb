// Row blocks of an (N, N) pass, without TensorFlow: which rows a block holds, and
// the column sums of the blocks' partial results (blocks.h runs the blocks on
// TensorFlow's worker threads, modulated_ffi.cc on XLA's).
#ifndef HEBBKERAS_KERNELS_NATIVE_ROWS_H_
#define HEBBKERAS_KERNELS_NATIVE_ROWS_H_

#include <algorithm>
#include <cstdint>

namespace hebbkeras_blocks {

// Calls fn(p, row_begin, row_end) for block p of `blocks` over `rows` rows.
template <typename Fn>
void BlockRows(int64_t rows, int64_t blocks, int64_t p, Fn&& fn) {
  const int64_t per = (rows + blocks - 1) / blocks;
  fn(p, std::min(rows, p * per), std::min(rows, (p + 1) * per));
}

// Blocks for `threads` workers, at least 16 rows each.
inline int64_t BlocksFor(int64_t threads, int64_t rows) {
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

#endif  // HEBBKERAS_KERNELS_NATIVE_ROWS_H_
