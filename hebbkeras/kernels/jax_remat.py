"""The whole-sequence path of PlasticRNN on JAX for the rules `jax_fused` cannot run.

The neuromodulated rules (`hebbkeras.rules.modulated`) clip the trace, so a
step cannot be inverted and `hebbkeras.kernels.jax_fused`'s backward pass
(rebuild each trace from the next) does not apply. This path runs the cell
step (`hebbkeras.ops.modulated_step`, the same definition as the cell loop)
in a `lax.scan` over chunks of `interval` steps, each chunk a
`jax.checkpoint`ed inner scan: the forward pass keeps the outputs and the
rule's traces (`hebb`, and `E`) at the start of every chunk only, and the
backward pass recomputes one chunk at a time from its checkpoint, by
autodiff. Training memory is O(B * N^2 * (T / interval + interval) + T * B * N)
(with the default `interval = ceil(sqrt(T))`, O(sqrt(T) * B * N^2)), against
O(T * B * N^2) for the cell loop; the price is a second forward pass.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from hebbkeras import ops
from hebbkeras.kernels import dispatch

KERNEL = "jax_remat"


def plastic_sequence(x, y0, traces0, w, alpha, eta, modulator, input_mode="clamp",
                     rule="simple", trace_clip=1.0, interval=None):
    """Runs a neuromodulated rule over a whole sequence; returns `(ys, traces_T)`.

    Args:
        x: `(batch, time, N)`, the clamping input (`input_mode="clamp"`) or the
            additive drive (`"add"`).
        y0: `(batch, N)`; traces0: the rule's initial traces (`(hebb,)` or
            `(hebb, E)`), each `(batch, N, N)`.
        w: `(N, N)`; alpha: `(N, N)` or a scalar; eta: a scalar.
        modulator: `(modulator_kernel (N, 1), modulator_bias (1,))`, and
            `modulator_fanout (N,)` where the layer has one.
        rule: a neuromodulated rule or its name; trace_clip: `c`.
        interval: static steps between checkpoints (default `ceil(sqrt(time))`).

    `ys` is `(batch, time, N)`; differentiable in every array argument (autodiff
    of the checkpointed scans).
    """
    rule = dispatch.check_rule(rule, KERNEL, input_mode)
    steps = x.shape[1]
    interval = int(interval or math.ceil(math.sqrt(steps)))
    clamp_mode = input_mode == "clamp"

    def step(carry, x_t):
        y, traces = carry
        drive, clamp = (None, x_t) if clamp_mode else (x_t, None)
        y, traces = ops.modulated_step(y, traces, w, alpha, eta, modulator, trace_clip, rule,
                                       drive, clamp)
        return (y, tuple(traces)), y

    @jax.checkpoint
    def chunk(carry, xs):
        return lax.scan(step, carry, xs)

    xs = jnp.swapaxes(x, 0, 1)  # time-major
    full = steps // interval * interval
    carry = (y0, tuple(traces0))
    parts = []
    if full:
        blocks = xs[:full].reshape((full // interval, interval) + xs.shape[1:])
        carry, ys = lax.scan(chunk, carry, blocks)
        parts.append(ys.reshape((full,) + ys.shape[2:]))
    if steps > full:
        carry, ys = chunk(carry, xs[full:])
        parts.append(ys)
    ys = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    return jnp.swapaxes(ys, 0, 1), carry[1]
