// The neuromodulated rules' passes over the (batch, N, N) traces, free of TensorFlow
// and XLA: one step's work in a single pass over each matrix, row block by row block.
// The math is in modulated_ops.cc's header comment; the TensorFlow ops there and the
// XLA FFI handlers of modulated_ffi.cc (JAX) only check shapes, allocate, and run these
// on their framework's threads.
//
// A `run(blocks, fn)` argument calls fn(p, row_begin, row_end) once for each row block
// p < blocks, on any threads, and returns when all are done.
#ifndef HEBBKERAS_KERNELS_NATIVE_MODULATED_KERNELS_H_
#define HEBBKERAS_KERNELS_NATIVE_MODULATED_KERNELS_H_

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "rows.h"

namespace hebbkeras_modulated {

template <typename T>
inline T Clip(T s, T c) {
  return std::min(std::max(s, -c), c);
}

// The operands every pass reads: traces (B, N, N) (`e` null for "simple"), vectors
// (B, N), alpha (N, N) or a scalar.
template <typename T>
struct Step {
  int64_t B = 0, N = 0;
  const T* hebb = nullptr;
  const T* e = nullptr;
  const T* alpha = nullptr;
  bool scalar_alpha = false;
  const T* u = nullptr;  // y_{t-1}
  const T* y = nullptr;  // y_t
  const T* m = nullptr;  // M_t spread over the receiving neurons
  T eta = 0, c = 0;
  bool retro = false;
};

// HebbkerasModulatedUpdate: hebb_out, e_out (may be hebb, e: in place) and q (B, N),
// zeros without with_q. partial: P * B * N scratch.
template <typename T, typename Run>
void Update(const Step<T>& s, bool with_q, int64_t P, T* partial, T* ho, T* eo, T* q, Run run) {
  const int64_t B = s.B, N = s.N;
  const T keep = T(1) - s.eta;
  run(P, [&](int64_t p, int64_t lo, int64_t hi) {
    T* acc_p = partial + p * B * N;
    if (with_q) std::fill(acc_p, acc_p + B * N, T(0));
    const std::vector<T> ones(s.scalar_alpha ? N : 0, T(1));  // alpha's scale goes last
    // Batch outer, rows inner: each matrix's rows of this block stream in order.
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* a = s.scalar_alpha ? ones.data() : s.alpha + i * N;
        const int64_t row = (b * N + i) * N;
        const T* hr = s.hebb + row;
        T* hor = ho + row;
        const T* yb = s.y + b * N;
        const T* mb = s.m + b * N;
        const T ui = s.u[b * N + i];
        const T yi = yb[i];
        T* __restrict__ acc = acc_p + b * N;
        if (s.retro) {
          const T* er = s.e + row;
          T* eor = eo + row;
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) {
            const T hn = Clip(hr[j] + mb[j] * er[j], s.c);
            hor[j] = hn;
            eor[j] = keep * er[j] + s.eta * (ui * yb[j]);
            if (with_q) acc[j] += yi * a[j] * hn;
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) {
            const T hn = Clip(hr[j] + mb[j] * (ui * yb[j]), s.c);
            hor[j] = hn;
            if (with_q) acc[j] += yi * a[j] * hn;
          }
        }
      }
    }
  });
  if (with_q) {
    hebbkeras_blocks::SumBlocks(partial, P, B * N, s.scalar_alpha ? s.alpha[0] : T(1), q);
  } else {
    std::fill(q, q + B * N, T(0));
  }
}

// HebbkerasModulatedBackward's outputs (d_out, ge_out may be d, ge: in place; galpha
// holds the running sum on entry and is added to) and inputs beyond `Step`.
template <typename T>
struct Backward {
  const T* d = nullptr;
  const T* ge = nullptr;
  const T* g = nullptr;
  T* d_out = nullptr;
  T* ge_out = nullptr;
  T* galpha = nullptr;
  T* plastic = nullptr;
  T* red1 = nullptr;
  T* red2 = nullptr;
  T* red3 = nullptr;
  T* dot = nullptr;
  // With `h_anchors` (Step::hebb and Step::e unused): hebb_t (and, retroactive,
  // E_t) rebuilt row by row from the chunk's traces at every `stride`-th step
  // (`h_anchors`, `anchors`: (ceil(K / stride), B, N, N), Chunk's) through the steps
  // after it ((us, ys, ms) (K, B, N), rate `eta_e`) by Chunk's own recurrence, so
  // equal to the forward pass's: a chunk stores 2 * ceil(K / stride) matrices, not K.
  const T* h_anchors = nullptr;
  const T* anchors = nullptr;
  int64_t stride = 1;
  const T* us = nullptr;
  const T* ys = nullptr;
  const T* ms = nullptr;
  int64_t index = 0;
  T eta_e = 0;
};

// hout[j] = hebb_t[i, j] (and eout[j] = E_t[i, j], `e0` non-null: "retroactive") from
// h0, e0 (row i of hebb_0, E_0) through t >= 1 steps of Chunk's recurrence:
//   hebb_{s+1} = clip(hebb_s + m[s] * P_s),  P_s = E_s or u[s] * y[s] ("simple"),
//   E_{s+1} = keep * E_s + eta * u[s] * y[s]
// (y[s] = ys + s * stride, m[s] = ms + s * stride); the rows stay in L1 between steps.
template <typename T>
void RebuildRows(const T* h0, const T* e0, const T* ys, const T* ms, int64_t stride,
                 const T* u, int64_t t, T keep, T eta, T c, int64_t n, T* hout, T* eout) {
  for (int64_t s = 0; s < t; ++s) {
    const T us = u[s];
    const T* y = ys + s * stride;
    const T* m = ms + s * stride;
    const T* h = s == 0 ? h0 : hout;  // then in place
    if (e0) {
      const T* e = s == 0 ? e0 : eout;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T ev = e[j];
        hout[j] = Clip(h[j] + m[j] * ev, c);
        eout[j] = keep * ev + eta * (us * y[j]);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) hout[j] = Clip(h[j] + m[j] * (us * y[j]), c);
    }
  }
}

// HebbkerasModulatedBackward. partial: 2 * P * B * N scratch.
template <typename T, typename Run>
void Backprop(const Step<T>& s, const Backward<T>& o, bool tail, int64_t P, T* partial,
              Run run) {
  const int64_t B = s.B, N = s.N;
  const T keep = T(1) - s.eta;
  const T alpha_s = s.scalar_alpha ? s.alpha[0] : T(0);
  const bool simple = !s.retro;
  const bool rebuild_h = !tail && o.h_anchors != nullptr;
  const bool rebuild = s.retro && rebuild_h;
  const T keep_e = T(1) - o.eta_e;
  std::vector<double> dots(P, 0.0), gsums(P, 0.0);
  run(P, [&](int64_t p, int64_t lo, int64_t hi) {
    T* acc1_p = partial + p * B * N;
    T* acc3_p = partial + (P + p) * B * N;
    std::fill(acc1_p, acc1_p + B * N, T(0));
    std::fill(acc3_p, acc3_p + B * N, T(0));
    double dot = 0.0;
    // A scalar alpha: a row of it, and galpha's terms summed in a scratch row.
    const std::vector<T> alpha_row(s.scalar_alpha ? N : 0, alpha_s);
    std::vector<T> scratch(s.scalar_alpha ? N : 0, T(0));
    std::vector<T> e_row(rebuild ? N : 0);  // E_t's row, where rebuilt
    std::vector<T> h_row(rebuild_h ? N : 0);  // hebb_t's row, where rebuilt
    const int64_t anchor = rebuild_h ? o.index / o.stride : 0, first = anchor * o.stride;
    std::vector<T> u_col(rebuild_h ? o.index - first : 0);  // y_{t-1}[i] of those steps
    // Batch outer, rows inner: each matrix's rows of this block stream in order
    // (alpha's and galpha's rows of the block stay in L2 across the batch).
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* a = s.scalar_alpha ? alpha_row.data() : s.alpha + i * N;
        T* __restrict__ gar = s.scalar_alpha ? scratch.data() : o.galpha + i * N;
        const int64_t row = (b * N + i) * N;
        const T* hr = rebuild_h ? h_row.data() : s.hebb + row;
        const T* dr = o.d + row;
        T* dor = o.d_out + row;
        const T* yb = s.y + b * N;
        const T* mb = s.m + b * N;
        const T* gb = o.g + b * N;
        const T ui = s.u[b * N + i];
        const T yi = yb[i];
        const T c = s.c;
        T* __restrict__ acc1 = acc1_p + b * N;
        T* __restrict__ acc3 = acc3_p + b * N;
        T pl = 0, r2 = 0, dt = 0;
        if (tail) {
#pragma omp simd reduction(+ : pl)
          for (int64_t j = 0; j < N; ++j) {
            const T aij = a[j];
            const T hn = hr[j];
            dor[j] = dr[j] + aij * (yi * gb[j]);
            pl += aij * hn * gb[j];
            gar[j] += yi * hn * gb[j];
          }
        } else {
          const T* er = nullptr;
          const T* ger = nullptr;
          T* geor = nullptr;
          if (!simple) {
            er = rebuild ? e_row.data() : s.e + row;
            ger = o.ge + row;
            geor = o.ge_out + row;
          }
          const int64_t at = anchor * B * N * N + row;
          if (rebuild_h && first == o.index) {  // an anchor's own step: read in place
            hr = o.h_anchors + at;
            if (rebuild) er = o.anchors + at;
          } else if (rebuild_h) {  // hebb_t's (and E_t's) row, in L1
            for (int64_t t = first; t < o.index; ++t) {
              u_col[t - first] = o.us[(t * B + b) * N + i];
            }
            RebuildRows(o.h_anchors + at, rebuild ? o.anchors + at : nullptr,
                        o.ys + (first * B + b) * N, o.ms + (first * B + b) * N, B * N,
                        u_col.data(), o.index - first, keep_e, o.eta_e, c, N, h_row.data(),
                        rebuild ? e_row.data() : nullptr);
          }
          // One loop for both rules, compiled once for each (`retro` a constant):
          // P_ij = u_i y_j ("simple") or E_ij ("retroactive").
          auto pass = [&](auto retro_tag) {
            constexpr bool retro = decltype(retro_tag)::value;
#pragma omp simd reduction(+ : pl, r2, dt)
            for (int64_t j = 0; j < N; ++j) {
              const T aij = a[j];
              const T pij = retro ? er[j] : ui * yb[j];
              const T sv = hr[j] + mb[j] * pij;
              const T hn = Clip(sv, c);
              const T hv = dr[j] + aij * (yi * gb[j]);
              const T dv = (sv >= -c && sv <= c) ? hv : T(0);
              dor[j] = dv;
              pl += aij * hn * gb[j];
              gar[j] += yi * hn * gb[j];
              if constexpr (retro) {
                acc1[j] += dv * er[j];
                const T gv = ger[j];
                geor[j] = mb[j] * dv + keep * gv;
                r2 += gv * yb[j];
                acc3[j] += ui * gv;
                dt += gv * er[j];
              } else {
                acc1[j] += ui * dv;
                r2 += dv * mb[j] * yb[j];
              }
            }
          };
          if (simple) {
            pass(std::false_type{});
          } else {
            pass(std::true_type{});
          }
        }
        o.plastic[b * N + i] = pl;
        o.red2[b * N + i] = r2;
        dot += dt;
      }
    }
    dots[p] = dot;
    double gsum = 0.0;
    for (const T v : scratch) gsum += v;
    gsums[p] = gsum;
  });
  hebbkeras_blocks::SumBlocks(partial, P, B * N, T(1), o.red1);
  hebbkeras_blocks::SumBlocks(partial + P * B * N, P, B * N, T(1), o.red3);
  double dot = 0.0, gsum = 0.0;
  for (int64_t p = 0; p < P; ++p) dot += dots[p], gsum += gsums[p];
  o.dot[0] = static_cast<T>(dot);
  if (s.scalar_alpha) o.galpha[0] += static_cast<T>(gsum);
}

// HebbkerasModulatedChunk: hs[0] = hebb, es[0] = e, then Update's traces with
// (us[t], ys[t], ms[t]), each (K, B, N); hs, es (K, B, N, N). With es null (the JAX
// handlers), E runs through the steps in a per-block scratch and is written only at
// every `stride`-th step, into `anchors` ((ceil(K / stride), B, N, N)): the backward
// pass rebuilds each E_t from the one before it (`Backward::anchors`). With
// `h_anchors` as well (hs then unused), hebb runs in a scratch too and is written
// at the same steps (`Backward::h_anchors`), and the steps after the last anchor
// are not run.
template <typename T, typename Run>
void Chunk(const Step<T>& s, int64_t K, const T* us, const T* ys, const T* ms, int64_t P,
           T* hs, T* es, Run run, T* anchors = nullptr, int64_t stride = 1,
           T* h_anchors = nullptr) {
  const int64_t B = s.B, N = s.N, mat = B * N * N;
  const T keep = T(1) - s.eta;
  const bool own_h = h_anchors != nullptr;
  // The last step whose traces are stored.
  const int64_t last = own_h ? (K - 1) / stride * stride : K - 1;
  run(P, [&](int64_t p, int64_t lo, int64_t hi) {
    const int64_t rows = hi - lo, size = rows * N;
    std::vector<T> scratch(s.retro && es == nullptr ? B * size : 0);
    std::vector<T> h_scratch(own_h ? B * size : 0);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = (b * N + lo) * N;
      std::copy(s.hebb + row, s.hebb + row + size, own_h ? h_scratch.data() + b * size : hs + row);
      if (s.retro) {
        std::copy(s.e + row, s.e + row + size, es ? es + row : scratch.data() + b * size);
      }
    }
    // Step by step over the block's rows: each step's rows (B * rows * N) stay in
    // this worker's cache for the next, and every matrix streams in order.
    for (int64_t t = 0; t <= last; ++t) {
      if (t % stride == 0) {
        for (int64_t b = 0; b < B; ++b) {
          const int64_t to = (t / stride) * mat + (b * N + lo) * N;
          if (anchors != nullptr) {
            const T* from = scratch.data() + b * size;
            std::copy(from, from + size, anchors + to);
          }
          if (own_h) {
            const T* from = h_scratch.data() + b * size;
            std::copy(from, from + size, h_anchors + to);
          }
        }
      }
      if (t == last) break;
      for (int64_t b = 0; b < B; ++b) {
        const T* yb = ys + (t * B + b) * N;
        const T* mb = ms + (t * B + b) * N;
        for (int64_t i = lo; i < hi; ++i) {
          const int64_t row = (b * N + i) * N;
          const int64_t own = (b * rows + (i - lo)) * N;  // a row of the scratches
          const T* hr = own_h ? h_scratch.data() + own : hs + t * mat + row;
          T* hn = own_h ? h_scratch.data() + own : hs + (t + 1) * mat + row;  // in place
          const T ui = us[(t * B + b) * N + i];
          if (s.retro) {
            const T* er = es ? es + t * mat + row : scratch.data() + own;
            T* en = es ? es + (t + 1) * mat + row : scratch.data() + own;
#pragma omp simd
            for (int64_t j = 0; j < N; ++j) {
              const T ev = er[j];
              hn[j] = Clip(hr[j] + mb[j] * ev, s.c);
              en[j] = keep * ev + s.eta * (ui * yb[j]);
            }
          } else {
#pragma omp simd
            for (int64_t j = 0; j < N; ++j) hn[j] = Clip(hr[j] + mb[j] * (ui * yb[j]), s.c);
          }
        }
      }
    }
  });
}

}  // namespace hebbkeras_modulated

#endif  // HEBBKERAS_KERNELS_NATIVE_MODULATED_KERNELS_H_
