"""The static step schedule and checkpoint rules of both XLA kernels, once in `keras.ops`.

`hebbkeras.kernels.xla_fused` (TensorFlow backend) and `hebbkeras.kernels.jax_fused` (JAX
backend) cut a sequence of `T` steps into `chunks` equal chunks of
`interval` steps (a checkpoint of the trace at each chunk start, the end
padded) and give each step a kind:

    COMPUTED  the pre-activation is computed (eq. 1), then the trace (eq. 2)
    CLAMPED   every neuron of every episode is clamped: trace update only
    PADDING   after the last step: nothing
    HELD      a step of a held run (rules with `held_runs`): it clamps every neuron
              to the pattern of the step before (`y_{t-1} = y_t = x_t`); the
              run's first step applies all `k` updates at once,
              `hebb <- (1 - eta)^k hebb + (1 - (1 - eta)^k) outer(x, x)`,
              and its other steps keep the trace

`step_kinds` computes the kinds (and each held step's place in its run)
without a loop; `checkpoint_interval` and `pick_interval` choose `interval`;
`invertible` decides whether the backward pass inverts eq. (2) or recomputes
traces from the checkpoint; `chunked` cuts a sequence into chunks and
`backward_inputs` gives both kernels' backward pass what it scans over. Each kernel runs on one backend only, so
`keras.ops` is that backend's op there; every size is static, as XLA needs.
"""

import math

from keras import ops

from hebbkeras import rules

# Inverting eq. (2) over a chunk may grow rounding error at most this much.
INVERSION_GROWTH = 10.0
COMPUTED, CLAMPED, PADDING, HELD = 0, 1, 2, 3


def checkpoint_interval(eta, steps, eta_may_change=False):
    """Static steps between stored traces, from a plain-Python `eta`.

    The longest interval over which inverting eq. (2) grows rounding error at
    most `INVERSION_GROWTH`-fold at rate `eta`,
    `floor(log(INVERSION_GROWTH) / -log(1 - eta))`; when `eta` may change
    (trained) at most `ceil(sqrt(steps))`, so that a larger `eta` falls back
    to recomputing at a bounded cost.

    Args:
        eta: a Python number, the plasticity rate.
        steps: the sequence length.
        eta_may_change: whether `eta` is trained.

    Returns an int in [1, steps].

    Example:

    >>> checkpoint_interval(0.05, 400)
    44
    """
    eta = float(eta)
    steps = max(int(steps), 1)
    if eta >= 1.0:
        return 1
    interval = steps if eta <= 0.0 else int(math.log(INVERSION_GROWTH) / -math.log1p(-eta))
    if eta_may_change:
        interval = min(interval, math.ceil(math.sqrt(steps)))
    return max(1, min(interval, steps))


def invertible(eta, rule, y_ext, interval):
    """Whether the backward pass may rebuild traces by inverting the rule over
    `interval` steps: each inversion multiplies rounding error by at most
    `1 / (1 - rate)` (`rule.rate` with every `|y| <= max(1, max |y_ext|)`), so
    inversion is used while `interval * -log(1 - rate) <= log(INVERSION_GROWTH)`
    (never at rate 1); otherwise traces are recomputed from the checkpoint.

    Args:
        eta: the rate, a scalar tensor. rule: a `hebbkeras.rules` rule (or name).
        y_ext: every output of the sequence (and `y_0`). interval: steps per chunk.

    Returns a scalar bool tensor (False for a rule that does not invert).
    """
    rule = rules.get(rule)
    if not rule.invertible:
        return ops.less(interval, 0)
    rate = rule.rate(eta, ops.maximum(ops.max(ops.abs(y_ext)), 1.0))
    growth = -ops.log1p(-ops.minimum(rate, 1.0))  # inf at rate 1
    return interval * growth <= math.log(INVERSION_GROWTH)


def pick_interval(interval, eta, steps):
    """The kernels' static checkpoint interval: `interval` clipped to
    [1, steps]; by default (`None`) `checkpoint_interval(eta, steps)` where
    `eta` is a Python number, else `ceil(sqrt(steps))` (a tensor `eta` may be
    trained).

    Example:

    >>> pick_interval(None, 0.05, 400), pick_interval(None, tensor_eta, 400)
    (44, 20)
    """
    if interval is None:
        if isinstance(eta, (int, float)):
            interval = checkpoint_interval(eta, steps)
        else:
            interval = checkpoint_interval(0.0, steps, eta_may_change=True)
    return max(1, min(int(interval), steps))


def step_kinds(x, clamp_mode, rule, interval, chunks):
    """Per step of time-major `x`: `(kind, j, k)`, each `(chunks, interval)` int32.

    A held run is a maximal stretch of steps `t` with `same_t` (every entry of
    `x_t` non-zero and `x_t = x_{t-1}`), cut at chunk starts; for its steps
    `j` is the position in the run (0 first) and `k` its length, elsewhere
    `j = k = 0`. A step is HELD where `same_t` and `k >= 2` (a run of one step
    is a plain clamped step). Without loops (no scan): with `start_t` marking
    a run's first step (`same_t` and not `same_{t-1}`, or a chunk start), the
    runs are numbered `r_t = cumsum(start)_t` where `same_t` (0 elsewhere),
    and over the steps of run `r`

        first_r = min{t : r_t = r},   length_r = #{t : r_t = r},
        j_t = t - first_{r_t},        k_t = length_{r_t}.

    Args:
        x: `(T, batch, N)` with a static `T`: the clamping input or the drive.
        clamp_mode: whether `x` clamps (else every step is COMPUTED).
        rule: a `hebbkeras.rules` rule or name (held runs only where `rule.held_runs`).
        interval: steps per chunk.
        chunks: the number of chunks, `ceil(T / interval)`.

    Example:

    >>> kind, j, k = step_kinds(x, True, "hebb", interval=4, chunks=2)
    """
    steps, padded = ops.shape(x)[0], chunks * interval  # static where known (XLA, JAX)
    kind = ops.zeros([steps], "int32") + COMPUTED
    same = ops.zeros([padded], "bool")
    if clamp_mode:
        full = ops.all(ops.not_equal(x, 0), axis=(1, 2))
        kind = ops.where(full, CLAMPED, COMPUTED)
        if rules.get(rule).held_runs:
            repeat = ops.logical_and(ops.all(ops.equal(x[1:], x[:-1]), axis=(1, 2)),
                                     ops.logical_and(full[1:], full[:-1]))
            same = ops.concatenate([ops.zeros([1], "bool"), repeat,
                                    ops.zeros([padded - steps], "bool")])
    kind = ops.concatenate([ops.cast(kind, "int32"),
                            ops.zeros([padded - steps], "int32") + PADDING])
    t = ops.arange(padded, dtype="int32")
    # A run never continues across a chunk start.
    chunk_start = ops.equal(t % interval, 0)
    before = ops.concatenate([ops.zeros([1], "bool"), same[:-1]])
    start = ops.logical_and(same, ops.logical_or(chunk_start, ops.logical_not(before)))
    # Number the runs 1, 2, ... (0: the other steps); a run's first step and
    # length are then a segment minimum and a segment sum over its steps.
    run = ops.where(same, ops.cumsum(ops.cast(start, "int32")), 0)
    first = ops.segment_min(t, run, num_segments=padded + 1)
    length = ops.segment_sum(ops.cast(same, "int32"), run, num_segments=padded + 1)
    j = ops.where(same, t - ops.take(first, run), 0)
    k = ops.where(same, ops.take(length, run), 0)
    kind = ops.where(ops.logical_and(same, k >= 2), HELD, kind)
    return tuple(ops.reshape(ops.cast(a, "int32"), [chunks, interval]) for a in (kind, j, k))


def chunked(a, chunks, interval):
    """`(T, ...)` -> `(chunks, interval, ...)`, zero-padded at the end (a static
    `T`; the other dimensions may be unknown, such as the batch)."""
    pad = chunks * interval - a.shape[0]
    a = ops.pad(a, [[0, pad]] + [[0, 0]] * (len(a.shape) - 1))
    return ops.reshape(a, (chunks, interval) + tuple(ops.shape(a)[1:]))


def backward_inputs(x, y0, ys, g_ys, eta, rule, clamp_mode, interval, chunks):
    """What the XLA kernels' backward pass scans over, time-major, and its one choice.

    Returns `(invert, xs)`: `invertible(...)` and the chunked `(y_{t-1}, y_t,
    x_t, g_{y_t}, kind, j, k)` (see `step_kinds`), each `(chunks, interval, ...)`.
    """
    y_ext = ops.concatenate([y0[None], ys], 0)  # y_ext[t] = y_{t-1}
    invert = invertible(eta, rule, y_ext, interval)
    vectors = tuple(chunked(a, chunks, interval) for a in (y_ext[:-1], ys, x, g_ys))
    return invert, vectors + step_kinds(x, clamp_mode, rule, interval, chunks)
