"""The fused whole-sequence kernel of PlasticRNN, with a hand-written gradient.

Autodiff through the cell loop stores the `(batch, N, N)` trace of every step:
O(T * B * N^2) memory. Here the forward pass is one `tf.while_loop` that keeps
only the outputs `y_t` (O(T * B * N)), and the gradient runs backwards through
time rebuilding each step's trace from the next one, since eq. (2) inverts:

    hebb:  hebb_t = (hebb_{t+1} - eta * outer(y_{t-1}, y_t)) / (1 - eta)
    oja:   hebb_t = (hebb_{t+1} - eta * outer(y_{t-1}, y_t)) / (1 - eta * y_t[j]^2)

Each inversion multiplies rounding error by at most `1 / (1 - rate)`, so the
trace is also stored every `checkpoint_interval(rate)` steps (a bounded
growth of `INVERSION_GROWTH`) and the backward pass resets to the stored
copy there; at `eta = 1` nothing inverts and every step is a checkpoint.

Work that cannot change the result is skipped, exactly:
- a step that clamps every neuron ("clamp" input mode) needs no
  pre-activation and passes no gradient through `w`, `alpha` or `y_{t-1}`'s
  pre-activation;
- with the Hebbian rule, a clamped pattern held for `k` steps adds a geometric
  series: `hebb <- (1 - eta)^k hebb + (1 - (1 - eta)^k) outer(x, x)`, one
  trace update instead of `k` (forward and backward).

Only plain TensorFlow ops: works with unknown batch and time dimensions, in
`tf.function`, in SavedModels served without XLA, and inside `tf.distribute`
replicas. XLA cannot compile the loops (TensorList scatters, run lengths known
only at run time), so `PlasticRNN` runs its cell loop inside `jit_compile`;
`jit_backward` compiles just the per-step gradient. Eqs. (1) and the
activation come from `hebbkeras.ops`; the trace update is written as
`decay * hebb + outer(eta * y_{t-1}, y_t)`, the form `_invert` undoes, and the
tests check it against `ops.update_trace` through the cell loop.
"""

import functools
import math

import tensorflow as tf

from hebbkeras import ops

INVERSION_GROWTH = 10.0


def checkpoint_interval(rate):
    """Steps between stored traces so inversion error grows at most `INVERSION_GROWTH`-fold.

    `rate` bounds the fraction of the trace replaced per step (`eta` for the
    Hebbian rule, `eta * max(1, max y^2)` for Oja's). Returns an int32 scalar >= 1.
    """
    rate = tf.cast(rate, tf.float64)
    growth = -tf.math.log1p(-tf.minimum(rate, 1.0))  # inf at rate 1
    steps = tf.floor(math.log(INVERSION_GROWTH) / growth)
    return tf.cast(tf.clip_by_value(steps, 1.0, 2.0**30), tf.int32)


def _outer(a, b):
    return tf.einsum("bi,bj->bij", a, b)  # faster than a broadcast multiply on CPU


def _classify(clamp, rule):
    """Per step: does it clamp every neuron; how many identical fully clamped steps start here.

    `run[t] > 0` when step t and t-1 clamp every neuron to the same values (so
    `y_{t-1} = y_t = x_t`): the Hebbian update is then a geometric series.
    """
    steps = tf.shape(clamp)[0]
    full = tf.reduce_all(tf.not_equal(clamp, 0), axis=[1, 2])
    if rule != "hebb":
        return full, tf.zeros([steps], tf.int32)
    same = tf.reduce_all(tf.equal(clamp[1:], clamp[:-1]), axis=[1, 2])
    same = tf.concat([[False], same & full[1:] & full[:-1]], 0)
    run = tf.scan(lambda n, s: tf.where(s, n + 1, 0), same, initializer=0, reverse=True)
    return full, run


def plastic_sequence(
    drive, clamp, y0, h0, w, alpha, eta, rule="hebb", eta_grad=True, jit_backward=False
):
    """Runs eqs. (1)-(2) over a whole sequence; returns `(ys, hebb_T)`.

    drive: `(batch, time, N)` additive input term or None; clamp: `(batch,
    time, N)` clamping input or None (see `ops.activate`); y0 `(batch, N)` and
    h0 `(batch, N, N)`: the initial state; w `(N, N)`; alpha `(N, N)` or a
    scalar; eta a scalar. ys is `(batch, time, N)`. Differentiable in every
    tensor argument, with O(B * N^2 + T * B * N) memory (plus one stored trace
    per `checkpoint_interval` steps). `eta_grad=False` returns no gradient for
    eta (a constant) and saves a pass over the trace per step;
    `jit_backward=True` compiles the per-step gradient with XLA (training only).
    """
    ops.check_option("rule", rule, ops.RULES)
    names = [n for n, v in (("drive", drive), ("clamp", clamp)) if v is not None]
    if not names:
        raise ValueError("plastic_sequence needs a drive, a clamp, or both.")

    @tf.custom_gradient
    def fused(*args):
        given = dict(zip(names, args[: len(names)]))
        y0_, h0_, w_, alpha_, eta_ = args[len(names):]
        # Time-major for the loops.
        d = tf.transpose(given["drive"], [1, 0, 2]) if "drive" in given else None
        c = tf.transpose(given["clamp"], [1, 0, 2]) if "clamp" in given else None
        ys, h_last, record = _forward(d, c, y0_, h0_, w_, alpha_, eta_, rule)

        def grad(g_ys, g_h):
            g_ys = tf.zeros_like(ys) if g_ys is None else tf.transpose(g_ys, [1, 0, 2])
            g_h = tf.zeros_like(h_last) if g_h is None else g_h
            grads = _backward(d, c, y0_, w_, alpha_, eta_, rule, eta_grad, jit_backward, ys, h_last, record, g_ys, g_h)
            g_drive, g_clamp, rest = grads[0], grads[1], grads[2:]
            out = []
            if "drive" in given:
                out.append(tf.transpose(g_drive, [1, 0, 2]))
            if "clamp" in given:
                out.append(tf.transpose(g_clamp, [1, 0, 2]))
            if not eta_grad:  # eta is a constant here
                rest = rest[:-1] + (None,)
            return tuple(out) + tuple(rest)

        return (tf.transpose(ys, [1, 0, 2]), h_last), grad

    inputs = [v for v in (drive, clamp) if v is not None]
    return fused(*inputs, y0, h0, w, alpha, eta)


def _rate(c, eta, rule):
    if rule == "oja" and c is not None:  # a clamped |x| > 1 replaces more per step
        return eta * tf.maximum(tf.reduce_max(tf.square(c)), 1.0)
    return eta


def _forward(d, c, y0, h0, w, alpha, eta, rule):
    seq = d if d is not None else c
    steps = tf.shape(seq)[0]
    full, run = _classify(c, rule) if c is not None else (None, None)
    interval = checkpoint_interval(_rate(c, eta, rule))
    dtype = y0.dtype
    ys = tf.TensorArray(dtype, size=steps, element_shape=y0.shape)
    ckpts = tf.TensorArray(dtype, size=steps, element_shape=h0.shape, clear_after_read=False)
    starts = tf.TensorArray(tf.int32, size=steps, element_shape=[])
    ckpt_of = tf.TensorArray(tf.int32, size=steps, element_shape=[])

    def segment(t, end, y, hebb):
        """One step, or a held pattern's whole run; returns `(k, y, hebb)`."""
        def computed():
            drive = d[t] if d is not None else None
            clamp = c[t] if c is not None else None
            y_new = ops.activate(ops.preactivation(y, w, alpha, hebb), drive, clamp)
            return y_new, _trace_step(hebb, y, y_new, eta, rule)

        if c is None:
            return (1,) + tuple(computed())
        held = tf.minimum(run[t], end - t)

        def clamped():
            return c[t], _trace_step(hebb, y, c[t], eta, rule)

        def held_run():
            decay = tf.pow(1.0 - eta, tf.cast(held, dtype))
            return c[t], decay * hebb + (1.0 - decay) * _outer(c[t], c[t])

        kind = tf.where(held > 1, 2, tf.where(full[t], 1, 0))
        y, hebb = tf.switch_case(kind, [computed, clamped, held_run])
        return tf.maximum(held, 1), y, hebb

    def chunk(t, n_ckpt, n_seg, y, hebb, ys, ckpts, starts, ckpt_of):
        ckpts = ckpts.write(n_ckpt, hebb)
        end = tf.minimum(t + interval, steps)

        def body(t, n_seg, first, y, hebb, ys, starts, ckpt_of):
            k, y, hebb = segment(t, end, y, hebb)
            ys = ys.scatter(tf.range(t, t + k), tf.repeat(y[None], k, axis=0))
            starts = starts.write(n_seg, t)
            ckpt_of = ckpt_of.write(n_seg, tf.where(first, n_ckpt, -1))
            return t + k, n_seg + 1, False, y, hebb, ys, starts, ckpt_of

        t, n_seg, _, y, hebb, ys, starts, ckpt_of = tf.while_loop(
            lambda t, *_: t < end, body, (t, n_seg, True, y, hebb, ys, starts, ckpt_of),
            parallel_iterations=1,
        )
        return t, n_ckpt + 1, n_seg, y, hebb, ys, ckpts, starts, ckpt_of

    zero = tf.constant(0)
    _, _, n_seg, _, hebb, ys, ckpts, starts, ckpt_of = tf.while_loop(
        lambda t, *_: t < steps, chunk, (zero, zero, zero, y0, h0, ys, ckpts, starts, ckpt_of),
        parallel_iterations=1,
    )
    record = {"n_seg": n_seg, "ckpts": ckpts, "starts": starts, "ckpt_of": ckpt_of, "full": full}
    return ys.stack(), hebb, record


def _decay(eta, y, rule):
    """The factor eq. (2) multiplies the old trace by: scalar (hebb) or per column (oja)."""
    if rule == "hebb":
        return 1.0 - eta
    return (1.0 - eta * tf.square(y))[:, None, :]


def _trace_step(hebb, y_prev, y, eta, rule):
    """`ops.update_trace` written as `decay * hebb + outer(eta * y_prev, y)`, the form
    `_invert` undoes (and faster on CPU than a broadcast multiply)."""
    return _decay(eta, y, rule) * hebb + _outer(eta * y_prev, y)


def _invert(hebb, y_prev, y, eta, rule):
    """Eq. (2) backwards: the trace before the step that made `hebb`."""
    return (hebb - _outer(eta * y_prev, y)) / _decay(eta, y, rule)


def _trace_backward(hebb_prev, g_hebb, y_prev, y, gy, eta, rule, eta_grad):
    """Gradient through eq. (2); returns `(g_hebb_prev, gy, gy_prev, g_eta)`."""
    post = tf.einsum("bi,bij->bj", y_prev, g_hebb)  # d/dy_t of sum(gH * outer)
    pre = tf.einsum("bij,bj->bi", g_hebb, y)  # d/dy_{t-1}
    gy = gy + eta * post
    g_eta = tf.zeros([], y.dtype)
    if rule == "oja" or eta_grad:
        col = tf.reduce_sum(g_hebb * hebb_prev, axis=1)  # sum_i gH_ij hebb_ij
    if eta_grad:
        weight = 1.0 if rule == "hebb" else tf.square(y)
        g_eta = tf.reduce_sum(post * y) - tf.reduce_sum(weight * col)
    if rule == "oja":  # the decay 1 - eta y_j^2 depends on y_j
        gy -= 2.0 * eta * y * col
    return _decay(eta, y, rule) * g_hebb, gy, eta * pre, g_eta


def _free_backward(hebb_prev, y_prev, y, gy, gy_prev, g_hebb, clamp, w, alpha, g_alpha):
    """Gradient through eq. (1) and tanh where some neuron is free."""
    if clamp is not None:  # d y / d x = 1 on clamped neurons, d y / d pre = 0
        clamped = tf.not_equal(clamp, 0)
        g_x = tf.where(clamped, gy, tf.zeros_like(gy))
        g_pre = tf.where(clamped, tf.zeros_like(gy), gy * (1.0 - tf.square(y)))
    else:
        g_x, g_pre = tf.zeros_like(gy), gy * (1.0 - tf.square(y))
    outer = _outer(y_prev, g_pre)
    if len(alpha.shape) == 0:
        hg = tf.einsum("bij,bj->bi", hebb_prev, g_pre)
        g_alpha = g_alpha + tf.reduce_sum(y_prev * hg)
        plastic = alpha * hg
    else:
        g_alpha = g_alpha + tf.reduce_sum(hebb_prev * outer, axis=0)
        plastic = tf.einsum("bj,bij->bi", g_pre, alpha * hebb_prev)
    g_y_prev = gy_prev + tf.matmul(g_pre, w, transpose_b=True) + plastic
    return g_hebb + alpha * outer, g_y_prev, g_x, g_pre, g_alpha


@functools.lru_cache(maxsize=None)
def _step_backward_fns(rule, eta_grad, jit):
    """The per-step gradient functions, optionally compiled with XLA (training only)."""

    def computed(hebb_prev, g_hebb, y_prev, y, gy, eta, clamp, w, alpha, g_alpha):
        g_hebb, gy, gy_prev, g_eta = _trace_backward(
            hebb_prev, g_hebb, y_prev, y, gy, eta, rule, eta_grad)
        g_hebb, g_y_prev, g_x, g_pre, g_alpha = _free_backward(
            hebb_prev, y_prev, y, gy, gy_prev, g_hebb, clamp, w, alpha, g_alpha)
        return g_hebb, g_y_prev, g_eta, g_x, g_pre, g_alpha

    def clamped(hebb_prev, g_hebb, y_prev, y, gy, eta, g_alpha):
        g_hebb, gy, gy_prev, g_eta = _trace_backward(
            hebb_prev, g_hebb, y_prev, y, gy, eta, rule, eta_grad)
        return g_hebb, gy_prev, g_eta, gy, tf.zeros_like(gy), g_alpha

    def invert(hebb, y_prev, y, eta):
        return _invert(hebb, y_prev, y, eta, rule)

    if jit:
        return tuple(tf.function(f, jit_compile=True, reduce_retracing=True)
                     for f in (computed, clamped, invert))
    return computed, clamped, invert


def _backward(d, c, y0, w, alpha, eta, rule, eta_grad, jit_backward, ys, h_last, record, g_ys, g_h):
    """Backpropagation through time, newest segment first; returns gradients of
    `(drive, clamp, y0, h0, w, alpha, eta)` (drive, clamp time-major; None if absent)."""
    steps = tf.shape(ys)[0]
    dtype = ys.dtype
    shared = len(alpha.shape) == 0
    y_ext = tf.concat([y0[None], ys], 0)  # y_ext[t] = y_{t-1}, y_ext[t + 1] = y_t
    ckpts, starts, ckpt_of, full = (record[k] for k in ("ckpts", "starts", "ckpt_of", "full"))
    a = 1.0 - eta
    computed, clamped, invert = _step_backward_fns(rule, eta_grad, jit_backward)

    def step_grad(t, ckpt_id, hebb, g_hebb, gy_next, g_alpha):
        """Gradient of one computed or clamped step `t`."""
        y_prev, y = y_ext[t], y_ext[t + 1]
        gy = g_ys[t] + gy_next
        hebb_prev = tf.cond(
            ckpt_id >= 0,
            lambda: ckpts.read(ckpt_id),
            lambda: invert(hebb, y_prev, y, eta),
        )
        args = (hebb_prev, g_hebb, y_prev, y, gy, eta)
        if c is None:
            out = computed(*args, None, w, alpha, g_alpha)
        else:
            out = tf.cond(
                full[t],
                lambda: clamped(*args, g_alpha),
                lambda: computed(*args, c[t], w, alpha, g_alpha),
            )
        g_hebb, g_yp, g_eta, g_x, g_pre, g_a = out
        return hebb_prev, g_hebb, g_yp, g_eta, g_a, g_pre[None], g_x[None]

    def run_grad(t, ckpt_id, k, hebb, g_hebb, gy_next, g_alpha):
        """Gradient of `k` steps holding the clamped pattern x (y_{t-1} = ... = y_{t+k-1} = x)."""
        x = c[t]
        kf = tf.cast(k, dtype)
        ak = tf.pow(a, kf)
        hebb_prev = tf.cond(
            ckpt_id >= 0,
            lambda: ckpts.read(ckpt_id),
            lambda: (hebb - (1.0 - ak) * _outer(x, x)) / ak,
        )
        post = tf.einsum("bi,bij->bj", x, g_hebb)
        pre = tf.einsum("bij,bj->bi", g_hebb, x)
        g_eta = tf.zeros([], dtype)
        if eta_grad:
            g_eta = kf * tf.pow(a, kf - 1.0) * (
                tf.reduce_sum(post * x) - tf.reduce_sum(g_hebb * hebb_prev)
            )
        # Step t + j adds eta a^(k-1-j) outer(x, x) to the final trace: its y
        # receives eta a^(k-1-j) post, and (as y_{t+j-1}) eta a^(k-1-j) pre.
        j = tf.cast(tf.range(k), dtype)
        as_post = eta * tf.pow(a, kf - 1.0 - j)
        as_pre = tf.concat([eta * tf.pow(a, kf - 2.0 - j[:-1]), tf.zeros([1], dtype)], 0)
        g_x = (g_ys[t : t + k] + as_post[:, None, None] * post[None]
               + as_pre[:, None, None] * pre[None])
        g_x += tf.concat([tf.zeros_like(g_x[:-1]), gy_next[None]], 0)
        gy_prev = eta * tf.pow(a, kf - 1.0) * pre
        return (hebb_prev, ak * g_hebb, gy_prev, g_eta, g_alpha,
                tf.zeros_like(g_x), g_x)

    def body(s, end, hebb, g_hebb, gy_next, g_eta, g_alpha, g_pre_ta, g_x_ta):
        t = starts.read(s)
        ckpt_id = ckpt_of.read(s)
        k = end - t
        if c is None:
            out = step_grad(t, ckpt_id, hebb, g_hebb, gy_next, g_alpha)
        else:
            out = tf.cond(
                k > 1,
                lambda: run_grad(t, ckpt_id, k, hebb, g_hebb, gy_next, g_alpha),
                lambda: step_grad(t, ckpt_id, hebb, g_hebb, gy_next, g_alpha),
            )
        hebb, g_hebb, gy_next, d_eta, g_alpha, g_pre, g_x = out
        idx = tf.range(t, end)
        g_pre_ta = g_pre_ta.scatter(idx, g_pre)
        g_x_ta = g_x_ta.scatter(idx, g_x)
        return s - 1, t, hebb, g_hebb, gy_next, g_eta + d_eta, g_alpha, g_pre_ta, g_x_ta

    shape = y0.shape
    g_pre_ta = tf.TensorArray(dtype, size=steps, element_shape=shape)
    g_x_ta = tf.TensorArray(dtype, size=steps, element_shape=shape)
    init = (record["n_seg"] - 1, steps, h_last, g_h, tf.zeros_like(y0), tf.zeros([], dtype),
            tf.zeros_like(alpha), g_pre_ta, g_x_ta)
    _, _, _, g_h0, g_y0, g_eta, g_alpha, g_pre_ta, g_x_ta = tf.while_loop(
        lambda s, *_: s >= 0, body, init, parallel_iterations=1  # one step's temporaries at a time
    )
    g_pre = g_pre_ta.stack()
    g_w = tf.einsum("tbi,tbj->ij", y_ext[:-1], g_pre)
    g_drive = g_pre if d is not None else None
    g_clamp = g_x_ta.stack() if c is not None else None
    return g_drive, g_clamp, g_y0, g_h0, g_w, g_alpha, g_eta
