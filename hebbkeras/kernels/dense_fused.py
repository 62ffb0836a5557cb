"""PlasticDense's TensorFlow path: O(B * in * units) training memory, hand-written gradient.

Autodiff through the step loop keeps the `(batch, in, units)` trace of every
step. Here the forward pass keeps only the outputs `y_t` and their
pre-activations, and the gradient runs backwards through time rebuilding each
step's trace from the next one with the rule's inverse (`rule.invert` of
`hebbkeras.rules`, with the input `x_t` as the presynaptic side).

Inverting a step multiplies rounding error by up to `1 / (1 - rate_t)`
(`rule.rate` at the step's outputs), so the forward pass also
stores the trace before a step whenever the growth since the last stored
trace would pass `schedule.INVERSION_GROWTH` (always where `rate_t >= 1`, where
nothing inverts); the backward pass restarts from the stored copy there.

Each step's gradient is written out from the definitions, not taped: the
trace's part is `rule.backward` (and `rule.decay` for the trace's own
gradient), eq. (1)'s plastic part `ops.plastic_backward`, and only the
output function `ops.teach` (any Keras activation, the teacher) is
differentiated by a tape, on the pre-activation the forward pass kept
(`(batch, units)` per step). `w`'s and the bias's gradients and `w`'s part of
the input's are summed over the whole sequence after the loop, in single
products (`x^T @ g_pre`, `g_pre @ w^T`). At batch one the contractions are
2-D matmuls (`fused.LA`): at these sizes every op's overhead counts (see
BENCHMARKS.md, "PlasticDense at batch 1").

A short sequence whose length is known when traced (`UNROLL_STEPS`,
`UNROLL_ELEMENTS`: the Omniglot readout's 6 steps) runs as a Python loop
instead and keeps every step's trace (at most 1 MiB per episode in float32):
nothing is inverted, and no while loop, TensorArray or checkpoint decision
costs time.
"""

import math

import tensorflow as tf

from hebbkeras import ops
from hebbkeras.kernels import dispatch
from hebbkeras.kernels.fused import LA
from hebbkeras.kernels.schedule import INVERSION_GROWTH

KERNEL = "dense_fused"
_LOG_GROWTH = math.log(INVERSION_GROWTH)
# A sequence of at most this many steps, known when traced, whose traces take at most
# UNROLL_ELEMENTS numbers per episode (1 MiB in float32; the Omniglot readout's 6 steps
# of 64 x 5 take 1,920), runs as a Python loop that keeps every trace: at batch one a
# while loop's control flow, TensorArrays and the checkpoint decisions cost more than
# such a step's arithmetic.
UNROLL_STEPS = 32
UNROLL_ELEMENTS = 2**18


def plastic_dense_sequence(x, teacher, w, alpha, eta, bias=None, activation=tf.identity,
                           teacher_mode="add", teacher_scale=1.0, rule="hebb", eta_grad=True):
    """`ops.dense_step` over a sequence from a zero trace; returns `(ys, hebb_T)`.

    x `(batch, time, in)`; teacher `(batch, time, units)` or None; w `(in,
    units)`; alpha `(in, units)` or a scalar; eta a scalar; bias `(units,)` or
    None. Differentiable in every tensor argument with O(B * in * units + T *
    B * (in + units)) memory (plus the stored traces, see the module
    docstring; a short sequence keeps every trace, at most `UNROLL_ELEMENTS`
    numbers per episode). `eta_grad=False` treats eta as a constant. rule: a
    `hebbkeras.rules` rule or its name.
    """
    rule = dispatch.check_rule(rule, KERNEL)
    names = ["x"] + [n for n, v in (("teacher", teacher), ("bias", bias)) if v is not None]

    @tf.custom_gradient
    def fused(*args):
        given = dict(zip(names, args[: len(names)]))
        w_, alpha_, eta_ = args[len(names):]
        xs = tf.transpose(given["x"], [1, 0, 2])
        us = tf.transpose(given["teacher"], [1, 0, 2]) if "teacher" in given else None
        b = given.get("bias")
        ys, pres, hebb_last, ckpts, ckpt_of = _forward(xs, us, w_, alpha_, eta_, b, rule, dict(
            activation=activation, teacher_mode=teacher_mode, teacher_scale=teacher_scale))

        def grad(g_ys, g_h):
            g_ys = tf.zeros_like(ys) if g_ys is None else tf.transpose(g_ys, [1, 0, 2])
            g_h = tf.zeros_like(hebb_last) if g_h is None else g_h
            g_pres, g_xs, g_us, g_alpha, g_eta = _backward(
                xs, us, ys, pres, hebb_last, ckpts, ckpt_of, g_ys, g_h, alpha_, eta_, rule,
                eta_grad, lambda pre, u: ops.teach(pre, activation, u, teacher_mode,
                                                   teacher_scale))
            # w's part of eq. (1), over every step at once.
            flat_x = tf.reshape(xs, [-1, tf.shape(xs)[-1]])
            flat_g = tf.reshape(g_pres, [-1, tf.shape(g_pres)[-1]])
            g_xs = g_xs + tf.reshape(tf.matmul(flat_g, w_, transpose_b=True), tf.shape(xs))
            out = {"x": tf.transpose(g_xs, [1, 0, 2])}
            if us is not None:
                out["teacher"] = tf.transpose(g_us, [1, 0, 2])
            if b is not None:
                out["bias"] = tf.reduce_sum(flat_g, 0)
            g_w = tf.matmul(flat_x, flat_g, transpose_a=True)
            return tuple(out[n] for n in names) + (g_w, g_alpha, g_eta if eta_grad else None)

        return (tf.transpose(ys, [1, 0, 2]), hebb_last), grad

    inputs = [v for v in (x, teacher, bias) if v is not None]
    return fused(*inputs, w, alpha, eta)


def _unrolled(xs, units):
    """Whether the steps run as a Python loop that keeps every trace (see `UNROLL_STEPS`)."""
    steps, width = xs.shape[0], xs.shape[-1]
    return (steps is not None and units is not None and steps <= UNROLL_STEPS
            and steps * width * units <= UNROLL_ELEMENTS)


def _forward(xs, us, w, alpha, eta, b, rule, output):
    """The steps, time-major: `(ys, pres, hebb_T, ckpts, ckpt_of)`; `ckpt_of[t]` the index
    in `ckpts` of the trace before step `t` where it was stored, else -1."""
    hebb0 = tf.zeros(tf.concat([tf.shape(xs)[1:], tf.shape(w)[-1:]], 0), xs.dtype)

    def step(t, hebb):
        return ops.dense_step_with_pre(
            xs[t], hebb, w, alpha, eta, b, output["activation"], None if us is None else us[t],
            output["teacher_mode"], output["teacher_scale"], rule, LA)

    if _unrolled(xs, w.shape[-1]):  # every trace kept: nothing to invert or decide at run time
        hebbs, ys, pres = [hebb0], [], []
        for t in range(xs.shape[0]):
            y, hebb, pre = step(t, hebbs[-1])
            hebbs.append(hebb), ys.append(y), pres.append(pre)
        return (tf.stack(ys), tf.stack(pres), hebbs[-1], tf.stack(hebbs[:-1]),
                tf.range(xs.shape[0]))
    steps = tf.shape(xs)[0]
    ys = tf.TensorArray(xs.dtype, size=steps)
    pres = tf.TensorArray(xs.dtype, size=steps)
    ckpts = tf.TensorArray(xs.dtype, size=0, dynamic_size=True, element_shape=hebb0.shape)
    ckpt_of = tf.TensorArray(tf.int32, size=steps)

    def body(t, hebb, growth, n, ys, pres, ckpts, ckpt_of):
        y, hebb_next, pre = step(t, hebb)
        rate = tf.cast(rule.rate(eta, tf.reduce_max(tf.abs(y))), tf.float64)
        cost = tf.where(rate < 1.0, -tf.math.log1p(-tf.minimum(rate, 1.0 - 1e-12)),
                        tf.constant(math.inf, tf.float64))
        store = tf.logical_or(tf.equal(t, 0), growth + cost > _LOG_GROWTH)
        ckpts = tf.cond(store, lambda: ckpts.write(n, hebb), lambda: ckpts)
        ckpt_of = ckpt_of.write(t, tf.where(store, n, -1))
        growth = tf.where(store, tf.zeros_like(growth), growth + cost)
        n = n + tf.cast(store, tf.int32)
        return t + 1, hebb_next, growth, n, ys.write(t, y), pres.write(t, pre), ckpts, ckpt_of

    _, hebb_last, _, _, ys, pres, ckpts, ckpt_of = tf.while_loop(
        lambda t, *_: t < steps, body,
        (0, hebb0, tf.constant(0.0, tf.float64), 0, ys, pres, ckpts, ckpt_of),
        parallel_iterations=1,
    )
    # Plain tensors, not TensorArrays, reach the gradient: a SavedModel
    # (Keras `model.export`) can hold a gradient function capturing those.
    return ys.stack(), pres.stack(), hebb_last, ckpts.stack(), ckpt_of.stack()


def _backward(xs, us, ys, pres, hebb_last, ckpts, ckpt_of, g_ys, g_h, alpha, eta, rule,
              eta_grad, teach):
    """Back through the steps: `(g_pres, g_xs, g_us, g_alpha, g_eta)`, time-major; `g_xs`
    without `w`'s part (`g_pres @ w^T`), `g_us` None without a teacher."""

    def back(t, hebb, g_hebb):
        """Step `t`'s gradient from the trace before it and the gradient of the one after:
        `(g_hebb before it, g_alpha, g_eta, g_pre, g_x, g_u)`."""
        x_t, y_t, pre = xs[t], ys[t], pres[t]
        g_y, g_x, g_eta = rule.backward(g_hebb, hebb, x_t, y_t, g_ys[t], eta, eta_grad, la=LA)
        u_t = None if us is None else us[t]
        with tf.GradientTape() as tape:  # the output function only: (batch, units)
            watched = [pre] + ([u_t] if u_t is not None else [])
            tape.watch(watched)
            y = teach(pre, u_t)
        g_out = tape.gradient(y, watched, output_gradients=g_y,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        g_x_plastic, g_alpha, g_hebb_plastic = ops.plastic_backward(
            g_out[0], x_t, alpha, hebb, la=LA)
        return (rule.decay(eta, y_t) * g_hebb + g_hebb_plastic, g_alpha, g_eta, g_out[0],
                g_x + g_x_plastic, g_out[1] if u_t is not None else None)

    if _unrolled(xs, ys.shape[-1]):
        g_hebb, g_alpha, g_eta, per_step = g_h, tf.zeros_like(alpha), tf.zeros_like(eta), []
        for t in reversed(range(xs.shape[0])):
            g_hebb, g_alpha_t, g_eta_t, *grads = back(t, ckpts[t], g_hebb)
            g_alpha, g_eta = g_alpha + g_alpha_t, g_eta + g_eta_t
            per_step.append(grads)
        g_pres, g_xs, g_us = (None if g[0] is None else tf.stack(g[::-1])
                              for g in zip(*per_step))
        return g_pres, g_xs, g_us, g_alpha, g_eta
    steps = tf.shape(xs)[0]
    arrays = [tf.TensorArray(xs.dtype, size=steps) for _ in range(3)]

    def body(t, hebb_next, g_hebb, g_alpha, g_eta, *arrays):
        hebb = tf.cond(ckpt_of[t] >= 0, lambda: ckpts[ckpt_of[t]],
                       lambda: rule.invert(hebb_next, xs[t], ys[t], eta, la=LA))
        g_hebb, g_alpha_t, g_eta_t, *grads = back(t, hebb, g_hebb)
        arrays = [a if g is None else a.write(t, g) for a, g in zip(arrays, grads)]
        return (t - 1, hebb, g_hebb, g_alpha + g_alpha_t, g_eta + g_eta_t, *arrays)

    _, _, _, g_alpha, g_eta, *arrays = tf.while_loop(
        lambda t, *_: t >= 0, body,
        (steps - 1, hebb_last, g_h, tf.zeros_like(alpha), tf.zeros_like(eta), *arrays),
        parallel_iterations=1,
    )
    return (arrays[0].stack(), arrays[1].stack(), arrays[2].stack() if us is not None else None,
            g_alpha, g_eta)
