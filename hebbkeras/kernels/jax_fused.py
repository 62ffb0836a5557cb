"""The fused whole-sequence kernel of PlasticRNN on the JAX backend.

The JAX twin of `hebbkeras.kernels.fused`: the same function and the same memory
model, written as `lax.scan`s over static lengths under a `jax.custom_vjp`, so
that a jitted training step (Keras on JAX jit-compiles it) is one XLA program.

Forward: one scan keeps only the outputs `y_t` (O(T * B * N)) and the trace
at the start of every `interval` steps (the checkpoints). Backward: a reverse
scan rebuilds each step's trace from the next one with the rule's inverse
(`rule.invert`, `hebbkeras.rules`), restarting from the exact stored trace at
every checkpoint, and applies the step's vector-Jacobian product
(`_step_backward`, written out, the trace's part by `rule.backward`; the tests
check it against autodiff through an independent cell loop). Each inversion
multiplies rounding error by at most `1 / (1 - rate)` (`rule.rate`); when `interval` inversions could grow it
more than `INVERSION_GROWTH`-fold (a large or trained-up `eta`, `eta = 1`),
the trace is instead recomputed forward from the checkpoint with the stored
outputs (exact, no extra memory, `interval / 2` trace updates per step).
Training memory is O(B * N^2 * (T / interval + 1) + T * B * N), against
O(T * B * N^2) for autodiff through the cell loop.

Work that cannot change the result is skipped, as in `hebbkeras.kernels.fused`: a
step that clamps every neuron of every episode ("clamp" input mode) only
updates the trace (no pre-activation forward or backward), and with a rule
that has `held_runs` (the Hebbian rule) a clamped pattern held for `k` steps
of a chunk is one update (`hebbkeras.rules.hebb`, eq. H; the run's other
steps are no-ops of the static-length scan). The forward step follows
`hebbkeras.ops` in `jax.numpy` (see `_step`).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from hebbkeras import rules
from hebbkeras.kernels import dispatch

# The step schedule and the checkpoint rule, shared with `hebbkeras.kernels.xla_fused`.
from hebbkeras.kernels.schedule import backward_inputs, chunked, pick_interval, step_kinds

KERNEL = "jax_fused"


def plastic_sequence(x, y0, h0, w, alpha, eta, input_mode="clamp", rule="hebb", eta_grad=True,
                     interval=None):
    """Runs eqs. (1)-(2) over a whole sequence; returns `(ys, hebb_T)`.

    x: `(batch, time, N)`, the clamping input when `input_mode="clamp"`, else
    the additive drive (`input_scale * x`, or the input kernel's output; see
    `PlasticRNNCell.input_terms`). y0 `(batch, N)`, h0 `(batch, N, N)`: the
    initial state; w `(N, N)`; alpha `(N, N)` or a scalar; eta a scalar.
    `interval`: static steps between checkpoints (default
    `schedule.checkpoint_interval(eta)` where `eta` is a Python number, else
    `ceil(sqrt(time))`). ys is `(batch, time, N)`. Differentiable in every
    array argument with a hand-written gradient (see the module docstring);
    `eta_grad=False` gives `eta` a zero gradient and saves its passes. rule:
    a `hebbkeras.rules` rule or its name. The signature every fused kernel
    shares (`hebbkeras.kernels.dispatch`).
    """
    rule = dispatch.check_rule(rule, KERNEL, input_mode)
    steps = x.shape[1]
    interval = pick_interval(interval, eta, steps)
    dtype = y0.dtype
    args = [jnp.asarray(v, dtype) for v in (x, y0, h0, w, alpha, eta)]
    return _fused(input_mode == "clamp", rule, interval, bool(eta_grad), *args)


def _step(clamp_mode, rule, y_prev, hebb, w, alpha, eta, x):
    """One computed step, eqs. (1)-(2) as in `hebbkeras.ops.step`: `(y_t, hebb_{t+1})`.

    Written in `jax.numpy`: Keras's type promotion on JAX computes `ops.tanh`
    of float64 in float32, and the kernel keeps its inputs' precision.
    """
    if alpha.ndim == 0:
        plastic = alpha * jnp.einsum("bi,bij->bj", y_prev, hebb)
    else:
        plastic = jnp.einsum("bi,bij->bj", y_prev, alpha * hebb)
    pre = y_prev @ w + plastic
    if clamp_mode:
        y = jnp.where(x != 0, x, jnp.tanh(pre))
    else:
        y = jnp.tanh(pre + x)
    return y, rule.update(hebb, y_prev, y, eta)


def _clamped_step(rule, y_prev, hebb, eta, x):
    """A step that clamps every neuron: `y_t = x_t`, no pre-activation."""
    return x, rule.update(hebb, y_prev, x, eta)


def _forward(clamp_mode, rule, interval, x, y0, h0, w, alpha, eta, keep_checkpoints):
    """Time-major forward: `(ys (T, B, N), hebb_T, checkpoints (chunks, B, N, N) or None)`."""
    steps = x.shape[0]
    chunks = -(-steps // interval)
    kinds = step_kinds(x, clamp_mode, rule, interval, chunks)
    xs = chunked(x, chunks, interval)

    def held(y, h, x_t, j, k):
        """The run's one update at its first step (`rule.held_decay`: decay * h +
        (1 - decay) outer(x, x)); later steps keep the trace."""
        decay = rule.held_decay(eta, k)
        return x_t, lax.cond(j == 0, lambda: decay * h + _outer((1.0 - decay) * x_t, x_t),
                             lambda: h)

    def branches_placeholder(y, h, x_t, j, k):  # no held runs: never taken
        return y, h

    def one(carry, inp):
        y, hebb = carry
        x_t, kind, j, k = inp
        branches = [  # indexed by the kinds of `hebbkeras.kernels.schedule`: 0 1 2 3
            lambda y, h, x_t, j, k: _step(clamp_mode, rule, y, h, w, alpha, eta, x_t),
            lambda y, h, x_t, j, k: _clamped_step(rule, y, h, eta, x_t),
            lambda y, h, x_t, j, k: (y, h),
            held if rule.held_runs else branches_placeholder,
        ]
        y, hebb = lax.switch(kind, branches, y, hebb, x_t, j, k)
        return (y, hebb), y

    def chunk(carry, inp):
        start = carry[1] if keep_checkpoints else None
        carry, ys = lax.scan(one, carry, inp)
        return carry, (ys, start)

    (_, hebb), (ys, ckpts) = lax.scan(chunk, (y0, h0), (xs,) + kinds)
    ys = ys.reshape((-1,) + ys.shape[2:])[:steps]
    return ys, hebb, ckpts


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _fused(clamp_mode, rule, interval, eta_grad, x, y0, h0, w, alpha, eta):
    ys, hebb, _ = _forward(clamp_mode, rule, interval, jnp.swapaxes(x, 0, 1), y0, h0, w, alpha,
                           eta, keep_checkpoints=False)
    return jnp.swapaxes(ys, 0, 1), hebb


def _fused_fwd(clamp_mode, rule, interval, eta_grad, x, y0, h0, w, alpha, eta):
    xt = jnp.swapaxes(x, 0, 1)
    ys, hebb, ckpts = _forward(clamp_mode, rule, interval, xt, y0, h0, w, alpha, eta,
                               keep_checkpoints=True)
    residuals = (xt, y0, w, alpha, eta, ys, hebb, ckpts)
    return (jnp.swapaxes(ys, 0, 1), hebb), residuals


_outer = rules.outer


def _trace_backward(rule, eta_grad, y_prev, h_prev, eta, y, gy, g_hebb):
    """`rule.backward` with the trace's own gradient: `(g_hebb_prev, g_y, g_y_prev, g_eta)`."""
    g_y, g_yp, g_eta = rule.backward(g_hebb, h_prev, y_prev, y, gy, eta, eta_grad)
    return rule.decay(eta, y) * g_hebb, g_y, g_yp, g_eta


def _step_backward(clamp_mode, rule, eta_grad, y_prev, h_prev, w, alpha, eta, x, y, gy, g_hebb):
    """The vector-Jacobian product of `_step`, written out (`jax.vjp` of it runs
    its outer products as slow batched dots on CPU; the tests compare the two).

    Returns gradients of `(hebb_prev, y_prev, w, alpha, eta, x)` in the order
    `(g_hebb_prev, g_y_prev, g_w, g_alpha, g_eta, g_x)`.
    """
    g_hp, g_y, g_yp, g_eta = _trace_backward(rule, eta_grad, y_prev, h_prev, eta, y, gy, g_hebb)
    g_pre = g_y * (1.0 - jnp.square(y))
    if clamp_mode:  # d y / d x = 1 on clamped neurons, d y / d pre = 0
        clamped = x != 0
        g_x = jnp.where(clamped, g_y, 0.0)
        g_pre = jnp.where(clamped, 0.0, g_pre)
    else:
        g_x = g_pre
    outer = _outer(y_prev, g_pre)
    g_w = jnp.sum(outer, axis=0)
    if alpha.ndim == 0:
        hg = jnp.einsum("bij,bj->bi", h_prev, g_pre)
        g_alpha = jnp.sum(y_prev * hg)
        plastic = alpha * hg
    else:
        g_alpha = jnp.sum(h_prev * outer, axis=0)
        plastic = jnp.einsum("bij,bj->bi", alpha * h_prev, g_pre)
    g_yp = g_yp + g_pre @ w.T + plastic
    return g_hp + alpha * outer, g_yp, g_w, g_alpha, g_eta, g_x


def _fused_bwd(clamp_mode, rule, interval, eta_grad, residuals, cotangents):
    xt, y0, w, alpha, eta, ys, h_last, ckpts = residuals
    g_ys, g_h = cotangents
    steps = xt.shape[0]
    chunks = ckpts.shape[0]
    invert, xs = backward_inputs(xt, y0, ys, jnp.swapaxes(g_ys, 0, 1), eta, rule, clamp_mode,
                                 interval, chunks)
    index = jnp.broadcast_to(jnp.arange(interval), (chunks, interval))
    xs = xs[:5] + (index,) + xs[5:] + (ckpts,)

    def chunk(carry, inp):
        hebb_end, g_hebb, gy_next, g_w, g_alpha, g_eta, products = carry
        y_prevs, y_outs, x_c, g_y_c, kind_c, index_c, j_c, k_c, start = inp

        def rebuild(j):
            """The trace before step j of this chunk, from its checkpoint."""
            def update(i, h):
                return rule.update(h, y_prevs[i], y_outs[i], eta)
            return lax.fori_loop(0, j, update, start)

        def one(carry, inp):
            hebb, g_hebb, gy_next, g_w, g_alpha, g_eta, products = carry
            y_prev, y, x_t, g_y, kind, j, run_j, run_k = inp
            gy = g_y + gy_next

            def previous():
                return lax.cond(invert, lambda: rule.invert(hebb, y_prev, y, eta),
                                lambda: rebuild(j))

            def held():
                """A step of a held run of `run_k` steps holding x (`rule.held_coefficients`
                with `post = x^T G`, `pre = G x` of the trace's gradient G after
                the run, constant over the run, computed at its last step); the
                run's first step passes its part to y_{t-1} and undoes the run.
                """
                post, pre = lax.cond(
                    run_j == run_k - 1,
                    lambda: (jnp.einsum("bi,bij->bj", x_t, g_hebb),
                             jnp.einsum("bij,bj->bi", g_hebb, x_t)),
                    lambda: products)
                as_post, as_pre = rule.held_coefficients(eta, run_k, jnp.stack([run_j, -1]))
                g_x = gy + as_post[0] * post + as_pre[0] * pre

                def first():
                    decay = rule.held_decay(eta, run_k)
                    h_prev = lax.cond(
                        invert,
                        lambda: (hebb - _outer((1.0 - decay) * x_t, x_t)) / decay,
                        lambda: rebuild(j))
                    d_eta = rule.held_eta_grad(eta, run_k, post, x_t, jnp.sum(g_hebb * h_prev)) \
                        if eta_grad else jnp.zeros_like(eta)
                    return h_prev, decay * g_hebb, as_pre[1] * pre, g_eta + d_eta

                def later():
                    return hebb, g_hebb, jnp.zeros_like(gy), g_eta

                h_prev, g_hp, g_yp, g_eta_ = lax.cond(run_j == 0, first, later)
                return h_prev, g_hp, g_yp, g_w, g_alpha, g_eta_, g_x, (post, pre)

            def computed():
                h_prev = previous()
                g_hp, g_yp, d_w, d_alpha, d_eta, g_x = _step_backward(
                    clamp_mode, rule, eta_grad, y_prev, h_prev, w, alpha, eta, x_t, y, gy, g_hebb)
                return (h_prev, g_hp, g_yp, g_w + d_w, g_alpha + d_alpha, g_eta + d_eta, g_x,
                        products)

            def clamped():
                h_prev = previous()
                g_hp, g_x, g_yp, d_eta = _trace_backward(rule, eta_grad, y_prev, h_prev, eta, y, gy,
                                                         g_hebb)
                return h_prev, g_hp, g_yp, g_w, g_alpha, g_eta + d_eta, g_x, products

            def padding():  # y_t = y_{t-1}, the trace unchanged
                return hebb, g_hebb, gy, g_w, g_alpha, g_eta, jnp.zeros_like(gy), products

            # Indexed by the kinds of `hebbkeras.kernels.schedule` (0 1 2 3).
            out = lax.switch(kind, [computed, clamped, padding,
                                    held if rule.held_runs else padding])
            return out[:6] + out[7:], out[6]

        carry = (hebb_end, g_hebb, gy_next, g_w, g_alpha, g_eta, products)
        (_, g_hebb, gy_next, g_w, g_alpha, g_eta, products), g_x = lax.scan(
            one, carry, (y_prevs, y_outs, x_c, g_y_c, kind_c, index_c, j_c, k_c), reverse=True)
        # The previous chunk ends at this chunk's exact stored trace.
        return (start, g_hebb, gy_next, g_w, g_alpha, g_eta, products), g_x

    init = (h_last, g_h, jnp.zeros_like(y0), jnp.zeros_like(w), jnp.zeros_like(alpha),
            jnp.zeros_like(eta), (jnp.zeros_like(y0), jnp.zeros_like(y0)))
    (_, g_h0, g_y0, g_w, g_alpha, g_eta, _), g_x = lax.scan(chunk, init, xs, reverse=True)
    g_x = g_x.reshape((-1,) + g_x.shape[2:])[:steps]
    return jnp.swapaxes(g_x, 0, 1), g_y0, g_h0, g_w, g_alpha, g_eta


_fused.defvjp(_fused_fwd, _fused_bwd)
