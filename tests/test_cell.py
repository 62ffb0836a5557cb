"""The cell and layer against a numpy version of eqs. (1)-(2) written here."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import hebbkeras

MODES = ("clamp", "add", "dense")
PLASTICITY = ("per_connection", "shared", "none")
RULES = ("hebb", "oja")
COMBOS = list(itertools.product(MODES, PLASTICITY, RULES))


def reference(x, p, mode, plasticity, rule, scale=20.0):
    """Eqs. (1)-(2) step by step in numpy; returns y at every step and the last trace."""
    batch, steps, _ = x.shape
    n = p["w"].shape[0]
    y = np.zeros((batch, n))
    hebb = np.zeros((batch, n, n))
    ys = []
    for t in range(steps):
        w_eff = p["w"][None] if plasticity == "none" else p["w"] + p["alpha"] * hebb
        pre = np.einsum("bi,bij->bj", y, w_eff)
        xt = x[:, t]
        if mode == "clamp":
            y_new = np.where(xt != 0, xt, np.tanh(pre))
        elif mode == "add":
            y_new = np.tanh(pre + scale * xt)
        else:
            y_new = np.tanh(pre + xt @ p["kernel"] + p["bias"])
        outer = y[:, :, None] * y_new[:, None, :]
        if rule == "hebb":
            hebb = (1 - p["eta"]) * hebb + p["eta"] * outer
        else:
            hebb = hebb + p["eta"] * y_new[:, None, :] * (y[:, :, None] - y_new[:, None, :] * hebb)
        y = y_new
        ys.append(y)
    return np.stack(ys, 1), hebb


def random_case(mode, plasticity, n=6, width=4, batch=3, steps=9, seed=0, eta=0.2):
    """Inputs that mix clamped and free neurons, and weights large enough to matter."""
    rng = np.random.default_rng(seed)
    in_width = width if mode == "dense" else n
    x = rng.choice([-1.0, 0.0, 1.0], size=(batch, steps, in_width), p=[0.3, 0.4, 0.3])
    if mode == "add":
        x = x * 0.05
    params = {
        "w": rng.normal(0, 0.6, (n, n)),
        "alpha": rng.normal(0, 0.8, (n, n)) if plasticity == "per_connection" else rng.normal(0, 0.8),
        "eta": eta,
        "kernel": rng.normal(0, 0.5, (in_width, n)),
        "bias": rng.normal(0, 0.1, n),
    }
    return x, params


def make_layer(mode, plasticity, rule, n, dtype="float64", **kwargs):
    layer = hebbkeras.PlasticRNN(
        n, input_mode=mode, plasticity=plasticity, rule=rule, eta=0.2,
        return_sequences=True, return_state=True, dtype=dtype, **kwargs,
    )
    return layer


def assign(cell, params):
    cell.w.assign(params["w"])
    if cell.alpha is not None:
        cell.alpha.assign(params["alpha"])
        cell.eta_weight.assign(params["eta"])
    if cell.kernel is not None:
        cell.kernel.assign(params["kernel"])
        cell.bias.assign(params["bias"])


@pytest.mark.parametrize("mode,plasticity,rule", COMBOS)
def test_layer_matches_numpy_reference(mode, plasticity, rule):
    x, params = random_case(mode, plasticity)
    layer = make_layer(mode, plasticity, rule, 6)
    layer.build(x.shape)
    assign(layer.cell, params)
    out = layer(x)
    ys, hebb = reference(x, params, mode, plasticity, rule)
    np.testing.assert_allclose(out[0], ys, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out[1], ys[:, -1], rtol=1e-10, atol=1e-12)
    if plasticity == "none":
        assert len(out) == 2  # no trace without plasticity
    else:
        assert out[2].shape == (3, 6, 6)
        np.testing.assert_allclose(out[2], hebb, rtol=1e-10, atol=1e-12)
    if mode == "clamp":  # clamped neurons take their input exactly
        clamped = x != 0
        np.testing.assert_array_equal(np.asarray(out[0])[clamped], x[clamped])


@pytest.mark.parametrize("mode", MODES)
def test_cell_inside_plain_keras_rnn(mode):
    """The cell alone works in keras.layers.RNN and returns the (batch, N, N) trace."""
    x, params = random_case(mode, "per_connection")
    rnn = keras.layers.RNN(
        hebbkeras.PlasticRNNCell(6, input_mode=mode, eta=0.2, dtype="float64"),
        return_sequences=True, return_state=True, dtype="float64",
    )
    rnn.build(x.shape)
    assign(rnn.cell, params)
    seq, y, hebb = rnn(x)
    ys, ref_hebb = reference(x, params, mode, "per_connection", "hebb")
    np.testing.assert_allclose(seq, ys, rtol=1e-10, atol=1e-12)
    assert hebb.shape == (3, 6, 6)
    np.testing.assert_allclose(hebb, ref_hebb, rtol=1e-10, atol=1e-12)


def numpy_loss(x, params, mode, plasticity, rule, proj):
    ys, hebb = reference(x, params, mode, plasticity, rule)
    return np.sum(ys * proj)


@pytest.mark.parametrize("mode,plasticity,rule", COMBOS)
def test_gradients_match_finite_differences(mode, plasticity, rule):
    x, params = random_case(mode, plasticity, steps=7, seed=1)
    layer = make_layer(mode, plasticity, rule, 6, trainable_eta=True)
    layer.build(x.shape)
    cell = layer.cell
    assign(cell, params)
    proj = np.random.default_rng(2).normal(size=(3, 7, 6))
    variables = {"w": cell.w}
    if cell.alpha is not None:
        variables.update(alpha=cell.alpha, eta=cell.eta_weight)
    if cell.kernel is not None:
        variables.update(kernel=cell.kernel)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x)[0] * proj)
    grads = dict(zip(variables, tape.gradient(loss, list(variables.values()))))
    np.testing.assert_allclose(loss, numpy_loss(x, params, mode, plasticity, rule, proj), rtol=1e-10)

    rng = np.random.default_rng(3)
    eps = 1e-6
    for name, grad in grads.items():
        grad = np.asarray(grad)
        value = np.asarray(params[name], dtype=float)
        indices = [()] if value.ndim == 0 else [tuple(rng.integers(0, s) for s in value.shape) for _ in range(6)]
        for idx in indices:
            up = {**params, name: value.copy()}
            down = {**params, name: value.copy()}
            if value.ndim == 0:
                up[name], down[name] = value + eps, value - eps
            else:
                up[name][idx] += eps
                down[name][idx] -= eps
            fd = (numpy_loss(x, up, mode, plasticity, rule, proj)
                  - numpy_loss(x, down, mode, plasticity, rule, proj)) / (2 * eps)
            np.testing.assert_allclose(grad[idx], fd, rtol=1e-5, atol=1e-7, err_msg=f"d loss / d {name}{idx}")


def test_weights_are_named_and_counted():
    counts = {"per_connection": 2 * 25 + 1, "shared": 25 + 1 + 1, "none": 25}
    for plasticity, count in counts.items():
        layer = hebbkeras.PlasticRNN(5, plasticity=plasticity)
        layer.build((None, 3, 5))
        names = sorted(v.name for v in layer.weights)
        expected = {"per_connection": ["alpha", "eta", "w"], "shared": ["alpha", "eta", "w"], "none": ["w"]}
        assert names == expected[plasticity]
        assert sum(int(np.prod(v.shape)) for v in layer.weights) == count
        assert layer.count_params() == count
    # The paper's network: 1,001 neurons, 2,004,002 parameters (w, alpha) + eta.
    big = hebbkeras.PlasticRNN(1001)
    big.build((None, 2, 1001))
    assert sum(int(np.prod(v.shape)) for v in big.trainable_weights) == 2_004_002
    dense = hebbkeras.PlasticRNN(4, input_mode="dense", trainable_eta=True)
    dense.build((None, 3, 7))
    assert sorted(v.name for v in dense.trainable_weights) == ["alpha", "bias", "eta", "kernel", "w"]


def test_config_round_trip():
    layer = hebbkeras.PlasticRNN(
        7, input_mode="add", input_scale=5.0, eta=0.3, trainable_eta=True,
        plasticity="shared", rule="oja", return_sequences=True, name="p",
        w_initializer=keras.initializers.RandomNormal(stddev=0.2),
    )
    config = layer.get_config()
    clone = hebbkeras.PlasticRNN.from_config(config)
    assert clone.get_config() == config
    for key, value in {"units": 7, "input_mode": "add", "input_scale": 5.0, "eta": 0.3,
                       "trainable_eta": True, "plasticity": "shared", "rule": "oja",
                       "return_sequences": True}.items():
        assert config[key] == value
    cell = hebbkeras.PlasticRNNCell(3, rule="oja", eta=0.5)
    assert hebbkeras.PlasticRNNCell.from_config(cell.get_config()).get_config() == cell.get_config()


def test_trace_restarts_every_sequence():
    layer = hebbkeras.PlasticRNN(4, input_mode="add", eta=0.5, return_state=True)
    x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype("float32")
    first = layer(x)
    second = layer(x)
    np.testing.assert_allclose(first[2], second[2])
    assert np.abs(np.asarray(first[2])).max() > 0


@pytest.mark.parametrize(
    "kwargs,width,message",
    [
        ({"input_mode": "clamp"}, 7, "width must equal units=5; got width 7"),
        ({"input_mode": "add"}, 3, "width must equal units=5; got width 3"),
        ({"eta": 0.0}, 5, "eta=0.0 is outside (0, 1]"),
        ({"eta": 1.5}, 5, "eta=1.5 is outside (0, 1]"),
        ({"input_mode": "sum"}, 5, "Unknown input_mode='sum'"),
        ({"plasticity": "full"}, 5, "Unknown plasticity='full'"),
        ({"rule": "bcm"}, 5, "Unknown rule='bcm'"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, width, message):
    with pytest.raises(ValueError) as info:
        layer = hebbkeras.PlasticRNN(5, **kwargs)
        layer(np.zeros((1, 2, width), "float32"))
    assert message in str(info.value)
