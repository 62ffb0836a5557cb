"""The fused whole-sequence kernel of PlasticRNN that XLA compiles, on TensorFlow.

The TensorFlow twin of `hebbkeras.kernels.jax_fused`, for `PlasticRNN` traced inside
an XLA-compiled function (`jit_compile=True`): the same algorithm, with every
array's size known when the function is traced (`time` static, the sequence
cut into `chunks` equal chunks of `interval` steps), so XLA compiles the
forward pass, the hand-written gradient and the rest of the train step as
one program. `hebbkeras.kernels.fused` (dynamically sized TensorList scatters; native
CPU kernels) stays the path outside XLA.

Forward: one loop keeps only the outputs `y_t` (O(T * B * N)) and the trace
at the start of every chunk (the checkpoints). Backward: a reverse loop
rebuilds each step's trace from the next one with the rule's inverse
(`rule.invert`, `hebbkeras.rules`), restarting from the exact stored trace
at every checkpoint, and applies the step's vector-Jacobian product (written
out in `_step_backward`, the trace's part by `rule.backward`). When
`interval` inversions could grow rounding error more than
`INVERSION_GROWTH`-fold (`rule.rate`; a large or trained-up `eta`), the trace is recomputed forward from the
checkpoint with the stored outputs instead (exact, no extra memory). Training
memory is O(B * N^2 * (T / interval + 1) + T * B * N), against
O(T * B * N^2) for autodiff through the cell loop.

Skipped work, as in `hebbkeras.kernels.fused`: a step that clamps every neuron of
every episode ("clamp" input mode) only updates the trace, and with a rule
that has `held_runs` (the Hebbian rule) a clamped pattern held for `k` steps
of a chunk is one update (`hebbkeras.rules.hebb`, eq. H; the run's other
steps are jumped over). Eq. (1) and the activation follow `hebbkeras.ops`.

What XLA needs, and how it is met: every array has a static size (T, the
chunks, `interval`: the outputs go to fixed-size TensorArrays, checkpoints
one per chunk); loop trip counts may be known only at run time (a chunk's
loop strides over held runs and stops before the padding). A trace never
passes through a per-step conditional, unchanged or as its result, since
XLA then copies it into the loop state (a pass over B * N^2 floats per
step): in the forward pass the conditional yields `y_t` and the trace is
updated outside it; in the backward pass the step's kind selects vectors
and scalars (and `g_alpha`), the trace's inversion and its gradient's update
run outside it, and inverting or rebuilding is chosen once for the whole
pass (see `_backward`).
"""

import functools

import tensorflow as tf

from hebbkeras import ops, rules
from hebbkeras.kernels import dispatch

# The step schedule and the checkpoint rule, shared with `hebbkeras.kernels.jax_fused`.
from hebbkeras.kernels.schedule import (HELD, PADDING, backward_inputs, chunked, pick_interval,
                                        step_kinds)

KERNEL = "xla_fused"


# Plain TensorFlow control flow throughout: AutoGraph would only spend seconds
# converting it (Keras traces train steps with AutoGraph on).
@tf.autograph.experimental.do_not_convert
def plastic_sequence(x, y0, h0, w, alpha, eta, input_mode="clamp", rule="hebb", eta_grad=True,
                     interval=None):
    """Runs eqs. (1)-(2) over a whole sequence; returns `(ys, hebb_T)`.

    x: `(batch, time, N)` with a static `time`: the clamping input when
    `input_mode="clamp"`, else the additive drive (`input_scale * x`, or the
    input kernel's output; see `PlasticRNNCell.input_terms`). y0 `(batch, N)`,
    h0 `(batch, N, N)`: the initial state; w `(N, N)`; alpha `(N, N)` or a
    scalar; eta a scalar. `interval`: static steps between checkpoints
    (default `schedule.checkpoint_interval(eta)` where `eta` is a Python number, else
    `ceil(sqrt(time))`). `eta_grad=False` returns no gradient for `eta`.
    rule: a `hebbkeras.rules` rule or its name. The signature every fused
    kernel shares (`hebbkeras.kernels.dispatch`).
    ys is `(batch, time, N)`. Differentiable in every tensor argument with a
    hand-written gradient (see the module docstring); meant to run inside
    `tf.function(jit_compile=True)`, and correct (slowly) outside it.

    Example:

    >>> step = tf.function(lambda x, y0, h0, w, a: plastic_sequence(
    ...     x, y0, h0, w, a, 0.01)[0], jit_compile=True)
    """
    rule = dispatch.check_rule(rule, KERNEL, input_mode)
    steps = x.shape[1]
    if steps is None:
        raise ValueError(f"xla_fused.plastic_sequence needs a static number of time steps; got "
                         f"input shape {x.shape}. Give the model's Input a fixed length.")
    interval = pick_interval(interval, eta, steps)
    dtype = tf.as_dtype(y0.dtype)
    args = [tf.cast(v, dtype) for v in (x, y0, h0, w, alpha, eta)]
    clamp_mode = input_mode == "clamp"

    @tf.custom_gradient
    def fused(x, y0, h0, w, alpha, eta):
        xt = tf.transpose(x, [1, 0, 2])
        ys, hebb, ckpts = _forward(clamp_mode, rule, interval, xt, y0, h0, w, alpha, eta)

        def grad(g_ys, g_h):
            g_ys = tf.zeros_like(ys) if g_ys is None else tf.transpose(g_ys, [1, 0, 2])
            g_h = tf.zeros_like(hebb) if g_h is None else g_h
            g_x, *rest = _backward(clamp_mode, rule, interval, eta_grad, xt, y0, w, alpha, eta,
                                   ys, hebb, ckpts, g_ys, g_h)
            if not eta_grad:
                rest[-1] = None
            return (tf.transpose(g_x, [1, 0, 2]), *rest)

        return (tf.transpose(ys, [1, 0, 2]), hebb), grad

    return fused(*args)


def _scan(fn, carry, xs, length, out_like, reverse=False):
    """`lax.scan` in TensorFlow: `(carry, ys)`, `ys` stacked along a new first axis.

    `fn(carry, x) -> (carry, y)` runs `length` (static) times over the first
    axis of every tensor in `xs`; `out_like` has `y`'s structure, each tensor
    with its dtype and shape. The outputs go to fixed-size TensorArrays, which
    XLA compiles to in-place updates of preallocated buffers.
    """
    flat_like = tf.nest.flatten(out_like)
    arrays = [tf.TensorArray(t.dtype, size=length, element_shape=t.shape) for t in flat_like]

    def body(i, carry, arrays):
        t = length - 1 - i if reverse else i
        carry, y = fn(carry, tf.nest.map_structure(lambda a: a[t], xs))
        arrays = [ta.write(t, v) for ta, v in zip(arrays, tf.nest.flatten(y))]
        return i + 1, carry, arrays

    _, carry, arrays = tf.while_loop(
        lambda i, *_: i < length, body, (tf.constant(0), carry, arrays),
        maximum_iterations=length, parallel_iterations=1)
    return carry, tf.nest.pack_sequence_as(out_like, [ta.stack() for ta in arrays])


def _fori(lower, upper, fn, value):
    """`lax.fori_loop`: `fn(i, value)` for i in [lower, upper) (a run-time `upper`)."""
    _, value = tf.while_loop(lambda i, _: i < upper, lambda i, v: (i + 1, fn(i, v)),
                             (lower, value), parallel_iterations=1)
    return value


_outer, _vecmat, _matvec = rules.LINALG.outer, rules.LINALG.vecmat, rules.LINALG.matvec


def _output(clamp_mode, y_prev, hebb, w, alpha, x):
    """Eq. (1) and the activation, as in `hebbkeras.ops.step`: `y_t`."""
    if len(alpha.shape) == 0:
        plastic = alpha * _vecmat(y_prev, hebb)
    else:
        plastic = _vecmat(y_prev, alpha * hebb)
    pre = tf.matmul(y_prev, w) + plastic
    if clamp_mode:
        return ops.activate(pre, None, x)
    return ops.activate(pre, x)


def _unchunked(a, steps):
    """`(chunks, interval, ...)` -> `(steps, ...)`."""
    out = tf.reshape(a, tf.concat([[-1], tf.shape(a)[2:]], 0))[:steps]
    out.set_shape([steps] + a.shape[2:].as_list())
    return out


def _segments(kind_c, fn, init, reverse=False):
    """Runs `fn(i, *state) -> (stride, *state)` over one chunk's steps, forwards
    from step 0 or backwards from the last step that is not padding.

    The stride jumps over a held run's other steps (its first step applies the
    whole run), so no step passes the trace through unchanged: in XLA such a
    step would copy it. The trip count is known only at run time; XLA
    compiles that (a while loop), and every array keeps a static size.
    """
    valid = tf.reduce_sum(tf.cast(tf.not_equal(kind_c, PADDING), tf.int32))
    if reverse:
        cond, i0, sign = (lambda i, *_: i >= 0), valid - 1, -1
    else:
        cond, i0, sign = (lambda i, *_: i < valid), tf.constant(0), 1

    def body(i, *state):
        stride, *state = fn(i, *state)
        return (i + sign * stride, *state)

    return tf.while_loop(cond, body, (i0,) + tuple(init), parallel_iterations=1)[1:]


def _forward(clamp_mode, rule, interval, x, y0, h0, w, alpha, eta):
    """Time-major forward: `(ys (T, B, N), hebb_T, checkpoints (chunks, B, N, N))`."""
    steps = x.shape[0]
    chunks = -(-steps // interval)
    xs = (chunked(x, chunks, interval),) + step_kinds(x, clamp_mode, rule, interval, chunks)

    def chunk(carry, inp):
        y, start = carry
        x_c, kind_c, _, k_c = inp

        def one(i, y_prev, hebb, ys):
            """Step i, or the held run starting there (its geometric series).

            Only the output goes through the conditional, and the trace is
            updated once, outside it: XLA copies a trace that a conditional
            returns into the loop's state (a pass over it per step).
            """
            x_t, kind, k = x_c[i], kind_c[i], k_c[i]
            if clamp_mode:  # padding is never visited: its branch is a placeholder
                y = tf.switch_case(kind, [
                    lambda: _output(clamp_mode, y_prev, hebb, w, alpha, x_t),
                    lambda: x_t, lambda: x_t, lambda: x_t])
            else:
                y = _output(clamp_mode, y_prev, hebb, w, alpha, x_t)
            if not rule.held_runs:
                return 1, y, rule.update(hebb, y_prev, y, eta), ys.write(i, y)
            # decay * hebb + outer(u, y) (a scalar decay); for a held run of
            # k steps (y_{t-1} = y = x) decay = rule.held_decay and u = (1 - decay) x.
            held = tf.equal(kind, HELD)
            decay = tf.where(held, rule.held_decay(eta, k), rule.decay(eta, y))
            u = tf.where(held, (1.0 - decay) * x_t, eta * y_prev)
            return (tf.where(held, k, 1), y, decay * hebb + _outer(u, y), ys.write(i, y))

        ys = tf.TensorArray(y0.dtype, size=interval, element_shape=y0.shape)
        y, hebb, ys = _segments(kind_c, one, (y, start, ys))
        # A held run's later steps were jumped over: their output is the clamp.
        ys = tf.where(tf.equal(kind_c, HELD)[:, None, None], x_c, ys.stack())
        return (y, hebb), (ys, start)

    like = (tf.TensorSpec([interval] + y0.shape.as_list(), y0.dtype), h0)
    (_, hebb), (ys, ckpts) = _scan(chunk, (y0, h0), xs, chunks, like)
    return _unchunked(ys, steps), hebb, ckpts


def _step_backward(clamp_mode, rule, eta_grad, y_prev, h_prev, w, alpha, eta, x, y, gy, g_hebb):
    """The vector-Jacobian product of a computed step, written out, less its
    trace-sized and weight-sized parts.

    Returns `(g_pre, g_y_prev, g_alpha, g_eta, g_x)`, `g_pre` the gradient of
    eq. (1)'s pre-activation. The rest is left to the caller, outside any
    conditional: the trace's gradient `rule.decay(eta, y) * g_hebb +
    alpha * outer(y_prev, g_pre)`, and `g_w`, the sum over steps of
    `y_prev^T g_pre` (one product per chunk). `g_alpha` has `alpha`'s shape.
    """
    g_y, g_yp, g_eta = rule.backward(g_hebb, h_prev, y_prev, y, gy, eta, eta_grad)
    g_pre = g_y * (1.0 - tf.square(y))
    if clamp_mode:  # d y / d x = 1 on clamped neurons, d y / d pre = 0
        clamped = tf.not_equal(x, 0)
        g_x = tf.where(clamped, g_y, tf.zeros_like(g_y))
        g_pre = tf.where(clamped, tf.zeros_like(g_pre), g_pre)
    else:
        g_x = g_pre
    if len(alpha.shape) == 0:
        hg = _matvec(h_prev, g_pre)
        g_alpha = tf.reduce_sum(y_prev * hg)
        plastic = alpha * hg
    else:
        g_alpha = tf.reduce_sum(h_prev * _outer(y_prev, g_pre), axis=0)
        plastic = _matvec(alpha * h_prev, g_pre)
    g_yp = g_yp + tf.matmul(g_pre, w, transpose_b=True) + plastic
    return g_pre, g_yp, g_alpha, g_eta, g_x


def _backward(clamp_mode, rule, interval, eta_grad, xt, y0, w, alpha, eta, ys, h_last, ckpts, g_ys, g_h):
    """Backpropagation through time, newest chunk first; returns gradients of
    `(x (time-major), y0, h0, w, alpha, eta)`.

    As in the forward pass, no trace-sized tensor passes through a per-step
    conditional (XLA would copy it into the loop state, a pass over B * N^2
    floats each): the step's kind selects only vectors and scalars (the
    conditional's branches read the trace and its gradient, and return the
    input gradients, `g_pre` and `g_eta`), and `g_alpha` (its only
    `alpha`-sized result: a copy of N^2 floats on a skipped step), and the
    trace's inversion and its gradient's update are each one pass outside
    it. Whether traces are inverted or rebuilt from the checkpoints is
    chosen once, around the whole pass, and `g_w` is one product per chunk
    over the stored `g_pre`.
    """
    steps = xt.shape[0]
    chunks = -(-steps // interval)
    invert, xs = backward_inputs(xt, y0, ys, g_ys, eta, rule, clamp_mode, interval, chunks)
    xs += (ckpts,)
    zeros_y = tf.zeros_like(y0)
    runs = clamp_mode and rule.held_runs  # held runs only happen there

    def chunk(invert_now, carry, inp):
        y_prevs, y_outs, x_c, g_y_c, kind_c, j_c, k_c, start = inp

        def rebuild(j):
            """The trace before step j of this chunk, from its checkpoint."""
            return _fori(0, j, lambda i, h: rule.update(h, y_prevs[i], y_outs[i], eta), start)

        def step():
            """The chunk's step function, inverting traces (`invert_now`, a
            Python bool) or rebuilding them from the checkpoint."""

            def one(i, hebb, g_hebb, gy_next, g_alpha, g_eta, g_xs, g_pres, posts, pres):
                """Step i, or the held run ending there; returns the stride and the
                state before it: `(trace, its gradient, gradient into y_{t-1},
                g_alpha, g_eta)` and the arrays of `g_x`, `g_pre` and the runs'
                `post`, `pre`."""
                y_prev, y, x_t, gy = y_prevs[i], y_outs[i], x_c[i], g_y_c[i] + gy_next
                kind, k = kind_c[i], k_c[i]
                # The trace before the step (or run) is (hebb - c outer(u, v)) / decay;
                # a held run of k steps holding x: decay = rule.held_decay, c = 1 - decay,
                # u = v = x.
                if runs:
                    held = tf.equal(kind, HELD)
                    decay = tf.where(held, rule.held_decay(eta, k), rule.decay(eta, y))
                else:
                    decay = rule.decay(eta, y)
                if not invert_now:
                    h_prev = rebuild(tf.where(held, i - k + 1, i) if runs else i)
                elif runs:
                    u, v = tf.where(held, x_t, y_prev), tf.where(held, x_t, y)
                    h_prev = (hebb - tf.where(held, 1.0 - decay, eta) * _outer(u, v)) / decay
                else:
                    h_prev = rule.invert(hebb, y_prev, y, eta)

                def computed():
                    g_pre, g_yp, d_alpha, d_eta, g_x = _step_backward(
                        clamp_mode, rule, eta_grad, y_prev, h_prev, w, alpha, eta, x_t, y, gy,
                        g_hebb)
                    return g_pre, g_yp, g_alpha + d_alpha, d_eta, g_x, zeros_y, zeros_y

                def clamped():
                    g_x, g_yp, d_eta = rule.backward(g_hebb, h_prev, y_prev, y, gy, eta, eta_grad)
                    return zeros_y, g_yp, g_alpha, d_eta, g_x, zeros_y, zeros_y

                def held_run():
                    """The held run of k steps holding x that ends at step i
                    (`rule.held_coefficients`, with `post = x^T G`, `pre = G x` of
                    the trace's gradient G after the run). Here: the last step's
                    input gradient, and the run's first step's gradient into
                    y_{t-1}; the other steps' input gradients are filled in
                    after the loop from `post`, `pre`. The trace's gradient
                    before the run is `decay * G`.
                    """
                    post, pre = _vecmat(x_t, g_hebb), _matvec(g_hebb, x_t)
                    d_eta = rule.held_eta_grad(eta, k, post, x_t, tf.reduce_sum(
                        g_hebb * h_prev)) if eta_grad else tf.zeros_like(eta)
                    as_post, as_pre = rule.held_coefficients(eta, k, tf.stack([k - 1, -1]))
                    return (zeros_y, as_pre[1] * pre, g_alpha, d_eta,
                            gy + as_post[0] * post, post, pre)

                if clamp_mode:  # padding is never visited: its branch is a placeholder
                    out = tf.switch_case(kind, [computed, clamped, clamped,
                                                held_run if runs else clamped])
                    stride = tf.where(tf.equal(kind, HELD), k, 1)
                else:
                    out, stride = computed(), 1
                g_pre, g_yp, g_alpha, d_eta, g_x, post, pre = out
                # g_pre is zero on clamped steps and runs: no term then.
                g_hp = decay * g_hebb + alpha * _outer(y_prev, g_pre)
                return (stride, h_prev, g_hp, g_yp, g_alpha, g_eta + d_eta,
                        g_xs.write(i, g_x), g_pres.write(i, g_pre), posts.write(i, post),
                        pres.write(i, pre))

            return one

        hebb_end, g_hebb, gy_next, g_w, g_alpha, g_eta = carry
        init = (hebb_end, g_hebb, gy_next, g_alpha, g_eta)

        arrays = [tf.TensorArray(y0.dtype, size=interval, element_shape=y0.shape)
                  for _ in range(4)]
        out = _segments(kind_c, step(), init + tuple(arrays), reverse=True)
        g_hebb, gy_next, g_alpha, g_eta = out[1:5]
        g_x, g_pres, posts, pres = (ta.stack() for ta in out[5:])
        # Unvisited steps (padding, a held run's inner steps) keep g_pre = 0.
        g_w = g_w + tf.einsum("tbi,tbj->ij", y_prevs, g_pres)
        if runs:  # the held runs' steps jumped over
            index = tf.range(interval)
            inner = tf.equal(kind_c, HELD) & (j_c < k_c - 1)
            end = tf.where(inner, index + k_c - 1 - j_c, index)  # the run's last step
            as_post, as_pre = (tf.where(inner, c, tf.zeros_like(c))
                               for c in rule.held_coefficients(eta, k_c, j_c))
            g_inner = (g_y_c + as_post[:, None, None] * tf.gather(posts, end)
                       + as_pre[:, None, None] * tf.gather(pres, end))
            g_x = tf.where(inner[:, None, None], g_inner, g_x)
        # The previous chunk ends at this chunk's exact stored trace.
        return (start, g_hebb, gy_next, g_w, g_alpha, g_eta), g_x

    init = (h_last, g_h, zeros_y, tf.zeros_like(w), tf.zeros_like(alpha), tf.zeros_like(eta))
    like = tf.TensorSpec([interval] + y0.shape.as_list(), y0.dtype)

    def backward(invert_now):
        (_, g_h0, g_y0, g_w, g_alpha, g_eta), g_x = _scan(
            functools.partial(chunk, invert_now), init, xs, chunks, like, reverse=True)
        return _unchunked(g_x, steps), g_y0, g_h0, g_w, g_alpha, g_eta

    # Chosen once for the whole pass (the conditional copies what it returns).
    return tf.cond(invert, lambda: backward(True), lambda: backward(False))
