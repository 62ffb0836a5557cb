// CPU kernels for the fused path's Hebbian-rule trace passes (see fused.py).
//
// Plain TensorFlow runs each elementwise op as its own pass over the
// (batch, N, N) trace; these two kernels do all the work of one step (or
// one held pattern's run, with the pattern's first step) in a single pass over
// each N x N matrix, and the backward one also that of a fully clamped segment
// before it (absorb):
//
// HebbkerasTraceUpdate (forward):
//   hebb' = decay * hebb + outer(u, v)
//   q_j   = sum_i v_i (w_ij + alpha_ij hebb'_ij)   (the next step's pre-activation, eq. 1)
//           where need_q (else 0, and w and alpha are not read: the next step
//           is clamped)
//
// HebbkerasTraceBackward (backward, one segment of the episode):
//   H         = lagged ? (hebb - outer(lag_u, lag_v)) * lag_scale : hebb
//   G         = lag_gscale * ghebb
//               (lagged: hebb and ghebb are the trace and gradient after the
//               later segment, which the previous call absorbed without storing)
//   hebb_prev = invert ? (H - outer(inv_u, inv_v)) * inv_scale : ckpt
//               (ghebb stands for G below)
//   dot       = sum_bij ghebb_ij hebb_prev_ij   (for eta's gradient)
//   ghebb'    = g_decay * ghebb + [free] alpha * outer(yp, gpre)
//   plastic_i = [free] sum_j (w_ij + alpha_ij hebb_prev_ij) gpre_j   (eq. 1's gradient to y)
//   post_j    = sum_i next_u_i ghebb'_ij,  pre_i = sum_j ghebb'_ij next_v_j
//               (the earlier segment's products, computed in the same pass)
//   post_self_j = [self_post] sum_i inv_v_i ghebb_ij   (this segment's own product
//               with its output, which a pattern's first step merged with its held
//               run needs besides post and pre; else 0)
//   galpha'   = galpha + sum_b H * outer(yp, gpre), for this segment and the
//               later ones waiting in the queue `pend`
// absorb: the pass also does the work of the next (earlier) segment where it is
// fully clamped (no gpre, so nothing of it waits for this pass's sums): with
// G2 = ghebb' (its gradient after it) and H2 = (hebb_prev - outer(ab_u, ab_v)) * ab_scale,
//   dot2 = sum G2 * H2,  post_self2_j = sum_i ab_v_i G2_ij,
//   post2_j = sum_i ab_nu_i (ab_gdec G2)_ij,  pre2_i = sum_j (ab_gdec G2)_ij ab_nv_j
// (its products for the segment before it); H2 and ab_gdec G2 are not stored:
// the next call gets them as lagged, lag_gscale = ab_gdec. Its queue slot
// (ab_gdec, ab_u, ab_v, 0, 0) follows this segment's.
// alpha's gradient terms wait in a queue of M segments (slot e holds a
// segment's g_decay in pend_dec[e] and u, v, yp, gpre in pend[e]; `count`
// wait, the newest segment, i.e. the earliest in time, last). When the queue
// is full (or `final`: only the queue is applied) the pass applies them all,
// oldest segment first: H = hebb_prev for the last slot, then
// H <- pend_dec[e] H + outer(u_e, v_e) rebuilds each later trace in
// registers, so galpha is read and written once per M segments, not every
// step: keeping it out of most passes keeps the rest in cache. The queue
// lives in the op's inputs and outputs (no TensorFlow ops to maintain it).
//
// alpha (and galpha) are (N, N) or scalars. Rows are split into one block per
// worker thread, and a block into tiles of 16 rows (blocks.h, ForTiles): every
// episode's rows of a tile, then the next tile, so each episode's trace streams
// in runs of 16 contiguous rows and the tile's rows of w, alpha and galpha are
// read once for the whole batch. Reading w in the same pass saves a matmul of
// its own (a pass over w) and its TensorFlow ops in every step. From 4 episodes
// on, fused.py gives the queue one slot (galpha is then updated in every pass
// with a term: 2 N^2 beside the traces' 4 B N^2, where a flush of 16 slots
// cost more than a pass at batch 32), and a free step adds its own term in its
// main loop (FreeColumns). From 4 episodes on, each row's pass also prefetches
// the row two places ahead and runs 256-bit vectors (Rows, below).

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "blocks.h"

namespace hebbkeras {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::InferenceContext;

REGISTER_OP("HebbkerasTraceUpdate")
    .Input("hebb: T")
    .Input("alpha: T")
    .Input("w: T")
    .Input("decay: T")
    .Input("u: T")
    .Input("v: T")
    .Input("reverse: bool")
    .Input("need_q: bool")
    .Output("hebb_out: T")
    .Output("q: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(5));
      return absl::OkStatus();
    });

REGISTER_OP("HebbkerasTraceBackward")
    .Input("hebb: T")
    .Input("ghebb: T")
    .Input("galpha: T")
    .Input("alpha: T")
    .Input("w: T")
    .Input("ckpt: T")
    .Input("invert: bool")
    .Input("inv_u: T")
    .Input("inv_v: T")
    .Input("inv_scale: T")
    .Input("free: bool")
    .Input("g_decay: T")
    .Input("yp: T")
    .Input("gpre: T")
    .Input("next_u: T")
    .Input("next_v: T")
    .Input("reverse: bool")
    .Input("pend_dec: T")
    .Input("pend: T")
    .Input("count: int32")
    .Input("final: bool")
    .Input("self_post: bool")
    .Input("lag_u: T")
    .Input("lag_v: T")
    .Input("lag_scale: T")
    .Input("lagged: bool")
    .Input("lag_gscale: T")
    .Input("absorb: bool")
    .Input("ab_u: T")
    .Input("ab_v: T")
    .Input("ab_scale: T")
    .Input("ab_gdec: T")
    .Input("ab_nu: T")
    .Input("ab_nv: T")
    .Output("hebb_prev: T")
    .Output("ghebb_out: T")
    .Output("galpha_out: T")
    .Output("plastic: T")
    .Output("post: T")
    .Output("pre: T")
    .Output("dot: T")
    .Output("pend_dec_out: T")
    .Output("pend_out: T")
    .Output("count_out: int32")
    .Output("post_self: T")
    .Output("dot2: T")
    .Output("post_self2: T")
    .Output("post2: T")
    .Output("pre2: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(0));
      c->set_output(2, c->input(2));
      c->set_output(3, c->input(12));
      c->set_output(4, c->input(12));
      c->set_output(5, c->input(12));
      c->set_output(6, c->Scalar());
      c->set_output(7, c->input(17));
      c->set_output(8, c->input(18));
      c->set_output(9, c->Scalar());
      c->set_output(10, c->input(12));
      c->set_output(11, c->Scalar());
      for (int k = 12; k < 15; ++k) c->set_output(k, c->input(12));
      return absl::OkStatus();
    });

namespace {

// Checks `hebb` is (B, N, N), each vector (B, N), alpha (N, N) or scalar.
absl::Status CheckShapes(const Tensor& hebb, const Tensor& alpha, const Tensor& w,
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
  if (w.dims() != 2 || w.dim_size(0) != n || w.dim_size(1) != n) {
    return InvalidArgument("w must be (N, N) with N = ", n, ", got ", w.shape().DebugString());
  }
  for (const Tensor* v : vectors) {
    if (v->dims() != 2 || v->dim_size(0) != b || v->dim_size(1) != n) {
      return InvalidArgument("vectors must be (batch, N) = (", b, ", ", n, "), got ",
                             v->shape().DebugString());
    }
  }
  return absl::OkStatus();
}

absl::Status CheckScalar(const Tensor& t, const char* name) {
  if (t.dims() != 0) return InvalidArgument(name, " must be a scalar, got ", t.shape().DebugString());
  return absl::OkStatus();
}

using hebbkeras_blocks::ForBlocks;
using hebbkeras_blocks::ForTilesAhead;
using hebbkeras_blocks::kChunk;
using hebbkeras_blocks::kRowsAhead;
using hebbkeras_blocks::PrefetchRow;
using hebbkeras_blocks::NumBlocks;
using hebbkeras_blocks::SumBlocks;

// Row blocks per worker thread from 4 episodes on: 4, so that a thread held up by
// other work (the executor's small ops, another process) costs a quarter of its
// share, not all of it (batch 32, under load: 0.82x the wall time of one block per
// thread, 0.91x the CPU time). At batch 1 the extra tasks cost more CPU time than
// they save (binary_add in groups of 1: 1.15x the CPU time).
constexpr int64_t kBlocksPerThread = 4;

// Runs row(b, i, b_ahead, i_ahead) over a block's rows in ForTiles' order. From 4
// episodes on (traces beyond the L3 cache, passes bound by DRAM) each row's pass
// prefetches the row kRowsAhead places later (hardware prefetching alone left a thread
// at about half its streaming bandwidth where the pass also reads w and alpha), built
// with 256-bit vectors where the CPU has 512-bit ones: a row of N = 1001 floats starts
// off a cache line, so every 512-bit access of it splits two lines (batch 32: a clamped
// backward pass 1.4x the time, and prefetching gained nothing with them). Below 4
// episodes (the trace in L3, passes bound by arithmetic) 512-bit vectors and no
// prefetch were faster (batch 1: 256-bit clamped backward passes took 1.5x the time).
// `row` is inlined into each of the two, and so built both ways.
template <typename Row>
void Rows(int64_t lo, int64_t hi, int64_t batch, bool reverse, const Row& row) {
  if (batch >= 4) {
    auto narrow = [&](int64_t b, int64_t i, int64_t b2, int64_t i2)
        __attribute__((noinline, target("prefer-vector-width=256"))) { row(b, i, b2, i2); };
    ForTilesAhead(lo, hi, batch, reverse, kRowsAhead, narrow);
  } else {
    ForTilesAhead(lo, hi, batch, reverse, 0, row);
  }
}

template <typename T>
class TraceUpdateOp : public OpKernel {
 public:
  explicit TraceUpdateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& hebb = ctx->input(0);
    const Tensor& alpha = ctx->input(1);
    const Tensor& w_t = ctx->input(2);
    const Tensor& decay_t = ctx->input(3);
    const Tensor& u_t = ctx->input(4);
    const Tensor& v_t = ctx->input(5);
    OP_REQUIRES_OK(ctx, CheckShapes(hebb, alpha, w_t, {&u_t, &v_t}));
    OP_REQUIRES_OK(ctx, CheckScalar(decay_t, "decay"));
    OP_REQUIRES_OK(ctx, CheckScalar(ctx->input(6), "reverse"));
    OP_REQUIRES_OK(ctx, CheckScalar(ctx->input(7), "need_q"));
    const int64_t B = hebb.dim_size(0), N = hebb.dim_size(1);
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, hebb.shape(), &out_t));
    Tensor* q_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, u_t.shape(), &q_t));
    const int64_t P = NumBlocks(ctx, N, B >= 4 ? kBlocksPerThread : 1);
    Tensor partial_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(hebb.dtype(), TensorShape({P, B, N}), &partial_t));

    const T* h = hebb.flat<T>().data();
    T* o = out_t->flat<T>().data();
    const T* alpha_p = alpha.flat<T>().data();
    const bool scalar_alpha = alpha.dims() == 0;
    const T alpha_s = scalar_alpha ? alpha_p[0] : T(0);
    const T* w = w_t.flat<T>().data();
    const T decay = decay_t.scalar<T>()();
    const T* u = u_t.flat<T>().data();
    const T* v = v_t.flat<T>().data();
    const bool reverse = ctx->input(6).scalar<bool>()();
    const bool need_q = ctx->input(7).scalar<bool>()();
    T* partial = partial_t.flat<T>().data();

    ForBlocks(ctx, N, P, [&](int64_t p, int64_t lo, int64_t hi) {
      T* acc_p = partial + p * B * N;
      std::fill(acc_p, acc_p + B * N, T(0));
      // `reverse` runs the rows (and tiles, episodes) last to first: alternating
      // calls then start on the rows the previous call touched last, still in cache.
      // Chunks of kChunk columns, each after a prefetch of the same columns of the
      // row kRowsAhead places later (its trace row, and the output's if not in place).
      const int64_t chunk = B >= 4 ? kChunk : N;  // rows in chunks where they prefetch (Rows)
      auto row = [&](int64_t b, int64_t i, int64_t b2, int64_t i2) __attribute__((always_inline)) {
        const T* a = scalar_alpha ? nullptr : alpha_p + i * N;
        const T* wr = w + i * N;
        const T* hr = h + (b * N + i) * N;
        T* orow = o + (b * N + i) * N;
        const T* vb = v + b * N;
        const T ui = u[b * N + i];
        const T vi = vb[i];
        T* __restrict__ acc = acc_p + b * N;
        const T* ahead_h = b2 < 0 ? nullptr : h + (b2 * N + i2) * N;
        const T* ahead_o = b2 < 0 || o == h ? nullptr : o + (b2 * N + i2) * N;
        for (int64_t j0 = 0; j0 < N; j0 += chunk) {
          const int64_t j1 = std::min(N, j0 + chunk);
          PrefetchRow(ahead_h, j0, j1);
          PrefetchRow(ahead_o, j0, j1);
          if (!need_q) {
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) orow[j] = decay * hr[j] + ui * vb[j];
          } else if (a != nullptr) {
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) {
              const T val = decay * hr[j] + ui * vb[j];
              orow[j] = val;
              acc[j] += vi * (wr[j] + a[j] * val);
            }
          } else {
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) {
              const T val = decay * hr[j] + ui * vb[j];
              orow[j] = val;
              acc[j] += vi * (wr[j] + alpha_s * val);
            }
          }
        }
      };
      Rows(lo, hi, B, reverse, row);
    });
    T* q = q_t->flat<T>().data();
    SumBlocks(partial, P, B * N, T(1), q);
  }
};

// Columns [j0, j0 + L) of one row's flush: with s the trace before the oldest waiting
// segment (slot flush - 1), term = sum_e c_e s_e g_e, s_{e-1} = dec_e s_e + u_e v_e; the
// tile's s and term stay in registers over the slots, and slots whose gpre is zero
// (`live[e]` false: a fully clamped segment) only rebuild. Adds term to gar (a
// matrix alpha's gradient row) or returns its sum (gar null: a scalar alpha).
constexpr int64_t kFlushTile = 64;

template <typename T, int64_t L>
inline T FlushTile(const T* h, int64_t flush, const char* live, const T* dec, const T* c,
                   const T* u, const T* const* g, const T* const* v, int64_t j0, T* gar) {
  T s[L], term[L];
  for (int64_t j = 0; j < L; ++j) s[j] = h[j], term[j] = 0;
  for (int64_t e = flush - 1; e >= 0; --e) {
    if (live[e]) {
      const T ce = c[e];
      const T* ge = g[e] + j0;
#pragma omp simd
      for (int64_t j = 0; j < L; ++j) term[j] += ce * s[j] * ge[j];
    }
    if (e > 0) {
      const T de = dec[e], ue = u[e];
      const T* ve = v[e] + j0;
#pragma omp simd
      for (int64_t j = 0; j < L; ++j) s[j] = de * s[j] + ue * ve[j];
    }
  }
  T sum = 0;
  if (gar != nullptr) {
    for (int64_t j = 0; j < L; ++j) gar[j] += term[j];
  } else {
    for (int64_t j = 0; j < L; ++j) sum += term[j];
  }
  return sum;
}

// One row of a free step's backward pass (see TraceBackwardOp): the gradient G and the
// trace before the step H, alpha's row (null: the scalar alpha_s), w's, gpre, yp_i, the
// outputs' rows and alpha's gradient row (null: a scalar alpha).
template <typename T>
struct FreeRow {
  const T* gr;
  const T* hv;
  const T* a;
  T alpha_s;
  const T* wr;
  const T* gp;
  T g_decay, ypi;
  T* gor;
  const T* nvb;
  T* acc;
  T nui;
  T* gar;
};

// Columns [j0, j1) of a free step's row: G' = g_decay G + alpha yp_i gpre (written),
// and the sums d += G . H, pl += (w + alpha H) . gpre, pr += G' . next_v, acc += nu_i G'.
// kTerm: also this segment's term of alpha's gradient, yp_i H_ij gpre_j, added to gar
// (a matrix alpha) or to *ft (a scalar one).
template <typename T, bool kMatrix, bool kTerm>
inline void FreeColumns(const FreeRow<T>& r, int64_t j0, int64_t j1, T* d_out, T* pl_out,
                        T* pr_out, T* ft_out) {
  const T* gr = r.gr;  // gor may be gr
  const T* __restrict__ hv = r.hv;
  const T* __restrict__ a = r.a;
  const T* __restrict__ wr = r.wr;
  const T* __restrict__ gp = r.gp;
  const T* __restrict__ nvb = r.nvb;
  T* gor = r.gor;
  T* __restrict__ acc = r.acc;
  T* __restrict__ gar = r.gar;
  const T alpha_s = r.alpha_s, g_decay = r.g_decay, ypi = r.ypi, nui = r.nui;
  T d = 0, pl = 0, pr = 0, ft = 0;
#pragma omp simd reduction(+ : d, pl, pr, ft)
  for (int64_t j = j0; j < j1; ++j) {
    const T gv = gr[j];
    d += gv * hv[j];
    const T aij = kMatrix ? a[j] : alpha_s;
    pl += (wr[j] + aij * hv[j]) * gp[j];
    const T gn = g_decay * gv + aij * (ypi * gp[j]);
    gor[j] = gn;
    pr += gn * nvb[j];
    acc[j] += nui * gn;
    if (kTerm) {
      const T term = (ypi * hv[j]) * gp[j];
      if (kMatrix) {
        gar[j] += term;
      } else {
        ft += term;
      }
    }
  }
  *d_out += d;
  *pl_out += pl;
  *pr_out += pr;
  *ft_out += ft;
}

template <typename T>
class TraceBackwardOp : public OpKernel {
 public:
  explicit TraceBackwardOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& hebb = ctx->input(0);
    const Tensor& ghebb = ctx->input(1);
    const Tensor& galpha = ctx->input(2);
    const Tensor& alpha = ctx->input(3);
    const Tensor& w_t = ctx->input(4);
    const Tensor& ckpt = ctx->input(5);
    const Tensor& inv_u_t = ctx->input(7);
    const Tensor& inv_v_t = ctx->input(8);
    const Tensor& yp_t = ctx->input(12);
    const Tensor& gpre_t = ctx->input(13);
    const Tensor& nu_t = ctx->input(14);
    const Tensor& nv_t = ctx->input(15);
    const Tensor& pend_dec_t = ctx->input(17);
    const Tensor& pend_t = ctx->input(18);
    const Tensor* lag_vecs[2] = {&ctx->input(22), &ctx->input(23)};
    const Tensor* ab_vecs[4] = {&ctx->input(28), &ctx->input(29), &ctx->input(32), &ctx->input(33)};
    OP_REQUIRES_OK(ctx, CheckShapes(hebb, alpha, w_t, {&inv_u_t, &inv_v_t, &yp_t, &gpre_t, &nu_t,
                                                       &nv_t, lag_vecs[0], lag_vecs[1],
                                                       ab_vecs[0], ab_vecs[1], ab_vecs[2],
                                                       ab_vecs[3]}));
    OP_REQUIRES(ctx, ghebb.shape() == hebb.shape() && ckpt.shape() == hebb.shape(),
                InvalidArgument("ghebb and ckpt must have hebb's shape ",
                                hebb.shape().DebugString()));
    OP_REQUIRES(ctx, galpha.shape() == alpha.shape(),
                InvalidArgument("galpha must have alpha's shape ", alpha.shape().DebugString()));
    for (int k : {6, 9, 10, 11, 16, 19, 20, 21, 24, 25, 26, 27, 30, 31}) {
      OP_REQUIRES_OK(ctx, CheckScalar(ctx->input(k), "flags, factors and count"));
    }
    const bool invert = ctx->input(6).scalar<bool>()();
    const T inv_scale = ctx->input(9).scalar<T>()();
    const bool free = ctx->input(10).scalar<bool>()();
    const T g_decay = ctx->input(11).scalar<T>()();
    const bool reverse = ctx->input(16).scalar<bool>()();
    const int64_t count = ctx->input(19).scalar<int32_t>()();
    const bool final = ctx->input(20).scalar<bool>()();
    const bool self_post = ctx->input(21).scalar<bool>()() && !final;
    const T lag_scale = ctx->input(24).scalar<T>()();
    const bool lagged = ctx->input(25).scalar<bool>()();
    const T gs = ctx->input(26).scalar<T>()();
    const bool absorb = ctx->input(27).scalar<bool>()() && !final;
    const T ab_scale = ctx->input(30).scalar<T>()();
    const T ab_gdec = ctx->input(31).scalar<T>()();
    const int64_t B = hebb.dim_size(0), N = hebb.dim_size(1);
    const int64_t M = pend_dec_t.dims() == 1 ? pend_dec_t.dim_size(0) : 0;
    OP_REQUIRES(ctx, M > 0 && count >= 0 && count < M,
                InvalidArgument("pend_dec must be (M,) with 0 <= count < M, got ",
                                pend_dec_t.shape().DebugString(), " and count ", count));
    OP_REQUIRES(ctx, pend_t.shape() == TensorShape({M, 4, B, N}),
                InvalidArgument("pend must be (M, 4, batch, N), got ",
                                pend_t.shape().DebugString()));
    const bool scalar_alpha = alpha.dims() == 0;

    // The queue of alpha-gradient terms: this segment's (decay, u, v, yp, gpre)
    // goes into slot `count` (when it has a term, or older ones wait); a full
    // queue, or `final`, is applied in this pass, oldest segment first.
    Tensor* pend_dec_out = nullptr;
    Tensor* pend_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({17}, 7, pend_dec_t.shape(), &pend_dec_out));
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({18}, 8, pend_t.shape(), &pend_out));
    T* pdec = pend_dec_out->flat<T>().data();
    T* pvec = pend_out->flat<T>().data();
    {
      const T* src = pend_dec_t.flat<T>().data();
      if (pdec != src) std::copy(src, src + M, pdec);
      const T* srcv = pend_t.flat<T>().data();
      if (pvec != srcv) std::copy(srcv, srcv + pend_t.NumElements(), pvec);
    }
    int64_t waiting = count;
    if (!final && (free || count > 0)) {
      pdec[count] = g_decay;
      const Tensor* entry[4] = {&inv_u_t, &inv_v_t, &yp_t, &gpre_t};
      for (int k = 0; k < 4; ++k) {
        const T* src = entry[k]->flat<T>().data();
        std::copy(src, src + B * N, pvec + (count * 4 + k) * B * N);
      }
      waiting = count + 1;
    }
    int64_t flush = (final || waiting >= M) ? waiting : 0;
    // The absorbed segment's slot (after this one's), unless the queue was just
    // flushed (it has no term of its own and nothing would wait for it).
    const bool push_ab = absorb && flush == 0 && waiting > 0;
    if (push_ab) {
      pdec[waiting] = ab_gdec;
      T* slot = pvec + waiting * 4 * B * N;
      std::copy(ab_vecs[0]->flat<T>().data(), ab_vecs[0]->flat<T>().data() + B * N, slot);
      std::copy(ab_vecs[1]->flat<T>().data(), ab_vecs[1]->flat<T>().data() + B * N, slot + B * N);
      std::fill(slot + 2 * B * N, slot + 4 * B * N, T(0));
      waiting += 1;
      if (waiting >= M) flush = waiting;
    }
    const bool flush_h2 = push_ab && flush > 0;  // the oldest slot is the absorbed one
    // A queue of one slot that holds this segment's own term (from 4 episodes on, every
    // free step): its flush, yp_i H_ij gpre_j added to galpha, is done in the main loop
    // (FreeColumns), where H and gpre are in registers, not in a loop of its own;
    // `own_term` where gpre is not all zero (`live`, below), else it adds nothing.
    const bool own_flush = flush == 1 && !flush_h2 && count == 0 && free && !final;
    Tensor* count_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(9, TensorShape({}), &count_out));
    count_out->scalar<int32_t>()() = static_cast<int32_t>(flush > 0 ? 0 : waiting);

    Tensor* hp_t = nullptr;
    if (invert) {
      OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, hebb.shape(), &hp_t));
    } else {
      ctx->set_output(0, ckpt);  // no pass over the trace: the stored one is the one before
    }
    Tensor* g_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({1}, 1, hebb.shape(), &g_t));
    Tensor* ga_t = nullptr;
    if (flush > 0) {
      OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({2}, 2, galpha.shape(), &ga_t));
      const T* src = galpha.flat<T>().data();
      T* dst = ga_t->flat<T>().data();
      if (dst != src) std::copy(src, src + galpha.NumElements(), dst);  // not forwarded
    } else {
      ctx->set_output(2, galpha);
    }
    Tensor *plastic_t = nullptr, *post_t = nullptr, *pre_t = nullptr, *dot_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, yp_t.shape(), &plastic_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, yp_t.shape(), &post_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(5, yp_t.shape(), &pre_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(6, TensorShape({}), &dot_t));
    Tensor* self_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(10, yp_t.shape(), &self_t));
    Tensor *dot2_t = nullptr, *self2_t = nullptr, *post2_t = nullptr, *pre2_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(11, TensorShape({}), &dot2_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(12, yp_t.shape(), &self2_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(13, yp_t.shape(), &post2_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(14, yp_t.shape(), &pre2_t));
    const int64_t P = NumBlocks(ctx, N, B >= 4 ? kBlocksPerThread : 1);
    // Row-block sums: post's, then post_self's, post_self2's and post2's where asked for.
    const int64_t n_sums = 1 + (self_post ? 1 : 0) + (absorb ? 2 : 0);
    Tensor partial_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(hebb.dtype(), TensorShape({n_sums * P, B, N}),
                                           &partial_t));
    std::vector<double> dots(P, 0.0), galpha_sums(P, 0.0), dots2(P, 0.0);
    std::vector<char> live(flush, 0);  // slots with a non-zero gpre (in the flush)
    for (int64_t e = 0; e < flush; ++e) {
      const T* gpe = pvec + (e * 4 + 3) * B * N;
      for (int64_t k = 0; k < B * N && !live[e]; ++k) live[e] = gpe[k] != T(0);
    }
    const bool own_term = own_flush && live[0];

    const T* h = invert ? hebb.flat<T>().data() : ckpt.flat<T>().data();
    T* hp = invert ? hp_t->flat<T>().data() : nullptr;
    const T* g = ghebb.flat<T>().data();
    T* go = g_t->flat<T>().data();
    const T* alpha_p = alpha.flat<T>().data();
    const T* w = w_t.flat<T>().data();
    T* ga = flush > 0 ? ga_t->flat<T>().data() : nullptr;
    const T* inv_u = inv_u_t.flat<T>().data();
    const T* inv_v = inv_v_t.flat<T>().data();
    const T* yp = yp_t.flat<T>().data();
    const T* gpre = gpre_t.flat<T>().data();
    const T* nu = nu_t.flat<T>().data();
    const T* nv = nv_t.flat<T>().data();
    const T* lag_u = lag_vecs[0]->flat<T>().data();
    const T* lag_v = lag_vecs[1]->flat<T>().data();
    const T* ab_u = ab_vecs[0]->flat<T>().data();
    const T* ab_v = ab_vecs[1]->flat<T>().data();
    const T* ab_nu = ab_vecs[2]->flat<T>().data();
    const T* ab_nv = ab_vecs[3]->flat<T>().data();
    T* pre2 = pre2_t->flat<T>().data();
    T* plastic = plastic_t->flat<T>().data();
    T* pre = pre_t->flat<T>().data();
    T* partial = partial_t.flat<T>().data();
    const T alpha_s = scalar_alpha ? alpha_p[0] : T(0);
    const bool pass_g = !final;  // the final call only applies the queue

    ForBlocks(ctx, N, P, [&](int64_t p, int64_t lo, int64_t hi) {
      T* acc_p = partial + p * B * N;
      std::fill(acc_p, acc_p + B * N, T(0));
      T* self_p = self_post ? partial + (P + p) * B * N : nullptr;
      if (self_post) std::fill(self_p, self_p + B * N, T(0));
      const int64_t ab_base = (self_post ? 2 : 1) * P;
      T* self2_p = absorb ? partial + (ab_base + p) * B * N : nullptr;
      T* post2_p = absorb ? partial + (ab_base + P + p) * B * N : nullptr;
      if (absorb) {
        std::fill(self2_p, self2_p + B * N, T(0));
        std::fill(post2_p, post2_p + B * N, T(0));
      }
      std::vector<T> h2_row(absorb ? N : 0);  // the absorbed segment's trace before it
      std::vector<T> g_row(gs != T(1) ? N : 0);  // G's row where ghebb is lagged
      // Scalars as locals (captured by reference they are reloaded in the loops).
      const T lag_s = lag_scale, g_s = gs, ab_s = ab_scale, ab_g = ab_gdec;
      // A flush's slots for the row at hand: yp_i, u_i, and the rows gpre, v.
      std::vector<T> cs(flush), us(flush);
      std::vector<const T*> gps(flush), vs(flush);
      double dot = 0.0, gsum = 0.0, dot2 = 0.0;
      // `reverse` runs the rows (and tiles, episodes) last to first: alternating
      // calls then start on the rows the previous call touched last, still in cache.
      // Chunks of kChunk columns, each after a prefetch of the same columns of the
      // row kRowsAhead places later (the trace and gradient it reads, and its outputs
      // where they are not in place); every loop below is columnwise (sums over j
      // accumulate over the chunks).
      const int64_t chunk = B >= 4 ? kChunk : N;  // rows in chunks where they prefetch (Rows)
      auto row = [&](int64_t b, int64_t i, int64_t b2, int64_t i2) __attribute__((always_inline)) {
        const T* a = scalar_alpha ? nullptr : alpha_p + i * N;
        const T* wr = w + i * N;
        const int64_t row = (b * N + i) * N;
        const T* hr = h + row;
        T* hpr = invert ? hp + row : nullptr;
        const T* gr0 = g + row;
        T* gor = go + row;
        const T ui = inv_u[b * N + i];
        const T* vb = inv_v + b * N;
        const T ypi = yp[b * N + i];
        const T* gp = gpre + b * N;
        const T nui = nu[b * N + i];
        const T* nvb = nv + b * N;
        T* __restrict__ acc = acc_p + b * N;
        T* ga_row = ga != nullptr ? ga + i * N : nullptr;
        const int64_t row2 = (b2 * N + i2) * N;
        const T* ahead_h = b2 < 0 ? nullptr : h + row2;
        const T* ahead_hp = b2 < 0 || !invert || hp == h ? nullptr : hp + row2;
        const T* ahead_g = b2 < 0 ? nullptr : g + row2;
        const T* ahead_go = b2 < 0 || go == g ? nullptr : go + row2;
        if (flush > 0) {  // the flush's slots for this row
          for (int64_t e = 0; e < flush; ++e) {
            const T* ent = pvec + e * 4 * B * N + b * N;  // u, v, yp, gpre of slot e
            us[e] = ent[i];
            vs[e] = ent + B * N;
            cs[e] = ent[2 * B * N + i];
            gps[e] = ent + 3 * B * N;
          }
        }
        T d = 0, pl = 0, pr = 0, d2 = 0, pr2 = 0, fsum = 0;
        for (int64_t j0 = 0; j0 < N; j0 += chunk) {
          const int64_t j1 = std::min(N, j0 + chunk);
          PrefetchRow(ahead_h, j0, j1);
          PrefetchRow(ahead_hp, j0, j1);
          PrefetchRow(ahead_g, j0, j1);
          PrefetchRow(ahead_go, j0, j1);
          const T* gr = gr0;
          if (invert && lagged) {  // H first: the absorbed segment's trace before it
            const T lui = lag_u[b * N + i];
            const T* lvb = lag_v + b * N;
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) {
              hpr[j] = ((hr[j] - lui * lvb[j]) * lag_s - ui * vb[j]) * inv_scale;
            }
          } else if (invert) {
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) hpr[j] = (hr[j] - ui * vb[j]) * inv_scale;
          }
          const T* hv = invert ? hpr : hr;  // the trace before this segment, now in L1
          if (g_s != T(1)) {  // G = lag_gscale * ghebb (before gor, maybe gr, is written)
            T* gl = g_row.data();
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) gl[j] = g_s * gr[j];
            gr = gl;
          }
          if (self_post) {  // post_self = inv_v^T ghebb (before gor, which may be gr, is written)
            T* __restrict__ acc2 = self_p + b * N;
            const T vi = vb[i];
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) acc2[j] += vi * gr[j];
          }
          if (!pass_g) {
            if (gor != gr) std::copy(gr + j0, gr + j1, gor + j0);
          } else if (free) {
            const FreeRow<T> r{gr, hv, a, alpha_s, wr, gp, g_decay, ypi, gor, nvb, acc, nui,
                               a != nullptr ? ga_row : nullptr};
            if (a != nullptr && own_term) {
              FreeColumns<T, true, true>(r, j0, j1, &d, &pl, &pr, &fsum);
            } else if (a != nullptr) {
              FreeColumns<T, true, false>(r, j0, j1, &d, &pl, &pr, &fsum);
            } else if (own_term) {
              FreeColumns<T, false, true>(r, j0, j1, &d, &pl, &pr, &fsum);
            } else {
              FreeColumns<T, false, false>(r, j0, j1, &d, &pl, &pr, &fsum);
            }
          } else {
#pragma omp simd reduction(+ : d, pr)
            for (int64_t j = j0; j < j1; ++j) {
              const T gv = gr[j];
              d += gv * hv[j];
              const T gn = g_decay * gv;
              gor[j] = gn;
              pr += gn * nvb[j];
              acc[j] += nui * gn;
            }
          }
          if (absorb) {  // the next segment's work: its trace, G2 = ghebb' (in L1 now)
            T* h2 = h2_row.data();
            const T aui = ab_u[b * N + i];
            const T* avb = ab_v + b * N;
            const T avi = avb[i];
            const T anui = ab_nu[b * N + i];
            const T* anvb = ab_nv + b * N;
            T* __restrict__ s2 = self2_p + b * N;
            T* __restrict__ p2 = post2_p + b * N;
#pragma omp simd reduction(+ : d2, pr2)
            for (int64_t j = j0; j < j1; ++j) {
              const T hh = (hv[j] - aui * avb[j]) * ab_s;
              h2[j] = hh;
              const T gv = gor[j];
              d2 += gv * hh;
              s2[j] += avi * gv;
              const T gn = ab_g * gv;
              pr2 += gn * anvb[j];
              p2[j] += anui * gn;
            }
          }
          if (flush > 0 && !own_flush) {
            const T* hv_f = flush_h2 ? h2_row.data() : hv;  // the oldest slot's trace
            // galpha's waiting terms, oldest first, rebuilding the later traces
            // (H <- dec_e H + outer(u_e, v_e)); per column j the rebuilt trace and
            // the sum stay in registers over the slots.
            const char* live_ = live.data();
            const T* c_ = cs.data();
            const T* u_ = us.data();
            const T* const* g_ = gps.data();
            const T* const* v_ = vs.data();
            T* gar = a != nullptr ? ga + i * N : nullptr;
            int64_t jf = j0;
            for (; jf + kFlushTile <= j1; jf += kFlushTile) {
              fsum += FlushTile<T, kFlushTile>(hv_f + jf, flush, live_, pdec, c_, u_, g_, v_, jf,
                                               gar == nullptr ? nullptr : gar + jf);
            }
            for (; jf + 8 <= j1; jf += 8) {
              fsum += FlushTile<T, 8>(hv_f + jf, flush, live_, pdec, c_, u_, g_, v_, jf,
                                      gar == nullptr ? nullptr : gar + jf);
            }
            for (; jf < j1; ++jf) {
              fsum += FlushTile<T, 1>(hv_f + jf, flush, live_, pdec, c_, u_, g_, v_, jf,
                                      gar == nullptr ? nullptr : gar + jf);
            }
          }
        }
        if (absorb) {
          dot2 += d2;
          pre2[b * N + i] = pr2;
        }
        gsum += fsum;
        dot += d;
        plastic[b * N + i] = pl;
        pre[b * N + i] = pr;
      };
      Rows(lo, hi, B, reverse, row);
      dots[p] = dot;
      dots2[p] = dot2;
      galpha_sums[p] = gsum;
    });
    SumBlocks(partial, P, B * N, T(1), post_t->flat<T>().data());
    T* post_self = self_t->flat<T>().data();
    if (self_post) {
      SumBlocks(partial + P * B * N, P, B * N, T(1), post_self);
    } else {
      std::fill(post_self, post_self + B * N, T(0));
    }
    T* self2 = self2_t->flat<T>().data();
    T* post2 = post2_t->flat<T>().data();
    if (absorb) {
      const int64_t ab_base = (self_post ? 2 : 1) * P;
      SumBlocks(partial + ab_base * B * N, P, B * N, T(1), self2);
      SumBlocks(partial + (ab_base + P) * B * N, P, B * N, T(1), post2);
    } else {
      std::fill(self2, self2 + B * N, T(0));
      std::fill(post2, post2 + B * N, T(0));
      std::fill(pre2, pre2 + B * N, T(0));
    }
    double dot = 0.0, gsum = 0.0, dot2 = 0.0;
    for (int64_t p = 0; p < P; ++p) dot += dots[p], gsum += galpha_sums[p], dot2 += dots2[p];
    dot_t->scalar<T>()() = static_cast<T>(dot);
    dot2_t->scalar<T>()() = static_cast<T>(dot2);
    if (flush > 0 && scalar_alpha) ga[0] += static_cast<T>(gsum);
  }
};

}  // namespace

#define REGISTER(T)                                                                  \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("HebbkerasTraceUpdate").Device(DEVICE_CPU).TypeConstraint<T>("T"),        \
      TraceUpdateOp<T>);                                                             \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("HebbkerasTraceBackward").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
      TraceBackwardOp<T>);

REGISTER(float)
REGISTER(double)

}  // namespace hebbkeras
