"""The neuromodulated rules inside XLA on TensorFlow, with a hand-written backward:
the static-schedule twin of `hebbkeras.kernels.modulated_fused` (as `xla_fused`
is of `fused`), and the TensorFlow twin of `hebbkeras.kernels.jax_modfused`.

For `PlasticRNN(modulation=...)` traced inside an XLA-compiled function
(`jit_compile=True`), where `modulated_fused`'s loops (run lengths known only at
run time, native ops) cannot be compiled. Every size is known when traced:
`time` is static and the sequence is padded to `chunks` whole chunks of
`interval` steps by steps with `M_t = 0` and `eta = 0`, which keep every
trace as it is (`hebb` is a clip's output by then) without a select over
the matrices; their gradients are masked on the `(batch, N)` arrays.

Forward: a loop over chunks of a loop over steps keeps `y_t` and
`tanh(y_t @ modulator_kernel + modulator_bias)` of every step (O(T * B * N)) and
the rule's traces (`hebb`, and `E`) at the start of every chunk. Backward
(`tf.custom_gradient`), newest chunk first: the chunk's `S_t` (the clip's
argument, `hebb_{t+1} = clip(S_t)`) and `E_t` are recomputed from its
checkpoint (`rule.modulated_update`), then its steps run in reverse with the
gradient written out: the trace's part is the rule's (`rule.modulated_backward`:
the clip's derivative is the mask `-c <= S_t <= c`, 1 at the bounds as
`hebbkeras.rules.modulated.clip_trace` takes it), eq. (1) and the modulation's
`tanh` are here. Training memory is O(B * N^2 * (T / interval + interval) +
T * B * N), O(sqrt(T) * B * N^2) with the default `interval = ceil(sqrt(T))`
(with the native passes `ceil(sqrt(4 T))`, as `jax_modfused`'s), as for
`tf_remat`, which pulls the gradient through each recomputed chunk by autodiff
instead.

As in `jax_modfused`, each step's work on the `(B, N, N)` matrices is one of
two sets of passes of the same math (`modulated_ops.cc`'s header): on CPU, the
native ones (`hebbkeras.kernels.xla_native`: the XLA FFI handlers JAX uses,
called as custom calls inside the cluster, one pass over each matrix a step;
the backward pass recomputes a chunk's `hebb_t` and `E_t` of every
`ANCHORS`-th step, and rebuilds the others from those); elsewhere, without a
compiler, or with `HEBBKERAS_NATIVE=0`, plain XLA with few passes over the
`(B, N, N)` arrays per backward step: the vector-matrix products are batched
dots over arrays that exist anyway, and alpha's gradient is summed over the
batch once at the end.
"""

import math

import numpy as np
import tensorflow as tf

from hebbkeras import ops, rules
from hebbkeras.kernels import dispatch, xla_native
from hebbkeras.kernels.xla_fused import _scan
from hebbkeras.rules.modulated import clip_trace

KERNEL = "xla_modfused"
ANCHORS = 4  # the native backward rebuilds the traces from every ANCHORS-th step's (jax_modfused's)
_matvec, _vecmat = rules.LINALG.matvec, rules.LINALG.vecmat


def default_interval(steps, native):
    """Steps per chunk: `ceil(sqrt(T))` where the chunk's buffers hold every step's
    traces; with the native passes, which keep every `ANCHORS`-th,
    `ceil(sqrt(ANCHORS * T))` (`jax_modfused._NativePasses.interval`)."""
    return math.ceil(math.sqrt((ANCHORS if native else 1) * steps))


# Plain TensorFlow control flow: AutoGraph would only spend seconds converting it.
@tf.autograph.experimental.do_not_convert
def plastic_sequence(x, y0, traces0, w, alpha, eta, modulator, input_mode="clamp",
                     rule="simple", trace_clip=1.0, interval=None, native=None):
    """Runs a neuromodulated rule over a whole sequence; returns `(ys, traces_T)`.

    Args as `hebbkeras.kernels.tf_remat.plastic_sequence`: x `(batch, time, N)`
    (static `time`), y0 `(batch, N)`, traces0 `(hebb,)` or `(hebb, E)`, w, alpha
    (a matrix or a scalar), eta, modulator `(modulator_kernel, modulator_bias[,
    modulator_fanout])`, input_mode "clamp" or "add", rule, trace_clip,
    interval (static steps between checkpoints; default `default_interval`),
    native (the passes through `xla_native`: default where it is available and
    every shape and `eta` are static, on CPU; True raises `cxx.BuildError` where
    it is not; or plain XLA, False).

    `ys` is `(batch, time, N)`; differentiable in every tensor argument. Meant
    to run inside `tf.function(jit_compile=True)`, and correct outside it.
    """
    rule = dispatch.check_rule(rule, KERNEL, input_mode)
    steps = x.shape[1]
    if steps is None:
        raise ValueError(f"kernel {KERNEL} needs a static number of time steps; got {x.shape}.")
    retro = "E" in rule.traces
    clamp_mode = input_mode == "clamp"
    fanout = len(modulator) == 3
    dtype = tf.as_dtype(y0.dtype)
    n = len(traces0)
    if native is None:
        static = all(tf.convert_to_tensor(t).shape.is_fully_defined()
                     for t in (x, y0, *traces0, w, alpha, *modulator))
        native = static and tf.convert_to_tensor(eta).shape.rank == 0 and xla_native.available(
            dtype)
    elif native and not xla_native.load():
        raise xla_native.cxx.BuildError("xla_modfused(native=True): the native kernels are "
                                        "unavailable (see the warning)")
    k = min(int(interval or default_interval(steps, native)), steps)
    chunks = -(-steps // k)
    clip = tf.constant(trace_clip, dtype)
    # 1 on the sequence's steps, 0 on the padding: (chunks, k).
    valid = tf.constant((np.arange(chunks * k) < steps).reshape(chunks, k), dtype)

    def padded(a):
        """`(time, ...)` padded with zeros to `(chunks * k, ...)`."""
        return tf.pad(a, [[0, chunks * k - steps]] + [[0, 0]] * (a.shape.rank - 1))

    def per_chunk(a):
        """`(chunks * k, ...)` -> `(chunks, k, ...)`."""
        out = tf.reshape(a, tf.concat([[chunks, k], tf.shape(a)[1:]], 0))
        out.set_shape([chunks, k] + a.shape[1:].as_list())
        return out

    def flat(a):
        """`(chunks, k, ...)` -> `(chunks * k, ...)`."""
        out = tf.reshape(a, tf.concat([[chunks * k], tf.shape(a)[2:]], 0))
        out.set_shape([chunks * k] + a.shape[2:].as_list())
        return out

    def like(a, lead=()):
        """A scan's output of `a`'s dtype, shaped `lead + a.shape`."""
        return tf.TensorSpec(list(lead) + a.shape.as_list(), a.dtype)

    def increment(h, e, u, y, eta_t, m):
        """`(S_t, E_{t+1})`: the rule's update before the clip."""
        traces = rule.modulated_update((h, e) if retro else (h,), u, y, eta_t, m, None)
        return traces[0], (traces[1] if retro else e)

    @tf.custom_gradient
    def sequence(x, y0, *rest):
        h0, e0 = rest[0], (rest[1] if retro else tf.zeros([], dtype))  # "simple": no E
        w, alpha, eta, mk, mb, *f = rest[n:]
        f = f[0] if fanout else None
        shared = alpha.shape.rank == 0
        xs = padded(tf.transpose(x, [1, 0, 2]))

        def step(carry, inp):
            """The cell loop's step; a padding step has `M_t = 0` and `eta = 0`
            (`gate`), so the traces stay as they are. Native: `q` is the next
            step's plastic input, `y_t @ (alpha * hebb_{t+1})`, from the update's pass."""
            y, h, e, q = carry
            x_t, v = inp
            drive, clamp = (None, x_t) if clamp_mode else (x_t, None)
            if native:
                y_new = ops.activate(tf.matmul(y, w) + q, drive, clamp)
                a = rule.modulation(y_new, mk, mb)
                m = tf.broadcast_to(v * (a if f is None else a * f), y.shape)
                h, e, q = xla_native.update(h, e, alpha, y, y_new, m, v * eta, clip, retro)
            else:
                y_new, traces, a = ops.modulated_step(
                    y, (h, e) if retro else (h,), w, alpha, eta, rest[n + 3:], trace_clip,
                    rule, drive, clamp, gate=v, with_modulation=True)
                h, e = traces[0], (traces[-1] if retro else e)
            return (v * y_new + (1.0 - v) * y, h, e, q), (y_new, a)

        def chunk(carry, inp):
            out, (ys_c, acts_c) = _scan(step, carry, inp, k, (like(y0), like(y0[:, :1])))
            return out, (ys_c, acts_c, carry[1], carry[2])

        if native:  # step 1's plastic input; each update gives the next
            q0 = (alpha * _vecmat(y0, h0)) if shared else _vecmat(y0, alpha * h0)
        else:
            q0 = tf.zeros([], dtype)
        (_, h_t, e_t, _), (ys, acts, ck_h, ck_e) = _scan(
            chunk, (y0, h0, e0, q0), (per_chunk(xs), valid), chunks,
            (like(y0, (k,)), like(y0[:, :1], (k,)), h0, e0))
        ys, acts = flat(ys), flat(acts)

        def grad(g_ys, *g_traces):
            g_ys = tf.zeros_like(ys) if g_ys is None else padded(tf.transpose(g_ys, [1, 0, 2]))
            g_h = tf.zeros_like(h_t) if g_traces[0] is None else g_traces[0]
            g_e = tf.zeros_like(e_t) if not retro or g_traces[1] is None else g_traces[1]
            y_ext = tf.concat([y0[None], ys], 0)  # y_ext[t] = y_{t-1}
            v_all = tf.reshape(valid, [-1, 1, 1])
            ms = v_all * (acts if f is None else acts * f)
            d_pre = 1.0 - tf.square(ys)
            clamped = tf.not_equal(xs, 0) if clamp_mode else None
            if clamp_mode:  # d y / d x = 1 on clamped neurons, d y / d pre = 0
                d_pre = tf.where(clamped, tf.zeros_like(d_pre), d_pre)
            d_act = v_all * (1.0 - tf.square(acts))  # no dL/dz at padding steps
            kernel_row = tf.reshape(mk, [1, -1])

            def recompute(carry, inp):
                """One step of the chunk from its checkpoint: `S_t` and `E_t` out."""
                h, e = carry
                s, e_new = increment(h, e, *inp)
                return (clip_trace(s, trace_clip), e_new), ((s, e) if retro else s)

            def fill(hk, ek, us, ys_c, ms_c, v, bufs):
                """The chunk's buffers for `trace_backward`: `S_t` (and `E_t`) of its
                steps; native: `hebb_t` and `E_t` of every `ANCHORS`-th step (into
                `bufs`, which the chunks reuse) and what rebuilds the others."""
                if native:
                    eta_e = v[0] * eta  # a padding step comes last; its E_t is never used
                    ms_c = tf.broadcast_to(ms_c, us.shape)
                    hs, anchors = xla_native.chunk(hk, ek, us, ys_c, ms_c, eta_e, clip, retro,
                                                   bufs, ANCHORS)
                    return hs, anchors, us, ys_c, ms_c, eta_e
                _, rec = _scan(recompute, (hk, ek), (us, ys_c, v * eta, ms_c), k,
                               (like(h0), like(h0)) if retro else like(h0))
                return rec if retro else (rec, tf.zeros([k], dtype))

            def trace_backward(bufs, j, d, ge, galpha, u, y, m, v, g_next):
                """Step t's trace terms: `(dL/dS_t masked, dL/dE_t, galpha, dL/dy_t's
                trace terms, dL/dM_t, dL/dy_{t-1}'s trace terms, dL/deta's term)`."""
                eta_t = v * eta
                if native:
                    m = tf.broadcast_to(m, y.shape)
                    d, ge_new, galpha, plastic, r1, r2, r3, dot = xla_native.backward(
                        *bufs[:5], j, d, ge, galpha, alpha, u, y, m, g_next, eta_t, bufs[5],
                        clip, retro, ANCHORS)
                    if not retro:
                        return d, ge, galpha, plastic + m * r1, y * r1, r2, 0.0
                    return (d, ge_new, galpha, plastic + eta_t * r3, r1, eta_t * r2,
                            tf.reduce_sum(r3 * y) - dot)
                s, e = bufs[0][j], bufs[1][j]
                h_next = clip_trace(s, trace_clip)
                plastic = _matvec(h_next if shared else alpha * h_next, g_next)
                if shared:
                    plastic = alpha * plastic
                yg = rules.LINALG.outer(y, g_next)
                galpha = galpha + h_next * yg  # summed over the batch once, at the end
                d, ge, dm, gy_rule, gu_rule, geta_rule = rule.modulated_backward(
                    d + alpha * yg, ge, s, (None, e), u, y, eta_t, m, trace_clip,
                    per_column=f is not None)
                return d, ge, galpha, plastic + gy_rule, dm, gu_rule, geta_rule

            def back_step(bufs, carry, inp):
                # dL/dS_{t+1} masked (D_{t+1}), dL/dE_{t+1}, dL/dpre_{t+1}, the part of
                # dL/dy_t that step t+1 passes back, and the sums for alpha and eta.
                d, ge, g_next, gu_next, galpha, g_eta = carry
                j, u, y, m, v, gys, dp, da = inp
                d, ge, galpha, gy_trace, dm, gu_rule, geta_rule = trace_backward(
                    bufs, j, d, ge, galpha, u, y, m, v, g_next)
                gy = gys + gu_next + gy_trace
                dz = tf.reduce_sum(dm if f is None else dm * f, axis=1, keepdims=True) * da
                gy = gy + dz * kernel_row
                g_pre = gy * dp
                gu = tf.matmul(g_pre, w, transpose_b=True) + gu_rule
                return (d, ge, g_pre, gu, galpha, g_eta + v * geta_rule), (g_pre, gy, dz, dm)

            dm_like = like(y0 if native or f is not None or not retro else y0[:, :1])

            def back_chunk(carry, inp):
                carry, reused = carry
                hk, ek, us, ys_c, ms_c, v, gys, dps, das = inp
                bufs = fill(hk, ek, us, ys_c, ms_c, v, reused)
                carry, outs = _scan(lambda c, i: back_step(bufs, c, i), carry,
                                    (tf.range(k), us, ys_c, ms_c, v, gys, dps, das), k,
                                    (like(y0), like(y0), like(y0[:, :1]), dm_like),
                                    reverse=True)
                return (carry, bufs[:2] if native else reused), outs

            zero = tf.zeros_like(y0)
            init = (g_h, g_e, zero, zero, tf.zeros_like(alpha if native else h0),
                    tf.zeros([], dtype))
            reused = xla_native.buffers(h0, k, retro, ANCHORS) if native else ()
            ((d, ge, g_next, gu_next, galpha, g_eta), _), outs = _scan(
                back_chunk, (init, reused),
                (ck_h, ck_e, per_chunk(y_ext[:-1]), per_chunk(y_ext[1:]), per_chunk(ms), valid,
                 per_chunk(g_ys), per_chunk(d_pre), per_chunk(d_act)),
                chunks, tuple(like(s, (k,)) for s in (y0, y0, y0[:, :1], dm_like)),
                reverse=True)
            g_pre, gy, dz, dm = (flat(o) for o in outs)
            # The trace before the first step: eq. (1)'s part of its gradient.
            yg0 = rules.LINALG.outer(y0, g_next)
            g_h0 = d + alpha * yg0
            total = (lambda a: a) if native else (
                lambda a: tf.reduce_sum(a, axis=None if shared else 0))
            galpha = total(galpha) + tf.reduce_sum(h0 * yg0, axis=None if shared else 0)
            g_y0 = gu_next + _matvec(alpha * h0, g_next)
            g_x = tf.where(clamped, gy, tf.zeros_like(gy)) if clamp_mode else g_pre
            g_mod = [tf.einsum("tbi,tbk->ik", ys, dz), tf.reshape(tf.reduce_sum(dz), [1])]
            if f is not None:
                g_mod.append(tf.einsum("tbj,tbk->j", v_all * dm, acts))
            g_traces = [g_h0, ge] if retro else [g_h0]
            return (tf.transpose(g_x[:steps], [1, 0, 2]), g_y0, *g_traces,
                    tf.einsum("tbi,tbj->ij", y_ext[:-1], g_pre), galpha, g_eta, *g_mod)

        ys_out = tf.transpose(ys[:steps], [1, 0, 2])
        return ((ys_out, h_t, e_t) if retro else (ys_out, h_t)), grad

    args = [tf.cast(v, dtype) for v in (x, y0, *traces0, w, alpha, eta, *modulator)]
    ys, *traces = sequence(*args)
    return ys, tuple(traces)
