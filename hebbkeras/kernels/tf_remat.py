"""The whole-sequence path of PlasticRNN on TensorFlow (eagerly, in graphs and
inside XLA) for the rules `fused` and `xla_fused` cannot run: the TensorFlow
twin of `hebbkeras.kernels.jax_remat`.

The neuromodulated rules (`hebbkeras.rules.modulated`) clip the trace, so a
step does not invert. Forward: a `tf.while_loop` over chunks of `interval`
steps runs the cell step (`hebbkeras.ops.modulated_step`, the cell loop's
definition) and keeps the outputs and, at the start of every chunk, `y` and
the rule's traces (`hebb`, and `E`). Backward (`tf.custom_gradient`): a
reverse loop recomputes one chunk at a time from its checkpoint under a
`tf.GradientTape` and pulls the gradients through it. Training memory is
O(B * N^2 * (T / interval + interval) + T * B * N), O(sqrt(T) * B * N^2) with
the default `interval = ceil(sqrt(T))`, against O(T * B * N^2) for the cell
loop; the price is a second forward pass. Needs a static number of steps.
"""

import math

import tensorflow as tf

from hebbkeras import ops
from hebbkeras.kernels import dispatch

KERNEL = "tf_remat"


def plastic_sequence(x, y0, traces0, w, alpha, eta, modulator, input_mode="clamp",
                     rule="simple", trace_clip=1.0, interval=None):
    """Runs a neuromodulated rule over a whole sequence; returns `(ys, traces_T)`.

    Args as `hebbkeras.kernels.jax_remat.plastic_sequence`: x `(batch, time, N)`
    (static `time`), y0 `(batch, N)`, traces0 `(hebb,)` or `(hebb, E)`, w, alpha,
    eta, modulator `(modulator_kernel, modulator_bias[, modulator_fanout])`,
    input_mode "clamp" or "add", rule, trace_clip, interval (default
    `ceil(sqrt(time))`).
    """
    rule = dispatch.check_rule(rule, KERNEL, input_mode)
    steps = x.shape[1]
    if steps is None:
        raise ValueError(f"kernel {KERNEL} needs a static number of time steps; got {x.shape}.")
    k = min(int(interval or math.ceil(math.sqrt(steps))), steps)
    full, n = steps // k, len(traces0)
    clamp_mode = input_mode == "clamp"

    def run(y, traces, xs, params):
        """`len(xs)` steps (time-major `xs`) from `(y, traces)`: `(y, traces, ys)`."""
        w, alpha, eta, *modulator = params
        ys = []
        for t in range(xs.shape[0]):
            drive, clamp = (None, xs[t]) if clamp_mode else (xs[t], None)
            y, traces = ops.modulated_step(y, traces, w, alpha, eta, modulator, trace_clip,
                                           rule, drive, clamp)
            ys.append(y)
        return y, tuple(traces), tf.stack(ys)

    def chunks(xs):
        return tf.reshape(xs[:full * k], [full, k] + xs.shape[1:].as_list())

    @tf.custom_gradient
    def sequence(x, y0, *rest):
        traces0, params = rest[:n], rest[n:]
        xs = tf.transpose(x, [1, 0, 2])
        blocks = chunks(xs)

        def body(i, y, traces, keep, ys):
            keep = [a.write(i, v) for a, v in zip(keep, (y,) + traces)]
            y, traces, out = run(y, traces, blocks[i], params)
            return i + 1, y, traces, keep, ys.write(i, out)

        keep = [tf.TensorArray(v.dtype, full) for v in (y0,) + traces0]
        _, y, traces, keep, ys = tf.while_loop(
            lambda i, *_: i < full, body,
            (0, y0, tuple(traces0), keep, tf.TensorArray(y0.dtype, full)))
        ys = tf.reshape(ys.stack(), [full * k] + y0.shape.as_list())
        checkpoints = [a.stack() for a in keep]
        y_tail, traces_tail = y, traces  # where the steps after the last full chunk start
        if steps > full * k:
            y, traces, tail = run(y, traces, xs[full * k:], params)
            ys = tf.concat([ys, tail], 0)

        def grad(g_ys, *g_traces):
            g_ys = tf.transpose(g_ys, [1, 0, 2])
            g_y, g_tr = tf.zeros_like(y0), tuple(g_traces)
            g_params = [tf.zeros_like(p) for p in params]

            def pull(y_c, tr_c, xs_c, g_y, g_tr, g_ys_c, g_params):
                """One chunk backwards: recomputed from its start `(y_c, tr_c)` on
                `xs_c`; `g_y` the gradient of its last `y` besides `g_ys_c`'s."""
                g_ys_c = tf.concat([g_ys_c[:-1], g_ys_c[-1:] + g_y[None]], 0)
                with tf.GradientTape() as tape:
                    tape.watch([y_c, tr_c, xs_c, params])
                    _, tr_e, ys_c = run(y_c, tr_c, xs_c, params)
                sources = [y_c, *tr_c, xs_c, *params]
                got = tape.gradient([ys_c, *tr_e], sources, output_gradients=[g_ys_c, *g_tr])
                got = [tf.zeros_like(v) if g is None else g for g, v in zip(got, sources)]
                return (got[0], tuple(got[1:1 + n]), got[1 + n],
                        [a + b for a, b in zip(g_params, got[2 + n:])])

            g_tail = None
            if steps > full * k:
                g_y, g_tr, g_tail, g_params = pull(y_tail, traces_tail, xs[full * k:], g_y, g_tr,
                                                   g_ys[full * k:], g_params)
            g_blocks = chunks(g_ys)

            def back(i, g_y, g_tr, g_params, g_xs):
                i = i - 1
                tr_c = tuple(c[i] for c in checkpoints[1:])
                g_y, g_tr, g_x, g_params = pull(checkpoints[0][i], tr_c, blocks[i], g_y, g_tr,
                                                g_blocks[i], g_params)
                return i, g_y, g_tr, g_params, g_xs.write(i, g_x)

            # One chunk at a time: each chunk's recomputation depends only on its
            # checkpoint, so parallel iterations would recompute several at once.
            _, g_y, g_tr, g_params, g_xs = tf.while_loop(
                lambda i, *_: i > 0, back,
                (full, g_y, g_tr, g_params, tf.TensorArray(x.dtype, full)),
                parallel_iterations=1)
            g_x = tf.reshape(g_xs.stack(), [full * k] + xs.shape[1:].as_list())
            if g_tail is not None:
                g_x = tf.concat([g_x, g_tail], 0)
            return (tf.transpose(g_x, [1, 0, 2]), g_y, *g_tr, *g_params)

        return (tf.transpose(ys, [1, 0, 2]), *traces), grad

    dtype = y0.dtype
    args = [tf.cast(v, dtype) for v in (x, y0, *traces0, w, alpha, eta, *modulator)]
    ys, *traces = sequence(*args)
    return ys, tuple(traces)
