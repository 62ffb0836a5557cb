"""The fused kernel against autodiff through the cell loop (`use_fused=False`)."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import hebbkeras
from hebbkeras import fused

MODES = ("clamp", "add", "dense")
PLASTIC = ("per_connection", "shared")
RULES = ("hebb", "oja")
TOL = {"float64": 1e-5, "float32": 1e-4}


def episode(mode, n=7, width=4, batch=3, steps=24, seed=0):
    """Inputs mixing free, partly clamped, fully clamped and held steps.

    Steps 2-3 clamp every neuron to new values; steps 5-11 hold one pattern
    (the geometric-series shortcut); step 12 clamps every neuron to another
    pattern; the rest mix clamped and free neurons, or are zero.
    """
    rng = np.random.default_rng(seed)
    in_width = width if mode == "dense" else n
    x = rng.choice([-1.0, 0.0, 1.0], size=(batch, steps, in_width), p=[0.3, 0.4, 0.3])
    if mode == "clamp":
        x[:, 2:4] = rng.choice([-1.0, 1.0], size=(batch, 2, n))
        x[:, 5:12] = rng.choice([-1.0, 1.0], size=(batch, 1, n))
        x[:, 12] = rng.choice([-1.0, 1.0], size=(batch, n))
        x[:, 15:17] = 0.0
        x[..., -1] = 1.0  # the bias neuron
    elif mode == "add":
        x = x * 0.1
    return x


def make(mode, plasticity, rule, use_fused, dtype, n=7, eta=0.5, **kwargs):
    return hebbkeras.PlasticRNN(
        n, input_mode=mode, plasticity=plasticity, rule=rule, eta=eta, trainable_eta=True,
        return_sequences=True, return_state=True, use_fused=use_fused, dtype=dtype, **kwargs,
    )


def set_weights(layer, seed=1):
    """Weights large enough that plasticity matters."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        if v.name != "eta":
            v.assign(rng.normal(0, 0.5, v.shape))


def outputs_and_grads(layer, x, initial_state, seed=2):
    """Outputs, and gradients of a random projection of all outputs, w.r.t. the
    trainable weights, the inputs and the initial state."""
    rng = np.random.default_rng(seed)
    x = tf.constant(x)
    state = [tf.constant(s) for s in initial_state]
    shapes = [(x.shape[0], x.shape[1], layer.units), (x.shape[0], layer.units),
              (x.shape[0], layer.units, layer.units)]
    projections = [tf.constant(rng.normal(size=s), x.dtype) for s in shapes]

    @tf.function  # graph mode: the long episodes stay fast
    def run(x, state):
        with tf.GradientTape() as tape:
            tape.watch([x] + state)
            out = layer(x, initial_state=state)
            loss = sum(tf.reduce_sum(o * p) for o, p in zip(out, projections))
        return out, tape.gradient(loss, list(layer.trainable_weights) + [x] + state)

    out, grads = run(x, state)
    names = [v.name for v in layer.trainable_weights] + ["inputs", "y0", "hebb0"]
    return [np.asarray(o) for o in out], dict(zip(names, grads))


def compare(mode, plasticity, rule, dtype, steps=24, eta=0.5, n=7, batch=3):
    x = episode(mode, n=n, steps=steps, batch=batch).astype(dtype)
    rng = np.random.default_rng(3)
    state = [rng.normal(0, 0.5, (batch, n)).astype(dtype),
             rng.normal(0, 0.5, (batch, n, n)).astype(dtype)]
    results = []
    for use_fused in (True, False):
        layer = make(mode, plasticity, rule, use_fused, dtype, n=n, eta=eta)
        layer.build(x.shape)
        set_weights(layer)
        results.append(outputs_and_grads(layer, x, state))
    (out_f, grad_f), (out_c, grad_c) = results
    tol = TOL[dtype]
    for a, b, name in zip(out_f, out_c, ("ys", "y", "hebb")):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(), err_msg=name)
    assert set(grad_f) == set(grad_c)
    for name, b in grad_c.items():
        a = grad_f[name]
        assert a is not None and b is not None, name
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(b).max() > 0, name  # the comparison means something
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(), err_msg=name)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused kernel, to be sure the test exercised it."""
    calls = []
    original = fused.plastic_sequence

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "plastic_sequence", counting)
    return calls


@pytest.fixture
def kernel(request, monkeypatch):
    """Runs the Hebbian rule's trace passes through the native kernels
    (`hebbkeras.native`) or plain TensorFlow ops, and checks which ran."""
    used = []
    load = hebbkeras.native.load
    monkeypatch.setattr(hebbkeras.native, "load", lambda: used.append(1) or load())
    if request.param == "tf":
        monkeypatch.setattr(hebbkeras.native, "available", lambda dtype=None: False)
    else:
        assert hebbkeras.native.available(), "the native kernels did not build (see the warning)"
    yield request.param
    assert bool(used) == (request.param == "native")


def with_kernels(cases, rule_at):
    """`cases` x {native, tf} for the Hebbian rule; Oja's rule has no native kernel."""
    out = []
    for case in cases:
        kernels = ("native", "tf") if case[rule_at] == "hebb" else ("tf",)
        out += [case + (k,) for k in kernels]
    return out


@pytest.mark.parametrize(
    "mode,plasticity,rule,dtype,kernel",
    with_kernels(list(itertools.product(MODES, PLASTIC, RULES, ("float64", "float32"))), 2),
    indirect=["kernel"],
)
def test_fused_matches_cell_loop(mode, plasticity, rule, dtype, kernel, fused_calls):
    compare(mode, plasticity, rule, dtype)
    assert len(fused_calls) == 1


@pytest.mark.parametrize(
    "rule,eta,kernel",
    with_kernels([("hebb", 0.5), ("oja", 0.3), ("hebb", 1.0)], 0),
    indirect=["kernel"],
)
def test_long_episode_with_checkpoints(rule, eta, kernel, fused_calls):
    """400 steps: inversion must be reset from checkpoints to stay accurate."""
    compare("clamp", "per_connection", rule, "float32", steps=400, eta=eta, n=5, batch=2)
    assert len(fused_calls) == 1


@pytest.mark.parametrize(
    "mode,rule,kernel",
    with_kernels([("clamp", "hebb"), ("add", "hebb"), ("add", "oja")], 1),
    indirect=["kernel"],
)
def test_long_episode_small_eta_float64(mode, rule, kernel):
    compare(mode, "per_connection", rule, "float64", steps=400, eta=0.01, n=12, batch=2)


@pytest.mark.parametrize("flush", [1, 2, 3, 50])
@pytest.mark.parametrize("mode,plasticity", [("clamp", "per_connection"), ("add", "shared")])
@pytest.mark.parametrize("kernel", ["native"], indirect=True)
def test_native_alpha_gradient_queue_sizes(flush, mode, plasticity, kernel, monkeypatch):
    """alpha's gradient terms applied every 1, 2, 3 segments, or only after the
    loop (50 > segments): the queue's replay of later traces is exact."""
    monkeypatch.setattr(fused, "ALPHA_FLUSH", flush)
    compare(mode, plasticity, "hebb", "float64", eta=0.3)


@pytest.mark.slow
def test_paper_sized_binary_episode():
    """N = 1001, T = 201, the paper's episodes: fused gradients equal the cell loop's."""
    x, y = next(iter(hebbkeras.episodes.binary_dataset(batch_size=1)))
    grads = []
    for use_fused in (True, False):
        layer = hebbkeras.PlasticRNN(1001, use_fused=use_fused)
        layer.build(x.shape)
        rng = np.random.default_rng(0)
        layer.w.assign(rng.normal(0, 0.01, (1001, 1001)))
        layer.alpha.assign(rng.normal(0, 0.01, (1001, 1001)))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(hebbkeras.summed_squared_error(y, layer(x)))
            return loss, tape.gradient(loss, layer.trainable_weights)

        grads.append(step())
    (loss_f, g_f), (loss_c, g_c) = grads
    np.testing.assert_allclose(loss_f, loss_c, rtol=1e-5)
    for a, b in zip(g_f, g_c):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_checkpoint_interval_bounds_inversion_growth():
    for eta in (0.01, 0.1, 0.5, 0.9, 0.999):
        k = int(fused.checkpoint_interval(eta))
        growth = (1 / (1 - eta)) ** k
        assert k == 1 or growth <= fused.INVERSION_GROWTH * (1 + 1e-9)
        assert k == 1 or growth * (1 / (1 - eta)) > fused.INVERSION_GROWTH  # the largest such k
    assert int(fused.checkpoint_interval(1.0)) == 1  # nothing inverts at eta = 1
    assert int(fused.checkpoint_interval(0.01)) == 229


def test_untrainable_eta_gets_no_gradient_but_the_rest_match():
    x = episode("clamp")
    grads = []
    for use_fused in (True, False):
        layer = hebbkeras.PlasticRNN(7, eta=0.2, use_fused=use_fused, dtype="float64")
        layer.build(x.shape)
        set_weights(layer)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        grads.append(tape.gradient(loss, layer.trainable_weights))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs,masked",
    [({"go_backwards": True}, False), ({"unroll": True}, False), ({}, True),
     ({"use_fused": False}, False)],
)
def test_falls_back_to_cell_loop(kwargs, masked, fused_calls):
    x = episode("add", steps=6)
    layer = hebbkeras.PlasticRNN(7, input_mode="add", eta=0.3, return_sequences=True,
                                 dtype="float64", **kwargs)
    mask = np.ones(x.shape[:2], bool) if masked else None
    out = layer(x, mask=mask)
    assert out.shape == (3, 6, 7)
    assert not fused_calls


def test_xla_compiled_call_uses_the_cell_loop_and_agrees():
    x = tf.constant(episode("clamp", steps=16), tf.float32)
    layer = hebbkeras.PlasticRNN(7, eta=0.3, return_sequences=True)
    layer.build(x.shape)
    set_weights(layer)
    eager = layer(x)
    jitted = tf.function(layer, jit_compile=True)(x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


def test_unknown_batch_and_time_in_a_traced_function(fused_calls):
    layer = hebbkeras.PlasticRNN(7, input_mode="add", eta=0.3, return_state=True)
    layer.build((None, None, 7))
    set_weights(layer)
    f = tf.function(layer, input_signature=[tf.TensorSpec([None, None, 7], tf.float32)])
    concrete = f.get_concrete_function()
    for shape in ((2, 5, 7), (1, 9, 7)):
        x = np.random.default_rng(0).normal(0, 0.1, shape).astype("float32")
        y, y_last, hebb = concrete(tf.constant(x))
        ref = hebbkeras.PlasticRNN(7, input_mode="add", eta=0.3, return_state=True,
                                   use_fused=False)
        ref.build(x.shape)
        ref.set_weights(layer.get_weights())
        np.testing.assert_allclose(hebb, ref(x)[2], rtol=1e-5, atol=1e-6)
    assert fused_calls


def test_training_step_inside_a_distribution_strategy(fused_calls):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x = episode("clamp", steps=16)[:2].astype("float32")
    grads = []
    for use_fused in (True, False):
        with strategy.scope():
            layer = hebbkeras.PlasticRNN(7, eta=0.3, use_fused=use_fused)
            layer.build(x.shape)
            set_weights(layer)

        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(x) ** 2)
            return tape.gradient(loss, layer.trainable_weights)

        grads.append(strategy.run(tf.function(step)))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert fused_calls


def test_config_round_trip_keeps_the_path_flags():
    layer = hebbkeras.PlasticRNN(5, use_fused=False, fused_xla=True)
    config = layer.get_config()
    assert config["use_fused"] is False and config["fused_xla"] is True
    clone = hebbkeras.PlasticRNN.from_config(config)
    assert clone.get_config() == config
    assert hebbkeras.PlasticRNN(5).get_config()["use_fused"] is True


def test_fused_xla_gradient_matches(fused_calls):
    """The XLA-compiled per-step gradient computes the same numbers."""
    x = episode("add").astype("float32")
    results = []
    for fused_xla in (True, False):
        layer = make("add", "per_connection", "hebb", True, "float32", fused_xla=fused_xla)
        layer.build(x.shape)
        set_weights(layer)
        results.append(outputs_and_grads(layer, x, [np.zeros((3, 7), "float32"),
                                                    np.zeros((3, 7, 7), "float32")]))
    for name, b in results[1][1].items():
        np.testing.assert_allclose(results[0][1][name], b, rtol=1e-4,
                                   atol=1e-4 * np.abs(b).max(), err_msg=name)


def test_keras_jit_compile_keeps_the_fused_path():
    """jit_compile=True/"auto" must not silently swap the fused kernel for the cell loop."""
    inputs = keras.Input((5, 4))
    plastic = keras.Model(inputs, hebbkeras.PlasticRNN(4, input_mode="add")(inputs))
    assert not plastic.layers[1].supports_jit
    with pytest.warns(UserWarning, match="jit_compile"):
        plastic.compile("adam", "mse", jit_compile=True)
    assert plastic.jit_compile is False
    cell_loop = keras.Model(inputs, hebbkeras.PlasticRNN(4, input_mode="add", use_fused=False)(inputs))
    cell_loop.compile("adam", "mse", jit_compile=True)
    assert cell_loop.jit_compile is True
    plain = keras.Model(inputs, hebbkeras.PlasticRNN(4, input_mode="add", plasticity="none")(inputs))
    assert plain.layers[1].supports_jit
