// XLA FFI handlers (custom calls on CPU) for the neuromodulated rules' passes on JAX
// (hebbkeras/kernels/jax_modfused.py through hebbkeras/kernels/jax_native.py): the
// passes of modulated_kernels.h, the math of modulated_ops.cc's TensorFlow ops.
//
//   hebbkeras_modulated_update(hebb, e, alpha, u, y, m, eta, clip)
//       -> (hebb', e', q)                                   attrs: retroactive, with_q
//   hebbkeras_modulated_backward(hs, anchors, us, ys, ms, index, d, ge, galpha, alpha, u, y,
//                                m, g, eta, eta_e, clip)
//       -> (d', ge', galpha', plastic, red1, red2, red3, dot)
//                                                attrs: retroactive, tail, stride
//     rebuilds hebb_index (and E_index) from the chunk's traces at step
//     index - index % stride (hs, anchors: (ceil(K / stride), B, N, N)) through the
//     steps after it (us, ys, ms: (K, B, N)) at rate eta_e (eta: the step's own, 0 on
//     padding steps); the tail reads hebb = hs[index]
//   hebbkeras_modulated_chunk(hebb, e, us, ys, ms, eta, clip, hebbs, anchors)
//       -> (hebbs, anchors)                      attrs: retroactive, stride
//     the traces hebb and E before every stride-th of the chunk's steps
//     ((ceil(K / stride), B, N, N) each), written into the buffers it is given (aliased:
//     a loop reuses them, where new ones would be fresh pages to fault in at every call)
// In "simple" mode (and the backward tail) e, anchors and ge are placeholders of any shape,
// passed through untouched; the tail's us, ys and ms too. float32 and float64; the row
// blocks run on XLA's intra-op thread pool.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "modulated_kernels.h"

namespace ffi = xla::ffi;

namespace hebbkeras_modulated {
namespace {

// A `run` for modulated_kernels.h: blocks claimed from a counter by the calling
// thread and by tasks on the pool, so the call finishes even where the pool runs no
// task (a late task finds nothing left and touches only `state`), and a worker the
// OS deschedules on a loaded machine leaves its share to the others. The caller
// waits for the last block by spinning briefly, then on a condition variable.
struct PoolRunner {
  ffi::ThreadPool* pool;
  int64_t rows;

  template <typename Fn>
  void operator()(int64_t blocks, Fn fn) const {
    struct State {
      std::atomic<int64_t> next{0}, done{0};
      std::mutex mu;
      std::condition_variable cv;
    };
    auto state = std::make_shared<State>();
    const Fn* f = &fn;
    const int64_t n = rows;
    auto work = [state, f, blocks, n]() {
      for (int64_t p; (p = state->next.fetch_add(1)) < blocks;) {
        hebbkeras_blocks::BlockRows(n, blocks, p, *f);
        if (state->done.fetch_add(1) + 1 == blocks) {
          std::lock_guard<std::mutex> lock(state->mu);
          state->cv.notify_all();
        }
      }
    };
    for (int64_t k = 1; k < std::min<int64_t>(blocks, pool->num_threads() + 1); ++k) {
      pool->Schedule(decltype(work)(work));
    }
    work();
    for (int spin = 0; spin < 2000 && state->done.load() < blocks; ++spin) {
    }
    std::unique_lock<std::mutex> lock(state->mu);
    state->cv.wait(lock, [&] { return state->done.load() == blocks; });
  }
};

// Row blocks: a few per thread, so that the others can take over a descheduled
// worker's share.
int64_t Blocks(ffi::ThreadPool& pool, int64_t rows) {
  return hebbkeras_blocks::BlocksFor(4 * std::max<int64_t>(1, pool.num_threads()), rows);
}

bool Same(ffi::AnyBuffer::Dimensions a, ffi::AnyBuffer::Dimensions b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

// hebb (B, N, N); the vectors (B, N); alpha (N, N) or a scalar; eta, clip scalars.
ffi::Error CheckStep(ffi::AnyBuffer hebb, ffi::AnyBuffer alpha,
                     std::initializer_list<ffi::AnyBuffer> vectors,
                     std::initializer_list<ffi::AnyBuffer> scalars) {
  auto h = hebb.dimensions();
  if (h.size() != 3 || h[1] != h[2]) {
    return ffi::Error::InvalidArgument("hebb must be (batch, N, N)");
  }
  const auto a = alpha.dimensions();
  if (!(a.size() == 0 || (a.size() == 2 && a[0] == h[1] && a[1] == h[1]))) {
    return ffi::Error::InvalidArgument("alpha must be a scalar or (N, N)");
  }
  for (const ffi::AnyBuffer& v : vectors) {
    const auto d = v.dimensions();
    if (d.size() != 2 || d[0] != h[0] || d[1] != h[1] || v.element_type() != hebb.element_type()) {
      return ffi::Error::InvalidArgument("vectors must be (batch, N) of hebb's dtype");
    }
  }
  for (const ffi::AnyBuffer& s : scalars) {
    if (s.element_count() != 1 || s.element_type() != hebb.element_type()) {
      return ffi::Error::InvalidArgument("eta and clip must be scalars of hebb's dtype");
    }
  }
  if (alpha.element_type() != hebb.element_type()) {
    return ffi::Error::InvalidArgument("alpha must have hebb's dtype");
  }
  return ffi::Error::Success();
}

template <typename T>
Step<T> StepOf(ffi::AnyBuffer hebb, ffi::AnyBuffer e, ffi::AnyBuffer alpha, ffi::AnyBuffer u,
               ffi::AnyBuffer y, ffi::AnyBuffer m, ffi::AnyBuffer eta, ffi::AnyBuffer clip,
               bool retro) {
  Step<T> s;
  s.B = hebb.dimensions()[0];
  s.N = hebb.dimensions()[1];
  s.hebb = hebb.typed_data<T>();
  s.e = retro ? e.typed_data<T>() : nullptr;
  s.alpha = alpha.typed_data<T>();
  s.scalar_alpha = alpha.dimensions().size() == 0;
  s.u = u.typed_data<T>();
  s.y = y.typed_data<T>();
  s.m = m.typed_data<T>();
  s.eta = eta.typed_data<T>()[0];
  s.c = clip.typed_data<T>()[0];
  s.retro = retro;
  return s;
}

template <typename T>
ffi::Error UpdateT(ffi::ThreadPool& pool, ffi::AnyBuffer hebb, ffi::AnyBuffer e,
                   ffi::AnyBuffer alpha, ffi::AnyBuffer u, ffi::AnyBuffer y, ffi::AnyBuffer m,
                   ffi::AnyBuffer eta, ffi::AnyBuffer clip, ffi::Result<ffi::AnyBuffer> ho,
                   ffi::Result<ffi::AnyBuffer> eo, ffi::Result<ffi::AnyBuffer> q, bool retro,
                   bool with_q) {
  const Step<T> s = StepOf<T>(hebb, e, alpha, u, y, m, eta, clip, retro);
  const int64_t P = Blocks(pool, s.N);
  std::vector<T> partial(with_q ? P * s.B * s.N : 0);
  Update(s, with_q, P, partial.data(), ho->typed_data<T>(),
         retro ? eo->typed_data<T>() : nullptr, q->typed_data<T>(), PoolRunner{&pool, s.N});
  return ffi::Error::Success();
}

ffi::Error UpdateImpl(ffi::ThreadPool pool, ffi::AnyBuffer hebb, ffi::AnyBuffer e,
                      ffi::AnyBuffer alpha, ffi::AnyBuffer u, ffi::AnyBuffer y, ffi::AnyBuffer m,
                      ffi::AnyBuffer eta, ffi::AnyBuffer clip, ffi::Result<ffi::AnyBuffer> ho,
                      ffi::Result<ffi::AnyBuffer> eo, ffi::Result<ffi::AnyBuffer> q,
                      bool retroactive, bool with_q) {
  ffi::Error err = CheckStep(hebb, alpha, {u, y, m}, {eta, clip});
  if (!err.success()) return err;
  if (retroactive && !Same(e.dimensions(), hebb.dimensions())) {
    return ffi::Error::InvalidArgument("E must be shaped as hebb");
  }
  switch (hebb.element_type()) {
    case ffi::DataType::F32:
      return UpdateT<float>(pool, hebb, e, alpha, u, y, m, eta, clip, ho, eo, q, retroactive,
                            with_q);
    case ffi::DataType::F64:
      return UpdateT<double>(pool, hebb, e, alpha, u, y, m, eta, clip, ho, eo, q, retroactive,
                             with_q);
    default:
      return ffi::Error::InvalidArgument("hebb must be float32 or float64");
  }
}

template <typename T>
ffi::Error BackwardT(ffi::ThreadPool& pool, ffi::AnyBuffer hs, ffi::AnyBuffer anchors_in,
                     ffi::AnyBuffer us, ffi::AnyBuffer ys, ffi::AnyBuffer ms, int64_t index,
                     ffi::AnyBuffer d,
                     ffi::AnyBuffer ge, ffi::AnyBuffer galpha, ffi::AnyBuffer alpha,
                     ffi::AnyBuffer u, ffi::AnyBuffer y, ffi::AnyBuffer m, ffi::AnyBuffer g,
                     ffi::AnyBuffer eta, ffi::AnyBuffer eta_e, ffi::AnyBuffer clip,
                     ffi::Result<ffi::AnyBuffer> d_out, ffi::Result<ffi::AnyBuffer> ge_out,
                     ffi::Result<ffi::AnyBuffer> ga_out, ffi::Result<ffi::AnyBuffer> plastic,
                     ffi::Result<ffi::AnyBuffer> red1, ffi::Result<ffi::AnyBuffer> red2,
                     ffi::Result<ffi::AnyBuffer> red3, ffi::Result<ffi::AnyBuffer> dot,
                     bool retroactive, bool tail, int64_t stride) {
  const bool retro = retroactive && !tail;  // the tail needs no E
  Step<T> s = StepOf<T>(d, d, alpha, u, y, m, eta, clip, false);
  s.retro = retroactive;
  Backward<T> o;
  o.d = d.typed_data<T>();
  o.g = g.typed_data<T>();
  o.d_out = d_out->typed_data<T>();
  if (tail) {
    s.hebb = hs.typed_data<T>() + index * s.B * s.N * s.N;
  } else {
    o.h_anchors = hs.typed_data<T>();
    o.stride = stride;
    o.us = us.typed_data<T>();
    o.ys = ys.typed_data<T>();
    o.ms = ms.typed_data<T>();
    o.index = index;
    o.eta_e = eta_e.typed_data<T>()[0];
  }
  if (retro) {
    o.ge = ge.typed_data<T>();
    o.ge_out = ge_out->typed_data<T>();
    o.anchors = anchors_in.typed_data<T>();
  }
  o.galpha = ga_out->typed_data<T>();
  const T* ga_in = galpha.typed_data<T>();
  if (o.galpha != ga_in) std::copy(ga_in, ga_in + galpha.element_count(), o.galpha);
  o.plastic = plastic->typed_data<T>();
  o.red1 = red1->typed_data<T>();
  o.red2 = red2->typed_data<T>();
  o.red3 = red3->typed_data<T>();
  o.dot = dot->typed_data<T>();
  const int64_t P = Blocks(pool, s.N);
  std::vector<T> partial(2 * P * s.B * s.N);
  Backprop(s, o, tail, P, partial.data(), PoolRunner{&pool, s.N});
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer hs, ffi::AnyBuffer anchors_in,
                        ffi::AnyBuffer us, ffi::AnyBuffer ys, ffi::AnyBuffer ms,
                        ffi::Buffer<ffi::S32> index,
                        ffi::AnyBuffer d, ffi::AnyBuffer ge, ffi::AnyBuffer galpha,
                        ffi::AnyBuffer alpha, ffi::AnyBuffer u, ffi::AnyBuffer y,
                        ffi::AnyBuffer m, ffi::AnyBuffer g, ffi::AnyBuffer eta,
                        ffi::AnyBuffer eta_e, ffi::AnyBuffer clip,
                        ffi::Result<ffi::AnyBuffer> d_out, ffi::Result<ffi::AnyBuffer> ge_out,
                        ffi::Result<ffi::AnyBuffer> ga_out, ffi::Result<ffi::AnyBuffer> plastic,
                        ffi::Result<ffi::AnyBuffer> red1, ffi::Result<ffi::AnyBuffer> red2,
                        ffi::Result<ffi::AnyBuffer> red3, ffi::Result<ffi::AnyBuffer> dot,
                        bool retroactive, bool tail, int64_t stride) {
  ffi::Error err = CheckStep(d, alpha, {u, y, m, g}, {eta, eta_e, clip});
  if (!err.success()) return err;
  const auto dd = d.dimensions();
  const auto hd = hs.dimensions();
  const int64_t k = index.typed_data()[0];
  if (hd.size() != 4 || !Same(hd.last(3), dd) || hs.element_type() != d.element_type()) {
    return ffi::Error::InvalidArgument("hs must be (anchors, batch, N, N)");
  }
  if (tail && (k < 0 || k >= hd[0])) {
    return ffi::Error::InvalidArgument("tail: 0 <= index < hs's first dimension");
  }
  if (!tail) {
    const int64_t K = us.dimensions().size() == 3 ? us.dimensions()[0] : 0;
    const std::vector<int64_t> vecs = {K, dd[0], dd[1]};
    const ffi::AnyBuffer::Dimensions chunk(vecs.data(), vecs.size());
    const int64_t n_anchors = stride < 1 ? -1 : (K + stride - 1) / stride;
    if (K == 0 || k < 0 || k >= K || hd[0] != n_anchors || !Same(ys.dimensions(), chunk) ||
        !Same(ms.dimensions(), chunk) || us.element_type() != d.element_type() ||
        ys.element_type() != d.element_type() || ms.element_type() != d.element_type()) {
      return ffi::Error::InvalidArgument(
          "us, ys, ms (K, batch, N), 0 <= index < K, hs (ceil(K / stride), batch, N, N)");
    }
    const auto a = anchors_in.dimensions();
    if (retroactive && (a.size() != 4 || a[0] != n_anchors || !Same(a.last(3), dd) ||
                        !Same(ge.dimensions(), dd) ||
                        anchors_in.element_type() != d.element_type() ||
                        ge.element_type() != d.element_type())) {
      return ffi::Error::InvalidArgument(
          "retroactive: anchors shaped as hs, ge shaped as d");
    }
  }
  if (!Same(galpha.dimensions(), alpha.dimensions()) ||
      galpha.element_type() != alpha.element_type()) {
    return ffi::Error::InvalidArgument("galpha must have alpha's shape and dtype");
  }
  switch (d.element_type()) {
    case ffi::DataType::F32:
      return BackwardT<float>(pool, hs, anchors_in, us, ys, ms, k, d, ge, galpha, alpha, u, y, m, g,
                              eta, eta_e, clip, d_out, ge_out, ga_out, plastic, red1, red2,
                              red3, dot, retroactive, tail, stride);
    case ffi::DataType::F64:
      return BackwardT<double>(pool, hs, anchors_in, us, ys, ms, k, d, ge, galpha, alpha, u,
                               y, m, g, eta, eta_e, clip, d_out, ge_out, ga_out, plastic, red1, red2,
                               red3, dot, retroactive, tail, stride);
    default:
      return ffi::Error::InvalidArgument("d must be float32 or float64");
  }
}

template <typename T>
ffi::Error ChunkT(ffi::ThreadPool& pool, ffi::AnyBuffer hebb, ffi::AnyBuffer e,
                  ffi::AnyBuffer us, ffi::AnyBuffer ys, ffi::AnyBuffer ms, ffi::AnyBuffer eta,
                  ffi::AnyBuffer clip, ffi::Result<ffi::AnyBuffer> hs,
                  ffi::Result<ffi::AnyBuffer> anchors, bool retro, int64_t stride) {
  Step<T> s;
  s.B = hebb.dimensions()[0];
  s.N = hebb.dimensions()[1];
  s.hebb = hebb.typed_data<T>();
  s.e = retro ? e.typed_data<T>() : nullptr;
  s.eta = eta.typed_data<T>()[0];
  s.c = clip.typed_data<T>()[0];
  s.retro = retro;
  Chunk(s, us.dimensions()[0], us.typed_data<T>(), ys.typed_data<T>(), ms.typed_data<T>(),
        Blocks(pool, s.N), static_cast<T*>(nullptr), static_cast<T*>(nullptr),
        PoolRunner{&pool, s.N}, retro ? anchors->typed_data<T>() : nullptr, stride,
        hs->typed_data<T>());
  return ffi::Error::Success();
}

ffi::Error ChunkImpl(ffi::ThreadPool pool, ffi::AnyBuffer hebb, ffi::AnyBuffer e,
                     ffi::AnyBuffer us, ffi::AnyBuffer ys, ffi::AnyBuffer ms, ffi::AnyBuffer eta,
                     ffi::AnyBuffer clip, ffi::AnyBuffer, ffi::AnyBuffer,
                     ffi::Result<ffi::AnyBuffer> hs, ffi::Result<ffi::AnyBuffer> anchors,
                     bool retroactive, int64_t stride) {
  const auto h = hebb.dimensions();
  if (h.size() != 3 || h[1] != h[2]) {
    return ffi::Error::InvalidArgument("hebb must be (batch, N, N)");
  }
  const int64_t K = us.dimensions().size() == 3 ? us.dimensions()[0] : 0;
  for (const ffi::AnyBuffer& v : {us, ys, ms}) {
    const auto d = v.dimensions();
    if (K < 1 || d.size() != 3 || d[0] != K || d[1] != h[0] || d[2] != h[1] ||
        v.element_type() != hebb.element_type()) {
      return ffi::Error::InvalidArgument("us, ys, ms must be (K >= 1, batch, N) of hebb's dtype");
    }
  }
  if (retroactive && (!Same(e.dimensions(), h) || e.element_type() != hebb.element_type())) {
    return ffi::Error::InvalidArgument("E must be shaped as hebb");
  }
  for (const ffi::AnyBuffer& v : {eta, clip}) {
    if (v.element_count() != 1 || v.element_type() != hebb.element_type()) {
      return ffi::Error::InvalidArgument("eta and clip must be scalars of hebb's dtype");
    }
  }
  if (stride < 1 || hs->dimensions().size() != 4 ||
      hs->dimensions()[0] != (K + stride - 1) / stride || !Same(hs->dimensions().last(3), h) ||
      hs->element_type() != hebb.element_type()) {
    return ffi::Error::InvalidArgument("hebbs must be (ceil(K / stride), batch, N, N)");
  }
  if (retroactive) {
    const auto a = anchors->dimensions();
    if (a.size() != 4 || a[0] != (K + stride - 1) / stride ||
        !Same(a.last(3), h) || anchors->element_type() != hebb.element_type()) {
      return ffi::Error::InvalidArgument("anchors must be (ceil(K / stride), batch, N, N)");
    }
  }
  switch (hebb.element_type()) {
    case ffi::DataType::F32:
      return ChunkT<float>(pool, hebb, e, us, ys, ms, eta, clip, hs, anchors, retroactive,
                           stride);
    case ffi::DataType::F64:
      return ChunkT<double>(pool, hebb, e, us, ys, ms, eta, clip, hs, anchors, retroactive,
                            stride);
    default:
      return ffi::Error::InvalidArgument("hebb must be float32 or float64");
  }
}

}  // namespace
}  // namespace hebbkeras_modulated

XLA_FFI_DEFINE_HANDLER_SYMBOL(HebbkerasModulatedUpdate, hebbkeras_modulated::UpdateImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // hebb
                                  .Arg<ffi::AnyBuffer>()  // e
                                  .Arg<ffi::AnyBuffer>()  // alpha
                                  .Arg<ffi::AnyBuffer>()  // u
                                  .Arg<ffi::AnyBuffer>()  // y
                                  .Arg<ffi::AnyBuffer>()  // m
                                  .Arg<ffi::AnyBuffer>()  // eta
                                  .Arg<ffi::AnyBuffer>()  // clip
                                  .Ret<ffi::AnyBuffer>()  // hebb'
                                  .Ret<ffi::AnyBuffer>()  // e'
                                  .Ret<ffi::AnyBuffer>()  // q
                                  .Attr<bool>("retroactive")
                                  .Attr<bool>("with_q"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HebbkerasModulatedBackward, hebbkeras_modulated::BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()         // hs
                                  .Arg<ffi::AnyBuffer>()         // anchors
                                  .Arg<ffi::AnyBuffer>()         // us
                                  .Arg<ffi::AnyBuffer>()         // ys
                                  .Arg<ffi::AnyBuffer>()         // ms
                                  .Arg<ffi::Buffer<ffi::S32>>()  // index
                                  .Arg<ffi::AnyBuffer>()         // d
                                  .Arg<ffi::AnyBuffer>()         // ge
                                  .Arg<ffi::AnyBuffer>()         // galpha
                                  .Arg<ffi::AnyBuffer>()         // alpha
                                  .Arg<ffi::AnyBuffer>()         // u
                                  .Arg<ffi::AnyBuffer>()         // y
                                  .Arg<ffi::AnyBuffer>()         // m
                                  .Arg<ffi::AnyBuffer>()         // g
                                  .Arg<ffi::AnyBuffer>()         // eta
                                  .Arg<ffi::AnyBuffer>()         // eta_e
                                  .Arg<ffi::AnyBuffer>()         // clip
                                  .Ret<ffi::AnyBuffer>()         // d'
                                  .Ret<ffi::AnyBuffer>()         // ge'
                                  .Ret<ffi::AnyBuffer>()         // galpha'
                                  .Ret<ffi::AnyBuffer>()         // plastic
                                  .Ret<ffi::AnyBuffer>()         // red1
                                  .Ret<ffi::AnyBuffer>()         // red2
                                  .Ret<ffi::AnyBuffer>()         // red3
                                  .Ret<ffi::AnyBuffer>()         // dot
                                  .Attr<bool>("retroactive")
                                  .Attr<bool>("tail")
                                  .Attr<int64_t>("stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HebbkerasModulatedChunk, hebbkeras_modulated::ChunkImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // hebb
                                  .Arg<ffi::AnyBuffer>()  // e
                                  .Arg<ffi::AnyBuffer>()  // us
                                  .Arg<ffi::AnyBuffer>()  // ys
                                  .Arg<ffi::AnyBuffer>()  // ms
                                  .Arg<ffi::AnyBuffer>()  // eta
                                  .Arg<ffi::AnyBuffer>()  // clip
                                  .Arg<ffi::AnyBuffer>()  // hebbs' buffer (aliased)
                                  .Arg<ffi::AnyBuffer>()  // anchors' buffer (aliased)
                                  .Ret<ffi::AnyBuffer>()  // hebbs
                                  .Ret<ffi::AnyBuffer>()  // anchors
                                  .Attr<bool>("retroactive")
                                  .Attr<int64_t>("stride"));
