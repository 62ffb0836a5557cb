"""PlasticRNN(modulation=...) (Backpropamine): the API around the neuromodulated rules.

The rules' equations are checked against numpy, forward and gradients, in
tests/test_rules.py (`test_modulated_path_matches_numpy`); the JAX and torch
backends in tests/test_backends.py. Here: the weights and states, configs and
`.keras` files, masks, mixed precision, the path decision and bad settings.
"""

import re

import keras
import numpy as np
import pytest
from test_rules import CLIP, modulated_arguments, modulated_layer, numpy_modulated

import hebbkeras
from hebbkeras import PlasticDense, PlasticRNN, PlasticRNNCell


@pytest.mark.parametrize("modulation,states", [("simple", ("y", "hebb")),
                                               ("retroactive", ("y", "hebb", "E"))])
def test_weights_states_and_return_state(modulation, states):
    layer = PlasticRNN(5, input_mode="dense", modulation=modulation, return_state=True)
    inputs = keras.Input((7, 3))
    outputs = layer(inputs)  # symbolic: compute_output_shape describes E too
    assert [tuple(o.shape) for o in outputs] == [(None, 5), (None, 5)] + [(None, 5, 5)] * (
        len(states) - 1)
    assert layer.state_names == states
    assert tuple(layer.modulator_kernel.shape) == (5, 1)
    assert tuple(layer.modulator_bias.shape) == (1,)
    names = {w.name for w in layer.weights}
    assert names == {"w", "alpha", "eta", "kernel", "bias", "modulator_kernel", "modulator_bias"}
    spread = PlasticRNN(5, modulation=modulation, modulation_fanout=True)
    spread.build((2, 7, 5))
    assert tuple(spread.modulator_fanout.shape) == (5,)
    plain = PlasticRNN(5)
    plain.build((2, 7, 5))
    assert plain.modulator_kernel is None and len(plain.weights) == 3  # w, alpha, eta
    want = ", ".join(["y (batch, units) = (2, 5)"] + [
        f"{s} (batch, units, units) = (2, 5, 5)" for s in states[1:]])
    with pytest.raises(ValueError, match=re.escape(f"initial_state must be [{want}]")):
        layer(np.ones((2, 7, 3), "float32"), initial_state=[np.zeros((2, 5), "float32")])


@pytest.mark.parametrize("modulation", ["simple", "retroactive"])
def test_config_and_keras_file_round_trip(modulation, tmp_path):
    """get_config/from_config keeps the settings; a saved model loads and predicts
    the same (across backends: tests/test_backends.py)."""
    rng = np.random.default_rng(0)
    layer = PlasticRNN(4, modulation=modulation, trace_clip=0.5, return_state=True,
                       modulation_fanout=modulation == "simple")
    config = layer.get_config()
    assert config["modulation"] == modulation and config["trace_clip"] == 0.5
    again = PlasticRNN.from_config(config)
    assert (again.modulation, again.trace_clip, again.cell.modulation_fanout) == (
        modulation, 0.5, modulation == "simple")
    cell = PlasticRNNCell(4, modulation=modulation, trace_clip=0.5)
    assert PlasticRNNCell.from_config(cell.get_config()).modulation == modulation

    inputs = keras.Input((None, 4))
    model = keras.Model(inputs, layer(inputs))
    model.set_weights([rng.normal(size=w.shape).astype("float32") if w.ndim else w
                       for w in model.get_weights()])
    x = np.sign(rng.normal(size=(2, 9, 4))).astype("float32") * (rng.random((2, 9, 4)) < 0.5)
    path = tmp_path / "modulated.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[1].modulation == modulation
    for got, want in zip(loaded(x), model(x)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_cell_runs_in_plain_keras_rnn():
    """PlasticRNNCell(modulation=...) inside keras.layers.RNN: the same as PlasticRNN."""
    args = modulated_arguments("add")
    layer = modulated_layer("retroactive", "add", args, use_fused=False)
    rnn = keras.layers.RNN(layer.cell, return_sequences=True, dtype="float64")
    want = numpy_modulated("retroactive", "add", args[0], np.zeros_like(args[1]),
                           np.zeros_like(args[2]), np.zeros_like(args[3]), *args[4:])[0]
    np.testing.assert_allclose(rnn(args[0]), want, rtol=1e-9, atol=1e-11)


def test_mask_keeps_the_states_over_masked_steps():
    """Masked trailing steps leave y, hebb and E as after the last unmasked step."""
    args = modulated_arguments("add")
    layer = modulated_layer("retroactive", "add", args, use_fused=True)
    x = args[0]
    mask = np.ones(x.shape[:2], bool)
    mask[1, 9:] = False
    masked = layer(x, mask=mask)
    assert layer.last_path == ("cell", "a mask is given")
    short = layer(x[1:, :9])
    for got, want in zip(masked[1:], short[1:]):  # final y, hebb, E of sequence 1
        np.testing.assert_allclose(got[1:], want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(masked[2][0], layer(x[:1])[2][0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_mixed_precision(jit):
    """Under mixed_float16 the outputs are float16, the weights float32, and the
    values those of float32 to half precision; inside XLA too (`xla_modfused`)."""
    import tensorflow as tf

    x = np.random.default_rng(1).normal(size=(2, 6, 4)).astype("float32")
    full = PlasticRNN(4, input_mode="add", input_scale=1.0, modulation="retroactive",
                      return_state=True)
    want = full(x)
    half = PlasticRNN(4, input_mode="add", input_scale=1.0, modulation="retroactive",
                      return_state=True, dtype="mixed_float16")
    half.build(x.shape)
    half.set_weights(full.get_weights())
    got = tf.function(half, jit_compile=True)(x) if jit else half(x)
    assert half.last_path.kernel == ("xla_modfused" if jit else "modulated_fused")
    assert half.modulator_kernel.dtype == "float32"
    for g, w in zip(got, want):
        assert g.dtype == "float16"
        np.testing.assert_allclose(np.asarray(g, "float32"), w, atol=1e-2)


def test_the_path_decision_says_which_path_and_why():
    """The fused kernel outside XLA (native ops, or plain ops where they are off),
    with a static or an unknown number of steps; inside XLA its static twin
    where the number of steps is static, otherwise the cell loop, saying why."""
    import tensorflow as tf

    from hebbkeras.kernels import native

    layer = PlasticRNN(4, modulation="simple")
    x = np.ones((1, 3, 4), "float32")
    layer(x)
    assert layer.last_path.kernel == "modulated_fused"
    assert layer.last_path.reason.startswith("modulated_fused runs rule 'simple' with ")
    with native.disabled():
        layer(x)
    assert layer.last_path == ("modulated_fused",
                               "modulated_fused runs rule 'simple' with plain TensorFlow ops")
    tf.function(layer, input_signature=[tf.TensorSpec((1, None, 4))])(x)
    assert layer.last_path.kernel == "modulated_fused"
    tf.function(layer, jit_compile=True)(x)
    assert layer.last_path == ("xla_modfused", "xla_modfused runs rule 'simple'")
    tf.function(layer, input_signature=[tf.TensorSpec((1, None, 4))], jit_compile=True)(x)
    assert layer.last_path == (
        "cell", "inside XLA the fused kernel needs a static number of time steps")


@pytest.mark.parametrize("make,message", [
    (lambda: PlasticRNN(4, modulation="dopamine"), "modulation='dopamine'"),
    (lambda: PlasticRNN(4, modulation="simple", plasticity="none"), "needs plasticity="),
    (lambda: PlasticRNN(4, modulation="retroactive", rule="oja"), "rule='hebb'"),
    (lambda: PlasticRNN(4, modulation="simple", trace_clip=0), "trace_clip=0 must be positive"),
    (lambda: PlasticRNN(4, modulation_fanout=True), "it needs modulation='simple' or"),
    (lambda: PlasticRNN(4, rule="simple"), "PlasticRNNCell cannot take rule='simple'"),
    (lambda: PlasticRNNCell(4, rule="retroactive"), "modulation='retroactive'"),
    (lambda: PlasticDense(4, rule="simple"), "PlasticDense cannot take rule='simple'"),
])
def test_bad_settings_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_clip_default_and_public_names():
    assert PlasticRNN(3, modulation="simple").trace_clip == 1.0
    assert hebbkeras.rules.names(plain=False) == ("simple", "retroactive")
    assert CLIP < 1.0  # the numpy cases clip below the default


@pytest.mark.parametrize("rule,plasticity,fanout", [
    ("simple", "per_connection", False), ("retroactive", "per_connection", True),
    ("simple", "shared", True), ("retroactive", "shared", False)])
@pytest.mark.parametrize("native_ops", [pytest.param(True, marks=pytest.mark.native_cpu), False],
                         ids=["native", "plain"])
def test_modulated_fused_equals_the_cell_loop_at_a_larger_size(rule, plasticity, fanout,
                                                              native_ops):
    """`modulated_fused` against autodiff through the cell loop, float64, at 40 units
    (the native ops' rows split over threads), a shared alpha, chunks of 4, 4 and 3
    steps, the clip active, under `tf.function` with unknown batch and time."""
    import tensorflow as tf

    from hebbkeras.kernels import native

    rng = np.random.default_rng(7)
    n, b, steps = 40, 3, 11
    x = rng.choice([-1.0, 0.0, 1.0], size=(b, steps, n), p=[0.2, 0.6, 0.2])
    state = [0.5 * rng.normal(size=(b, n))] + [0.05 * rng.normal(size=(b, n, n))] * (
        2 if rule == "retroactive" else 1)
    layers = [PlasticRNN(n, input_mode="clamp", eta=0.3, trainable_eta=True,
                         plasticity=plasticity, modulation=rule, trace_clip=0.05,
                         modulation_fanout=fanout, return_sequences=True, return_state=True,
                         use_fused=use_fused, dtype="float64") for use_fused in (True, False)]
    for layer in layers:
        layer.build(x.shape)
    for weight in layers[0].weights:
        weight.assign(rng.normal(0, 0.5, weight.shape))
    layers[0].eta.assign(0.3)
    layers[1].set_weights(layers[0].get_weights())
    proj = [rng.normal(size=(b, steps, n)), rng.normal(size=(b, n))] + [
        rng.normal(size=(b, n, n)) for _ in state[1:]]

    def run(layer, x, *state):
        with tf.GradientTape() as tape:
            tape.watch([x, *state])
            out = layer(x, initial_state=list(state))
            loss = sum(tf.reduce_sum(o * p) for o, p in zip(out, proj))
        return out, tape.gradient(loss, [x, *state, *layer.trainable_weights])

    spec = [tf.TensorSpec((None, None, n), tf.float64)] + [
        tf.TensorSpec((None,) + s.shape[1:], tf.float64) for s in state]
    fused_run = tf.function(lambda *a: run(layers[0], *a), input_signature=spec)
    args = [tf.constant(a) for a in [x, *state]]
    if native_ops:
        got = fused_run(*args)
    else:
        with native.disabled():
            got = fused_run(*args)
    assert layers[0].last_path.kernel == "modulated_fused", layers[0].last_path
    assert layers[0].last_path.reason.endswith("native CPU ops" if native_ops else "TensorFlow ops")
    want = run(layers[1], *args)
    assert np.sum(np.abs(want[0][2]) == 0.05) > 0  # the clip acts
    for g, w in zip([*got[0], *got[1]], [*want[0], *want[1]]):
        if w is None:  # "simple" does not use eta
            assert rule == "simple" and np.all(np.asarray(g) == 0)
            continue
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11 * max(1.0, np.abs(w).max()))


def reference_with_the_mask(x, y0, traces, w, alpha, eta, mk, mb, rule, clip):
    """Backpropamine's equations in TensorFlow ops, written apart from hebbkeras, in
    clamp mode: `(ys, y_T, hebb_T[, E_T])` and the number of entries with |S_t| = clip
    exactly. The clip is a select whose derivative is 1 on [-clip, clip], bounds
    included (docs/neuromodulation.md: the mask -c <= S <= c)."""
    import tensorflow as tf

    y, h, ys, ties = y0, traces[0], [], 0
    e = traces[1] if rule == "retroactive" else tf.zeros_like(h)
    for t in range(x.shape[1]):
        pre = y @ w + tf.einsum("bi,bij->bj", y, alpha * h)
        y_new = tf.where(x[:, t] != 0, x[:, t], tf.tanh(pre))
        m = tf.tanh(y_new @ mk + mb)[:, :, None]
        outer = y[:, :, None] * y_new[:, None, :]
        s = h + m * (outer if rule == "simple" else e)
        ties += int(tf.reduce_sum(tf.cast(tf.abs(s) == clip, tf.int32)))
        h = tf.where(tf.abs(s) <= clip, s, tf.sign(s) * clip)
        e = (1 - eta) * e + eta * outer
        y = y_new
        ys.append(y)
    return [tf.stack(ys, 1), y, h] + ([e] if rule == "retroactive" else []), ties


@pytest.mark.parametrize("plasticity", [
    "per_connection", pytest.param("shared", marks=pytest.mark.slow)])
def test_xla_modfused_where_the_trace_lands_on_the_clip(plasticity):
    """Held +-1 clamps whose presynaptic neuron flips sign make `S_t` land exactly
    on the clip's bound (an increment, then its negative), where the clip has no
    derivative: `xla_modfused` (inside XLA, 23 steps in chunks of 5, the last
    one padded) takes the mask `-c <= S <= c` (1 at the bounds) as the cell loop
    and a reference with the mask written out do, outputs and every gradient,
    float64. ("simple": in "retroactive" mode `M_t E_t` does not cancel exactly.)"""
    import tensorflow as tf

    rule = "simple"
    rng = np.random.default_rng(3)
    b, steps, n, clip = 2, 23, 4, 0.5
    x = np.where(rng.random((b, steps, n)) < 0.5, rng.choice([-1.0, 1.0], (b, steps, n)), 0.0)
    for s in range(2, steps, 3):  # fully clamped steps, each held for a second step
        x[:, s] = rng.choice([-1.0, 1.0], (b, n))
        x[:, s + 1:s + 2] = x[:, s:s + 1]
    x[:, 2::6, 0] *= -1  # a presynaptic neuron that flips sign in a held pattern
    state = [0.3 * rng.normal(size=(b, n))] + [5 * 0.1 * rng.normal(size=(b, n, n))] * (
        2 if rule == "retroactive" else 1)
    weights = [rng.normal(size=(n, n)) / 2,
               rng.normal(size=() if plasticity == "shared" else (n, n)) / 2, np.float64(0.3),
               rng.normal(size=(n, 1)), rng.normal(0, 0.3, (1,))]
    proj = [rng.normal(size=(b, steps, n)), rng.normal(size=(b, n))] + [
        rng.normal(size=(b, n, n)) for _ in state[1:]]
    values = [tf.constant(a) for a in [x, *state, *weights]]
    k = len(state) + 1

    def layer_run(use_fused):
        layer = PlasticRNN(n, input_mode="clamp", eta=0.3, trainable_eta=True, modulation=rule,
                           plasticity=plasticity,
                           trace_clip=clip, return_sequences=True, return_state=True,
                           use_fused=use_fused, dtype="float64")
        layer.build(x.shape)
        for var, value in zip([layer.w, layer.alpha, layer.eta, *layer.cell.modulator],
                              weights):
            var.assign(value)

        def run(*a):
            with tf.GradientTape() as tape:
                tape.watch(a)
                out = layer(a[0], initial_state=list(a[1:k]))
                loss = sum(tf.reduce_sum(o * p) for o, p in zip(out, proj))
            return out, tape.gradient(loss, list(a[:k]) + [
                layer.w, layer.alpha, layer.eta, *layer.cell.modulator])

        out = (tf.function(run, jit_compile=True) if use_fused else run)(*values[:k])
        assert layer.last_path.kernel == ("xla_modfused" if use_fused else "cell")
        return out

    with tf.GradientTape() as tape:
        tape.watch(values)
        want, ties = reference_with_the_mask(values[0], values[1], values[2:k], *values[k:],
                                             rule, clip)
        loss = sum(tf.reduce_sum(o * p) for o, p in zip(want, proj))
    want_grads = tape.gradient(loss, values, unconnected_gradients="zero")
    assert ties > 0  # the case is there for the clip's derivative at |S| = c
    for got_out, got_grads in (layer_run(True), layer_run(False)):
        for g, w in zip([*got_out, *got_grads], [*want, *want_grads]):
            w = np.asarray(w)
            g = np.zeros_like(w) if g is None else np.asarray(g)
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11 * max(1.0, np.abs(w).max()))
