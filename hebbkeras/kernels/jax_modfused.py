"""The neuromodulated rules on JAX with a hand-written backward: the JAX twin of
`hebbkeras.kernels.modulated_fused` (TensorFlow).

A `jax.custom_vjp` over `lax.scan`s: the forward pass keeps `y_t` and `tanh(y_t @
modulator_kernel + modulator_bias)` of every step and the rule's traces (`hebb`,
and `E`) at the start of every chunk of `interval` steps; the backward pass
recomputes one chunk's traces into `(interval, B, N, N)` buffers (the native
passes: into `(ceil(interval / 4), B, N, N)` buffers of every 4th step's, from
which each step's are rebuilt) and runs its steps in reverse with the gradient
written out (the equations in `modulated_fused`'s docstring: the clip's
derivative is the mask `-c <= S_t <= c`).
The steps after the last one that pad the sequence to whole chunks have `M_t = 0`
and `eta = 0`, so every trace stays as it is without a per-step select over the
matrices (`hebb` is a clip's output by then), and their gradients are masked on
the `(B, N)` arrays. Training memory is that of `jax_remat`, O(B * N^2 * (T /
interval + interval) + T * B * N) (default interval `ceil(sqrt(T))`; with the
native passes `ceil(sqrt(4 T))`, which makes both terms `sqrt(T / 4)`).

Each step's work on the `(B, N, N)` matrices is one of two sets of passes of the
same math (`modulated_ops.cc`'s header): on CPU, the native ones
(`hebbkeras.kernels.jax_native`: XLA FFI calls that do a step in one pass over
each matrix, on XLA's threads; `_NativePasses`), elsewhere, or without a
compiler, or with `HEBBKERAS_NATIVE=0`, plain XLA (`_XlaPasses`). XLA on CPU
runs each pass over a `(B, N, N)` array as its own loop, and a sum over an axis
of a product as a reduction slower than a batched dot, so the XLA backward step
makes few of them: the vector-matrix products are `einsum`s over arrays that
exist anyway (the carried gradients, `alpha * hebb`), and alpha's gradient is
summed over the batch once at the end, not once a step.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from hebbkeras import ops
from hebbkeras.kernels import dispatch, jax_native

KERNEL = "jax_modfused"


class _XlaPasses:
    """The per-step passes in plain XLA. Buffers: `S_t` (the clip's argument,
    `hebb_{t+1} = clip(S_t)`) and `E_t` of a chunk's steps."""

    def __init__(self, rule, retro, clip, shared):
        self.rule, self.retro, self.clip, self.shared = rule, retro, clip, shared

    @staticmethod
    def interval(steps):
        """The default steps per chunk: `ceil(sqrt(T))`, where the chunk's buffers
        hold every step's traces (T / k checkpoints and k buffers: fewest at k = sqrt(T))."""
        return math.ceil(math.sqrt(steps))

    def increment(self, h, e, u, y, eta_t, m):
        """`(S_t, E_{t+1})`: the rule's update before the clip."""
        traces = self.rule.modulated_update((h, e) if self.retro else (h,), u, y, eta_t, m,
                                            None)
        return traces[0], (traces[1] if self.retro else e)

    def first_q(self, y0, alpha, h0):
        return jnp.zeros((), y0.dtype)  # the plastic input is computed each step

    def preactivation(self, y, w, alpha, h, q):
        return ops.preactivation(y, w, alpha, h)

    def update(self, h, e, alpha, u, y, eta_t, m):
        """`(hebb_{t+1}, E_{t+1}, q)` (q: unused)."""
        s, e_new = self.increment(h, e, u, y, eta_t, m)
        return jnp.clip(s, -self.clip, self.clip), e_new, jnp.zeros((), y.dtype)

    def galpha0(self, h0, alpha):
        return jnp.zeros_like(h0)  # per batch element, summed at the end

    def galpha_total(self, galpha):
        return jnp.sum(galpha, axis=None if self.shared else 0)

    def buffers(self, h0, k):
        """The buffers `chunk` fills, carried from chunk to chunk."""
        return (jnp.zeros((k,) + h0.shape, h0.dtype),
                jnp.zeros((k,) + h0.shape, h0.dtype) if self.retro else jnp.zeros((k,), h0.dtype))

    def chunk(self, hk, ek, us, ys, etas, ms, bufs):
        """Step j's `S_t` (and `E_t`) into the buffers, which every chunk reuses in
        place (a scan's stacked output is a new, zeroed one)."""
        def recompute(j, carry):
            h, e, s_buf, e_buf = carry
            s, e_new = self.increment(h, e, us[j], ys[j], etas[j], ms[j])
            s_buf = lax.dynamic_update_index_in_dim(s_buf, s, j, 0)
            if self.retro:
                e_buf = lax.dynamic_update_index_in_dim(e_buf, e, j, 0)
            return jnp.clip(s, -self.clip, self.clip), e_new, s_buf, e_buf

        return lax.fori_loop(0, len(us), recompute, (hk, ek, *bufs))[2:]

    def carried(self, filled):
        """What of `chunk`'s result the next chunk reuses."""
        return filled

    def backward(self, bufs, j, d, ge, galpha, alpha, u, y, m, g_next, eta_t, fanout):
        """Step t backwards: `(dL/dS_t, dL/dE_t, galpha, dL/dy_t's trace terms, dL/dM_t,
        dL/dy_{t-1}'s trace terms, dL/deta's term)` from dL/dhebb_{t+1} `d`,
        dL/dE_{t+1} `ge` and the next step's pre-activation gradient `g_next`."""
        s = bufs[0][j]
        e = bufs[1][j] if self.retro else None
        h_next = jnp.clip(s, -self.clip, self.clip)
        plastic = jnp.einsum("bij,bj->bi", h_next if self.shared else alpha * h_next, g_next)
        if self.shared:
            plastic = alpha * plastic
        yg = y[:, :, None] * g_next[:, None, :]
        galpha = galpha + h_next * yg
        # The rule's part (the clip, M_t, E_t and eta): its own definition.
        d_new, ge_new, dm, g_y, g_u, g_eta = self.rule.modulated_backward(
            d + alpha * yg, ge, s, (None, e) if self.retro else (None,), u, y, eta_t, m,
            self.clip, per_column=fanout is not None)
        return d_new, ge_new, galpha, plastic + g_y, dm, g_u, g_eta


class _NativePasses(_XlaPasses):
    """The per-step passes through `jax_native` (XLA FFI on CPU). Buffers: `hebb_t`
    (and, for "retroactive", `E_t`) of every `ANCHORS`-th step of a chunk, from
    which the backward pass rebuilds the others (by the forward's own recurrence,
    a few steps in registers, where storing every step's traces costs a write and
    a read of a whole matrix a step, and buffers that outgrow the cache); `M_t`
    spread over `(B, N)`; alpha's gradient summed over the batch within each pass."""

    ANCHORS = 4

    @classmethod
    def interval(cls, steps):
        """`ceil(sqrt(ANCHORS * T))`: T / k checkpoints and k / ANCHORS anchors are
        fewest there, `2 sqrt(T / ANCHORS)` traces' worth (measured: 15-20% faster a
        training step than `sqrt(T)` at T = 200, fewer chunks and buffers)."""
        return math.ceil(math.sqrt(cls.ANCHORS * steps))

    def first_q(self, y0, alpha, h0):
        """Step 1's plastic input, `y_0 @ (alpha * hebb_0)`; the update gives the next."""
        return jnp.einsum("bi,bij->bj", y0, alpha * h0)

    def preactivation(self, y, w, alpha, h, q):
        return y @ w + q

    def update(self, h, e, alpha, u, y, eta_t, m):
        return jax_native.update(h, e, alpha, u, y, jnp.broadcast_to(m, y.shape), eta_t,
                                 self.clip, self.retro)

    def galpha0(self, h0, alpha):
        return jnp.zeros_like(alpha)

    def galpha_total(self, galpha):
        return galpha

    def buffers(self, h0, k):
        anchors = (-(-k // self.ANCHORS),) + h0.shape
        return (jnp.zeros(anchors, h0.dtype),
                jnp.zeros(anchors if self.retro else (1,), h0.dtype))

    def chunk(self, hk, ek, us, ys, etas, ms, bufs):
        # eta is a scalar here: a padding step (eta 0) comes last and has M_t = 0,
        # so the traces before it and its E_t (never used) need no other rate.
        ms = jnp.broadcast_to(ms, ys.shape)
        bufs = jax_native.chunk(hk, ek, us, ys, ms, etas[0], self.clip, self.retro, bufs,
                                self.ANCHORS)
        return bufs, (us, ys, ms, etas[0])

    def carried(self, filled):
        return filled[0]

    def backward(self, bufs, j, d, ge, galpha, alpha, u, y, m, g_next, eta_t, fanout):
        m = jnp.broadcast_to(m, y.shape)
        (hs, anchors), (us, ys, ms, eta_e) = bufs
        d, ge_new, galpha, plastic, r1, r2, r3, dot = jax_native.backward(
            hs, anchors, us, ys, ms, j, d, ge, galpha, alpha, u, y, m, g_next, eta_t, eta_e,
            self.clip, self.retro, self.ANCHORS)
        if not self.retro:
            return d, ge, galpha, plastic + m * r1, y * r1, r2, 0.0
        return d, ge_new, galpha, plastic + eta_t * r3, r1, eta_t * r2, jnp.sum(r3 * y) - dot


def plastic_sequence(x, y0, traces0, w, alpha, eta, modulator, input_mode="clamp",
                     rule="simple", trace_clip=1.0, interval=None, native=None):
    """Runs a neuromodulated rule over a whole sequence; returns `(ys, traces_T)`.

    Args as `hebbkeras.kernels.jax_remat.plastic_sequence` (static `time`; the
    default `interval` with the native passes `ceil(sqrt(4 * time))`), and
        native: the passes through `jax_native` (default: where it is available,
            on CPU; True raises `cxx.BuildError` where it is not), or in plain XLA
            (False).
    Differentiable (`jax.grad`) in every array argument.
    """
    rule = dispatch.check_rule(rule, KERNEL, input_mode)
    retro = "E" in rule.traces
    steps = x.shape[1]
    dtype = y0.dtype
    if native is None:
        native = jax_native.available(dtype)
    elif native and not jax_native.load():
        raise jax_native.cxx.BuildError("jax_modfused(native=True): the native kernels are "
                                        "unavailable (see the warning)")
    clip = jnp.asarray(trace_clip, dtype)
    shared = alpha.ndim == 0
    passes = (_NativePasses if native else _XlaPasses)(rule, retro, clip, shared)
    k = min(int(interval or passes.interval(steps)), steps)
    chunks = -(-steps // k)
    clamp_mode = input_mode == "clamp"
    fanout = modulator[2] if len(modulator) == 3 else None
    e0 = traces0[1] if retro else jnp.zeros((), dtype)  # (S) has no E: a placeholder

    def blocks(a):
        """`(time, ...)` padded to whole chunks, `(chunks, k, ...)`."""
        a = jnp.concatenate([a, jnp.zeros((chunks * k - steps,) + a.shape[1:], a.dtype)])
        return a.reshape((chunks, k) + a.shape[1:])

    valid = blocks(jnp.ones((steps,), bool))

    def forward(x, y0, h0, e0, w, alpha, eta, mk, mb, f):
        def step(carry, inp):
            y, h, e, q = carry
            x_t, v = inp
            drive, clamp = (None, x_t) if clamp_mode else (x_t, None)
            y_new = ops.activate(passes.preactivation(y, w, alpha, h, q), drive, clamp)
            a = rule.modulation(y_new, mk, mb)
            # A padding step has M_t = 0 and eta = 0: the traces stay as they are.
            m = jnp.where(v, a if f is None else a * f, 0.0)
            h, e, q = passes.update(h, e, alpha, y, y_new, jnp.where(v, eta, 0.0), m)
            return (jnp.where(v, y_new, y), h, e, q), (y_new, a)

        def chunk(carry, inp):
            out, (ys, acts) = lax.scan(step, carry, inp)
            return out, (ys, acts, carry[1], carry[2])

        (_, h_t, e_t, _), (ys, acts, ck_h, ck_e) = lax.scan(
            chunk, (y0, h0, e0, passes.first_q(y0, alpha, h0)),
            (blocks(jnp.swapaxes(x, 0, 1)), valid))
        ys = ys.reshape((chunks * k,) + ys.shape[2:])
        acts = acts.reshape((chunks * k,) + acts.shape[2:])
        return (ys, h_t, e_t), (ys, acts, ck_h, ck_e)

    @jax.custom_vjp
    def run(x, y0, h0, e0, w, alpha, eta, mk, mb, f):
        return forward(x, y0, h0, e0, w, alpha, eta, mk, mb, f)[0]

    def run_fwd(*args):
        out, saved = forward(*args)
        return out, (args, saved)

    def run_bwd(res, grads):
        (x, y0, h0, e0, w, alpha, eta, mk, mb, f), (ys_p, acts, ck_h, ck_e) = res
        g_ys, g_h, g_e = grads
        y_ext = jnp.concatenate([y0[None], ys_p])  # y_ext[t] = y_{t-1}
        v_all = valid.reshape((-1, 1, 1))
        ms = jnp.where(v_all, acts if f is None else acts * f, 0.0)
        xs = blocks(jnp.swapaxes(x, 0, 1)).reshape((chunks * k,) + y0.shape)
        clamped = xs != 0
        d_pre = 1.0 - jnp.square(ys_p)
        if clamp_mode:
            d_pre = jnp.where(clamped, 0.0, d_pre)
        d_act = jnp.where(v_all, 1.0 - jnp.square(acts), 0.0)  # no dz at padding steps

        def back_step(bufs, carry, inp):
            # The carry: dL/dhebb_{t+1}, dL/dE_{t+1}, dL/dpre_{t+1}, the part of
            # dL/dy_t that step t+1 passes back, and the sums for alpha and eta.
            d, ge, g_next, gu_next, galpha, g_eta = carry
            j, u, y, m, v, gys, dp, da_ = inp
            eta_t = jnp.where(v, eta, 0.0)
            d, ge, galpha, gy_trace, dm, gu_part, g_eta_t = passes.backward(
                bufs, j, d, ge, galpha, alpha, u, y, m, g_next, eta_t, f)
            g_eta = g_eta + jnp.where(v, g_eta_t, 0.0)
            dz = jnp.sum(dm if f is None else dm * f, axis=1, keepdims=True) * da_
            gy = gys + gu_next + gy_trace + dz * mk[:, 0]
            g_pre = gy * dp
            gu = g_pre @ w.T + gu_part
            return (d, ge, g_pre, gu, galpha, g_eta), (g_pre, gy, dz, dm)

        def back_chunk(carry, inp):
            carry, bufs = carry
            hk, ek, us, ys, ms_c, v, gys, dps, das = inp
            filled = passes.chunk(hk, ek, us, ys, jnp.where(v, eta, 0.0), ms_c, bufs)
            carry, outs = lax.scan(functools.partial(back_step, filled), carry,
                                   (jnp.arange(k), us, ys, ms_c, v, gys, dps, das),
                                   reverse=True)
            return (carry, passes.carried(filled)), outs

        def per_chunk(a):
            return a.reshape((chunks, k) + a.shape[1:])

        init = (g_h, g_e, jnp.zeros_like(y0),
                jnp.zeros_like(y0), passes.galpha0(h0, alpha), jnp.zeros((), dtype))
        bufs = passes.buffers(h0, k)
        ((d, ge, g_next, gu_next, galpha, g_eta), _), outs = lax.scan(
            back_chunk, (init, bufs),
            (ck_h, ck_e, per_chunk(y_ext[:-1]), per_chunk(y_ext[1:]), per_chunk(ms),
             valid, per_chunk(g_ys), per_chunk(d_pre), per_chunk(d_act)),
            reverse=True)
        g_pre, gy, dz, dm = (o.reshape((chunks * k,) + o.shape[2:]) for o in outs)
        dm = jnp.where(v_all, dm, 0.0)
        # The trace before the first step: eq. (1)'s part of its gradient.
        yg0 = y0[:, :, None] * g_next[:, None, :]
        g_h0 = d + alpha * yg0
        galpha = passes.galpha_total(galpha) + jnp.sum(h0 * yg0, axis=None if shared else 0)
        g_y0 = gu_next + jnp.einsum("bij,bj->bi", alpha * h0, g_next)
        g_x = jnp.where(clamped, gy, 0.0) if clamp_mode else g_pre
        g_f = None if f is None else jnp.einsum("tbj,tbk->j", dm, acts)
        return (jnp.swapaxes(g_x[:steps], 0, 1), g_y0, g_h0, ge,
                jnp.einsum("tbi,tbj->ij", y_ext[:-1], g_pre), galpha, g_eta,
                jnp.einsum("tbi,tbk->ik", ys_p, dz), jnp.sum(dz).reshape((1,)), g_f)

    run.defvjp(run_fwd, run_bwd)
    ys, h_t, e_t = run(x, y0, traces0[0], e0, w, alpha, eta, *modulator[:2], fanout)
    return jnp.swapaxes(ys[:steps], 0, 1), ((h_t, e_t) if retro else (h_t,))
