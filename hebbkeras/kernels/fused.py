"""The fused whole-sequence kernel of PlasticRNN, with a hand-written gradient.

Autodiff through the cell loop stores the `(batch, N, N)` trace of every step:
O(T * B * N^2) memory. Here the forward pass is one `tf.while_loop` that keeps
only the outputs `y_t` (O(T * B * N)), and the gradient runs backwards through
time rebuilding each step's trace from the next one with the rule's inverse
(`rule.invert`: every rule of the decay form of `hebbkeras.rules` inverts).

Each inversion multiplies rounding error by at most `1 / (1 - rate)`
(`rule.rate`), so the trace is also stored every `checkpoint_interval(rate)` steps (a bounded
growth of `INVERSION_GROWTH`) and the backward pass resets to the stored
copy there; at `eta = 1` nothing inverts and every step is a checkpoint.

Work that cannot change the result is skipped, exactly:
- a step that clamps every neuron ("clamp" input mode) needs no
  pre-activation and passes no gradient through `w`, `alpha` or `y_{t-1}`'s
  pre-activation;
- with a rule that has `held_runs` (the Hebbian rule), a clamped pattern held
  for `k` steps is one trace update instead of `k` (forward and backward;
  `hebbkeras.rules.hebb`, eq. H); the steps' kinds are `schedule.step_kinds`.
  On the native path the pattern's first (clamped) step joins its held run
  too (`_merged_starts`), and going back a fully clamped segment costs no pass
  of its own: the pass of the segment after it does its work (`absorb` in
  `_backward_native`).

A batch known when traced can run in groups of episodes (`group=`,
`hebbkeras.kernels.groups`): each group's whole sequence forward, and going
back each group's gradient, one group after another, so a group's traces stay
in the L3 cache; the gradients of `w`, `alpha` and `eta` are summed over the
groups. By default the whole batch runs at once (see `_groups`).

With a rule whose decay is one scalar (`rule.scalar_decay`) it is carried as a separate
scale (forward: `hebb_t = scale * U`; backward also its gradient
`G_t = V / scale`), which saves a pass over the trace per step: see
`_forward`'s `update` and the note above `_renorm`. At batch 1 the
contractions and outer products run as 2-D matmuls (`_batch_one`).

With a rule that names a native implementation (`rule.native`: the Hebbian
rule) on CPU, each step's passes over the trace (and, going
back, its gradient) run in the compiled kernels of `hebbkeras.kernels.native`: one
pass per step instead of one per elementwise op, which also reads `w` (the
step's whole eq. 1 and its gradient: no matmul of its own), with `alpha`'s
gradient gathered over `ALPHA_FLUSH` segments in a queue the kernel keeps
(`_backward_native`; from `ALPHA_DIRECT_BATCH` episodes on, applied in each
pass); at batch 1 every TensorFlow op in the loops costs time of its own, so
they hold as few as they can (in "add" mode the backward loop carries nothing
of the clamped inputs' machinery). Elsewhere (other
rules, GPUs, no compiler, exports) the same math runs in plain TensorFlow ops,
which work with unknown batch and time dimensions, in `tf.function`, in
SavedModels served without XLA, and inside `tf.distribute` replicas (as do
the native kernels, on CPU). XLA cannot compile these loops (TensorList
scatters, run lengths known only at run time): inside `jit_compile`,
`PlasticRNN` runs `hebbkeras.kernels.xla_fused` instead, the same algorithm with
static schedules (chunks of a fixed number of steps), which XLA compiles with
the rest of the train step. `jit_backward` compiles just the per-step
gradient of this kernel.
Eqs. (1) and the activation follow `hebbkeras.ops` (eq. 1 on the scaled
trace); the trace update is the rule's decay form `decay * hebb +
outer(eta * y_{t-1}, y_t)`, and its gradient `rule.backward`.
"""

import functools
import math
import types
import warnings

import tensorflow as tf

from hebbkeras import ops, rules
from hebbkeras.kernels import dispatch, groups
from hebbkeras.kernels import native as hebbkeras_native
from hebbkeras.kernels.schedule import CLAMPED, COMPUTED, HELD, INVERSION_GROWTH, step_kinds

KERNEL = "fused"


def checkpoint_interval(rate):
    """Steps between stored traces so inversion error grows at most `INVERSION_GROWTH`-fold.

    `rate` bounds the fraction of the trace replaced per step (`rule.rate`).
    Returns an int32 scalar >= 1.
    """
    rate = tf.cast(rate, tf.float64)
    growth = -tf.math.log1p(-tf.minimum(rate, 1.0))  # inf at rate 1
    steps = tf.floor(math.log(INVERSION_GROWTH) / growth)
    return tf.cast(tf.clip_by_value(steps, 1.0, 2.0**30), tf.int32)


def _batch_one(x, single, batched):
    """`single()` where the batch (first) dimension of `x` is statically 1, else `batched()`.

    TensorFlow runs the batched forms below as BatchMatMuls, which on CPU are
    1.2-2x slower than the plain 2-D products over the same matrices; a batch
    of one (the paper's setting) uses the 2-D products (the reshapes alias, no
    copy). An unknown batch takes the batched forms: a `tf.cond` on the run-time
    batch is no way out, since inside the loops TensorFlow runs the 2-D
    branch's reshapes even when the predicate is false.
    """
    return single() if x.shape[0] == 1 else batched()


# The contractions of `hebbkeras.rules` as this kernel runs them: 2-D products
# at batch one, and an einsum outer product (faster than a broadcast multiply
# on CPU outside XLA).
LA = types.SimpleNamespace(
    outer=lambda a, b: _batch_one(
        a,
        lambda: tf.expand_dims(tf.matmul(tf.reshape(a, [-1, 1]), tf.reshape(b, [1, -1])), 0),
        lambda: tf.einsum("bi,bj->bij", a, b)),
    vecmat=lambda v, m: _batch_one(
        m, lambda: tf.matmul(v, tf.reshape(m, tf.shape(m)[1:])),
        lambda: rules.LINALG.vecmat(v, m)),
    matvec=lambda m, v: _batch_one(
        m, lambda: tf.matmul(v, tf.reshape(m, tf.shape(m)[1:]), transpose_b=True),
        lambda: rules.LINALG.matvec(m, v)),
)
_outer, _vecmat, _matvec = LA.outer, LA.vecmat, LA.matvec


def plastic_sequence(x, y0, h0, w, alpha, eta, *deprecated, input_mode="clamp", rule="hebb",
                     eta_grad=True, interval=None, jit_backward=False, native=None, group=None):
    """Runs eqs. (1)-(2) over a whole sequence; returns `(ys, hebb_T)`.

    The signature every fused kernel shares (`hebbkeras.kernels.dispatch`).

    Args:
        x: `(batch, time, N)`: the clamping input when `input_mode="clamp"`,
            else (`"add"`) the additive drive (see `ops.activate`).
        y0, h0: the initial state, `(batch, N)` and `(batch, N, N)`.
        w: `(N, N)`; alpha: `(N, N)` or a scalar; eta: a scalar.
        rule: a `hebbkeras.rules` rule or its name.
        eta_grad: False returns no gradient for eta (a constant) and saves
            a pass over the trace per step.
        interval: steps between stored traces (default: from the rule's
            rate, `checkpoint_interval`).
        jit_backward: compile the per-step gradient with XLA (training only).
        native: run the trace passes through the compiled kernels of
            `hebbkeras.kernels.native` (the rule must name one, `rule.native`;
            default: `dispatch.use_native`) or through plain TensorFlow ops (False).
        group: episodes per group, run one group after the other, forward and
            back (`hebbkeras.kernels.groups`; `groups.group_size` gives the most
            that keep a group's traces in the L3 cache; 0 or None, the default:
            the whole batch at once, see `_groups`). A batch unknown when traced
            runs at once.

    Returns `(ys (batch, time, N), hebb_T)`, differentiable in every tensor
    argument, with O(B * N^2 + T * B * N) memory (plus one stored trace per
    `checkpoint_interval` steps). The 0.1 form `(drive, clamp, y0, h0, w,
    alpha, eta)` is still taken, with a DeprecationWarning.
    """
    if deprecated:
        warnings.warn("fused.plastic_sequence(drive, clamp, y0, ...) is deprecated: pass "
                      "(x, y0, ...) and input_mode='clamp' or 'add'.", DeprecationWarning,
                      stacklevel=2)
        drive, clamp = x, y0
        y0, h0, w, alpha, eta = h0, w, alpha, eta, deprecated[0]
        if (drive is None) == (clamp is None):
            raise ValueError("fused.plastic_sequence takes a drive or a clamp, one of them.")
        x, input_mode = (clamp, "clamp") if drive is None else (drive, "add")
    rule = dispatch.check_rule(rule, KERNEL, input_mode)
    if native is None:
        native = dispatch.use_native(rule, y0.dtype, jit_backward)
    elif native:
        rules.get(rule, kernel="fused (native)", needs=("native",))
    names = ["clamp" if input_mode == "clamp" else "drive"]
    x = tf.convert_to_tensor(x)
    drive, clamp = (None, x) if input_mode == "clamp" else (x, None)

    parts = _groups(y0, group)

    def forward(d, c, y0, h0, w, alpha, eta):
        return _forward(d, c, y0, h0, w, alpha, eta, rule, native, interval)

    def backward(d, c, y0, w, alpha, eta, ys, h_last, record, g_ys, g_h):
        if native:
            return _backward_native(d, c, y0, w, alpha, eta, rule, ys, h_last, record, g_ys, g_h)
        return _backward(d, c, y0, w, alpha, eta, rule, eta_grad, jit_backward, ys, h_last,
                         record, g_ys, g_h)

    if len(parts) > 1:  # traced once per group size, not once per group
        forward, backward = _traced_once(forward, backward, y0.dtype)

    @tf.custom_gradient
    def fused(*args):
        given = dict(zip(names, args[: len(names)]))
        y0_, h0_, w_, alpha_, eta_ = args[len(names):]
        # Time-major for the loops.
        d = tf.transpose(given["drive"], [1, 0, 2]) if "drive" in given else None
        c = tf.transpose(given["clamp"], [1, 0, 2]) if "clamp" in given else None
        # One group after the other (`groups`): each waits for the one before it.
        runs, after = [], []
        for lo, n in parts:
            with tf.control_dependencies(after):
                d_, c_ = (None if v is None else _part(v, lo, n, parts, 1) for v in (d, c))
                y0_g, h0_g = (_part(v, lo, n, parts) for v in (y0_, h0_))
                ys, h_last, record = forward(d_, c_, y0_g, h0_g, w_, alpha_, eta_)
            runs.append((d_, c_, y0_g, ys, h_last, record))
            after = [ys, h_last]
        ys, h_last = (_concat([r[i] for r in runs], axis) for i, axis in ((3, 1), (4, 0)))

        def grad(g_ys, g_h):
            out, after = [None] * len(parts), []
            for i in reversed(range(len(parts))):  # the last group's trace is still in cache
                (lo, n), (d_, c_, y0_g, ys_g, h_last_g, record) = parts[i], runs[i]
                with tf.control_dependencies(after):
                    gy = (tf.zeros_like(ys_g) if g_ys is None
                          else tf.transpose(_part(g_ys, lo, n, parts), [1, 0, 2]))
                    gh = tf.zeros_like(h_last_g) if g_h is None else _part(g_h, lo, n, parts)
                    grads = backward(d_, c_, y0_g, w_, alpha_, eta_, ys_g, h_last_g, record, gy,
                                     gh)
                out[i] = grads
                after = [g for g in grads if g is not None]
            # Per episode: drive, clamp, y0, h0 (joined); shared: w, alpha, eta (summed).
            g_drive, g_clamp, g_y0, g_h0 = (_concat([g[k] for g in out], 1 if k < 2 else 0)
                                            for k in range(4))
            rest = (g_y0, g_h0) + tuple(_sum_all([g[k] for g in out]) for k in (4, 5, 6))
            grads = []
            if "drive" in given:
                grads.append(tf.transpose(g_drive, [1, 0, 2]))
            if "clamp" in given:
                grads.append(tf.transpose(g_clamp, [1, 0, 2]))
            if not eta_grad:  # eta is a constant here
                rest = rest[:-1] + (None,)
            return tuple(grads) + rest

        return (tf.transpose(ys, [1, 0, 2]), h_last), grad

    inputs = [v for v in (drive, clamp) if v is not None]
    return fused(*inputs, y0, h0, w, alpha, eta)


def _groups(y0, group):
    """The batch groups `[(start, length), ...]` `plastic_sequence` runs one after another.

    Only where `group` is given. With clamped inputs most segments are trace-only
    and TensorFlow's per-op overhead is about half of a batch-1 episode, so groups
    of one episode cost more than the DRAM passes they save (binary task, B = 32,
    under load: CPU 0.86-0.96x of the whole batch at once). In "add" mode groups of
    one (the most that fit a 32 MB L3 at N = 1001) ran 1.31x faster until the native
    passes over DRAM gained 256-bit vectors and prefetching; since, the whole batch
    at once is faster in wall time (binary_add, quiet: 1.18x at B = 32, 1.13x at
    B = 8; 3-4% more CPU time; BENCHMARKS.md, 2026-12-06 late night).
    """
    batch = y0.shape[0]
    if batch is None:
        return [(0, None)]
    return groups.split(batch, group or 0)


# The TensorArrays of `_forward`'s record and their dtypes (None: the trace's).
_RECORD_ARRAYS = {"ckpts": None, "starts": tf.int32, "ckpt_of": tf.int32}


def _traced_once(forward, backward, dtype):
    """`forward` and `backward` as `tf.function`s, each traced once per group size and not
    inlined (at B = 32 the first training step took 88 s in 32 groups unrolled, 57 s with
    the functions inlined, 28 s as they are, 8 s for the whole batch, under load). The
    record's TensorArrays cross the functions' boundaries as their flows."""
    def flows(record):
        return {k: v.flow if k in _RECORD_ARRAYS else v for k, v in record.items()}

    def arrays(record):
        return {k: tf.TensorArray(_RECORD_ARRAYS[k] or dtype, flow=v) if k in _RECORD_ARRAYS
                else v for k, v in record.items()}

    @tf.function(autograph=False, experimental_attributes={"_noinline": True})
    def forward_fn(d, c, y0, h0, w, alpha, eta):
        ys, h_last, record = forward(d, c, y0, h0, w, alpha, eta)
        return ys, h_last, flows(record)

    @tf.function(autograph=False, experimental_attributes={"_noinline": True})
    def backward_fn(d, c, y0, w, alpha, eta, ys, h_last, record, g_ys, g_h):
        return backward(d, c, y0, w, alpha, eta, ys, h_last, arrays(record), g_ys, g_h)

    return forward_fn, backward_fn


def _part(x, lo, n, parts, axis=0):
    """Episodes `[lo, lo + n)` of `x` along `axis` (all of it with one group)."""
    if len(parts) == 1:
        return x
    return x[:, lo:lo + n] if axis == 1 else x[lo:lo + n]


def _concat(xs, axis):
    """`xs` joined along `axis` (None if they are None; one is itself)."""
    if xs[0] is None:
        return None
    return xs[0] if len(xs) == 1 else tf.concat(xs, axis)


def _sum_all(xs):
    """The groups' gradients of a shared weight, summed (None if they are None)."""
    if xs[0] is None:
        return None
    return xs[0] if len(xs) == 1 else tf.add_n(xs)


def _rate(c, eta, rule):
    """`rule.rate` over the sequence: outputs are tanh (|y| < 1) or clamped (`c`)."""
    bound = 1.0 if c is None else tf.maximum(tf.reduce_max(tf.abs(c)), 1.0)
    return rules.get(rule).rate(eta, bound)


def _plastic_input(y, hebb, alpha):
    """`einsum("bi,ij,bij->bj", y, alpha, hebb)` (alpha a matrix or a scalar)."""
    if len(alpha.shape) == 0:
        return alpha * _vecmat(y, hebb)
    return _vecmat(y, alpha * hebb)


# A segment kind of the native path only (after `schedule`'s kinds): a clamped
# step whose pattern is then held, merged with that held run into one segment.
MERGED = 4


def _merged_starts(kinds, interval):
    """Per step: a clamped step followed by a held run of its pattern in the same chunk.

    Such a step `t` (output `x`, input `y_{t-1}`) and the run's `k` steps are one
    trace update, forward and backward (eq. H with the first step's input):
    `hebb <- a^(k+1) hebb + outer(eta a^k y_{t-1} + (1 - a^k) x, x)`.
    """
    after = tf.concat([kinds[1:], [COMPUTED]], 0)
    t = tf.range(tf.shape(kinds)[0])
    return tf.logical_and(tf.logical_and(tf.equal(kinds, CLAMPED), tf.equal(after, HELD)),
                          tf.not_equal((t + 1) % interval, 0))


def _forward(d, c, y0, h0, w, alpha, eta, rule, native=False, interval=None):
    seq = d if d is not None else c
    steps = tf.shape(seq)[0]
    if interval is None:
        interval = checkpoint_interval(_rate(c, eta, rule))
    kinds = ks = merged = None
    if c is not None:  # the steps' kinds and held runs, cut at chunk starts
        chunks = (steps + interval - 1) // interval
        kinds, _, ks = (tf.reshape(a, [-1]) for a in step_kinds(c, True, rule, interval, chunks))
        next_kind = tf.concat([kinds, [COMPUTED]], 0)  # indexed up to `steps`
        if native and rule.held_runs:
            merged = _merged_starts(kinds, interval)
            ks = tf.where(merged, tf.concat([ks[1:], [0]], 0) + 1, ks)
    dtype = y0.dtype
    ys = tf.TensorArray(dtype, size=steps, element_shape=y0.shape)
    ckpts = tf.TensorArray(dtype, size=steps, element_shape=h0.shape, clear_after_read=False)
    starts = tf.TensorArray(tf.int32, size=steps, element_shape=[], clear_after_read=False)
    ckpt_of = tf.TensorArray(tf.int32, size=steps, element_shape=[], clear_after_read=False)

    one = tf.ones([], dtype)

    def update(t, first, hebb, scale, decay, a, b, nxt=None):
        """`decay * trace + outer(a, b)` on the scaled trace `trace = scale * hebb`;
        returns `(hebb, scale, q)`, q the next step's pre-activation (native only).

        Native: one pass, which also computes `q = b^T (w + alpha * trace)`
        (eq. 1; b is the step's output, the next step's input) where the next
        step `nxt` is computed (clamp mode; always in add mode). Otherwise, with a scalar
        decay (`rule.scalar_decay`) it goes into `scale`, one pass over the
        trace fewer: `hebb + outer(a / scale', b)`, `scale' = decay * scale`.
        The first step of a chunk (scale 1, and the only step when `eta = 1`,
        decay 0) and a per-column decay use the plain update.
        """
        if native:  # alternate the row order (see hebb_ops.cc)
            need_q = True if nxt is None else tf.equal(next_kind[nxt], COMPUTED)
            hebb, q = hebbkeras_native.implementation(rule).hebbkeras_trace_update(
                hebb, alpha, w, decay, a, b, tf.equal(t % 2, 1), need_q)
            return hebb, one, q

        def plain():
            return decay * hebb + _outer(a, b), one, no_q

        if not rule.scalar_decay:
            return plain()

        def scaled():
            new_scale = decay * scale
            return hebb + _outer(a / new_scale, b), new_scale, no_q

        return tf.cond(first, plain, scaled)

    def segment(t, end, first, y, hebb, scale, q):
        """One step, or a held pattern's whole run; returns `(k, y, hebb, scale, q)`."""
        def computed():
            drive = d[t] if d is not None else None
            clamp = c[t] if c is not None else None
            # Eq. (1) of `ops.preactivation` on the scaled trace (native: q).
            pre = q if native else tf.matmul(y, w) + _plastic_input(scale * y, hebb, alpha)
            y_new = ops.activate(pre, drive, clamp)
            return (y_new,) + update(t, first, hebb, scale, rule.decay(eta, y_new),
                                     eta * y, y_new, None if c is None else t + 1)

        if c is None:
            return (1,) + tuple(computed())
        # Runs end at chunk ends; a merged step spans its pattern's held run too.
        kind = kinds[t] if merged is None else tf.where(merged[t], MERGED, kinds[t])
        held = tf.where(kind >= HELD, ks[t], 1)

        def clamped():
            return (c[t],) + update(t, first, hebb, scale, rule.decay(eta, c[t]), eta * y, c[t],
                                    t + 1)

        def held_run():
            decay = rule.held_decay(eta, held)
            return (c[t],) + update(t, first, hebb, scale, decay, (1.0 - decay) * c[t], c[t],
                                    t + held)

        def merged_run():  # a pattern's first step and its held run (native only)
            ak = rule.held_decay(eta, held - 1)
            return (c[t],) + update(t, first, hebb, scale, rule.decay(eta, c[t]) * ak,
                                    (eta * ak) * y + (1.0 - ak) * c[t], c[t], t + held)

        # Indexed by the kinds of `schedule` (padding is never visited; held
        # runs only with a rule that has them) and MERGED.
        branches = [computed, clamped, clamped, held_run if rule.held_runs else clamped]
        if merged is not None:
            branches.append(merged_run)
        y, hebb, scale, q = tf.switch_case(kind, branches)
        return held, y, hebb, scale, q

    def chunk(t, n_ckpt, n_seg, y, hebb, q, ys, ckpts, starts, ckpt_of):
        ckpts = ckpts.write(n_ckpt, hebb)
        end = tf.minimum(t + interval, steps)

        def body(t, n_seg, first, y, hebb, scale, q, ys, starts, ckpt_of):
            k, y, hebb, scale, q = segment(t, end, first, y, hebb, scale, q)
            ys = ys.scatter(tf.range(t, t + k), tf.repeat(y[None], k, axis=0))
            starts = starts.write(n_seg, t)
            ckpt_of = ckpt_of.write(n_seg, tf.where(first, n_ckpt, -1))
            return t + k, n_seg + 1, False, y, hebb, scale, q, ys, starts, ckpt_of

        t, n_seg, _, y, hebb, scale, q, ys, starts, ckpt_of = tf.while_loop(
            lambda t, *_: t < end, body,
            (t, n_seg, True, y, hebb, one, q, ys, starts, ckpt_of),
            parallel_iterations=1,
        )
        # The true trace, for the next checkpoint and the output.
        hebb = tf.cond(tf.equal(scale, 1.0), lambda: hebb, lambda: hebb * scale)
        return t, n_ckpt + 1, n_seg, y, hebb, q, ys, ckpts, starts, ckpt_of

    zero = tf.constant(0)
    # Native: the first step's pre-activation; later ones come from the trace updates.
    no_q = tf.zeros_like(y0)
    q0 = tf.matmul(y0, w) + _plastic_input(y0, h0, alpha) if native else no_q
    _, _, n_seg, _, hebb, _, ys, ckpts, starts, ckpt_of = tf.while_loop(
        lambda t, *_: t < steps, chunk,
        (zero, zero, zero, y0, h0, q0, ys, ckpts, starts, ckpt_of),
        parallel_iterations=1,
    )
    full = None if kinds is None else tf.not_equal(kinds, COMPUTED)
    record = {"n_seg": n_seg, "ckpts": ckpts, "starts": starts, "ckpt_of": ckpt_of, "full": full,
              "merged": merged}
    return ys.stack(), hebb, record


# The backward pass carries the trace and its gradient scaled: the trace
# `hebb_{t+1} = scale * U` and its gradient `G_{t+1} = V / scale`, `scale` a
# scalar. With the Hebbian rule both decays are scalar and fold into `scale`:
# inverting a step is `U <- U - outer(eta / scale * y_{t-1}, y_t)`,
# `scale <- scale / (1 - eta)`, and the gradient's decay `G <- (1 - eta) G`
# leaves `V` unchanged, so a clamped step costs two passes over the trace
# fewer and a computed one two fewer too (its `alpha * outer` term,
# `V <- V + alpha * outer(y_{t-1}, scale * g_pre)`, shares its outer product
# with `g_alpha`). Where a stored trace replaces `U` (scale 1), `V` is rescaled
# once. Scales stay within `INVERSION_GROWTH` of 1 (the checkpoint interval).
# A per-column decay (Oja's rule) keeps `scale = 1` and the plain updates.


def _renorm(renorm, g_hebb, factor):
    """`g_hebb * factor` where a stored trace reset the scale, else `g_hebb`."""
    return tf.cond(renorm, lambda: g_hebb * factor, lambda: g_hebb)


def _trace_backward(hebb_prev, scale_prev, scale, renorm, g_hebb, y_prev, y, gy, eta, rule,
                    eta_grad):
    """`rule.backward` on the scaled state; returns `(V, gy, gy_prev, g_eta)`
    with `V` the decayed gradient scaled by `scale_prev` (before the free part's term)."""
    inv = 1.0 / scale
    gy, gy_prev, g_eta = rule.backward(g_hebb, hebb_prev, y_prev, y, gy, eta, eta_grad,
                                       g_scale=inv, h_scale=scale_prev, la=LA)
    if rule.scalar_decay:
        g_hebb = _renorm(renorm, g_hebb, rule.decay(eta, y) * scale_prev * inv)
    else:
        g_hebb = rule.decay(eta, y) * g_hebb
    return g_hebb, gy, gy_prev, g_eta


def _free_backward(hebb_prev, scale_prev, y_prev, y, gy, gy_prev, g_hebb, clamp, w, alpha,
                   g_alpha):
    """Gradient through eq. (1) and tanh where some neuron is free (scaled state)."""
    if clamp is not None:  # d y / d x = 1 on clamped neurons, d y / d pre = 0
        clamped = tf.not_equal(clamp, 0)
        g_x = tf.where(clamped, gy, tf.zeros_like(gy))
        g_pre = tf.where(clamped, tf.zeros_like(gy), gy * (1.0 - tf.square(y)))
    else:
        g_x, g_pre = tf.zeros_like(gy), gy * (1.0 - tf.square(y))
    g_scaled = scale_prev * g_pre  # hebb_prev = scale_prev * U
    outer = _outer(y_prev, g_scaled)
    if len(alpha.shape) == 0:
        hg = _matvec(hebb_prev, g_scaled)
        g_alpha = g_alpha + tf.reduce_sum(y_prev * hg)
        plastic = alpha * hg
    else:
        g_alpha = g_alpha + tf.reduce_sum(hebb_prev * outer, axis=0)
        plastic = _matvec(alpha * hebb_prev, g_scaled)
    g_y_prev = gy_prev + tf.matmul(g_pre, w, transpose_b=True) + plastic
    return g_hebb + alpha * outer, g_y_prev, g_x, g_pre, g_alpha


@functools.lru_cache(maxsize=None)
def _step_backward_fns(rule, eta_grad, jit):
    """The per-step gradient functions, optionally compiled with XLA (training only).

    They work on the scaled state (see `_renorm`): `hebb_prev`, `scale_prev`
    the trace before the step, `scale` the scale after it, `g_hebb` the scaled
    gradient after it; `renorm` says a stored trace reset `scale_prev` to 1.
    """

    def computed(hebb_prev, scale_prev, scale, renorm, g_hebb, y_prev, y, gy, eta, clamp, w,
                 alpha, g_alpha):
        g_hebb, gy, gy_prev, g_eta = _trace_backward(
            hebb_prev, scale_prev, scale, renorm, g_hebb, y_prev, y, gy, eta, rule, eta_grad)
        g_hebb, g_y_prev, g_x, g_pre, g_alpha = _free_backward(
            hebb_prev, scale_prev, y_prev, y, gy, gy_prev, g_hebb, clamp, w, alpha, g_alpha)
        return g_hebb, g_y_prev, g_eta, g_x, g_pre, g_alpha

    def clamped(hebb_prev, scale_prev, scale, renorm, g_hebb, y_prev, y, gy, eta, g_alpha):
        g_hebb, gy, gy_prev, g_eta = _trace_backward(
            hebb_prev, scale_prev, scale, renorm, g_hebb, y_prev, y, gy, eta, rule, eta_grad)
        return g_hebb, gy_prev, g_eta, gy, tf.zeros_like(gy), g_alpha

    def invert(hebb, scale, y_prev, y, eta):
        """The scaled trace before a step: `(U, scale)`."""
        if not rule.scalar_decay:
            return rule.invert(hebb, y_prev, y, eta, la=LA), scale
        return hebb - _outer((eta / scale) * y_prev, y), scale / rule.decay(eta, y)

    if jit:
        return tuple(tf.function(f, jit_compile=True, reduce_retracing=True)
                     for f in (computed, clamped, invert))
    return computed, clamped, invert


def _sum(*terms):
    """`terms[0] + terms[1] + ...`, as one reduction. Inside the backward loop's branches,
    TensorFlow's graph optimizer turns a chain of adds of large tensors into a temporary
    variable that clashes with itself (AlreadyExistsError at batch 32, N >= 256)."""
    return tf.reduce_sum(tf.stack(terms), 0)


def _held_input_grads(rule, g_ys, gy_next, post, pre, eta, k):
    """Gradients of the `k` inputs of a held run, and of the output before it.

    `g_ys` the run's output gradients `(k, batch, N)`, `gy_next` the next
    step's gradient into the run's last output, `post = x^T G`, `pre = G x`
    with G the gradient of the trace after the run; the coefficients are
    `rule.held_coefficients` (the Hebbian rule's eq. H).
    """
    as_post, as_pre = rule.held_coefficients(eta, k, tf.range(-1, k))
    g_x = _sum(g_ys, as_post[1:, None, None] * post[None], as_pre[1:, None, None] * pre[None],
               tf.concat([tf.zeros_like(g_ys[:-1]), gy_next[None]], 0))
    return g_x, as_pre[0] * pre


# Segments whose alpha-gradient terms the native backward pass applies in one
# pass over galpha (see `hebbkeras/kernels/native/hebb_ops.cc`).
ALPHA_FLUSH = 16
# From this many episodes on, each segment's alpha-gradient term is applied in
# its own pass (a queue of one, `_alpha_queue`).
ALPHA_DIRECT_BATCH = 4


def _alpha_queue(y0):
    """Slots of the native backward pass's alpha-gradient queue: `ALPHA_FLUSH`, or 1
    from `ALPHA_DIRECT_BATCH` episodes on.

    The queue keeps galpha (N^2) out of most passes, at the cost of replaying the
    waiting segments' trace updates when it is applied (about 4 flops per element of
    every trace per slot). Per pass the traces move `4 B N^2` numbers and galpha
    `2 N^2`: at batch 1 the queue saves a third of a pass; at batch 32 galpha adds
    1.6% to a pass, while a pass that applied 16 slots took 2.5-3x the CPU time of
    one without (N = 1001, `python -m benchmarks.passes`, BENCHMARKS.md 2026-12-06).
    """
    batch = y0.shape[0]
    if batch is not None:
        return 1 if batch >= ALPHA_DIRECT_BATCH else ALPHA_FLUSH
    return tf.where(tf.shape(y0)[0] >= ALPHA_DIRECT_BATCH, 1, ALPHA_FLUSH)


def _clamped_inversion(rule, eta, a, y_prev, y, k, held):
    """`(u, v, 1 / decay, decay)` of a fully clamped segment of `k` steps, whose trace
    update is `decay * hebb + outer(u, v)`: a clamped step (`k = 1`), a held run
    (`held`) or a clamped step merged with its held run (`_merged_starts`)."""
    def run():
        ah = rule.held_decay(eta, k)
        return (1.0 - ah) * y, ah

    def first_and_run():  # (a clamped step alone is k = 1: a^0 = 1)
        ak = rule.held_decay(eta, k - 1)
        return (eta * ak) * y_prev + (1.0 - ak) * y, a * ak

    if isinstance(held, bool):  # known when traced
        u, decay = run() if held else first_and_run()
    else:
        (u_h, d_h), (u_f, d_f) = run(), first_and_run()
        u, decay = tf.where(held, u_h, u_f), tf.where(held, d_h, d_f)
    return u, y, 1.0 / decay, decay


def _clamped_kind(k, merged):
    """The branch of `_clamped_grads` for a fully clamped segment of `k` steps."""
    return tf.where(k == 1, 2, tf.where(merged, 1, 0))


def _clamped_grads(rule, eta, a, g_ys, t, end, y_prev, y, post, pre, gy_next, dot, post_x):
    """Gradients of a fully clamped segment `[t, end)` (see `_clamped_inversion`) from
    `post = y_prev^T G`, `pre = G y`, `post_x = y^T G` (G its trace's gradient after it),
    `dot = sum(G * hebb_prev)` and `gy_next` (into its last output): three functions
    returning `(g_x, gy_prev, d_eta)`, for a held run (all its steps output y = y_prev),
    a clamped step merged with a run of k - 1 steps (the first step's outer product
    with `G_t = a^(k-1) G`) and a clamped step (`_clamped_kind` picks one)."""
    k = end - t

    def run():
        g_x, gy_prev = _held_input_grads(rule, g_ys[t:end], gy_next, post, pre, eta, k)
        return g_x, gy_prev, rule.held_eta_grad(eta, k, post, y, dot)

    def first_and_run():
        ak = rule.held_decay(eta, k - 1)
        g_run, gy_run = _held_input_grads(rule, g_ys[t + 1:end], gy_next, post_x, pre, eta,
                                          k - 1)
        g_x = tf.concat([_sum(g_ys[t], gy_run, (eta * ak) * post)[None], g_run], 0)
        post_y = tf.reduce_sum(post * y)  # y_prev^T G y
        # The run's trace before it is a hebb_prev + eta outer(y_prev, y).
        d_eta = (rule.held_eta_grad(eta, k - 1, post_x, y, a * dot + eta * post_y)
                 + ak * (post_y - dot))
        return g_x, (eta * ak) * pre, d_eta

    def step():  # every neuron clamped: the output's gradient is the input's
        gy = _sum(g_ys[t], gy_next, eta * post)
        return gy[None], eta * pre, tf.reduce_sum(post * y) - dot

    return [run, first_and_run, step]


def _backward_native(d, c, y0, w, alpha, eta, rule, ys, h_last, record, g_ys, g_h):
    """`_backward` for a rule with a native implementation (the Hebbian rule:
    `hebbkeras.kernels.native`, which also writes its gradient): one pass over
    the trace and its gradient per segment (see `hebbkeras.kernels.native`),
    and none for a fully clamped segment after a segment that is not at a
    checkpoint: that pass absorbs it (`absorb`), and the next one starts from
    the trace and gradient after it (`lagged`, `lag_gscale`).

    Each pass also computes the next (earlier) segment's `post = u^T G` and
    `pre = G v` from the gradient it writes, so those need no pass of their
    own, and eq. (1)'s gradient to `y_{t-1}`; `alpha`'s gradient terms wait in
    a queue of up to `_alpha_queue(y0)` segments that the kernel keeps (each as its
    outer product and its trace update) and are applied together.
    """
    steps = tf.shape(ys)[0]
    dtype = ys.dtype
    y_ext = tf.concat([y0[None], ys], 0)  # y_ext[t] = y_{t-1}, y_ext[t + 1] = y_t
    ckpts, starts, ckpt_of, full, merged = (
        record[k] for k in ("ckpts", "starts", "ckpt_of", "full", "merged"))
    a = rule.decay(eta, None)  # the native rules' decay is a scalar
    kernel = hebbkeras_native.implementation(rule).hebbkeras_trace_backward
    zero_x = tf.zeros_like(y0)
    one = tf.ones([], dtype)
    no = tf.constant(False)
    is_merged = ((lambda t: tf.constant(False)) if merged is None else (lambda t: merged[t]))
    if c is not None:  # per segment, before the loop: can the segment after it absorb it,
        # and the inversion of its trace update (`_clamped_inversion`) where it is clamped
        n_seg = record["n_seg"]
        seg_t = starts.gather(tf.range(n_seg))
        seg_k = tf.concat([seg_t[1:], [steps]], 0) - seg_t
        seg_merged = tf.zeros_like(seg_k, tf.bool) if merged is None else tf.gather(merged, seg_t)
        clamped = tf.logical_and(tf.gather(full, seg_t), ckpt_of.gather(tf.range(n_seg)) < 0)
        absorbable = tf.concat([[False], clamped[:-1]], 0)  # indexed by the absorbing segment
        held = tf.logical_and(seg_k > 1, tf.logical_not(seg_merged))
        ab_u, _, ab_scale, ab_decay = _clamped_inversion(
            rule, eta, a, tf.gather(y_ext, seg_t), tf.gather(y_ext, seg_t + 1),
            seg_k[:, None, None], held[:, None, None])
        ab_scale, ab_decay = tf.reshape(ab_scale, [-1]), tf.reshape(ab_decay, [-1])

    def body(s, end, hebb, g_hebb, post, pre, gy_next, g_eta, g_alpha, pend_dec, pend, n,
             g_pre_ta, reverse, *clamped_state):
        # Only clamped inputs give g_x and absorbed segments (`lagged` after them): in
        # "add" mode the loop carries none of it (each loop variable costs TensorFlow
        # ops of its own in every iteration).
        if c is None:
            lagged, lag_u, lag_v, lag_scale, lag_gscale = no, zero_x, zero_x, one, one
        else:
            g_x_ta, lagged, lag_u, lag_v, lag_scale, lag_gscale = clamped_state
        t = starts.read(s)
        ckpt_id = ckpt_of.read(s)
        k = end - t
        # A segment's outer products are of (y_{t-1}, y_t); in a held run both are x.
        y_prev, y = y_ext[t], y_ext[t + 1]
        s1 = tf.maximum(s - 1, 0)  # the next (earlier) segment
        t1 = starts.read(s1)
        u_next, v_next = y_ext[t1], y_ext[t1 + 1]
        at_ckpt = ckpt_id >= 0
        ckpt = ckpts.read(tf.maximum(ckpt_id, 0))  # used where at_ckpt (no copy)
        if c is None:
            absorb, ab = no, (zero_x, zero_x, one, one, zero_x, zero_x)
        else:  # the next segment is fully clamped and rebuilt by inversion
            absorb = absorbable[s]
            t2 = starts.read(tf.maximum(s - 2, 0))
            ab = (ab_u[s1], v_next, ab_scale[s1], ab_decay[s1], y_ext[t2], y_ext[t2 + 1])

        def call(inv_u, inv_v, inv_scale, free, g_decay, gpre, self_post):
            return kernel(hebb, g_hebb, g_alpha, alpha, w, ckpt, tf.logical_not(at_ckpt),
                          inv_u, inv_v, inv_scale, free, g_decay, y_prev, gpre, u_next, v_next,
                          reverse, pend_dec, pend, n, False, self_post, lag_u, lag_v, lag_scale,
                          lagged, lag_gscale, absorb, *ab)

        def step():
            gy = g_ys[t] + gy_next + eta * post
            if c is None:
                free, g_x, g_pre = tf.constant(True), None, gy * (1.0 - tf.square(y))
            else:  # d y / d x = 1 on clamped neurons, d y / d pre = 0
                clamped = tf.not_equal(c[t], 0)
                free = tf.logical_not(full[t])
                g_x = tf.where(clamped, gy, zero_x)
                g_pre = tf.where(clamped, zero_x, gy * (1.0 - tf.square(y)))
            out = call(eta * y_prev, y, 1.0 / a, free, a, g_pre, False)
            # plastic: eq. (1)'s gradient to y_prev, (w + alpha * hebb_prev) g_pre (0 if not free)
            plastic, dot = out[3], out[6]
            d_eta = tf.reduce_sum(post * y) - dot
            if c is None:  # g_pre of the one step; no g_x
                return (eta * pre + plastic, d_eta, g_pre, None) + tuple(out)
            return (eta * pre + plastic, d_eta, g_pre[None], g_x[None]) + tuple(out)

        def clamped_segment(held):  # a held run, or a clamped step merged with its run
            def branch():
                inv_u, inv_v, inv_scale, decay = _clamped_inversion(rule, eta, a, y_prev, y, k,
                                                                    held)
                out = call(inv_u, inv_v, inv_scale, False, decay, zero_x, not held)
                grads = _clamped_grads(rule, eta, a, g_ys, t, end, y_prev, y, post, pre,
                                       gy_next, out[6], out[10])
                g_x, gy_prev, d_eta = grads[0 if held else 1]()
                return (gy_prev, d_eta, tf.zeros_like(g_x), g_x) + tuple(out)
            return branch

        if c is None:
            out = step()
        else:  # a step (clamped or not), a held run, a clamped step merged with its run
            out = tf.switch_case(tf.where(k > 1, tf.where(is_merged(t), 2, 1), 0),
                                 [step, clamped_segment(True), clamped_segment(False)])
        gy_prev, d_eta, g_pre, g_x = out[:4]
        (hebb, g_hebb, g_alpha, _, post_, pre_, _, pend_dec, pend, n, _, dot2, self2, post2,
         pre2) = out[4:]
        g_eta += d_eta
        if c is None:  # one step per segment
            return (s - 1, t, hebb, g_hebb, post_, pre_, gy_prev, g_eta, g_alpha, pend_dec,
                    pend, n, g_pre_ta.write(t, g_pre), tf.logical_not(reverse))
        idx = tf.range(t, end)
        g_pre_ta = g_pre_ta.scatter(idx, g_pre)
        g_x_ta = g_x_ta.scatter(idx, g_x)

        def absorbed(grads):
            def branch():
                return grads() + (post2, pre2)
            return branch

        def not_absorbed():
            return g_x[:0], gy_prev, tf.zeros([], dtype), post_, pre_

        grads = _clamped_grads(rule, eta, a, g_ys, t1, t, u_next, v_next, post_, pre_,
                               gy_prev, dot2, self2)
        which = tf.where(absorb, 1 + _clamped_kind(t - t1, is_merged(t1)), 0)
        g_x1, gy_prev, d_eta1, post_, pre_ = tf.switch_case(
            which, [not_absorbed] + [absorbed(f) for f in grads])
        idx = tf.range(tf.where(absorb, t1, t), t)
        g_pre_ta = g_pre_ta.scatter(idx, tf.zeros_like(g_x1))
        g_x_ta = g_x_ta.scatter(idx, g_x1)
        g_eta += d_eta1
        s_next = tf.where(absorb, s - 2, s - 1)
        end_next = tf.where(absorb, t1, t)
        lag_gscale = tf.where(absorb, ab[3], one)
        return (s_next, end_next, hebb, g_hebb, post_, pre_, gy_prev, g_eta, g_alpha, pend_dec,
                pend, n, g_pre_ta, tf.logical_not(reverse), g_x_ta, absorb, ab[0], ab[1], ab[2],
                lag_gscale)

    last = starts.read(record["n_seg"] - 1)  # the newest segment's products, from g_h
    post = _vecmat(y_ext[last], g_h)
    pre = _matvec(g_h, y_ext[last + 1])
    g_pre_ta = tf.TensorArray(dtype, size=steps, element_shape=y0.shape)
    g_x_ta = tf.TensorArray(dtype, size=steps, element_shape=y0.shape)
    slots = _alpha_queue(y0)
    pend = tf.zeros(tf.concat([[slots, 4], tf.shape(y0)], 0), dtype)
    init = (record["n_seg"] - 1, steps, h_last, g_h, post, pre, zero_x, tf.zeros([], dtype),
            tf.zeros_like(alpha), tf.zeros([slots], dtype), pend, tf.constant(0),
            g_pre_ta, no) + (() if c is None else (g_x_ta, no, zero_x, zero_x, one, one))
    out = tf.while_loop(lambda s, *_: s >= 0, body, init, parallel_iterations=1)
    h0, g_h0, g_y0, g_eta, g_alpha, pend_dec, pend, n = (out[i] for i in (2, 3, 6, 7, 8, 9, 10, 11))
    # The terms still waiting (the oldest trace is h0): the kernel's final call. The
    # first segment starts at a checkpoint, so h0 and g_h0 are not lagged.
    g_alpha = kernel(h0, g_h0, g_alpha, alpha, w, h0, False, zero_x, zero_x, one, False, one,
                     zero_x, zero_x, zero_x, zero_x, False, pend_dec, pend, n, True, False,
                     zero_x, zero_x, one, False, one, False, zero_x, zero_x, one, one, zero_x,
                     zero_x)[2]
    g_drive, g_clamp, g_w = _input_grads(d, c, y_ext, out[12], None if c is None else out[14],
                                         full)
    return g_drive, g_clamp, g_y0, g_h0, g_w, g_alpha, g_eta


def _input_grads(d, c, y_ext, g_pre_ta, g_x_ta, full=None):
    """`(g_drive, g_clamp, g_w)` from the per-step gradients of the pre-activations
    and the clamped inputs (time-major; None where an input is absent).

    `full` (clamp mode) marks the steps that clamp every neuron, whose `g_pre`
    is zero: `g_w` sums over the other steps only (150 of the paper's 201 left out).
    """
    g_pre = g_pre_ta.stack()
    y_prev = y_ext[:-1]
    if full is not None:
        free = tf.where(tf.logical_not(full))[:, 0]
        y_prev, g_pre_free = tf.gather(y_prev, free), tf.gather(g_pre, free)
    else:
        g_pre_free = g_pre
    g_w = tf.einsum("tbi,tbj->ij", y_prev, g_pre_free)
    return (g_pre if d is not None else None), (g_x_ta.stack() if c is not None else None), g_w


def _backward(d, c, y0, w, alpha, eta, rule, eta_grad, jit_backward, ys, h_last, record, g_ys, g_h):
    """Backpropagation through time, newest segment first; returns gradients of
    `(drive, clamp, y0, h0, w, alpha, eta)` (drive, clamp time-major; None if absent)."""
    steps = tf.shape(ys)[0]
    dtype = ys.dtype
    y_ext = tf.concat([y0[None], ys], 0)  # y_ext[t] = y_{t-1}, y_ext[t + 1] = y_t
    ckpts, starts, ckpt_of, full = (record[k] for k in ("ckpts", "starts", "ckpt_of", "full"))
    computed, clamped, invert = _step_backward_fns(rule, eta_grad, jit_backward)

    one = tf.ones([], dtype)

    def step_grad(t, ckpt_id, hebb, scale, g_hebb, gy_next, g_alpha):
        """Gradient of one computed or clamped step `t` (scaled state, see `_renorm`)."""
        y_prev, y = y_ext[t], y_ext[t + 1]
        gy = g_ys[t] + gy_next
        renorm = ckpt_id >= 0
        hebb_prev, scale_prev = tf.cond(
            renorm,
            lambda: (ckpts.read(ckpt_id), one),
            lambda: invert(hebb, scale, y_prev, y, eta),
        )
        args = (hebb_prev, scale_prev, scale, renorm, g_hebb, y_prev, y, gy, eta)
        if c is None:
            out = computed(*args, None, w, alpha, g_alpha)
        else:
            out = tf.cond(
                full[t],
                lambda: clamped(*args, g_alpha),
                lambda: computed(*args, c[t], w, alpha, g_alpha),
            )
        g_hebb, g_yp, g_eta, g_x, g_pre, g_a = out
        return hebb_prev, scale_prev, g_hebb, g_yp, g_eta, g_a, g_pre[None], g_x[None]

    def run_grad(t, ckpt_id, k, hebb, scale, g_hebb, gy_next, g_alpha):
        """Gradient of `k` steps holding the clamped pattern x (y_{t-1} = ... = y_{t+k-1} = x)
        (a rule with `held_runs`; scaled state, see `_renorm`)."""
        x = c[t]
        ak = rule.held_decay(eta, k)
        renorm = ckpt_id >= 0
        hebb_prev, scale_prev = tf.cond(
            renorm,
            lambda: (ckpts.read(ckpt_id), one),
            lambda: (hebb - _outer(((1.0 - ak) / scale) * x, x), scale / ak),
        )
        inv = 1.0 / scale
        post = _vecmat(x, g_hebb) * inv
        pre = _matvec(g_hebb, x) * inv
        g_eta = tf.zeros([], dtype)
        if eta_grad:
            g_eta = rule.held_eta_grad(
                eta, k, post, x, tf.reduce_sum(g_hebb * hebb_prev) * (scale_prev * inv))
        g_x, gy_prev = _held_input_grads(rule, g_ys[t : t + k], gy_next, post, pre, eta, k)
        g_hebb = _renorm(renorm, g_hebb, ak * inv)  # G_t = a^k G_{t+k}
        return (hebb_prev, scale_prev, g_hebb, gy_prev, g_eta, g_alpha,
                tf.zeros_like(g_x), g_x)

    def body(s, end, hebb, scale, g_hebb, gy_next, g_eta, g_alpha, g_pre_ta, g_x_ta):
        t = starts.read(s)
        ckpt_id = ckpt_of.read(s)
        k = end - t
        if c is None or not rule.held_runs:  # no held runs: every segment is one step
            out = step_grad(t, ckpt_id, hebb, scale, g_hebb, gy_next, g_alpha)
        else:
            out = tf.cond(
                k > 1,
                lambda: run_grad(t, ckpt_id, k, hebb, scale, g_hebb, gy_next, g_alpha),
                lambda: step_grad(t, ckpt_id, hebb, scale, g_hebb, gy_next, g_alpha),
            )
        hebb, scale, g_hebb, gy_next, d_eta, g_alpha, g_pre, g_x = out
        idx = tf.range(t, end)
        g_pre_ta = g_pre_ta.scatter(idx, g_pre)
        g_x_ta = g_x_ta.scatter(idx, g_x)
        return s - 1, t, hebb, scale, g_hebb, gy_next, g_eta + d_eta, g_alpha, g_pre_ta, g_x_ta

    shape = y0.shape
    g_pre_ta = tf.TensorArray(dtype, size=steps, element_shape=shape)
    g_x_ta = tf.TensorArray(dtype, size=steps, element_shape=shape)
    init = (record["n_seg"] - 1, steps, h_last, one, g_h, tf.zeros_like(y0),
            tf.zeros([], dtype), tf.zeros_like(alpha), g_pre_ta, g_x_ta)
    _, _, _, scale, g_h0, g_y0, g_eta, g_alpha, g_pre_ta, g_x_ta = tf.while_loop(
        lambda s, *_: s >= 0, body, init, parallel_iterations=1  # one step's temporaries at a time
    )
    g_h0 = _renorm(tf.not_equal(scale, 1.0), g_h0, 1.0 / scale)  # G_0 = V / scale
    g_drive, g_clamp, g_w = _input_grads(d, c, y_ext, g_pre_ta, g_x_ta, full)
    return g_drive, g_clamp, g_y0, g_h0, g_w, g_alpha, g_eta
