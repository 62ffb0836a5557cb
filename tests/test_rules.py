"""Every path that runs a plasticity rule, against numpy: forward and gradients, float64.

The table `conftest.RULE_PATHS` says which paths run which rule; each pair is
checked here against a numpy forward pass written from the equations
(`conftest.NUMPY_RULES`, independent of hebbkeras) and its central finite
differences, so a change to one rule's definition in `hebbkeras/rules/` fails
every path's test of that rule. (The JAX kernel's pairs run in the JAX worker
of tests/test_backends.py, against an independent scan.) The pairs the table
leaves out must be refused with an error naming the rule and the kernel.
The neuromodulated rules (`conftest.MODULATED`) run through `PlasticRNN(modulation=...)`
against their own numpy forward pass (`numpy_modulated`).
"""

import functools
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import (JAX_PATHS, MODULATED, NUMPY_RULES, PATHS, RULE_PATHS, ops_cell_loop,
                      rule_path_params)

from hebbkeras import rules
from hebbkeras.kernels import dense_fused, dispatch, fused, native, xla_fused
from hebbkeras.layers.plastic_dense import dense_sequence

B, N, T, ETA, INTERVAL = 2, 4, 14, 0.3, 4
RNN_NAMES = ("x", "y0", "h0", "w", "alpha", "eta")
DENSE_NAMES = ("x", "w", "alpha", "eta")


def arguments(mode, seed=0):
    """`(x, y0, h0, w, alpha, eta)` in float64. Clamp mode: steps 2-6 hold one
    pattern (a held run across the chunk start 4), step 8 clamps every neuron,
    the rest mix clamped and free neurons; add mode: small drives."""
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 0.0, 1.0], size=(B, T, N), p=[0.3, 0.4, 0.3])
    if mode == "clamp":
        x[:, 2:7] = rng.choice([-1.0, 1.0], size=(B, 1, N))
        x[:, 8] = rng.choice([-1.0, 1.0], size=(B, N))
        x[:, 10:12] = 0.0
    else:
        x = 0.5 * rng.normal(size=(B, T, N))
    return [x, 0.5 * rng.normal(size=(B, N)), 0.5 * rng.normal(size=(B, N, N)),
            rng.normal(0, 0.6, (N, N)), rng.normal(0, 0.6, (N, N)), np.float64(ETA)]


def numpy_rnn(rule, mode, x, y0, h0, w, alpha, eta):
    """Eqs. (1)-(2) with the rule's numpy form: `(ys, hebb_T)`."""
    y, hebb, ys = y0, h0, []
    for t in range(x.shape[1]):
        pre = y @ w + np.einsum("bi,bij->bj", y, alpha * hebb)
        y_new = np.where(x[:, t] != 0, x[:, t], np.tanh(pre)) if mode == "clamp" else (
            np.tanh(pre + x[:, t]))
        hebb = NUMPY_RULES[rule](hebb, y, y_new, eta)
        y = y_new
        ys.append(y)
    return np.stack(ys, 1), hebb


def numpy_dense(rule, x, w, alpha, eta):
    """The linear plastic readout from a zero trace: `(ys, hebb_T)`."""
    hebb, ys = np.zeros((x.shape[0],) + w.shape), []
    for t in range(x.shape[1]):
        y = x[:, t] @ w + np.einsum("bi,bij->bj", x[:, t], alpha * hebb)
        hebb = NUMPY_RULES[rule](hebb, x[:, t], y, eta)
        ys.append(y)
    return np.stack(ys, 1), hebb


def projections(like, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=a.shape) for a in like]


def finite_differences(loss, args, eps=1e-6):
    """The central finite differences of `loss(values)` w.r.t. every array of `args`."""
    grads = []
    for i, a in enumerate(args):
        g = np.zeros(np.shape(a))
        for index in np.ndindex(np.shape(a)):
            values = [np.array(v, copy=True) for v in args]
            values[i][index] += eps
            up = loss(values)
            values[i][index] -= 2 * eps
            g[index] = (up - loss(values)) / (2 * eps)
        grads.append(g)
    return grads


@functools.lru_cache(maxsize=None)
def reference(rule, kind, mode):
    """numpy outputs and the loss's central finite differences w.r.t. every argument."""
    if kind == "rnn":
        args = arguments(mode)
        forward = functools.partial(numpy_rnn, rule, mode)
    else:
        args = [arguments("add")[0], *arguments("add", seed=2)[3:]]
        forward = functools.partial(numpy_dense, rule)
    out = forward(*args)
    proj = projections(out)

    def loss(values):
        return sum(np.sum(o * p) for o, p in zip(forward(*values), proj))

    return args, out, proj, finite_differences(loss, args)


def run_path(path, rule, mode):
    kind = "dense" if path.startswith("dense") else "rnn"
    args, _, proj, _ = reference(rule, kind, mode)
    options = dict(input_mode=mode, rule=rule)
    fn = {
        "cell": lambda *a: ops_cell_loop(*a, mode, rule),
        "fused": lambda *a: fused.plastic_sequence(*a, native=False, **options),
        "fused_native": lambda *a: fused.plastic_sequence(*a, native=True, **options),
        "xla_fused": lambda *a: xla_fused.plastic_sequence(*a, interval=INTERVAL, **options),
        "dense_ops": lambda x, w, a, e: dense_sequence(x, None, w, a, e, rule=rule),
        "dense_fused": lambda x, w, a, e: dense_fused.plastic_dense_sequence(
            x, None, w, a, e, rule=rule),
    }[path]

    def loss_and_grads(values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            out = fn(*values)
            loss = sum(tf.reduce_sum(o * p) for o, p in zip(out, proj))
        return out, tape.gradient(loss, values)

    if path == "xla_fused":
        loss_and_grads = tf.function(loss_and_grads, jit_compile=True)
    return loss_and_grads([tf.constant(a, tf.float64) for a in args])


@pytest.mark.parametrize("mode", ["clamp", "add"])
@pytest.mark.parametrize("rule,path", rule_path_params([p for p in PATHS if p not in JAX_PATHS],
                                                       modulated=False))
def test_path_matches_numpy(rule, path, mode):
    if path.startswith("dense") and mode == "add":
        pytest.skip("PlasticDense has no input modes: run once")
    kind = "dense" if path.startswith("dense") else "rnn"
    args, want_out, _, want_grads = reference(rule, kind, mode)
    out, grads = run_path(path, rule, mode)
    for got, want, name in zip(out, want_out, ("ys", "hebb")):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11, err_msg=name)
    names = RNN_NAMES if kind == "rnn" else DENSE_NAMES
    for got, want, name, a in zip(grads, want_grads, names, args):
        got = np.asarray(got)
        if name == "x" and mode == "clamp":  # y is not differentiable in x where x = 0
            got, want = got[a != 0], want[a != 0]
        assert np.abs(want).max() > 0, name
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.abs(want).max(),
                                   err_msg=f"d/d{name} ({path}, {rule})")


KERNELS = {"fused_native": "fused (native)", "fused": "fused", "xla_fused": "xla_fused",
           "jax_fused": "jax_fused", "dense_fused": "dense_fused", "jax_remat": "jax_remat",
           "tf_remat": "tf_remat", "modulated_fused": "modulated_fused",
           "jax_modfused": "jax_modfused", "xla_modfused": "xla_modfused",
           "modulated_fused_native": "modulated_fused"}


@pytest.mark.parametrize("rule,path", rule_path_params(refused=True))
def test_refused_pairs_name_the_rule_and_the_kernel(rule, path):
    if path == "dense_ops":  # no kernel: PlasticDense itself refuses
        from hebbkeras import PlasticDense

        with pytest.raises(ValueError, match=re.escape(f"PlasticDense cannot take rule='{rule}'")):
            PlasticDense(3, rule=rule)
        return
    with pytest.raises(ValueError, match=re.escape(f"kernel {KERNELS[path]} cannot run "
                                                   f"plasticity rule '{rule}'")):
        dispatch.check_rule(rule, KERNELS[path])
    if path == "fused_native":  # and the kernel itself, when asked
        args = [tf.constant(a) for a in arguments("clamp")]
        with pytest.raises(ValueError, match=rf"cannot run plasticity rule '{rule}'"):
            fused.plastic_sequence(*args, rule=rule, native=True)


class Decaying(rules.Rule):
    """A rule that is not of the decay form (a stand-in for issue 27's)."""

    name = "test_decaying"

    def update(self, hebb, u, y, eta, la=rules.LINALG):
        return 0.5 * hebb


@pytest.mark.parametrize("kernel", sorted(set(dispatch.NEEDS)))
def test_kernels_refuse_unknown_and_unfit_rules(kernel):
    with pytest.raises(ValueError, match=re.escape(f"Unknown rule='bcm' (kernel {kernel})")):
        dispatch.check_rule("bcm", kernel)
    if "modulated" in dispatch.NEEDS[kernel]:  # runs the neuromodulated rules only
        with pytest.raises(ValueError, match=re.escape(
                f"kernel {kernel} cannot run plasticity rule 'test_decaying': it is not "
                "neuromodulated")):
            dispatch.check_rule(Decaying(), kernel)
        return
    with pytest.raises(ValueError, match=re.escape(
            f"kernel {kernel} cannot run plasticity rule 'test_decaying': it is not of the "
            "decay form")):
        dispatch.check_rule(Decaying(), kernel)


def test_a_rule_no_kernel_runs_takes_the_cell_loop_and_says_why():
    choice = dispatch.choose(True, True, Decaying())
    assert choice.kernel == "cell" and "test_decaying" in choice.reason
    assert dispatch.choose(True, True, "hebb").kernel == "fused"


def test_table_covers_every_registered_rule():
    assert set(RULE_PATHS) == set(rules.names()) == set(NUMPY_RULES)


def test_plastic_rnn_dispatches_in_inner_loop_and_says_why(caplog):
    """As keras.layers.LSTM: no `call` override; the path and its reason are
    recorded (`last_path`) and logged at debug level."""
    import logging

    import hebbkeras

    assert "call" not in hebbkeras.PlasticRNN.__dict__
    x = arguments("clamp")[0].astype("float32")
    with caplog.at_level(logging.DEBUG, logger="hebbkeras"):
        for use_fused, kernel, reason in [(True, "fused", "fused runs rule 'oja'"),
                                          (False, "cell", "use_fused=False")]:
            layer = hebbkeras.PlasticRNN(N, rule="oja", use_fused=use_fused)
            layer(x)
            assert layer.last_path == (kernel, reason)
            assert f"PlasticRNN path: {kernel} ({reason})" in caplog.text


# --- Neuromodulated rules (Backpropamine) ---------------------------------------
CLIP = 0.7
MOD_NAMES = ("x", "y0", "hebb0", "E0", "w", "alpha", "eta", "modulator_kernel",
             "modulator_bias", "modulator_fanout")


def modulated_arguments(mode, seed=4, fanout=False):
    """`(x, y0, hebb0, E0, w, alpha, eta, modulator_kernel, modulator_bias[,
    modulator_fanout])`, float64."""
    x, y0, _, w, alpha, eta = arguments(mode, seed)
    rng = np.random.default_rng(seed + 1)
    return [x, y0, 0.3 * rng.normal(size=(B, N, N)), 0.3 * rng.normal(size=(B, N, N)), w,
            alpha, eta, rng.normal(0, 0.8, (N, 1)), rng.normal(0, 0.3, (1,))] + (
        [rng.normal(0, 2.0, (N,))] if fanout else [])


def numpy_modulated(rule, mode, x, y0, h0, e0, w, alpha, eta, mk, mb, fanout=None):
    """y_t as eq. (1), M_t = tanh(y_t @ mk + mb) (times `fanout`, per receiving
    neuron), then the rule's numpy form: `(ys, y_T, hebb_T[, E_T])`, the outputs
    of PlasticRNN(return_state=True)."""
    y, hebb, e, ys, clipped = y0, h0, e0, [], 0
    for t in range(x.shape[1]):
        pre = y @ w + np.einsum("bi,bij->bj", y, alpha * hebb)
        y_new = np.where(x[:, t] != 0, x[:, t], np.tanh(pre)) if mode == "clamp" else (
            np.tanh(pre + x[:, t]))
        m = np.tanh(y_new @ mk + mb)  # (B, 1)
        m = m if fanout is None else m * fanout[None, :]
        hebb, e = NUMPY_RULES[rule](hebb, e, y, y_new, eta, m, CLIP)
        clipped += np.sum(np.abs(hebb) == CLIP)
        y = y_new
        ys.append(y)
    assert clipped > 0  # the clip acts in these cases
    return [np.stack(ys, 1), y, hebb] + ([e] if rule == "retroactive" else [])


@functools.lru_cache(maxsize=None)
def modulated_reference(rule, mode, fanout=False):
    """numpy outputs and the loss's central finite differences w.r.t. every argument."""
    args = modulated_arguments(mode, fanout=fanout)
    if rule != "retroactive":
        args[3] = np.zeros_like(args[3])  # no E
    out = numpy_modulated(rule, mode, *args)
    proj = projections(out)

    def loss(values):
        return sum(np.sum(o * p) for o, p in zip(numpy_modulated(rule, mode, *values), proj))

    return args, out, proj, finite_differences(loss, args)


def modulated_layer(rule, mode, args, use_fused):
    import hebbkeras

    x, eta = args[0], args[6]
    layer = hebbkeras.PlasticRNN(
        N, input_mode=mode, input_scale=1.0, eta=float(eta), trainable_eta=True,
        modulation=rule, trace_clip=CLIP, modulation_fanout=len(args) > 9,
        return_sequences=True, return_state=True, use_fused=use_fused, dtype="float64")
    layer.build(x.shape)
    for name, value in zip(MOD_NAMES[4:], args[4:]):
        getattr(layer, "eta" if name == "eta" else name).assign(value)
    return layer


def modulated_cases():
    """`(rule, path, mode, fanout, jit)` of every modulated pair in the table (less
    JAX's), input mode, fan-out, eagerly and inside XLA. `tf_remat`, which no path
    picks by itself since `xla_modfused` (benchmarks.modulated runs it), is checked
    in one configuration by default, in the others with `-m slow`."""
    out = []
    for jit in (False, True):
        for pair in rule_path_params([p for p in PATHS if p not in JAX_PATHS], modulated=True):
            rule, path = pair.values
            for mode, fanout, name in [("clamp", False, "clamp"), ("add", False, "add"),
                                       ("add", True, "add-fanout")]:
                marks = list(pair.marks)
                if path == "tf_remat" and (rule, name) != ("retroactive", "add-fanout"):
                    marks.append(pytest.mark.slow)
                out.append(pytest.param(rule, path, mode, fanout, jit, marks=marks,
                                        id=f"{'xla' if jit else 'eager'}-{pair.id}-{name}"))
    return out


@pytest.mark.parametrize("rule,path,mode,fanout,jit", modulated_cases())
def test_modulated_path_matches_numpy(rule, path, mode, fanout, jit, monkeypatch):
    """PlasticRNN(modulation=rule) on `path` against numpy: the outputs and final
    states (with `E`), and the gradients of the inputs, the initial states and
    every weight (`eta`'s zero for "simple", which does not use it); eagerly and
    inside XLA (`jit_compile=True`) where the path runs there; with
    `modulation_fanout` too. `modulated_fused` runs outside XLA (with plain
    TensorFlow ops where the native ops are off), `xla_modfused` inside it, and
    `tf_remat` there where `dispatch.FALLBACK` names it."""
    if jit and path == "cell":
        pytest.skip("use_fused=False is the cell loop eagerly and inside XLA alike")
    if jit and path.startswith("modulated_fused"):
        pytest.skip("inside XLA the modulated rules run xla_modfused")
    if not jit and path in ("tf_remat", "xla_modfused"):
        pytest.skip("outside XLA the modulated rules run modulated_fused")
    if path == "tf_remat":
        monkeypatch.setitem(dispatch.FALLBACK, "xla_fused", "tf_remat")
    args, want_out, proj, want_grads = modulated_reference(rule, mode, fanout)
    layer = modulated_layer(rule, mode, args, use_fused=path != "cell")
    retro = rule == "retroactive"
    values = [tf.constant(a, tf.float64) for a in args[:4]]
    weights = [layer.w, layer.alpha, layer.eta, *layer.cell.modulator]

    def outputs_and_grads(values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            state = values[1:4] if retro else values[1:3]
            out = layer(values[0], initial_state=state)
            loss = sum(tf.reduce_sum(o * p) for o, p in zip(out, proj))
        return out, tape.gradient(loss, values + weights)

    if jit:
        outputs_and_grads = tf.function(outputs_and_grads, jit_compile=True)
    if path == "modulated_fused":  # the plain TensorFlow ops
        with native.disabled():
            out, grads = outputs_and_grads(values)
    else:
        out, grads = outputs_and_grads(values)
    assert layer.last_path.kernel == path.removesuffix("_native"), layer.last_path
    if path.startswith("modulated_fused"):
        how = "native CPU ops" if path.endswith("_native") else "plain TensorFlow ops"
        assert layer.last_path.reason.endswith(how), layer.last_path
    assert len(out) == len(want_out) == len(layer.state_names) + 1
    for got, want, name in zip(out, want_out, ("ys",) + layer.state_names):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11, err_msg=name)
    for got, want, name, a in zip(grads, want_grads, MOD_NAMES, args):
        if name == "E0" and not retro:
            continue
        got = np.zeros_like(want) if got is None else np.asarray(got)
        if name == "x" and mode == "clamp":
            got, want = got[a != 0], want[a != 0]
        if name == "eta" and rule == "simple":
            assert np.all(got == 0) and np.all(want == 0)
            continue
        assert np.abs(want).max() > 0, name
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.abs(want).max(),
                                   err_msg=f"d/d{name} ({path}, {rule})")


@pytest.mark.parametrize("rule", MODULATED)
def test_modulated_traces_start_at_zero(rule):
    """Without an initial state, `hebb` and `E` start at zero (so "retroactive"
    leaves the trace at zero for its first step)."""
    args, _, _, _ = modulated_reference(rule, "add")
    layer = modulated_layer(rule, "add", args, use_fused=False)
    zeros = [np.zeros_like(args[1]), np.zeros_like(args[2]), np.zeros_like(args[3])]
    want = numpy_modulated(rule, "add", args[0], *zeros, *args[4:])
    for got, w, name in zip(layer(args[0]), want, ("ys",) + layer.state_names):
        np.testing.assert_allclose(got, w, rtol=1e-9, atol=1e-11, err_msg=name)
