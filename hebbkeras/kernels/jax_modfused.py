"""The neuromodulated rules on JAX with a hand-written backward: the JAX twin of
`hebbkeras.kernels.modulated_fused` (TensorFlow).

A `jax.custom_vjp` over `lax.scan`s: the forward pass keeps `y_t` and `tanh(y_t @
modulator_kernel + modulator_bias)` of every step and the rule's traces (`hebb`,
and `E`) at the start of every chunk of `interval` steps; the backward pass
recomputes one chunk's traces from its checkpoint and runs its steps in reverse
with the gradient written out (the equations in `modulated_fused`'s docstring:
the clip's derivative is the mask `-c <= S_t <= c`). The steps after the last one
that pad the sequence to whole chunks leave every state as it is. Training memory
is that of `jax_remat`, O(B * N^2 * (T / interval + interval) + T * B * N); the
per-step work is one elementwise pass over each matrix that XLA fuses, where
autodiff through `jax_remat`'s chunks keeps and reads back every intermediate.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from hebbkeras import ops
from hebbkeras.kernels import dispatch

KERNEL = "jax_modfused"


def _plastic(alpha, hebb, g):
    """`sum_j alpha_ij hebb_ij g_j` (alpha a matrix or a scalar)."""
    return jnp.einsum("bij,bj->bi", alpha * hebb, g)


def plastic_sequence(x, y0, traces0, w, alpha, eta, modulator, input_mode="clamp",
                     rule="simple", trace_clip=1.0, interval=None):
    """Runs a neuromodulated rule over a whole sequence; returns `(ys, traces_T)`.

    Args as `hebbkeras.kernels.jax_remat.plastic_sequence` (static `time`).
    Differentiable (`jax.grad`) in every array argument.
    """
    rule = dispatch.check_rule(rule, KERNEL, input_mode)
    retro = "E" in rule.traces
    steps, n = x.shape[1], y0.shape[1]
    k = min(int(interval or math.ceil(math.sqrt(steps))), steps)
    chunks = -(-steps // k)
    clamp_mode = input_mode == "clamp"
    dtype = y0.dtype
    fanout = modulator[2] if len(modulator) == 3 else jnp.ones((n,), dtype)
    e0 = traces0[1] if retro else jnp.zeros_like(traces0[0])
    clip = jnp.asarray(trace_clip, dtype)

    def blocks(a):
        """`(time, ...)` padded to whole chunks, `(chunks, k, ...)`."""
        a = jnp.concatenate([a, jnp.zeros((chunks * k - steps,) + a.shape[1:], a.dtype)])
        return a.reshape((chunks, k) + a.shape[1:])

    valid = blocks(jnp.ones((steps,), bool))

    def forward(x, y0, h0, e0, w, alpha, eta, mk, mb, f):
        def step(carry, inp):
            y, h, e = carry
            x_t, v = inp
            drive, clamp = (None, x_t) if clamp_mode else (x_t, None)
            y_new = ops.activate(ops.preactivation(y, w, alpha, h), drive, clamp)
            a = rule.modulation(y_new, mk, mb)
            traces = rule.modulated_update((h, e) if retro else (h,), y, y_new, eta, a * f,
                                           clip)
            h_new, e_new = traces[0], (traces[1] if retro else e)
            keep = lambda new, old: jnp.where(v, new, old)
            return (keep(y_new, y), keep(h_new, h), keep(e_new, e)), (y_new, a)

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
        ms = acts * f
        xs = blocks(jnp.swapaxes(x, 0, 1)).reshape((chunks * k,) + y0.shape)
        clamped = xs != 0
        d_pre = 1.0 - jnp.square(ys_p)
        if clamp_mode:
            d_pre = jnp.where(clamped, 0.0, d_pre)
        d_act = 1.0 - jnp.square(acts)
        shared = alpha.ndim == 0

        def recompute(carry, inp):
            h, e = carry
            u, y, m, v = inp
            traces = rule.modulated_update((h, e) if retro else (h,), u, y, eta, m, clip)
            h_new = jnp.where(v, traces[0], h)
            e_new = jnp.where(v, traces[1], e) if retro else e
            return (h_new, e_new), (h, e)

        def back_step(carry, inp):
            d, ge, g_next, gu_next, galpha, g_eta = carry
            h, e, u, y, m, a, gys, dp, da_, v = inp
            yg = y[:, :, None] * g_next[:, None, :]
            p = e if retro else u[:, :, None] * y[:, None, :]
            s = h + m[:, None, :] * p
            h_next = jnp.clip(s, -clip, clip)
            h_grad = d + alpha * yg  # dL/dhebb_{t+1}
            plastic = _plastic(alpha, h_next, g_next)
            galpha_new = galpha + jnp.sum(h_next * yg, axis=None if shared else 0)
            d_new = jnp.where((s >= -clip) & (s <= clip), h_grad, 0.0)
            gy = gys + gu_next + plastic
            if retro:
                dm = jnp.sum(d_new * e, axis=1)
                ge_new = m[:, None, :] * d_new + (1.0 - eta) * ge
                r3 = jnp.einsum("bi,bij->bj", u, ge)
                gy = gy + eta * r3
                g_eta_new = g_eta + jnp.sum(r3 * y) - jnp.sum(ge * e)
                gu_part = eta * jnp.einsum("bij,bj->bi", ge, y)
            else:
                post = jnp.einsum("bi,bij->bj", u, d_new)
                dm, gy, ge_new, g_eta_new = y * post, gy + m * post, ge, g_eta
                gu_part = jnp.einsum("bij,bj->bi", d_new, m * y)
            dz = jnp.sum(dm * f, axis=1, keepdims=True) * da_
            gy = gy + dz * mk[:, 0]
            g_pre = gy * dp
            gu = g_pre @ w.T + gu_part
            keep = lambda new, old: jnp.where(v, new, old)
            carry = (keep(d_new, d), keep(ge_new, ge), keep(g_pre, g_next),
                     keep(gu, gu_next), keep(galpha_new, galpha), keep(g_eta_new, g_eta))
            zero = jnp.zeros_like(gy)
            return carry, (keep(g_pre, zero), keep(gy, zero), keep(dz, dz * 0), keep(dm, zero))

        def back_chunk(carry, inp):
            hk, ek, us, ys, ms_c, acts_c, gys, dps, das, v = inp
            _, (hs, es) = lax.scan(recompute, (hk, ek), (us, ys, ms_c, v))
            return lax.scan(back_step, carry, (hs, es, us, ys, ms_c, acts_c, gys, dps, das, v),
                            reverse=True)

        def per_chunk(a):
            return a.reshape((chunks, k) + a.shape[1:])

        init = (g_h, g_e if retro else jnp.zeros_like(h0), jnp.zeros_like(y0),
                jnp.zeros_like(y0), jnp.zeros_like(alpha), jnp.zeros((), dtype))
        (d, ge, g_next, gu_next, galpha, g_eta), outs = lax.scan(
            back_chunk, init,
            (ck_h, ck_e, per_chunk(y_ext[:-1]), per_chunk(y_ext[1:]), per_chunk(ms),
             per_chunk(acts), per_chunk(g_ys), per_chunk(d_pre), per_chunk(d_act), valid),
            reverse=True)
        g_pre, gy, dz, dm = (o.reshape((chunks * k,) + o.shape[2:]) for o in outs)
        # The trace before the first step: eq. (1)'s part of its gradient.
        yg0 = y0[:, :, None] * g_next[:, None, :]
        g_h0 = d + alpha * yg0
        galpha = galpha + jnp.sum(h0 * yg0, axis=None if shared else 0)
        g_y0 = gu_next + _plastic(alpha, h0, g_next)
        g_x = jnp.where(clamped, gy, 0.0) if clamp_mode else g_pre
        return (jnp.swapaxes(g_x[:steps], 0, 1), g_y0, g_h0, ge,
                jnp.einsum("tbi,tbj->ij", y_ext[:-1], g_pre), galpha, g_eta,
                jnp.einsum("tbi,tbk->ik", ys_p, dz), jnp.sum(dz).reshape((1,)),
                jnp.einsum("tbj,tbk->j", dm, acts))

    run.defvjp(run_fwd, run_bwd)
    ys, h_t, e_t = run(x, y0, traces0[0], e0, w, alpha, eta, *modulator[:2], fanout)
    return jnp.swapaxes(ys[:steps], 0, 1), ((h_t, e_t) if retro else (h_t,))
