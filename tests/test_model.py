"""PlasticRNN inside ordinary Keras models: fit, .keras save/load, a fresh process."""

import textwrap

import keras
import numpy as np
from conftest import start_python

import hebbkeras


def toy_data(n=64, steps=12, width=5, seed=0):
    """A task that needs memory: report the mean of the first three inputs at the end."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, steps, width)).astype("float32")
    y = x[:, :3, :2].mean(axis=1)
    return x, y


def functional_model(steps=12, width=5):
    inputs = keras.Input((steps, width))
    x = keras.layers.Dense(8, activation="tanh")(inputs)
    x = hebbkeras.PlasticRNN(16, input_mode="dense", eta=0.1, trainable_eta=True)(x)
    outputs = keras.layers.Dense(2)(x)
    return keras.Model(inputs, outputs)


def test_functional_fit_save_load(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = toy_data()
    model = functional_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses

    path = str(tmp_path / "model.keras")
    model.save(path)
    expected = model.predict(x, verbose=0)

    # A fresh process that loads the file with no custom_objects, after a plain
    # `import hebbkeras` (which registers the classes, as a user would do). It
    # runs while this process checks the same in place.
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import hebbkeras  # registers the custom objects, as a user would
        model = keras.saving.load_model({path!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.testing.assert_allclose(model.predict(x, verbose=0),
                                   np.load({str(tmp_path / 'expected.npy')!r}), rtol=1e-6, atol=1e-6)
        print("same outputs")
    """)
    child = start_python(["-c", script])
    try:
        loaded = keras.saving.load_model(path)  # no custom_objects: registered classes
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
        layer = loaded.layers[2]
        assert isinstance(layer, hebbkeras.PlasticRNN)
        assert layer.eta.trainable and layer.input_mode == "dense"
        stdout, stderr = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, stderr[-3000:]
    assert "same outputs" in stdout


def test_sequential_and_return_state():
    model = keras.Sequential([
        keras.Input((6, 4)),
        hebbkeras.PlasticRNN(4, input_mode="add", return_sequences=True),
        hebbkeras.PlasticRNN(3, input_mode="dense", plasticity="shared"),
    ])
    assert model.output_shape == (None, 3)
    out = model(np.ones((2, 6, 4), "float32"))
    assert out.shape == (2, 3)

    inputs = keras.Input((6, 4))
    y, y_state, hebb = hebbkeras.PlasticRNN(4, input_mode="add", return_state=True)(inputs)
    assert tuple(hebb.shape) == (None, 4, 4)
    model = keras.Model(inputs, [y, hebb])
    y, hebb = model(np.ones((2, 6, 4), "float32"))
    assert hebb.shape == (2, 4, 4)


def test_initial_state_carries_the_trace():
    """Two halves of an episode, the state handed over, equal the whole episode."""
    layer = hebbkeras.PlasticRNN(5, input_mode="add", eta=0.3, return_sequences=True, return_state=True)
    x = np.random.default_rng(1).normal(size=(2, 10, 5)).astype("float32") * 0.2
    whole, _, whole_hebb = layer(x)
    first, y, hebb = layer(x[:, :4])
    second, _, hebb2 = layer(x[:, 4:], initial_state=[y, hebb])
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hebb2, whole_hebb, rtol=1e-5, atol=1e-6)
