"""The fused whole-sequence kernel of PlasticRNN for the neuromodulated rules,
with a hand-written gradient (TensorFlow, outside XLA).

The rules (`hebbkeras.rules.modulated`: "simple", "retroactive") clip the
trace, so a step does not invert: the forward pass keeps the outputs `y_t`
and the modulations `M_t` of every step (O(T * B * N)) and the traces
(`hebb`, and `E`) every `interval` steps; the backward pass recomputes one
chunk's traces at a time from its checkpoint and runs the steps in reverse.
With `P_t = outer(y_{t-1}, y_t)` ("simple") or `E_t` ("retroactive"),
`S_t = hebb_t + M_t * P_t` and `D_t = dL/dS_t`:

    D_t        = (dL/dhebb_{t+1}) * [-c <= S_t <= c]            (the clip's derivative)
    dL/dhebb_t = D_t + alpha * outer(y_{t-1}, g_t)            (g_t: the pre-activation's gradient)
    dL/dM_t[j] = sum_i D_t[i, j] P_t[i, j]
    simple:      dL/dy_t[j] += M_t[j] sum_i y_{t-1}[i] D_t[i, j],
                 dL/dy_{t-1}[i] += sum_j D_t[i, j] M_t[j] y_t[j]
    retroactive: dL/dE_t = M_t * D_t + (1 - eta) dL/dE_{t+1}, and eta * outer(y_{t-1}, y_t)'s
                 terms for y_{t-1}, y_t and eta

then `M_t = tanh(y_t @ modulator_kernel + modulator_bias) [* modulator_fanout]`
and eq. (1) backwards as in `hebbkeras.kernels.fused`. Each step's work on the
`(batch, N, N)` matrices is one pass per matrix: the native CPU ops of
`hebbkeras/kernels/native/modulated_ops.cc` (`HebbkerasModulatedUpdate`,
`HebbkerasModulatedBackward`; and `HebbkerasModulatedChunk`, which
recomputes a whole chunk's traces row by row in cache), or the same math in plain TensorFlow ops
(`_PlainPasses`) where those cannot be had (no compiler, GPUs, float16,
exports). The forward step itself is the rule's definition
(`rule.modulation`, `rule.modulated_update`, `hebbkeras.ops.activate`).

Training memory is O(B * N^2 * (T / interval + interval) + T * B * N):
O(sqrt(T) * B * N^2) with the default `interval = ceil(sqrt(T))`, the
traces at each checkpoint plus one chunk's recomputed traces. Works with
unknown batch and time dimensions; XLA cannot compile its loops, so inside
`jit_compile` PlasticRNN runs its static twin `hebbkeras.kernels.xla_modfused`.
"""

import tensorflow as tf

from hebbkeras import ops
from hebbkeras.kernels import dispatch
from hebbkeras.kernels import native as hebbkeras_native

KERNEL = "modulated_fused"


def use_native(dtype):
    """Whether the native ops run here: CPU, float32/64, built (`hebbkeras.kernels.native`)."""
    return hebbkeras_native.available(dtype)


class _NativePasses:
    """The per-step passes through `modulated_ops.cc` (see its header for the math)."""

    def __init__(self, retroactive):
        self.retroactive = retroactive
        self.ops = hebbkeras_native.load()

    def update(self, hebb, e, alpha, u, y, m, eta, clip, with_q=True):
        """`(hebb_{t+1}, E_{t+1}, q)`: the step's traces and the next step's plastic input."""
        return self.ops.hebbkeras_modulated_update(hebb, e, alpha, u, y, m, eta, clip,
                                                   retroactive=self.retroactive, with_q=with_q)

    def chunk(self, hebb, e, us, ys, ms, eta, clip):
        """The traces before each step of a chunk, `(K, batch, N, N)` (E's: `e` for "simple")."""
        return self.ops.hebbkeras_modulated_chunk(hebb, e, us, ys, ms, eta, clip,
                                                  retroactive=self.retroactive)

    def backward(self, hebb, e, d, ge, galpha, alpha, u, y, m, g, eta, clip, tail=False):
        """`(d', ge', galpha', plastic, red1, red2, red3, dot)`."""
        return self.ops.hebbkeras_modulated_backward(
            hebb, e, d, ge, galpha, alpha, u, y, m, g, eta, clip,
            retroactive=self.retroactive, tail=tail)


class _PlainPasses:
    """`_NativePasses` in plain TensorFlow ops (any float dtype, any device)."""

    def __init__(self, rule):
        self.rule = rule
        self.retroactive = "E" in rule.traces

    @staticmethod
    def _plastic(v, alpha, hebb, g=None):
        """`sum_i v_i alpha_ij hebb_ij` (g None), else `sum_j alpha_ij hebb_ij g_j`."""
        scaled = hebb if len(alpha.shape) == 0 else alpha * hebb
        out = (tf.einsum("bi,bij->bj", v, scaled) if g is None
               else tf.einsum("bij,bj->bi", scaled, g))
        return alpha * out if len(alpha.shape) == 0 else out

    def update(self, hebb, e, alpha, u, y, m, eta, clip, with_q=True):
        traces = (hebb, e) if self.retroactive else (hebb,)
        traces = self.rule.modulated_update(traces, u, y, eta, m, clip)
        q = self._plastic(y, alpha, traces[0]) if with_q else tf.zeros_like(y)
        return traces[0], (traces[1] if self.retroactive else e), q

    def chunk(self, hebb, e, us, ys, ms, eta, clip):
        def step(t, h, e, hs, es):
            hs, es = hs.write(t, h), es.write(t, e)
            h, e, _ = self.update(h, e, None, us[t], ys[t], ms[t], eta, clip, with_q=False)
            return t + 1, h, e, hs, es

        size = tf.shape(us)[0]
        arrays = [tf.TensorArray(hebb.dtype, size=size, element_shape=v.shape) for v in (hebb, e)]
        t, h, e_last, hs, es = tf.while_loop(lambda t, *_: t < size - 1, step, (0, hebb, e, *arrays),
                                             parallel_iterations=1)
        return hs.write(t, h).stack(), (es.write(t, e_last).stack() if self.retroactive else e)

    def backward(self, hebb, e, d, ge, galpha, alpha, u, y, m, g, eta, clip, tail=False):
        yg = y[:, :, None] * g[:, None, :]
        h_grad = d + alpha * yg  # dL/dhebb_{t+1}
        if tail:
            h_next = hebb
        else:
            p = e if self.retroactive else u[:, :, None] * y[:, None, :]
            s = hebb + m[:, None, :] * p
            h_next = tf.clip_by_value(s, -clip, clip)
        plastic = self._plastic(None, alpha, h_next, g)
        galpha = galpha + tf.reduce_sum(h_next * yg, axis=0 if len(alpha.shape) else None)
        zeros, dot = tf.zeros_like(y), tf.zeros([], y.dtype)
        if tail:
            return h_grad, ge, galpha, plastic, zeros, zeros, zeros, dot
        d = tf.where((s >= -clip) & (s <= clip), h_grad, tf.zeros_like(h_grad))
        if not self.retroactive:
            return (d, ge, galpha, plastic, tf.einsum("bi,bij->bj", u, d),
                    tf.einsum("bij,bj->bi", d, m * y), zeros, dot)
        return (d, m[:, None, :] * d + (1.0 - eta) * ge, galpha, plastic,
                tf.reduce_sum(d * e, axis=1), tf.einsum("bij,bj->bi", ge, y),
                tf.einsum("bi,bij->bj", u, ge), tf.reduce_sum(ge * e))


def plastic_sequence(x, y0, traces0, w, alpha, eta, modulator, input_mode="clamp",
                     rule="simple", trace_clip=1.0, interval=None, native=None):
    """Runs a neuromodulated rule over a whole sequence; returns `(ys, traces_T)`.

    Args as `hebbkeras.kernels.tf_remat.plastic_sequence`: x `(batch, time, N)`
    (the clamping input or the additive drive), y0 `(batch, N)`, traces0
    `(hebb,)` or `(hebb, E)`, w, alpha (a matrix or a scalar), eta,
    modulator `(modulator_kernel, modulator_bias[, modulator_fanout])`,
    input_mode "clamp" or "add", rule, trace_clip, interval (steps between
    checkpoints; default `ceil(sqrt(time))`); and
        native: run the passes through the native ops (default: where
            `use_native`), or in plain TensorFlow ops (False).

    `ys` is `(batch, time, N)`; differentiable in every tensor argument.
    """
    rule = dispatch.check_rule(rule, KERNEL, input_mode)
    retro = "E" in rule.traces
    dtype = y0.dtype
    if native is None:
        native = use_native(dtype)
    passes = _NativePasses(retro) if native else _PlainPasses(rule)
    clamp_mode = input_mode == "clamp"
    n = len(traces0)
    args = [tf.cast(v, dtype) for v in (x, y0, *traces0, w, alpha, eta, *modulator)]

    @tf.custom_gradient
    def sequence(x, y0, *rest):
        traces0, (w, alpha, eta, kernel_m, bias_m, *fanout) = rest[:n], rest[n:]
        clip = tf.constant(trace_clip, dtype)
        xs = tf.transpose(x, [1, 0, 2])
        steps = tf.shape(xs)[0]
        k = tf.constant(interval, tf.int32) if interval else tf.cast(
            tf.math.ceil(tf.sqrt(tf.cast(steps, tf.float32))), tf.int32)
        chunks = (steps + k - 1) // k
        no_e = tf.zeros([0], dtype)  # "simple" has no E

        def spread(a):
            """`M_t` per receiving neuron, `(batch, N)`, from `tanh(...)` `(batch, 1)`."""
            return a * fanout[0] if fanout else tf.broadcast_to(a, tf.shape(y0))

        def forward_step(t, y, h, e, q, ys, acts):
            drive, clamp = (None, xs[t]) if clamp_mode else (xs[t], None)
            y_new = ops.activate(tf.matmul(y, w) + q, drive, clamp)
            a = rule.modulation(y_new, kernel_m, bias_m)
            h, e, q = passes.update(h, e, alpha, y, y_new, spread(a), eta, clip)
            return t + 1, y_new, h, e, q, ys.write(t, y_new), acts.write(t, a)

        def forward_chunk(c, y, h, e, q, ys, acts, keep_h, keep_e):
            keep_h, keep_e = keep_h.write(c, h), keep_e.write(c, e)
            end = tf.minimum((c + 1) * k, steps)
            _, y, h, e, q, ys, acts = tf.while_loop(
                lambda t, *_: t < end, forward_step, (c * k, y, h, e, q, ys, acts),
                parallel_iterations=1)
            return c + 1, y, h, e, q, ys, acts, keep_h, keep_e

        h0 = traces0[0]
        e0 = traces0[1] if retro else no_e
        ta = lambda size, like: tf.TensorArray(dtype, size=size, element_shape=like.shape,
                                               clear_after_read=False)
        q0 = _PlainPasses._plastic(y0, alpha, h0)
        _, _, h_last, e_last, _, ys, acts, keep_h, keep_e = tf.while_loop(
            lambda c, *_: c < chunks, forward_chunk,
            (0, y0, h0, e0, q0, ta(steps, y0), ta(steps, y0[:, :1]), ta(chunks, h0),
             ta(chunks, e0)),
            parallel_iterations=1)
        ys, acts = ys.stack(), acts.stack()

        def grad(g_ys, *g_traces):
            g_ys = tf.zeros_like(ys) if g_ys is None else tf.transpose(g_ys, [1, 0, 2])
            g_h = tf.zeros_like(h_last) if g_traces[0] is None else g_traces[0]
            g_e = no_e if not retro else (
                tf.zeros_like(e_last) if g_traces[1] is None else g_traces[1])
            y_ext = tf.concat([y0[None], ys], 0)  # y_ext[t] = y_{t-1}, y_ext[t + 1] = y_t
            ms = acts * fanout[0] if fanout else tf.broadcast_to(acts, tf.shape(ys))
            zero = tf.zeros_like(y0)
            # Per-step factors, once for the whole sequence: d tanh / d pre (0 on
            # clamped neurons, whose d y / d x is 1) and d M / d (y @ modulator_kernel).
            d_pre = 1.0 - tf.square(ys)
            clamped = tf.not_equal(xs, 0) if clamp_mode else None
            if clamp_mode:
                d_pre = tf.where(clamped, tf.zeros_like(d_pre), d_pre)
            d_act = 1.0 - tf.square(acts)
            kernel_row = tf.reshape(kernel_m, [1, -1])

            def back_step(t, s, d, ge, g_next, gu_next, galpha, g_eta, hs, es, out):
                u, y, m, a = y_ext[t], y_ext[t + 1], ms[t], acts[t]
                d, ge, galpha, plastic, r1, r2, r3, dot = passes.backward(
                    hs[t - s], es[t - s] if retro else no_e, d, ge, galpha, alpha, u, y, m,
                    g_next, eta, clip)
                gy = g_ys[t] + gu_next + plastic
                if retro:
                    dm, gy = r1, gy + eta * r3
                    g_eta += tf.reduce_sum(r3 * y) - dot
                else:
                    dm, gy = y * r1, gy + m * r1
                da = tf.reduce_sum(dm * fanout[0] if fanout else dm, axis=1, keepdims=True)
                dz = da * d_act[t]
                gy += dz * kernel_row
                g_pre = gy * d_pre[t]
                gu = tf.matmul(g_pre, w, transpose_b=True) + (eta * r2 if retro else r2)
                step = {"g_pre": g_pre, "dz": dz, "gy": gy, "dm": dm}
                out = [arr.write(t, step[name]) for arr, name in zip(out, kept)]
                return t - 1, s, d, ge, g_pre, gu, galpha, g_eta, hs, es, out

            def back_chunk(c, d, ge, g_next, gu_next, galpha, g_eta, out):
                c = c - 1
                s, end = c * k, tf.minimum((c + 1) * k, steps)
                # The traces before each of the chunk's steps, from its checkpoint.
                hs, es = passes.chunk(keep_h.read(c), keep_e.read(c), y_ext[s:end],
                                      y_ext[s + 1:end + 1], ms[s:end], eta, clip)
                _, _, d, ge, g_next, gu_next, galpha, g_eta, _, _, out = tf.while_loop(
                    lambda t, s, *_: t >= s, back_step,
                    (end - 1, s, d, ge, g_next, gu_next, galpha, g_eta, hs, es, out),
                    parallel_iterations=1)
                return c, d, ge, g_next, gu_next, galpha, g_eta, out

            # Written per step: g_pre, dL/dz, y's gradient (clamp mode), dL/dM (fan-out).
            kept = ["g_pre", "dz"] + ["gy"] * clamp_mode + ["dm"] * bool(fanout)
            out = [ta(steps, y0[:, :1] if name == "dz" else y0) for name in kept]
            _, d, ge, g_next, gu_next, galpha, g_eta, out = tf.while_loop(
                lambda c, *_: c > 0, back_chunk,
                (chunks, g_h, g_e, zero, zero, tf.zeros_like(alpha), tf.zeros([], dtype), out),
                parallel_iterations=1)
            # The trace before the first step: eq. (1)'s part of its gradient.
            g_h0, g_e0, galpha, plastic, *_ = passes.backward(
                h0, e0, d, ge, galpha, alpha, zero, y0, zero, g_next, eta, clip, tail=True)
            got = dict(zip(kept, (a.stack() for a in out)))
            g_pre, dz = got["g_pre"], got["dz"]
            g_x = tf.where(clamped, got["gy"], tf.zeros_like(g_pre)) if clamp_mode else g_pre
            g_w = tf.einsum("tbi,tbj->ij", y_ext[:-1], g_pre)
            g_kernel_m = tf.einsum("tbi,tbk->ik", ys, dz)
            g_bias_m = tf.reshape(tf.reduce_sum(dz), [1])
            g_mod = [g_kernel_m, g_bias_m]
            if fanout:
                g_mod.append(tf.einsum("tbj,tbk->j", got["dm"], acts))
            g_traces = [g_h0, g_e0] if retro else [g_h0]
            return (tf.transpose(g_x, [1, 0, 2]), gu_next + plastic, *g_traces, g_w, galpha,
                    g_eta, *g_mod)

        traces_T = (h_last, e_last) if retro else (h_last,)
        return (tf.transpose(ys, [1, 0, 2]), *traces_T), grad

    ys, *traces = sequence(*args)
    return ys, tuple(traces)
