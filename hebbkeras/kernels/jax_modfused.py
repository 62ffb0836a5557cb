"""The neuromodulated rules on JAX with a hand-written backward: the JAX twin of
`hebbkeras.kernels.modulated_fused` (TensorFlow).

A `jax.custom_vjp` over `lax.scan`s: the forward pass keeps `y_t` and `tanh(y_t @
modulator_kernel + modulator_bias)` of every step and the rule's traces (`hebb`,
and `E`) at the start of every chunk of `interval` steps; the backward pass
recomputes one chunk's `S_t` (the clip's argument, `hebb_{t+1} = clip(S_t)`) and
`E_t` into two `(interval, B, N, N)` buffers that every chunk reuses in place, and
runs its steps in reverse with the gradient written out (the equations in
`modulated_fused`'s docstring: the clip's derivative is the mask `-c <= S_t <= c`).
The steps after the last one that pad the sequence to whole chunks have `M_t = 0`
and `eta = 0`, so every trace stays as it is without a per-step select over the
matrices (`hebb` is a clip's output by then), and their gradients are masked on
the `(B, N)` arrays. Training memory is that of `jax_remat`, O(B * N^2 * (T /
interval + interval) + T * B * N).

XLA on CPU runs each pass over a `(B, N, N)` array as its own loop, and a sum
over an axis of a product as a reduction slower than a batched dot, so the
backward step makes few of them: the vector-matrix products are `einsum`s over
arrays that exist anyway (the carried gradients, `alpha * hebb`), and alpha's
gradient is summed over the batch once at the end, not once a step.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from hebbkeras import ops
from hebbkeras.kernels import dispatch

KERNEL = "jax_modfused"


def plastic_sequence(x, y0, traces0, w, alpha, eta, modulator, input_mode="clamp",
                     rule="simple", trace_clip=1.0, interval=None):
    """Runs a neuromodulated rule over a whole sequence; returns `(ys, traces_T)`.

    Args as `hebbkeras.kernels.jax_remat.plastic_sequence` (static `time`).
    Differentiable (`jax.grad`) in every array argument.
    """
    rule = dispatch.check_rule(rule, KERNEL, input_mode)
    retro = "E" in rule.traces
    steps = x.shape[1]
    k = min(int(interval or math.ceil(math.sqrt(steps))), steps)
    chunks = -(-steps // k)
    clamp_mode = input_mode == "clamp"
    dtype = y0.dtype
    fanout = modulator[2] if len(modulator) == 3 else None
    e0 = traces0[1] if retro else jnp.zeros((), dtype)  # (S) has no E: a placeholder
    clip = jnp.asarray(trace_clip, dtype)
    shared = alpha.ndim == 0

    def blocks(a):
        """`(time, ...)` padded to whole chunks, `(chunks, k, ...)`."""
        a = jnp.concatenate([a, jnp.zeros((chunks * k - steps,) + a.shape[1:], a.dtype)])
        return a.reshape((chunks, k) + a.shape[1:])

    valid = blocks(jnp.ones((steps,), bool))

    def increment(h, e, u, y, eta_t, m):
        """`(S_t, E_{t+1})`: the rule's update before the clip, `hebb_{t+1} = clip(S_t)`."""
        traces = rule.modulated_update((h, e) if retro else (h,), u, y, eta_t, m, None)
        return traces[0], (traces[1] if retro else e)

    def forward(x, y0, h0, e0, w, alpha, eta, mk, mb, f):
        def step(carry, inp):
            y, h, e = carry
            x_t, v = inp
            drive, clamp = (None, x_t) if clamp_mode else (x_t, None)
            y_new = ops.activate(ops.preactivation(y, w, alpha, h), drive, clamp)
            a = rule.modulation(y_new, mk, mb)
            # A padding step has M_t = 0 and eta = 0: the traces stay as they are.
            m = jnp.where(v, a if f is None else a * f, 0.0)
            s, e_new = increment(h, e, y, y_new, jnp.where(v, eta, 0.0), m)
            return (jnp.where(v, y_new, y), jnp.clip(s, -clip, clip), e_new), (y_new, a)

        def chunk(carry, inp):
            out, (ys, acts) = lax.scan(step, carry, inp)
            return out, (ys, acts, carry[1], carry[2])

        (_, h_t, e_t), (ys, acts, ck_h, ck_e) = lax.scan(
            chunk, (y0, h0, e0), (blocks(jnp.swapaxes(x, 0, 1)), valid))
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

        def recompute(j, carry, inp):
            """Step j of the chunk: `S_t` (and `E_t`) into the buffers, which every
            chunk reuses in place (a scan's stacked output is a new, zeroed one)."""
            h, e, s_buf, e_buf = carry
            s, e_new = increment(h, e, *(a[j] for a in inp))
            s_buf = lax.dynamic_update_index_in_dim(s_buf, s, j, 0)
            if retro:
                e_buf = lax.dynamic_update_index_in_dim(e_buf, e, j, 0)
            return jnp.clip(s, -clip, clip), e_new, s_buf, e_buf

        def back_step(carry, inp):
            # The carry: dL/dhebb_{t+1}, dL/dE_{t+1}, dL/dpre_{t+1}, the part of
            # dL/dy_t that step t+1 passes back, and the sums for alpha and eta.
            d, ge, g_next, gu_next, galpha, g_eta = carry
            s, e, u, y, m, v, gys, dp, da_ = inp
            eta_t = jnp.where(v, eta, 0.0)
            h_next = jnp.clip(s, -clip, clip)
            plastic = jnp.einsum("bij,bj->bi", h_next if shared else alpha * h_next, g_next)
            if shared:
                plastic = alpha * plastic
            yg = y[:, :, None] * g_next[:, None, :]
            galpha = galpha + h_next * yg  # summed over the batch once, at the end
            d_new = jnp.where(jnp.abs(s) <= clip, d + alpha * yg, 0.0)
            gy = gys + gu_next + plastic
            if retro:
                if f is None:  # only sum_ij dL/dS_t E_t is needed, as a batched dot
                    dm = jnp.einsum("bk,bk->b", d_new.reshape(len(e), -1),
                                    e.reshape(len(e), -1))[:, None]
                else:
                    dm = jnp.sum(d_new * e, axis=1)
                r3 = jnp.einsum("bi,bij->bj", u, ge)
                gy = gy + eta_t * r3
                g_eta = g_eta + jnp.where(v, jnp.sum(r3 * y) - jnp.sum(ge * e), 0.0)
                gu_part = eta_t * jnp.einsum("bij,bj->bi", ge, y)
                ge = m[:, None, :] * d_new + (1.0 - eta_t) * ge
            else:
                post = jnp.einsum("bi,bij->bj", u, d_new)
                dm, gy = y * post, gy + m * post
                gu_part = jnp.einsum("bij,bj->bi", d_new, m * y)
            dz = jnp.sum(dm if f is None else dm * f, axis=1, keepdims=True) * da_
            gy = gy + dz * mk[:, 0]
            g_pre = gy * dp
            gu = g_pre @ w.T + gu_part
            return (d_new, ge, g_pre, gu, galpha, g_eta), (g_pre, gy, dz, dm)

        def back_chunk(carry, inp):
            carry, (s_buf, e_buf) = carry
            hk, ek, us, ys, ms_c, v, gys, dps, das = inp
            rec = functools.partial(recompute, inp=(us, ys, jnp.where(v, eta, 0.0), ms_c))
            _, _, s_buf, e_buf = lax.fori_loop(0, k, rec, (hk, ek, s_buf, e_buf))
            carry, outs = lax.scan(back_step, carry, (s_buf, e_buf, us, ys, ms_c, v, gys, dps,
                                                      das), reverse=True)
            return (carry, (s_buf, e_buf)), outs

        def per_chunk(a):
            return a.reshape((chunks, k) + a.shape[1:])

        init = (g_h, g_e, jnp.zeros_like(y0),
                jnp.zeros_like(y0), jnp.zeros_like(h0), jnp.zeros((), dtype))
        bufs = (jnp.zeros((k,) + h0.shape, dtype),
                 jnp.zeros((k,) + h0.shape, dtype) if retro else jnp.zeros((k,), dtype))
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
        galpha = jnp.sum(galpha + h0 * yg0, axis=None if shared else 0)
        g_y0 = gu_next + jnp.einsum("bij,bj->bi", alpha * h0, g_next)
        g_x = jnp.where(clamped, gy, 0.0) if clamp_mode else g_pre
        g_f = None if f is None else jnp.einsum("tbj,tbk->j", dm, acts)
        return (jnp.swapaxes(g_x[:steps], 0, 1), g_y0, g_h0, ge,
                jnp.einsum("tbi,tbj->ij", y_ext[:-1], g_pre), galpha, g_eta,
                jnp.einsum("tbi,tbk->ik", ys_p, dz), jnp.sum(dz).reshape((1,)), g_f)

    run.defvjp(run_fwd, run_bwd)
    ys, h_t, e_t = run(x, y0, traces0[0], e0, w, alpha, eta, *modulator[:2], fanout)
    return jnp.swapaxes(ys[:steps], 0, 1), ((h_t, e_t) if retro else (h_t,))
