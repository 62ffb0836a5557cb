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
// worker thread; column sums go through per-block partial sums. The passes
// themselves are in modulated_kernels.h (shared with the XLA FFI handlers of
// modulated_ffi.cc, for JAX); these ops check shapes, allocate and run them.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "blocks.h"
#include "modulated_kernels.h"

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

// A `run` for modulated_kernels.h: the row blocks on the op's worker threads.
inline auto Runner(OpKernelContext* ctx, int64_t rows) {
  return [ctx, rows](int64_t blocks, auto fn) { ForBlocks(ctx, rows, blocks, fn); };
}

// The operands of modulated_kernels.h's passes from the op's inputs.
template <typename T>
Step<T> StepOf(const Tensor& hebb, const Tensor* e, const Tensor* alpha, const Tensor* u,
               const Tensor* y, const Tensor* m, const Tensor& eta, const Tensor& clip,
               bool retro) {
  Step<T> s;
  s.B = hebb.dim_size(0);
  s.N = hebb.dim_size(1);
  s.hebb = hebb.flat<T>().data();
  s.e = retro ? e->flat<T>().data() : nullptr;
  if (alpha != nullptr) {
    s.alpha = alpha->flat<T>().data();
    s.scalar_alpha = alpha->dims() == 0;
  }
  if (u != nullptr) s.u = u->flat<T>().data();
  if (y != nullptr) s.y = y->flat<T>().data();
  if (m != nullptr) s.m = m->flat<T>().data();
  s.eta = eta.scalar<T>()();
  s.c = clip.scalar<T>()();
  s.retro = retro;
  return s;
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
    const Step<T> s = StepOf<T>(hebb, &e_in, &alpha, &u_t, &y_t, &m_t, ctx->input(6),
                                ctx->input(7), retroactive_);
    Update(s, with_q_, P, partial_t.flat<T>().data(), h_out->flat<T>().data(),
           retroactive_ ? e_out->flat<T>().data() : nullptr, q_t->flat<T>().data(),
           Runner(ctx, N));
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

    Backward<T> o;
    Tensor* d_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({2}, 0, hebb.shape(), &d_out));
    Tensor* ge_out = nullptr;
    if (retro) {
      OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({3}, 1, ge_in.shape(), &ge_out));
      o.ge = ge_in.flat<T>().data();
      o.ge_out = ge_out->flat<T>().data();
    } else {
      ctx->set_output(1, ge_in);
    }
    Tensor* ga_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({4}, 2, galpha.shape(), &ga_t));
    o.galpha = ga_t->flat<T>().data();
    {
      const T* src = galpha.flat<T>().data();
      if (o.galpha != src) std::copy(src, src + galpha.NumElements(), o.galpha);
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
    o.d = d_in.flat<T>().data();
    o.d_out = d_out->flat<T>().data();
    o.g = g_t.flat<T>().data();
    o.plastic = out_v[0]->flat<T>().data();
    o.red1 = out_v[1]->flat<T>().data();
    o.red2 = out_v[2]->flat<T>().data();
    o.red3 = out_v[3]->flat<T>().data();
    o.dot = dot_t->flat<T>().data();
    // In "simple" mode the kernels read no E; with the tail, no E and no m.
    Step<T> s = StepOf<T>(hebb, &e_in, &alpha, &u_t, &y_t, &m_t, ctx->input(10),
                          ctx->input(11), retro);
    s.retro = retroactive_;
    Backprop(s, o, tail_, P, partial_t.flat<T>().data(), Runner(ctx, N));
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
    const Step<T> s = StepOf<T>(hebb, &e_in, nullptr, nullptr, nullptr, nullptr, ctx->input(5),
                                ctx->input(6), retroactive_);
    Chunk(s, K, us_t.flat<T>().data(), ys_t.flat<T>().data(), ms_t.flat<T>().data(),
          NumBlocks(ctx, N), hs_t->flat<T>().data(),
          retroactive_ ? es_t->flat<T>().data() : nullptr, Runner(ctx, N));
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
