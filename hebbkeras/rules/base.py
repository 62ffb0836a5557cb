"""What a plasticity rule is, and the math every kernel drives from it.

A rule turns the trace `hebb` `(batch, n_pre, n_post)`, the presynaptic
activity `u` `(batch, n_pre)` (`y_{t-1}` in `PlasticRNN`, the input `x_t` in
`PlasticDense`) and the postsynaptic activity `y` `(batch, n_post)` into the
next trace. `Rule` says what every path needs (`update`, for the cell loop)
and what a fused kernel may ask for (`invert`, `backward`, held runs, a
native implementation). `DecayRule` derives them all for the rules of the
decay form

    hebb_{t+1}[i, j] = d_j * hebb_t[i, j] + eta * u[i] * y[j]              (R)

from the per-column decay `d_j = column_decay(eta, y)_j` and its derivatives
alone: the inverse is `hebb_t = (hebb_{t+1} - eta * outer(u, y)) / d`, and
with `G` the gradient of `hebb_{t+1}`, `post_j = sum_i u_i G_ij`,
`pre_i = sum_j G_ij y_j`, `col_j = sum_i G_ij hebb_t[i, j]`:

    dL/dhebb_t = d * G
    dL/dy_j   += eta * post_j + (dd_j/dy_j) * col_j
    dL/du_i   += eta * pre_i
    dL/deta   += sum_j post_j y_j + sum_j (dd_j/deta) col_j

A rule of another form (a modulated or clipped trace, an eligibility trace:
`hebbkeras.rules.modulated`) subclasses `Rule`: it runs on the cell loop at once, and a kernel that
needs what it lacks says so (`hebbkeras.rules.get(..., kernel=, needs=)`).

Written in `keras.ops` (and Python operators): each kernel runs on one
backend, so this is that backend's code there.
"""

import types

from keras import ops


def outer(a, b):
    """`(B, I) x (B, J) -> (B, I, J)` as a broadcast product (XLA's CPU dot with a
    contraction of size 1 is several times slower)."""
    return a[:, :, None] * b[:, None, :]


# The three contractions the rules use; a kernel may pass faster equivalents
# for its compiler (`la=`), such as 2-D matmuls at batch one.
LINALG = types.SimpleNamespace(
    outer=outer,
    vecmat=lambda v, m: ops.einsum("bi,bij->bj", v, m),
    matvec=lambda m, v: ops.einsum("bij,bj->bi", m, v),
)


class Rule:
    """A plasticity rule: one registered definition (see `hebbkeras.rules.register`).

    Attributes a kernel may ask for:
        name: how layers and configs name it (`rule="hebb"`).
        decay_form: the rule is eq. (R) (`DecayRule`), so the fused kernels'
            closed-form gradients apply.
        invertible: `invert` rebuilds the previous trace; otherwise a kernel
            must store (or recompute from) checkpoints: see `stored`.
        scalar_decay: eq. (R)'s decay is one scalar for the whole trace (it
            does not depend on `y`), so a kernel may carry it as a separate scale.
        held_runs: a clamped pattern held for `k` steps is one update:
            `held_decay`, `held_coefficients`, `held_eta_grad`.
        native: the name of a compiled implementation in
            `hebbkeras.kernels.native`, or None.
        stored: what a backward pass must keep besides the outputs when the
            rule does not invert: here, the trace at each checkpoint.
        plain: `update(hebb, u, y, eta)` is the whole rule. A neuromodulated
            rule (`hebbkeras.rules.modulated`, `modulated` True) is not: it also
            takes the modulation `M_t` and may carry an eligibility trace.
        traces: the names of the per-episode states the rule carries, each
            shaped as the trace (`("hebb",)`; `("hebb", "E")` with an
            eligibility trace).
    """

    name = None
    modulated = False
    traces = ("hebb",)
    decay_form = False
    invertible = False
    scalar_decay = False
    held_runs = False
    native = None
    stored = ("trace checkpoints",)

    @property
    def plain(self):
        return not self.modulated

    def update(self, hebb, u, y, eta, la=LINALG):
        """The next trace."""
        raise NotImplementedError

    def __repr__(self):
        return f"<plasticity rule {self.name!r}>"


class DecayRule(Rule):
    """A rule of the decay form (R), defined by its per-column decay."""

    decay_form = True
    invertible = True
    stored = ()

    def column_decay(self, eta, y):
        """`d_j`: a scalar, or `(batch, n_post)` where it depends on `y`."""
        raise NotImplementedError

    def decay_eta(self, eta, y):
        """`dd_j / deta`, shaped as `column_decay`."""
        raise NotImplementedError

    def decay_y(self, eta, y):
        """`dd_j / dy_j` `(batch, n_post)`; None for a `scalar_decay`."""
        return None

    def rate(self, eta, y_bound):
        """The largest fraction of the trace one step replaces, `max_j (1 - d_j)`,
        where every `|y| <= y_bound`: each inversion multiplies rounding error
        by at most `1 / (1 - rate)`."""
        raise NotImplementedError

    def decay(self, eta, y):
        """`d` shaped to multiply the trace: a scalar or `(batch, 1, n_post)`."""
        d = self.column_decay(eta, y)
        return d if self.scalar_decay else d[:, None, :]

    def update(self, hebb, u, y, eta, la=LINALG):
        """Eq. (R): `d * hebb + outer(eta * u, y)`."""
        return self.decay(eta, y) * hebb + la.outer(eta * u, y)

    def invert(self, hebb_next, u, y, eta, la=LINALG):
        """Eq. (R) backwards: the trace before the step that made `hebb_next`."""
        return (hebb_next - la.outer(eta * u, y)) / self.decay(eta, y)

    def backward(self, g_hebb, hebb, u, y, gy, eta, eta_grad=True, g_scale=None,
                 h_scale=None, la=LINALG):
        """One step's gradient through eq. (R), less the trace's own (`decay * g_hebb`).

        Args:
            g_hebb: the gradient of the trace after the step, `G / g_scale`
                where the kernel carries it scaled (`g_scale` None: 1).
            hebb: the trace before the step, `hebb_t / h_scale` (None: 1).
            u, y: the step's pre- and postsynaptic activity.
            gy: `y`'s gradient so far.
            eta: the rate; `eta_grad`: whether its gradient is wanted (it
                costs a pass over the trace for a rule whose decay does not
                depend on `y`).

        Returns `(g_y, g_u, g_eta)`: `gy` plus the trace's part, the trace's
        part of `u`'s gradient, and `eta`'s (zero unless `eta_grad`).
        """
        post = la.vecmat(u, g_hebb)
        pre = la.matvec(g_hebb, y)
        if g_scale is not None:
            post, pre = post * g_scale, pre * g_scale
        d_y = self.decay_y(eta, y)
        g_y = gy + eta * post
        g_eta = ops.zeros((), y.dtype)
        if d_y is not None or eta_grad:
            col = ops.sum(g_hebb * hebb, axis=1)
            if g_scale is not None or h_scale is not None:
                col = col * ((1.0 if g_scale is None else g_scale)
                             * (1.0 if h_scale is None else h_scale))
            if d_y is not None:
                g_y = g_y + d_y * col
            if eta_grad:
                g_eta = ops.sum(post * y) + ops.sum(self.decay_eta(eta, y) * col)
        return g_y, eta * pre, g_eta
