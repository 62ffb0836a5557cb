// CPU kernels for the neuromodulated rules' trace passes (hebbkeras/kernels/modulated_fused.py).
//
// One step's work on the (batch, N, N) traces in a single pass over each
// matrix; `m` is the modulation M_t spread over the receiving neurons
// (batch, N), `c` the clip, `P` the term the modulation gates:
// outer(u, y) for "simple", the eligibility trace E for "retroactive".
//
// HebbkerasModulatedUpdate (forward, one step):
//   S     = hebb + m_j * P_ij;   hebb' = clip(S, -c, c)
//   E'    = (1 - eta) * E + eta * outer(u, y)                 (retroactive)
//   q_j   = sum_i y_i alpha_ij hebb'_ij                       (with_q: the next step's plastic input)
//
// HebbkerasModulatedBackward (backward through step t; hebb = hebb_t, E = E_t,
// u = y_{t-1}, y = y_t, g = the pre-activation gradient of step t + 1,
// d = dL/dS_{t+1} masked by the clip, or dL/dhebb_T at the last step):
//   hebb' = clip(S)                         (hebb_{t+1}, rebuilt in registers)
//   H     = d + alpha * outer(y, g)         (dL/dhebb_{t+1})
//   d'    = H * (-c <= S <= c)              (dL/dS_t: the clip's derivative)
//   plastic_i = sum_j alpha_ij hebb'_ij g_j,   galpha' = galpha + sum_b y_i hebb'_ij g_j
//   simple:      red1_j = sum_i u_i d'_ij,  red2_i = sum_j d'_ij m_j y_j
//   retroactive: red1_j = sum_i d'_ij E_ij, ge' = m_j d'_ij + (1 - eta) ge_ij,
//                red2_i = sum_j ge_ij y_j,  red3_j = sum_i u_i ge_ij,  dot = sum ge_ij E_ij
// With the `tail` attribute (the trace before the first step) hebb' = hebb and
// d' = H: only H, plastic and galpha.
//
// HebbkerasModulatedChunk (the backward pass's recomputation of one chunk):
//   hebbs[0] = hebb, es[0] = E, then HebbkerasModulatedUpdate's traces with
//   (us[t], ys[t], ms[t]) for t < K - 1: the traces before each of the chunk's K
//   steps. Its outputs y and M are known, so each row runs through all K steps
//   in cache (the inputs are read once, each output written once).
//
// alpha (and galpha) are (N, N) or scalars. Rows are split into one block per
// worker thread; column sums go through per-block partial sums.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "blocks.h"

namespace hebbkeras_modulated {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::InferenceContext;

REGISTER_OP("HebbkerasModulatedUpdate")
    .Input("hebb: T")
    .Input("e: T")
    .Input("alpha: T")
    .Input("u: T")
    .Input("y: T")
    .Input("m: T")
    .Input("eta: T")
    .Input("clip: T")
    .Output("hebb_out: T")
    .Output("e_out: T")
    .Output("q: T")
    .Attr("retroactive: bool")
    .Attr("with_q: bool")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      c->set_output(2, c->input(3));
      return absl::OkStatus();
    });

REGISTER_OP("HebbkerasModulatedBackward")
    .Input("hebb: T")
    .Input("e: T")
    .Input("d: T")
    .Input("ge: T")
    .Input("galpha: T")
    .Input("alpha: T")
    .Input("u: T")
    .Input("y: T")
    .Input("m: T")
    .Input("g: T")
    .Input("eta: T")
    .Input("clip: T")
    .Output("d_out: T")
    .Output("ge_out: T")
    .Output("galpha_out: T")
    .Output("plastic: T")
    .Output("red1: T")
    .Output("red2: T")
    .Output("red3: T")
    .Output("dot: T")
    .Attr("retroactive: bool")
    .Attr("tail: bool")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(3));
      c->set_output(2, c->input(4));
      for (int k = 3; k < 7; ++k) c->set_output(k, c->input(6));
      c->set_output(7, c->Scalar());
      return absl::OkStatus();
    });

REGISTER_OP("HebbkerasModulatedChunk")
    .Input("hebb: T")
    .Input("e: T")
    .Input("us: T")
    .Input("ys: T")
    .Input("ms: T")
    .Input("eta: T")
    .Input("clip: T")
    .Output("hebbs: T")
    .Output("es: T")
    .Attr("retroactive: bool")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      // (K, B, N, N): K from us, the rest from hebb.
      ::tensorflow::shape_inference::ShapeHandle out;
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(c->Dim(c->input(2), 0)), c->input(0), &out));
      c->set_output(0, out);
      c->set_output(1, c->input(1));
      return absl::OkStatus();
    });

namespace {

// hebb (B, N, N); the listed matrices shaped as hebb; vectors (B, N); alpha (N, N) or scalar.
absl::Status CheckShapes(const Tensor& hebb, const Tensor& alpha,
                         std::initializer_list<const Tensor*> matrices,
                         std::initializer_list<const Tensor*> vectors) {
  if (hebb.dims() != 3 || hebb.dim_size(1) != hebb.dim_size(2)) {
    return InvalidArgument("hebb must be (batch, N, N), got ", hebb.shape().DebugString());
  }
  const int64_t b = hebb.dim_size(0), n = hebb.dim_size(1);
  if (!(alpha.dims() == 0 ||
        (alpha.dims() == 2 && alpha.dim_size(0) == n && alpha.dim_size(1) == n))) {
    return InvalidArgument("alpha must be a scalar or (N, N) with N = ", n, ", got ",
                           alpha.shape().DebugString());
  }
  for (const Tensor* t : matrices) {
    if (t->shape() != hebb.shape()) {
      return InvalidArgument("traces must be shaped as hebb ", hebb.shape().DebugString(),
                             ", got ", t->shape().DebugString());
    }
  }
  for (const Tensor* v : vectors) {
    if (v->dims() != 2 || v->dim_size(0) != b || v->dim_size(1) != n) {
      return InvalidArgument("vectors must be (batch, N) = (", b, ", ", n, "), got ",
                             v->shape().DebugString());
    }
  }
  return absl::OkStatus();
}

absl::Status CheckScalars(OpKernelContext* ctx, std::initializer_list<int> inputs) {
  for (int k : inputs) {
    if (ctx->input(k).dims() != 0) {
      return InvalidArgument("input ", k, " must be a scalar, got ",
                             ctx->input(k).shape().DebugString());
    }
  }
  return absl::OkStatus();
}

using hebbkeras_blocks::ForBlocks;
using hebbkeras_blocks::NumBlocks;
using hebbkeras_blocks::SumBlocks;

template <typename T>
inline T Clip(T s, T c) {
  return std::min(std::max(s, -c), c);
}

template <typename T>
class UpdateOp : public OpKernel {
 public:
  explicit UpdateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("retroactive", &retroactive_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("with_q", &with_q_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& hebb = ctx->input(0);
    const Tensor& e_in = ctx->input(1);
    const Tensor& alpha = ctx->input(2);
    const Tensor& u_t = ctx->input(3);
    const Tensor& y_t = ctx->input(4);
    const Tensor& m_t = ctx->input(5);
    if (retroactive_) {
      OP_REQUIRES_OK(ctx, CheckShapes(hebb, alpha, {&e_in}, {&u_t, &y_t, &m_t}));
    } else {
      OP_REQUIRES_OK(ctx, CheckShapes(hebb, alpha, {}, {&u_t, &y_t, &m_t}));
    }
    OP_REQUIRES_OK(ctx, CheckScalars(ctx, {6, 7}));
    const int64_t B = hebb.dim_size(0), N = hebb.dim_size(1);
    Tensor* h_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, hebb.shape(), &h_out));
    Tensor* e_out = nullptr;
    if (retroactive_) {
      OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({1}, 1, e_in.shape(), &e_out));
    } else {
      ctx->set_output(1, e_in);
    }
    Tensor* q_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, u_t.shape(), &q_t));
    const int64_t P = NumBlocks(ctx, N);
    Tensor partial_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(hebb.dtype(), TensorShape({P, B, N}), &partial_t));

    const T* h = hebb.flat<T>().data();
    T* ho = h_out->flat<T>().data();
    const T* e = retroactive_ ? e_in.flat<T>().data() : nullptr;
    T* eo = retroactive_ ? e_out->flat<T>().data() : nullptr;
    const T* alpha_p = alpha.flat<T>().data();
    const bool scalar_alpha = alpha.dims() == 0;
    const T* u = u_t.flat<T>().data();
    const T* y = y_t.flat<T>().data();
    const T* m = m_t.flat<T>().data();
    const T eta = ctx->input(6).scalar<T>()();
    const T c = ctx->input(7).scalar<T>()();
    const T keep = T(1) - eta;
    const bool retro = retroactive_, with_q = with_q_;
    T* partial = partial_t.flat<T>().data();

    ForBlocks(ctx, N, P, [&](int64_t p, int64_t lo, int64_t hi) {
      T* acc_p = partial + p * B * N;
      if (with_q) std::fill(acc_p, acc_p + B * N, T(0));
      const std::vector<T> ones(scalar_alpha ? N : 0, T(1));  // alpha's scale goes last
      // Batch outer, rows inner: each matrix's rows of this block stream in order.
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = lo; i < hi; ++i) {
          const T* a = scalar_alpha ? ones.data() : alpha_p + i * N;
          const int64_t row = (b * N + i) * N;
          const T* hr = h + row;
          T* hor = ho + row;
          const T* yb = y + b * N;
          const T* mb = m + b * N;
          const T ui = u[b * N + i];
          const T yi = yb[i];
          T* __restrict__ acc = acc_p + b * N;
          if (retro) {
            const T* er = e + row;
            T* eor = eo + row;
#pragma omp simd
            for (int64_t j = 0; j < N; ++j) {
              const T hn = Clip(hr[j] + mb[j] * er[j], c);
              hor[j] = hn;
              eor[j] = keep * er[j] + eta * (ui * yb[j]);
              if (with_q) acc[j] += yi * a[j] * hn;
            }
          } else {
#pragma omp simd
            for (int64_t j = 0; j < N; ++j) {
              const T hn = Clip(hr[j] + mb[j] * (ui * yb[j]), c);
              hor[j] = hn;
              if (with_q) acc[j] += yi * a[j] * hn;
            }
          }
        }
      }
    });
    T* q = q_t->flat<T>().data();
    if (with_q) {
      SumBlocks(partial, P, B * N, scalar_alpha ? alpha_p[0] : T(1), q);
    } else {
      std::fill(q, q + B * N, T(0));
    }
  }

 private:
  bool retroactive_ = false, with_q_ = true;
};

template <typename T>
class BackwardOp : public OpKernel {
 public:
  explicit BackwardOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("retroactive", &retroactive_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("tail", &tail_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& hebb = ctx->input(0);
    const Tensor& e_in = ctx->input(1);
    const Tensor& d_in = ctx->input(2);
    const Tensor& ge_in = ctx->input(3);
    const Tensor& galpha = ctx->input(4);
    const Tensor& alpha = ctx->input(5);
    const Tensor& u_t = ctx->input(6);
    const Tensor& y_t = ctx->input(7);
    const Tensor& m_t = ctx->input(8);
    const Tensor& g_t = ctx->input(9);
    const bool retro = retroactive_ && !tail_;  // the tail needs no E
    if (retro) {
      OP_REQUIRES_OK(ctx, CheckShapes(hebb, alpha, {&e_in, &d_in, &ge_in},
                                      {&u_t, &y_t, &m_t, &g_t}));
    } else {
      OP_REQUIRES_OK(ctx, CheckShapes(hebb, alpha, {&d_in}, {&u_t, &y_t, &m_t, &g_t}));
    }
    OP_REQUIRES(ctx, galpha.shape() == alpha.shape(),
                InvalidArgument("galpha must have alpha's shape ", alpha.shape().DebugString()));
    OP_REQUIRES_OK(ctx, CheckScalars(ctx, {10, 11}));
    const int64_t B = hebb.dim_size(0), N = hebb.dim_size(1);

    Tensor* d_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({2}, 0, hebb.shape(), &d_out));
    Tensor* ge_out = nullptr;
    if (retro) {
      OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({3}, 1, ge_in.shape(), &ge_out));
    } else {
      ctx->set_output(1, ge_in);
    }
    Tensor* ga_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({4}, 2, galpha.shape(), &ga_t));
    {
      const T* src = galpha.flat<T>().data();
      T* dst = ga_t->flat<T>().data();
      if (dst != src) std::copy(src, src + galpha.NumElements(), dst);
    }
    Tensor* out_v[4] = {nullptr, nullptr, nullptr, nullptr};
    for (int k = 0; k < 4; ++k) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(3 + k, u_t.shape(), &out_v[k]));
    }
    Tensor* dot_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(7, TensorShape({}), &dot_t));
    const int64_t P = NumBlocks(ctx, N);
    // Per-block column sums: red1 and red3.
    Tensor partial_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(hebb.dtype(), TensorShape({2, P, B, N}), &partial_t));
    std::vector<double> dots(P, 0.0), gsums(P, 0.0);

    const T* h = hebb.flat<T>().data();
    const T* e = retro ? e_in.flat<T>().data() : nullptr;
    const T* d = d_in.flat<T>().data();
    T* dout = d_out->flat<T>().data();
    const T* ge = retro ? ge_in.flat<T>().data() : nullptr;
    T* geo = retro ? ge_out->flat<T>().data() : nullptr;
    T* ga = ga_t->flat<T>().data();
    const T* alpha_p = alpha.flat<T>().data();
    const bool scalar_alpha = alpha.dims() == 0;
    const T alpha_s = scalar_alpha ? alpha_p[0] : T(0);
    const T* u = u_t.flat<T>().data();
    const T* y = y_t.flat<T>().data();
    const T* m = m_t.flat<T>().data();
    const T* g = g_t.flat<T>().data();
    T* plastic = out_v[0]->flat<T>().data();
    T* red2 = out_v[2]->flat<T>().data();
    const T eta = ctx->input(10).scalar<T>()();
    const T c = ctx->input(11).scalar<T>()();
    const T keep = T(1) - eta;
    const bool tail = tail_, simple = !retroactive_;
    T* partial = partial_t.flat<T>().data();

    ForBlocks(ctx, N, P, [&](int64_t p, int64_t lo, int64_t hi) {
      T* acc1_p = partial + p * B * N;
      T* acc3_p = partial + (P + p) * B * N;
      std::fill(acc1_p, acc1_p + B * N, T(0));
      std::fill(acc3_p, acc3_p + B * N, T(0));
      double dot = 0.0;
      // A scalar alpha: a row of it, and galpha's terms summed in a scratch row.
      const std::vector<T> alpha_row(scalar_alpha ? N : 0, alpha_s);
      std::vector<T> scratch(scalar_alpha ? N : 0, T(0));
      // Batch outer, rows inner: each matrix's rows of this block stream in order
      // (alpha's and galpha's rows of the block stay in L2 across the batch).
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = lo; i < hi; ++i) {
          const T* a = scalar_alpha ? alpha_row.data() : alpha_p + i * N;
          T* __restrict__ gar = scalar_alpha ? scratch.data() : ga + i * N;
          const int64_t row = (b * N + i) * N;
          const T* hr = h + row;
          const T* dr = d + row;
          T* dor = dout + row;
          const T* yb = y + b * N;
          const T* mb = m + b * N;
          const T* gb = g + b * N;
          const T ui = u[b * N + i];
          const T yi = yb[i];
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
          } else if (simple) {
#pragma omp simd reduction(+ : pl, r2)
            for (int64_t j = 0; j < N; ++j) {
              const T aij = a[j];
              const T s = hr[j] + mb[j] * (ui * yb[j]);
              const T hn = Clip(s, c);
              const T hv = dr[j] + aij * (yi * gb[j]);
              const T dv = (s >= -c && s <= c) ? hv : T(0);
              dor[j] = dv;
              pl += aij * hn * gb[j];
              gar[j] += yi * hn * gb[j];
              acc1[j] += ui * dv;
              r2 += dv * mb[j] * yb[j];
            }
          } else {
            const T* er = e + row;
            const T* ger = ge + row;
            T* geor = geo + row;
#pragma omp simd reduction(+ : pl, r2, dt)
            for (int64_t j = 0; j < N; ++j) {
              const T aij = a[j];
              const T s = hr[j] + mb[j] * er[j];
              const T hn = Clip(s, c);
              const T hv = dr[j] + aij * (yi * gb[j]);
              const T dv = (s >= -c && s <= c) ? hv : T(0);
              dor[j] = dv;
              pl += aij * hn * gb[j];
              gar[j] += yi * hn * gb[j];
              acc1[j] += dv * er[j];
              const T gv = ger[j];
              geor[j] = mb[j] * dv + keep * gv;
              r2 += gv * yb[j];
              acc3[j] += ui * gv;
              dt += gv * er[j];
            }
          }
          plastic[b * N + i] = pl;
          red2[b * N + i] = r2;
          dot += dt;
        }
      }
      dots[p] = dot;
      double gsum = 0.0;
      for (const T v : scratch) gsum += v;
      gsums[p] = gsum;
    });
    SumBlocks(partial, P, B * N, T(1), out_v[1]->flat<T>().data());
    SumBlocks(partial + P * B * N, P, B * N, T(1), out_v[3]->flat<T>().data());
    double dot = 0.0, gsum = 0.0;
    for (int64_t p = 0; p < P; ++p) dot += dots[p], gsum += gsums[p];
    dot_t->scalar<T>()() = static_cast<T>(dot);
    if (scalar_alpha) ga[0] += static_cast<T>(gsum);
  }

 private:
  bool retroactive_ = false, tail_ = false;
};

template <typename T>
class ChunkOp : public OpKernel {
 public:
  explicit ChunkOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("retroactive", &retroactive_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& hebb = ctx->input(0);
    const Tensor& e_in = ctx->input(1);
    const Tensor& us_t = ctx->input(2);
    const Tensor& ys_t = ctx->input(3);
    const Tensor& ms_t = ctx->input(4);
    const Tensor scalar(hebb.dtype(), TensorShape({}));  // no alpha: a scalar passes the check
    if (retroactive_) {
      OP_REQUIRES_OK(ctx, CheckShapes(hebb, scalar, {&e_in}, {}));
    } else {
      OP_REQUIRES_OK(ctx, CheckShapes(hebb, scalar, {}, {}));
    }
    OP_REQUIRES_OK(ctx, CheckScalars(ctx, {5, 6}));
    const int64_t B = hebb.dim_size(0), N = hebb.dim_size(1);
    for (const Tensor* v : {&us_t, &ys_t, &ms_t}) {
      OP_REQUIRES(ctx, v->dims() == 3 && v->dim_size(0) == us_t.dim_size(0) &&
                       v->dim_size(1) == B && v->dim_size(2) == N,
                  InvalidArgument("us, ys, ms must be (K, batch, N), got ",
                                  v->shape().DebugString()));
    }
    const int64_t K = us_t.dim_size(0);
    OP_REQUIRES(ctx, K >= 1, InvalidArgument("a chunk has at least one step"));
    TensorShape shape({K, B, N, N});
    Tensor* hs_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &hs_t));
    Tensor* es_t = nullptr;
    if (retroactive_) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(1, shape, &es_t));
    } else {
      ctx->set_output(1, e_in);
    }
    const T* h = hebb.flat<T>().data();
    const T* e = retroactive_ ? e_in.flat<T>().data() : nullptr;
    T* hs = hs_t->flat<T>().data();
    T* es = retroactive_ ? es_t->flat<T>().data() : nullptr;
    const T* us = us_t.flat<T>().data();
    const T* ys = ys_t.flat<T>().data();
    const T* ms = ms_t.flat<T>().data();
    const T eta = ctx->input(5).scalar<T>()();
    const T c = ctx->input(6).scalar<T>()();
    const T keep = T(1) - eta;
    const bool retro = retroactive_;
    const int64_t mat = B * N * N;

    ForBlocks(ctx, N, NumBlocks(ctx, N), [&](int64_t p, int64_t lo, int64_t hi) {
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = lo; i < hi; ++i) {
          const int64_t row = (b * N + i) * N;
          std::copy(h + row, h + row + N, hs + row);
          if (retro) std::copy(e + row, e + row + N, es + row);
          for (int64_t t = 0; t + 1 < K; ++t) {
            const T* hr = hs + t * mat + row;
            T* hn = hs + (t + 1) * mat + row;
            const T* yb = ys + (t * B + b) * N;
            const T* mb = ms + (t * B + b) * N;
            const T ui = us[(t * B + b) * N + i];
            if (retro) {
              const T* er = es + t * mat + row;
              T* en = es + (t + 1) * mat + row;
#pragma omp simd
              for (int64_t j = 0; j < N; ++j) {
                hn[j] = Clip(hr[j] + mb[j] * er[j], c);
                en[j] = keep * er[j] + eta * (ui * yb[j]);
              }
            } else {
#pragma omp simd
              for (int64_t j = 0; j < N; ++j) hn[j] = Clip(hr[j] + mb[j] * (ui * yb[j]), c);
            }
          }
        }
      }
    });
  }

 private:
  bool retroactive_ = false;
};

}  // namespace

#define REGISTER(T)                                                                 \
  REGISTER_KERNEL_BUILDER(                                                          \
      Name("HebbkerasModulatedUpdate").Device(DEVICE_CPU).TypeConstraint<T>("T"),    \
      UpdateOp<T>);                                                                 \
  REGISTER_KERNEL_BUILDER(                                                          \
      Name("HebbkerasModulatedBackward").Device(DEVICE_CPU).TypeConstraint<T>("T"),  \
      BackwardOp<T>);                                                               \
  REGISTER_KERNEL_BUILDER(                                                          \
      Name("HebbkerasModulatedChunk").Device(DEVICE_CPU).TypeConstraint<T>("T"),     \
      ChunkOp<T>);

REGISTER(float)
REGISTER(double)

}  // namespace hebbkeras_modulated
