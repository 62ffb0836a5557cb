"""Neuromodulated plasticity (Backpropamine; Miconi et al., ICLR 2019).

The network gates its own trace, step by step, with a learned signal (one
scalar per batch element):

    M_t = tanh(y_t @ modulator_kernel + modulator_bias)                     (M)

(optionally spread over the receiving neurons, `M_t * modulator_fanout`,
`(batch, n_post)`, which gates column `j` of the update by `M_t[j]`)

and the trace accumulates, clipped to `[-c, c]` (`c`: `trace_clip`):

    simple:       hebb_{t+1} = clip(hebb_t + M_t * outer(u, y), -c, c)       (S)
    retroactive:  hebb_{t+1} = clip(hebb_t + M_t * E_t, -c, c)               (R1)
                  E_{t+1}    = (1 - eta) * E_t + eta * outer(u, y)           (R2)

with `u = y_{t-1}` and `y = y_t` in `PlasticRNN`; the eligibility trace `E`
starts at zero with `hebb`, and (S) does not use `eta`. The clip's derivative is
the mask `-c <= S <= c`, 1 at the bounds too (`clip_trace`). The clip discards
what it cuts, so neither rule inverts (`invertible` False): a kernel that
rebuilds traces backwards refuses them, and a memory-lean backward pass must
keep the traces at checkpoints (`stored`). Neither is of the decay form, and
neither is `plain`: the update takes `M_t` (and `E`), so only a path that
passes them runs these rules (`modulated_update`; the cell loop of
`PlasticRNNCell(modulation=...)`).
"""

import keras
from keras import ops

from hebbkeras.rules.base import LINALG, Rule


def clip_trace(s, trace_clip):
    """`clip(S, -c, c)` whose derivative is the mask `-c <= S <= c` on every backend.

    At `|S| = c` the clip has no derivative (1 from inside, 0 from outside), and
    the trace lands exactly on the bound whenever two steps' increments cancel,
    e.g. a clamped +-1 input held while one presynaptic neuron flips sign (`M_t
    outer(u, y)`, then `-M_t outer(u, y)`), so the choice shows in gradients.
    TensorFlow's and torch's clips take 1 there, as the hand-written backward
    passes do (`modulated_fused`, `jax_modfused`, the native ops); JAX's `jnp.clip`
    takes 1/2, so on JAX the clip is a select whose cut branch carries no gradient.
    `trace_clip=None`: `S` unclipped (a hand-written backward's recomputed `S_t`).
    """
    if trace_clip is None:
        return s
    clipped = ops.clip(s, -trace_clip, trace_clip)
    if keras.backend.backend() != "jax":
        return clipped
    return ops.where(ops.abs(s) <= trace_clip, s, ops.stop_gradient(clipped))


class Modulated(Rule):
    """A neuromodulated rule: `modulation` (eq. M) and `modulated_update`."""

    modulated = True

    def modulation(self, y, modulator_kernel, modulator_bias, modulator_fanout=None):
        """Eq. (M): `M_t` `(batch, 1)` from `y_t` `(batch, units)`, `modulator_kernel`
        `(units, 1)` and `modulator_bias` `(1,)`; times `modulator_fanout` `(units,)`,
        `(batch, units)`, where given."""
        from hebbkeras.ops import tanh  # keras.ops.tanh, float64 kept on JAX

        m = tanh(ops.matmul(y, modulator_kernel) + modulator_bias)
        return m if modulator_fanout is None else m * modulator_fanout

    def modulated_update(self, traces, u, y, eta, m, trace_clip, la=LINALG):
        """The states named by `traces` after one step, as a tuple.

        Args:
            traces: the states before the step (`hebb`, and `E` where the rule has one).
            u, y: the step's pre- and postsynaptic activity.
            eta: the eligibility trace's rate (unused by `simple`).
            m: `M_t`, `(batch, 1)` or `(batch, n_post)` (fanned out);
                trace_clip: `c` (None: `hebb` unclipped, `S_t`).
        """
        raise NotImplementedError

    def update(self, hebb, u, y, eta, la=LINALG):
        raise ValueError(
            f"plasticity rule {self.name!r} is neuromodulated: its update needs the modulation "
            f"M_t, which this path does not compute. Use PlasticRNN(modulation={self.name!r}) "
            "(or PlasticRNNCell), which runs it on the cell loop.")


class Simple(Modulated):
    """Eq. (S)."""

    name = "simple"
    stored = ("hebb at each checkpoint",)

    def modulated_update(self, traces, u, y, eta, m, trace_clip, la=LINALG):
        (hebb,) = traces
        return (clip_trace(hebb + m[:, None, :] * la.outer(u, y), trace_clip),)


class Retroactive(Modulated):
    """Eqs. (R1)-(R2)."""

    name = "retroactive"
    traces = ("hebb", "E")
    stored = ("hebb at each checkpoint", "E at each checkpoint")

    def modulated_update(self, traces, u, y, eta, m, trace_clip, la=LINALG):
        hebb, e = traces
        hebb = clip_trace(hebb + m[:, None, :] * e, trace_clip)
        return hebb, (1.0 - eta) * e + eta * la.outer(u, y)
