"""PlasticDense against a numpy version of the feed-forward rule written here."""

import itertools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from hebbkeras import ops
from hebbkeras.kernels import dense_fused
from hebbkeras.layers.plastic_dense import PlasticDense

PLASTICITY = ("per_connection", "shared", "none")
RULES = ("hebb", "oja")
TEACHERS = (None, "add", "clamp")
ACTIVATIONS = {
    None: lambda v: v,
    "tanh": np.tanh,
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "softmax": lambda v: np.exp(v - v.max(-1, keepdims=True))
    / np.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True),
}


def reference(x, u, p, plasticity, rule, activation, teacher_mode, scale):
    """Every step in numpy: y_t from the trace before the step, then the update."""
    batch, steps, width = x.shape
    units = p["w"].shape[1]
    act = ACTIVATIONS[activation]
    hebb = np.zeros((batch, width, units))
    ys = []
    for t in range(steps):
        w_eff = p["w"][None] if plasticity == "none" else p["w"] + p["alpha"] * hebb
        pre = np.einsum("bi,bij->bj", x[:, t], w_eff) + p.get("bias", 0.0)
        if teacher_mode == "add":
            y = act(pre + scale * u[:, t])
        elif teacher_mode == "clamp":
            taught = np.any(u[:, t] != 0, axis=-1, keepdims=True)
            y = np.where(taught, u[:, t], act(pre))
        else:
            y = act(pre)
        xi, yj = x[:, t][:, :, None], y[:, None, :]
        if rule == "hebb":
            hebb = (1 - p["eta"]) * hebb + p["eta"] * xi * yj
        else:
            hebb = hebb + p["eta"] * yj * (xi - yj * hebb)
        ys.append(y)
    return np.stack(ys, 1), hebb


def random_case(plasticity, teacher_mode, batch=3, steps=7, width=4, units=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (batch, steps, width))
    u = np.zeros((batch, steps, units))
    if teacher_mode is not None:  # one-hot labels on the first steps, some batch rows untaught
        labels = rng.integers(0, units, (batch, steps - 2))
        u[:, : steps - 2] = np.eye(units)[labels]
        u[0, 1] = 0.0
    params = {
        "w": rng.normal(0, 0.5, (width, units)),
        "alpha": rng.normal(0, 1.0, (width, units)) if plasticity == "per_connection" else 0.9,
        "eta": 0.3,
        "bias": rng.normal(0, 0.2, units),
    }
    return x, u, params


def make(plasticity, rule, activation, teacher_mode, scale=3.0, **kwargs):
    return PlasticDense(
        5, activation=activation, use_bias=True, eta=0.3, plasticity=plasticity, rule=rule,
        teacher_mode=teacher_mode, teacher_scale=scale, return_sequences=True,
        dtype="float64", **kwargs,
    )


def assign(layer, params):
    layer.w.assign(params["w"])
    layer.bias.assign(params["bias"])
    if layer.alpha is not None:
        layer.alpha.assign(params["alpha"])
        layer.eta_weight.assign(params["eta"])


def call_args(x, u, teacher_mode):
    return [x, u] if teacher_mode else x


COMBOS = [
    (p, r, t, a)
    for (p, r, t), a in zip(itertools.product(PLASTICITY, RULES, TEACHERS),
                            itertools.cycle(ACTIVATIONS))
]


@pytest.mark.parametrize("use_fused", [False, True])
@pytest.mark.parametrize("plasticity,rule,teacher_mode,activation", COMBOS)
def test_matches_numpy_reference(plasticity, rule, teacher_mode, activation, use_fused):
    x, u, params = random_case(plasticity, teacher_mode)
    layer = make(plasticity, rule, activation, teacher_mode, use_fused=use_fused,
                 return_state=plasticity != "none")
    out = layer(call_args(x, u, teacher_mode))
    assign(layer, params)
    out = layer(call_args(x, u, teacher_mode))
    ys, hebb = reference(x, u, params, plasticity, rule, activation, teacher_mode, 3.0)
    if plasticity == "none":
        np.testing.assert_allclose(out, ys, rtol=1e-10, atol=1e-12)
        return
    np.testing.assert_allclose(out[0], ys, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out[1], hebb, rtol=1e-10, atol=1e-12)
    assert np.abs(hebb).max() > 0.05  # the trace did something
    if teacher_mode == "clamp":  # taught rows take the teacher exactly
        taught = np.any(u != 0, axis=-1)
        np.testing.assert_array_equal(np.asarray(out[0])[taught], u[taught])


@pytest.mark.parametrize("use_fused", [False, True])
def test_omniglot_form_and_unknown_length(use_fused):
    """softmax + 1000 * label, Oja: support outputs are the labels; last step only; any T."""
    x, u, params = random_case("per_connection", "add", steps=6)
    layer = PlasticDense(5, activation="softmax", rule="oja", eta=0.3, teacher_mode="add",
                         teacher_scale=1000.0, use_bias=True, dtype="float64",
                         use_fused=use_fused)
    layer([x, u])
    assign(layer, params)
    ys, _ = reference(x, u, params, "per_connection", "oja", "softmax", "add", 1000.0)
    np.testing.assert_allclose(layer([x, u]), ys[:, -1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ys[:, :4][u[:, :4] != 0], 1.0)  # the label sets the output
    run = tf.function(lambda a, b: layer([a, b]), input_signature=[
        tf.TensorSpec([None, None, 4], tf.float64), tf.TensorSpec([None, None, 5], tf.float64)])
    np.testing.assert_allclose(run(x, u), ys[:, -1], rtol=1e-10, atol=1e-12)


def numpy_loss(x, u, params, plasticity, rule, activation, teacher_mode, proj):
    ys, hebb = reference(x, u, params, plasticity, rule, activation, teacher_mode, 3.0)
    return np.sum(ys * proj)


GRAD_COMBOS = [
    ("per_connection", "hebb", "add", "softmax"),
    ("per_connection", "oja", "clamp", "tanh"),
    ("shared", "oja", "add", "sigmoid"),
    ("shared", "hebb", None, None),
    ("per_connection", "oja", None, "softmax"),
    ("none", "hebb", "add", "tanh"),
]


@pytest.mark.parametrize("use_fused", [False, True, "while_loop"])
@pytest.mark.parametrize("plasticity,rule,teacher_mode,activation", GRAD_COMBOS)
def test_gradients_match_finite_differences(plasticity, rule, teacher_mode, activation, use_fused,
                                            monkeypatch):
    """Every gradient, the teacher's too; "while_loop": the fused kernel's loop for long or
    unknown lengths (and rebuilt traces) at this short length, which it otherwise unrolls."""
    if use_fused == "while_loop":
        monkeypatch.setattr(dense_fused, "UNROLL_STEPS", 0)
    x, u, params = random_case(plasticity, teacher_mode, steps=6, seed=1)
    layer = make(plasticity, rule, activation, teacher_mode, trainable_eta=True,
                 use_fused=bool(use_fused))
    layer(call_args(x, u, teacher_mode))
    assign(layer, params)
    proj = np.random.default_rng(2).normal(size=(3, 6, 5))
    variables = {"w": layer.w, "bias": layer.bias}
    if layer.alpha is not None:
        variables.update(alpha=layer.alpha, eta=layer.eta_weight)
    x_t, u_t = tf.constant(x), tf.constant(u)
    with tf.GradientTape() as tape:
        tape.watch([x_t, u_t])
        loss = tf.reduce_sum(layer(call_args(x_t, u_t, teacher_mode)) * proj)
    taught = ["u"] if teacher_mode else []
    grads = tape.gradient(loss, list(variables.values()) + [x_t] + ([u_t] if taught else []))
    grads = dict(zip(list(variables) + ["x"] + taught, grads))
    args = (plasticity, rule, activation, teacher_mode, proj)
    np.testing.assert_allclose(loss, numpy_loss(x, u, params, *args), rtol=1e-10)

    rng = np.random.default_rng(3)
    eps = 1e-6
    for name, grad in grads.items():
        grad = np.asarray(grad)
        value = np.asarray({"x": x, "u": u}[name] if name in "xu" else params[name], dtype=float)
        picks = [()] if value.ndim == 0 else [
            tuple(rng.integers(0, s) for s in value.shape) for _ in range(5)]
        if name == "u" and teacher_mode == "clamp":  # smooth only where a row is taught
            rows = np.argwhere(np.any(u != 0, -1))
            picks = [(*rows[i], rng.integers(0, 5)) for i in rng.integers(0, len(rows), 5)]
        for idx in picks:
            up, down = value.copy(), value.copy()
            up[idx] += eps
            down[idx] -= eps
            if name == "x":
                fd = numpy_loss(up, u, params, *args) - numpy_loss(down, u, params, *args)
            elif name == "u":
                fd = numpy_loss(x, up, params, *args) - numpy_loss(x, down, params, *args)
            else:
                fd = (numpy_loss(x, u, {**params, name: up}, *args)
                      - numpy_loss(x, u, {**params, name: down}, *args))
            np.testing.assert_allclose(grad[idx], fd / (2 * eps), rtol=1e-5, atol=1e-8,
                                       err_msg=f"d loss / d {name}{idx}")


def test_trace_restarts_every_sequence_and_weights():
    layer = PlasticDense(3, eta=0.5, return_state=True)
    x = np.random.default_rng(0).normal(size=(2, 4, 6)).astype("float32")
    first, second = layer(x), layer(x)
    np.testing.assert_allclose(first[1], second[1])
    assert first[0].shape == (2, 3) and first[1].shape == (2, 6, 3)
    assert sorted(v.name for v in layer.weights) == ["alpha", "eta", "w"]
    assert sorted(v.name for v in layer.trainable_weights) == ["alpha", "w"]
    shared = PlasticDense(3, plasticity="shared", use_bias=True, trainable_eta=True)
    shared.build((None, 4, 6))
    assert shared.count_params() == 6 * 3 + 1 + 1 + 3
    taught = PlasticDense(3, teacher_mode="clamp")
    taught.build([tf.TensorShape([None, 4, 6]), tf.TensorShape([None, 4, 3])])
    assert taught.w.shape == (6, 3)
    plain = PlasticDense(3, plasticity="none")
    plain.build((None, 4, 6))
    assert [v.name for v in plain.weights] == ["w"]


def test_config_round_trip():
    layer = PlasticDense(
        4, activation="softmax", use_bias=True, eta=0.2, trainable_eta=True,
        plasticity="shared", rule="oja", teacher_mode="clamp", teacher_scale=7.0,
        return_sequences=True, return_state=True, use_fused=False, name="readout",
        alpha_initializer=keras.initializers.RandomNormal(stddev=0.3),
    )
    config = layer.get_config()
    clone = PlasticDense.from_config(config)
    assert clone.get_config() == config
    for key, value in {"units": 4, "activation": "softmax", "rule": "oja", "eta": 0.2,
                       "teacher_mode": "clamp", "teacher_scale": 7.0,
                       "plasticity": "shared", "return_state": True}.items():
        assert config[key] == value


def conv_model(ways=3, steps=4, side=8, teacher=True, **kwargs):
    images = keras.Input((steps, side, side, 1), name="images")
    labels = keras.Input((steps, ways), name="labels")
    x = keras.layers.TimeDistributed(keras.layers.Conv2D(4, 3, strides=2, activation="tanh"))(images)
    x = keras.layers.TimeDistributed(keras.layers.Flatten())(x)
    readout = PlasticDense(ways, activation="softmax", rule="oja", eta=0.1, trainable_eta=True,
                           teacher_mode="add" if teacher else None, **kwargs)
    probs = readout([x, labels] if teacher else x)
    return keras.Model([images, labels], probs)


def test_saved_keras_file_round_trip(tmp_path):
    model = conv_model()
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(2, 4, 8, 8, 1)).astype("float32"),
              np.eye(3, dtype="float32")[[[0, 1, 2, 0], [2, 1, 0, 0]]] * np.array([1, 1, 1, 0])[:, None]]
    model.layers[-1].alpha.assign(rng.normal(size=(36, 3)))
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # registered: no custom_objects
    assert isinstance(loaded.layers[-1], PlasticDense)
    np.testing.assert_allclose(loaded(inputs), model(inputs), rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_time_distributed_conv_model_trains_a_step(jit):
    """Functional model, fit on the fused path; under XLA on the keras.ops path."""
    model = conv_model()
    assert model.layers[-1].supports_jit is False
    model.compile(keras.optimizers.Adam(0.05), "categorical_crossentropy", jit_compile=jit)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 4, 8, 8, 1)).astype("float32")
    labels = np.zeros((4, 4, 3), "float32")
    labels[:, :3] = np.eye(3)
    target = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    before = [np.array(v) for v in model.trainable_weights]
    history = model.fit([images, labels], target, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    changed = [not np.allclose(a, np.asarray(b)) for a, b in zip(before, model.trainable_weights)]
    assert all(changed), [v.name for v, c in zip(model.trainable_weights, changed) if not c]
    eta = float(model.layers[-1].eta_weight.numpy())
    assert 0 < eta <= 1 and eta != 0.1


@pytest.mark.parametrize(
    "kwargs,call,message",
    [
        ({}, lambda: np.zeros((2, 5), "float32"), "expects inputs of shape (batch, time, in)"),
        ({}, lambda: [np.zeros((2, 3, 4)), np.zeros((2, 3, 5))], "expects one tensor `inputs`"),
        ({"teacher_mode": "add"}, lambda: np.zeros((2, 3, 4), "float32"), "expects `[inputs, teacher]`"),
        ({"teacher_mode": "add"}, lambda: [np.zeros((2, 3, 4)), np.zeros((2, 3, 6))],
         "teacher must have shape (batch, time, units=5); got (2, 3, 6)"),
        ({"teacher_mode": "clamp"}, lambda: [np.zeros((2, 3, 4)), np.zeros((2, 4, 5))],
         "differ in the time dimension (3 != 4)"),
        ({"teacher_mode": "push"}, None, "Unknown teacher_mode='push'"),
        ({"rule": "bcm"}, None, "Unknown rule='bcm'"),
        ({"plasticity": "full"}, None, "Unknown plasticity='full'"),
        ({"eta": 0.0}, None, "eta=0.0 is outside (0, 1]"),
        ({"plasticity": "none", "return_state": True}, None, "plasticity='none' has none"),
        ({"units": 0}, None, "units=0 must be a positive integer"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, call, message):
    kwargs = {"units": 5, **kwargs}
    with pytest.raises(ValueError) as info:
        layer = PlasticDense(**kwargs)
        layer(call())
    assert message in str(info.value)


@pytest.mark.parametrize("rule,activation,teacher_mode,eta", [
    ("hebb", "tanh", "add", 0.5),     # a stored trace every few steps
    ("oja", None, "clamp", 0.6),      # eta * y^2 >= 1 on clamped steps: nothing inverts there
    ("hebb", "softmax", "add", 1.0),  # eta = 1: every step stored
])
def test_fused_path_equals_keras_ops_path_on_long_sequences(rule, activation, teacher_mode, eta):
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (2, 40, 4))
    u = np.where(rng.random((2, 40, 5)) < 0.15, rng.normal(0, 1.5, (2, 40, 5)), 0.0)
    layers = [PlasticDense(5, activation=activation, eta=eta, rule=rule, trainable_eta=eta < 1,
                           teacher_mode=teacher_mode, teacher_scale=2.0, use_bias=True,
                           return_sequences=True, return_state=True, use_fused=fused,
                           dtype="float64") for fused in (False, True)]
    results = []
    for layer in layers:
        layer([x, u])
        for v, value in zip(layer.weights, (rng.normal(0, 0.3, v.shape) if v.name != "eta" else eta
                                            for v in layer.weights)):
            v.assign(value)
        if results:  # the same weights for both paths
            for v, w in zip(layer.weights, layers[0].weights):
                v.assign(w)
        proj = np.random.default_rng(5).normal(size=(2, 40, 5))
        x_t = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            ys, hebb = layer([x_t, u])
            loss = tf.reduce_sum(ys * proj) + tf.reduce_sum(hebb)
        grads = tape.gradient(loss, layer.trainable_weights + [x_t])
        results.append([ys, hebb] + grads)
    if rule == "oja":
        assert (eta * np.max(np.square(results[0][0]), axis=(0, 2)) >= 1).any()
    for ref, fused in zip(*results):
        np.testing.assert_allclose(fused, ref, rtol=1e-9, atol=1e-10)


JAX_SCRIPT = """
import numpy as np, keras
from tests.test_dense import random_case, reference, make, assign
x, u, params = random_case("per_connection", "add")
layer = make("per_connection", "oja", "softmax", "add", return_state=True)
layer([x, u]); assign(layer, params)
ys, hebb = layer([x, u])
ref_ys, ref_hebb = reference(x, u, params, "per_connection", "oja", "softmax", "add", 3.0)
np.testing.assert_allclose(np.asarray(ys), ref_ys, rtol=1e-9, atol=1e-12)
np.testing.assert_allclose(np.asarray(hebb), ref_hebb, rtol=1e-9, atol=1e-12)
print(keras.backend.backend(), "ok")
"""


@pytest.mark.slow
def test_runs_on_the_jax_backend():
    """The keras.ops path on JAX (a fresh process: the backend is chosen at import)."""
    import subprocess
    import sys

    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "1"}
    out = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True,
                         text=True, check=False, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0 and "jax ok" in out.stdout, out.stderr[-2000:]


def test_saved_model_export_serves_the_same_probabilities(tmp_path):
    """`model.export` (a SavedModel, gradients included) holds the fused path; its
    gradient captures only plain tensors. The time axis is static: Keras 3.15's
    TimeDistributed miscounts steps when both batch and time are unknown."""
    model = conv_model()
    rng = np.random.default_rng(1)
    model.layers[-1].alpha.assign(rng.normal(size=(36, 3)))
    images = rng.normal(size=(5, 4, 8, 8, 1)).astype("float32")
    labels = np.zeros((5, 4, 3), "float32")
    labels[:, :3] = np.eye(3)[rng.permutation(3)]
    path = os.path.join(tmp_path, "served")
    model.export(path, verbose=False)
    loaded = tf.saved_model.load(path)  # kept: its variables live as long as it does
    served = loaded.serve([images, labels])
    np.testing.assert_allclose(served, model([images, labels]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared", [False, True])
def test_plastic_backward_matches_finite_differences(shared):
    """`ops.plastic_backward` against central differences of eq. (1)'s plastic part in numpy."""
    rng = np.random.default_rng(7)
    y_prev, hebb, g = rng.normal(size=(2, 4)), rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 3))
    alpha = np.array(0.7) if shared else rng.normal(size=(4, 3))

    def loss(y_prev, alpha, hebb):
        return np.sum(g * np.einsum("bi,bij->bj", y_prev, alpha * hebb))

    got = ops.plastic_backward(tf.constant(g), tf.constant(y_prev), tf.constant(alpha),
                               tf.constant(hebb))
    values = [y_prev, alpha, hebb]
    for k, grad in enumerate(got):
        assert grad.shape == values[k].shape
        for idx in np.ndindex(values[k].shape):
            up = [v.copy() for v in values]
            down = [v.copy() for v in values]
            up[k][idx] += 1e-6
            down[k][idx] -= 1e-6
            fd = (loss(*up) - loss(*down)) / 2e-6
            np.testing.assert_allclose(np.asarray(grad)[idx], fd, rtol=1e-6, atol=1e-9)
