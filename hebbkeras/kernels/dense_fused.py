"""PlasticDense's TensorFlow path: O(B * in * units) training memory, hand-written gradient.

Autodiff through the step loop keeps the `(batch, in, units)` trace of every
step. Here the forward pass keeps only the outputs `y_t`, and the gradient
runs backwards through time rebuilding each step's trace from the next one
with the rule's inverse (`rule.invert` of `hebbkeras.rules`, with the input
`x_t` as the presynaptic side).

Inverting a step multiplies rounding error by up to `1 / (1 - rate_t)`
(`rule.rate` at the step's outputs), so the forward pass also
stores the trace before a step whenever the growth since the last stored
trace would pass `schedule.INVERSION_GROWTH` (always where `rate_t >= 1`, where
nothing inverts); the backward pass restarts from the stored copy there.
Each step's gradient is the vector-Jacobian product of `ops.dense_step`
itself (a tape over one step), so the math stays defined once in `ops.py`.
"""

import math

import tensorflow as tf

from hebbkeras import ops
from hebbkeras.kernels import dispatch
from hebbkeras.kernels.schedule import INVERSION_GROWTH

KERNEL = "dense_fused"
_LOG_GROWTH = math.log(INVERSION_GROWTH)


def plastic_dense_sequence(x, teacher, w, alpha, eta, bias=None, activation=tf.identity,
                           teacher_mode="add", teacher_scale=1.0, rule="hebb", eta_grad=True):
    """`ops.dense_step` over a sequence from a zero trace; returns `(ys, hebb_T)`.

    x `(batch, time, in)`; teacher `(batch, time, units)` or None; w `(in,
    units)`; alpha `(in, units)` or a scalar; eta a scalar; bias `(units,)` or
    None. Differentiable in every tensor argument with O(B * in * units + T *
    B * (in + units)) memory (plus the stored traces, see the module
    docstring). `eta_grad=False` treats eta as a constant. rule: a
    `hebbkeras.rules` rule or its name.
    """
    rule = dispatch.check_rule(rule, KERNEL)
    names = ["x"] + [n for n, v in (("teacher", teacher), ("bias", bias)) if v is not None]

    def step(x_t, u_t, hebb, w_, alpha_, eta_, bias_):
        return ops.dense_step(x_t, hebb, w_, alpha_, eta_, bias_, activation, u_t,
                              teacher_mode, teacher_scale, rule)

    @tf.custom_gradient
    def fused(*args):
        given = dict(zip(names, args[: len(names)]))
        w_, alpha_, eta_ = args[len(names):]
        xs = tf.transpose(given["x"], [1, 0, 2])
        us = tf.transpose(given["teacher"], [1, 0, 2]) if "teacher" in given else None
        b = given.get("bias")
        steps = tf.shape(xs)[0]
        hebb0 = tf.zeros(tf.concat([tf.shape(xs)[1:], tf.shape(w_)[-1:]], 0), xs.dtype)
        ys = tf.TensorArray(xs.dtype, size=steps)
        ckpts = tf.TensorArray(xs.dtype, size=0, dynamic_size=True, element_shape=hebb0.shape)
        ckpt_of = tf.TensorArray(tf.int32, size=steps)

        def body(t, hebb, growth, n, ys, ckpts, ckpt_of):
            y, hebb_next = step(xs[t], None if us is None else us[t], hebb, w_, alpha_, eta_, b)
            rate = tf.cast(rule.rate(eta_, tf.reduce_max(tf.abs(y))), tf.float64)
            cost = tf.where(rate < 1.0, -tf.math.log1p(-tf.minimum(rate, 1.0 - 1e-12)),
                            tf.constant(math.inf, tf.float64))
            store = tf.logical_or(tf.equal(t, 0), growth + cost > _LOG_GROWTH)
            ckpts = tf.cond(store, lambda: ckpts.write(n, hebb), lambda: ckpts)
            ckpt_of = ckpt_of.write(t, tf.where(store, n, -1))
            growth = tf.where(store, tf.zeros_like(growth), growth + cost)
            n = n + tf.cast(store, tf.int32)
            return t + 1, hebb_next, growth, n, ys.write(t, y), ckpts, ckpt_of

        _, hebb_last, _, _, ys, ckpts, ckpt_of = tf.while_loop(
            lambda t, *_: t < steps, body,
            (0, hebb0, tf.constant(0.0, tf.float64), 0, ys, ckpts, ckpt_of),
            parallel_iterations=1,
        )
        # Plain tensors, not TensorArrays, reach the gradient: a SavedModel
        # (Keras `model.export`) can hold a gradient function capturing those.
        ys = ys.stack()
        ckpts = ckpts.stack()
        ckpt_of = ckpt_of.stack()

        def grad(g_ys, g_h):
            g_ys = tf.zeros_like(ys) if g_ys is None else tf.transpose(g_ys, [1, 0, 2])
            g_h = tf.zeros_like(hebb_last) if g_h is None else g_h
            params = [w_, alpha_, eta_] + ([b] if b is not None else [])
            g_x = tf.TensorArray(xs.dtype, size=steps)
            g_u = tf.TensorArray(xs.dtype, size=steps)

            def back(t, hebb_next, g_hebb, g_params, g_x, g_u):
                x_t, y_t = xs[t], ys[t]
                hebb = tf.cond(ckpt_of[t] >= 0, lambda: ckpts[ckpt_of[t]],
                               lambda: rule.invert(hebb_next, x_t, y_t, eta_))
                u_t = None if us is None else us[t]
                with tf.GradientTape() as tape:
                    watched = [x_t, hebb] + params + ([u_t] if u_t is not None else [])
                    tape.watch(watched)
                    y, new_hebb = step(x_t, u_t, hebb, w_, alpha_, eta_, b)
                grads = tape.gradient([y, new_hebb], watched, output_gradients=[g_ys[t], g_hebb],
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
                g_x = g_x.write(t, grads[0])
                if u_t is not None:
                    g_u = g_u.write(t, grads[-1])
                g_params = [a + g for a, g in zip(g_params, grads[2:2 + len(params)])]
                return t - 1, hebb, grads[1], g_params, g_x, g_u

            _, _, _, g_params, g_x, g_u = tf.while_loop(
                lambda t, *_: t >= 0, back,
                (steps - 1, hebb_last, g_h, [tf.zeros_like(p) for p in params], g_x, g_u),
                parallel_iterations=1,
            )
            out = {"x": tf.transpose(g_x.stack(), [1, 0, 2])}
            if us is not None:
                out["teacher"] = tf.transpose(g_u.stack(), [1, 0, 2])
            if b is not None:
                out["bias"] = g_params[3]
            g_eta = g_params[2] if eta_grad else None
            return tuple(out[n] for n in names) + (g_params[0], g_params[1], g_eta)

        return (tf.transpose(ys, [1, 0, 2]), hebb_last), grad

    inputs = [v for v in (x, teacher, bias) if v is not None]
    return fused(*inputs, w, alpha, eta)
