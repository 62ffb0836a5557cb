"""The plasticity rule as pure functions: the one place the math is defined.

Notation (Miconi, Clune & Stanley 2018, eqs. 1-2):

    pre_t      = y_{t-1} @ (w + alpha * hebb_t)                        (1)
    y_t        = tanh(pre_t)           (plus the input term, see `activate`)
    hebb_{t+1} = (1 - eta) * hebb_t + eta * outer(y_{t-1}, y_t)         (2)

Shapes: `y` is `(batch, units)`, `hebb` is `(batch, units, units)`, `w` is
`(units, units)`; column `j` of `w` and `alpha` holds the inputs of neuron `j`.
`alpha` is a `(units, units)` matrix, a scalar (one coefficient shared by all
connections) or `None` (no plasticity).

Feed-forward plastic layer (`PlasticDense`, the Omniglot readout): inputs `x_t`
`(batch, in)`, outputs `y_t` `(batch, units)`, `w` and `alpha` `(in, units)`,
`hebb` `(batch, in, units)`; the output uses the trace before the step's update,
as in eq. (1), and the update pairs the step's input with its output:

    y_t        = act(x_t @ (w + alpha * hebb_t) + b)   (plus the teacher, see `teach`)
    hebb_{t+1} = (1 - eta) * hebb_t + eta * outer(x_t, y_t)            (hebb)
    hebb_{t+1} = hebb_t + eta * y_t[j] * (x_t[i] - y_t[j] * hebb_t[i, j])   (oja)

The trace updates themselves are the rules of `hebbkeras.rules` (one
definition each); `rule` is a rule's name or the rule object. Everything
here is written with `keras.ops`, so it runs on any Keras backend.
"""

import keras
from keras import ops

from hebbkeras import rules
from hebbkeras.checks import check_option

INPUT_MODES = ("clamp", "add", "dense")
PLASTICITY = ("per_connection", "shared", "none")
RULES = rules.names(plain=True)  # deprecated: `hebbkeras.rules.names(plain=True)`
TEACHER_MODES = ("add", "clamp")


def check_eta(eta):
    """`eta` must lie in (0, 1]: at 0 nothing is learned, above 1 the trace diverges."""
    if not 0.0 < float(eta) <= 1.0:
        raise ValueError(
            f"eta={eta} is outside (0, 1]. eta is the fraction of the trace replaced "
            "each step; the paper uses 0.01."
        )


def preactivation(y_prev, w, alpha, hebb, la=rules.LINALG):
    """Eq. (1): `y_prev @ (w + alpha * hebb)` without forming the batched matrix.

    The plastic part is `sum_i y_prev[b, i] * alpha[i, j] * hebb[b, i, j]`.
    `la`: the contractions (`rules.LINALG`; a kernel may pass faster equivalents).
    """
    pre = ops.matmul(y_prev, w)
    if alpha is None:
        return pre
    if len(alpha.shape) == 0:
        return pre + alpha * la.vecmat(y_prev, hebb)
    return pre + la.vecmat(y_prev, alpha * hebb)


def plastic_backward(g_pre, y_prev, alpha, hebb, la=rules.LINALG):
    """The vector-Jacobian product of eq. (1)'s plastic part `p = y_prev @ (alpha * hebb)`.

    With `g = dL/dp` `(batch, n_post)` (the pre-activation's gradient):

        dL/dy_prev[b, i] = sum_j alpha[i, j] * hebb[b, i, j] * g[b, j]
        dL/dalpha[i, j]  = sum_b hebb[b, i, j] * y_prev[b, i] * g[b, j]   (a scalar alpha:
                                                                       summed over i, j too)
        dL/dhebb[b, i, j] = alpha[i, j] * y_prev[b, i] * g[b, j]

    Returns `(g_y_prev, g_alpha, g_hebb)`. `w`'s part (`g @ w^T`, `y_prev^T @ g`)
    is the caller's: a sequence kernel sums it over the steps in one product.
    """
    outer = la.outer(y_prev, g_pre)
    if len(alpha.shape) == 0:
        hg = la.matvec(hebb, g_pre)
        return alpha * hg, ops.sum(y_prev * hg), alpha * outer
    return la.matvec(alpha * hebb, g_pre), ops.sum(hebb * outer, axis=0), alpha * outer


def tanh(x):
    """`keras.ops.tanh`, except where it would change `x`'s dtype: on JAX with
    float64 enabled Keras 3.15 computes it in float32 (which also breaks a
    float64 scan's carry), so there it is `jax.numpy.tanh`."""
    y = ops.tanh(x)
    if y.dtype == x.dtype or keras.backend.backend() != "jax":
        return y
    import jax.numpy as jnp

    return jnp.tanh(x)


def activate(pre, drive, clamp=None):
    """`y = tanh(pre + drive)`, except where `clamp` is non-zero: there `y = clamp`.

    `drive` is the additive input term (`input_scale * x` in "add" mode, the
    input kernel's output in "dense" mode) or None; `clamp` is the input in
    "clamp" mode, where a neuron with a non-zero input takes that value.
    """
    if drive is not None:
        pre = pre + drive
    y = tanh(pre)
    if clamp is not None:
        y = ops.where(ops.not_equal(clamp, 0), clamp, y)
    return y


def update_trace(hebb, y_prev, y, eta, rule="hebb", la=rules.LINALG):
    """The trace after one step of `rule` (see `hebbkeras.rules`):

    hebb: `(1 - eta) * hebb + eta * outer(y_prev, y)` (eq. 2).
    oja:  `hebb + eta * y[j] * (y_prev[i] - y[j] * hebb[i, j])`, which keeps
          the trace bounded without decay (Oja 1982).
    """
    return rules.get(rule).update(hebb, y_prev, y, eta, la=la)


def step(y_prev, hebb, w, alpha, eta, drive=None, clamp=None, rule="hebb"):
    """One time step: returns `(y, new_hebb)`; `hebb` is None without plasticity."""
    y = activate(preactivation(y_prev, w, alpha, hebb), drive, clamp)
    if alpha is None:
        return y, None
    return y, update_trace(hebb, y_prev, y, eta, rule)


def modulated_step(y_prev, traces, w, alpha, eta, modulator, trace_clip, rule, drive=None,
                   clamp=None, gate=None, with_modulation=False):
    """One step of a neuromodulated rule (`hebbkeras.rules.modulated`): `(y, traces)`.

    `y` as in `step`, from the trace `traces[0]`; then `M_t` from `y` and
    `modulator` (`(modulator_kernel, modulator_bias[, modulator_fanout])`), and
    the rule's states `traces` (`(hebb,)`, or `(hebb, E)` for "retroactive") after the step.
    `gate`: a scalar multiplying `M_t` and `eta` (a kernel's padding steps pass 0,
    which keeps the traces as they are); `with_modulation`: also return
    `tanh(y @ modulator_kernel + modulator_bias)` (before the fan-out and the gate).
    """
    rule = rules.get(rule)
    y = activate(preactivation(y_prev, w, alpha, traces[0]), drive, clamp)
    a = rule.modulation(y, *modulator[:2])
    m = a if len(modulator) < 3 else a * modulator[2]
    if gate is not None:
        m, eta = gate * m, gate * eta
    traces = rule.modulated_update(tuple(traces), y_prev, y, eta, m, trace_clip)
    return (y, traces, a) if with_modulation else (y, traces)


def teach(pre, activation, teacher=None, mode="add", scale=1.0):
    """The output of a feed-forward plastic step, driven or clamped by `teacher`.

    "add":   `y = activation(pre + scale * teacher)` (the Omniglot network:
             softmax with `scale = 1000` and a one-hot label, zero on query steps).
    "clamp": `y = teacher` on rows (batch elements) where the teacher has any
             non-zero entry, `y = activation(pre)` where it is all zero: a whole
             output vector is clamped, so a one-hot label stays one-hot.
    `teacher=None`: `y = activation(pre)`.
    """
    if teacher is None:
        return activation(pre)
    if mode == "add":
        return activation(pre + scale * teacher)
    if mode == "clamp":
        taught = ops.any(ops.not_equal(teacher, 0), axis=-1, keepdims=True)
        return ops.where(taught, teacher, activation(pre))
    check_option("teacher_mode", mode, TEACHER_MODES)


def dense_step(x, hebb, w, alpha, eta, bias=None, activation=lambda v: v, teacher=None,
               teacher_mode="add", teacher_scale=1.0, rule="hebb", la=rules.LINALG):
    """One feed-forward plastic step: returns `(y, new_hebb)` (`new_hebb` None without `alpha`).

    `y = teach(x @ (w + alpha * hebb) + bias, ...)` with the trace before the
    update, then `hebb` is updated with `outer(x, y)` by `update_trace`.
    """
    y, new_hebb, _ = dense_step_with_pre(x, hebb, w, alpha, eta, bias, activation, teacher,
                                         teacher_mode, teacher_scale, rule, la)
    return y, new_hebb


def dense_step_with_pre(x, hebb, w, alpha, eta, bias=None, activation=lambda v: v,
                        teacher=None, teacher_mode="add", teacher_scale=1.0, rule="hebb",
                        la=rules.LINALG):
    """`dense_step`, also returning the pre-activation `x @ (w + alpha * hebb) + bias`:
    `(y, new_hebb, pre)`, for a kernel that keeps it for the gradient."""
    pre = preactivation(x, w, alpha, hebb, la)
    if bias is not None:
        pre = pre + bias
    y = teach(pre, activation, teacher, teacher_mode, teacher_scale)
    if alpha is None:
        return y, None, pre
    return y, update_trace(hebb, x, y, eta, rule, la), pre
