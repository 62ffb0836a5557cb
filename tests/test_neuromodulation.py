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


def test_mixed_precision():
    """Under mixed_float16 the outputs are float16, the weights float32, and the
    values those of float32 to half precision."""
    x = np.random.default_rng(1).normal(size=(2, 6, 4)).astype("float32")
    full = PlasticRNN(4, input_mode="add", input_scale=1.0, modulation="retroactive",
                      return_state=True)
    want = full(x)
    half = PlasticRNN(4, input_mode="add", input_scale=1.0, modulation="retroactive",
                      return_state=True, dtype="mixed_float16")
    half.build(x.shape)
    half.set_weights(full.get_weights())
    got = half(x)
    assert half.modulator_kernel.dtype == "float32"
    for g, w in zip(got, want):
        assert g.dtype == "float16"
        np.testing.assert_allclose(np.asarray(g, "float32"), w, atol=1e-2)


def test_the_path_decision_says_which_path_and_why():
    """The fused kernel outside XLA (native ops, or plain ops where they are off),
    with a static or an unknown number of steps; inside XLA the checkpointed scan
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
    assert layer.last_path == ("tf_remat", "tf_remat runs rule 'simple'")
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
