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


def _column_sums(a, la):
    """`sum_i a[:, i, j]`, `(batch, n_post)`, as a vector-matrix product: on XLA's CPU
    a reduction over the matrix (or a batched dot of the flattened matrices) made
    `xla_modfused`'s "retroactive" gradient 1.2-1.4x slower (docs/neuromodulation.md)."""
    return la.vecmat(ops.ones_like(a[:, :, 0]), a)


def _through_clip(g, s, trace_clip):
    """`g * [-c <= s <= c]`: a gradient through `clip_trace`."""
    return ops.where(ops.abs(s) <= trace_clip, g, ops.zeros_like(g))


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

    def modulated_backward(self, g_hebb, g_e, s, traces, u, y, eta, m, trace_clip,
                           per_column=False, la=LINALG):
        """One step's gradient through `modulated_update`, written out (a kernel's
        hand-written backward: `hebbkeras.kernels.xla_modfused`, and `jax_modfused`'s
        plain-XLA passes).

        With `S_t = hebb_t + M_t * P_t` the clip's argument (`P_t = outer(u, y)`, or
        `E_t`) and `G = dL/dhebb_{t+1}`:

            D_t     = G * [-c <= S_t <= c]         (dL/dhebb_t through the update)
            dL/dM_t = sum_i D_t[i, j] P_t[i, j]    (summed over j too, unless `per_column`)

        Args:
            g_hebb: `G`; g_e: `dL/dE_{t+1}` (unused by "simple").
            s: `S_t` (`modulated_update` with `trace_clip=None`).
            traces: the states before the step (`hebb_t`, and `E_t`).
            u, y, eta, m, trace_clip: as in `modulated_update`.
            per_column: `dL/dM_t` per receiving neuron `(batch, n_post)` (for a
                fanned-out `M_t`), else `(batch, 1)` or per column (summed by the caller).

        Returns `(D_t, dL/dE_t, dL/dM_t, g_y, g_u, g_eta)`: the update's parts of
        the gradients of `y`, `u` and `eta` (`g_eta` a scalar).
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

    def modulated_backward(self, g_hebb, g_e, s, traces, u, y, eta, m, trace_clip,
                           per_column=False, la=LINALG):
        """dL/dy_j += M_t[j] post_j, dL/du_i += sum_j D_t[i, j] M_t[j] y_j,
        dL/dM_t[j] = y_j post_j, with `post = u^T D_t`; no `eta`."""
        d = _through_clip(g_hebb, s, trace_clip)
        post = la.vecmat(u, d)
        return d, g_e, y * post, m * post, la.matvec(d, m * y), ops.zeros((), y.dtype)


class Retroactive(Modulated):
    """Eqs. (R1)-(R2)."""

    name = "retroactive"
    traces = ("hebb", "E")
    stored = ("hebb at each checkpoint", "E at each checkpoint")

    def modulated_update(self, traces, u, y, eta, m, trace_clip, la=LINALG):
        hebb, e = traces
        hebb = clip_trace(hebb + m[:, None, :] * e, trace_clip)
        return hebb, (1.0 - eta) * e + eta * la.outer(u, y)

    def modulated_backward(self, g_hebb, g_e, s, traces, u, y, eta, m, trace_clip,
                           per_column=False, la=LINALG):
        """With `F = dL/dE_{t+1}`: dL/dE_t = M_t * D_t + (1 - eta) F, dL/dy += eta u^T F,
        dL/du += eta F y, dL/deta = sum(u^T F * y) - sum(F * E_t)."""
        e = traces[1]
        d = _through_clip(g_hebb, s, trace_clip)
        dm = _column_sums(d * e, la)
        if not per_column:
            dm = ops.sum(dm, axis=1, keepdims=True)
        r, g_u = la.vecmat(u, g_e), la.matvec(g_e, y)
        g_eta = ops.sum(r * y) - ops.sum(_column_sums(g_e * e, la))
        return d, m[:, None, :] * d + (1.0 - eta) * g_e, dm, eta * r, eta * g_u, g_eta
