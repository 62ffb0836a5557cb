"""The plasticity rule as pure functions: the one place the math is defined.

Notation (Miconi, Clune & Stanley 2018, eqs. 1-2):

    pre_t      = y_{t-1} @ (w + alpha * hebb_t)                        (1)
    y_t        = tanh(pre_t)           (plus the input term, see `activate`)
    hebb_{t+1} = (1 - eta) * hebb_t + eta * outer(y_{t-1}, y_t)         (2)

Shapes: `y` is `(batch, units)`, `hebb` is `(batch, units, units)`, `w` is
`(units, units)`; column `j` of `w` and `alpha` holds the inputs of neuron `j`.
`alpha` is a `(units, units)` matrix, a scalar (one coefficient shared by all
connections) or `None` (no plasticity).

Everything here is written with `keras.ops`, so it runs on any Keras backend.
"""

from keras import ops

from hebbkeras.checks import check_option

INPUT_MODES = ("clamp", "add", "dense")
PLASTICITY = ("per_connection", "shared", "none")
RULES = ("hebb", "oja")


def check_eta(eta):
    """`eta` must lie in (0, 1]: at 0 nothing is learned, above 1 the trace diverges."""
    if not 0.0 < float(eta) <= 1.0:
        raise ValueError(
            f"eta={eta} is outside (0, 1]. eta is the fraction of the trace replaced "
            "each step; the paper uses 0.01."
        )


def preactivation(y_prev, w, alpha, hebb):
    """Eq. (1): `y_prev @ (w + alpha * hebb)` without forming the batched matrix.

    The plastic part is `sum_i y_prev[b, i] * alpha[i, j] * hebb[b, i, j]`.
    """
    pre = ops.matmul(y_prev, w)
    if alpha is None:
        return pre
    if len(alpha.shape) == 0:
        return pre + alpha * ops.einsum("bi,bij->bj", y_prev, hebb)
    return pre + ops.einsum("bi,bij->bj", y_prev, alpha * hebb)


def activate(pre, drive, clamp=None):
    """`y = tanh(pre + drive)`, except where `clamp` is non-zero: there `y = clamp`.

    `drive` is the additive input term (`input_scale * x` in "add" mode, the
    input kernel's output in "dense" mode) or None; `clamp` is the input in
    "clamp" mode, where a neuron with a non-zero input takes that value.
    """
    if drive is not None:
        pre = pre + drive
    y = ops.tanh(pre)
    if clamp is not None:
        y = ops.where(ops.not_equal(clamp, 0), clamp, y)
    return y


def update_trace(hebb, y_prev, y, eta, rule="hebb"):
    """Eq. (2), or Oja's rule.

    hebb: `(1 - eta) * hebb + eta * outer(y_prev, y)`.
    oja:  `hebb + eta * y[j] * (y_prev[i] - y[j] * hebb[i, j])`, which keeps
          the trace bounded without decay (Oja 1982).
    """
    y_prev = ops.expand_dims(y_prev, -1)
    y = ops.expand_dims(y, -2)
    if rule == "hebb":
        return (1.0 - eta) * hebb + eta * (y_prev * y)
    if rule == "oja":
        return hebb + eta * y * (y_prev - y * hebb)
    check_option("rule", rule, RULES)


def step(y_prev, hebb, w, alpha, eta, drive=None, clamp=None, rule="hebb"):
    """One time step: returns `(y, new_hebb)`; `hebb` is None without plasticity."""
    y = activate(preactivation(y_prev, w, alpha, hebb), drive, clamp)
    if alpha is None:
        return y, None
    return y, update_trace(hebb, y_prev, y, eta, rule)
