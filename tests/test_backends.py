"""hebbkeras on the JAX (and, where installed, PyTorch) backend, against TensorFlow.

This process runs TensorFlow; each other backend runs in one fresh process
(`tests/backend_worker.py`, the backend is fixed per process) that checks
several cases and prints JSON. CI installs a pinned `jax[cpu]`; the PyTorch
checks skip where `torch` is not installed (its PyPI wheels pull CUDA).
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from hebbkeras import PlasticRNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "backend_worker.py")

LAYERS = [
    dict(units=6, input_mode="clamp", plasticity="per_connection", rule="hebb", eta=0.3),
    dict(units=6, input_mode="add", input_scale=2.0, plasticity="shared", rule="oja", eta=0.1),
    dict(units=5, input_mode="dense", plasticity="per_connection", rule="oja", eta=0.5,
         trainable_eta=True),
    dict(units=5, input_mode="dense", plasticity="none"),
]
SAVED = dict(units=6, input_mode="clamp", plasticity="per_connection", rule="hebb", eta=0.2)
SAVED_BY_WORKER = dict(units=5, input_mode="dense", plasticity="shared", rule="oja", eta=0.3,
                       trainable_eta=True)

# Float64 kernel cases: every input mode, plasticity and rule; eta up to 0.5; held
# runs (clamp, hebb); both ways of rebuilding the trace (inversion; recomputing
# from a checkpoint when `interval` inversions would grow rounding error too much,
# e.g. eta = 0.5 over 7 steps; the default interval here is ceil(sqrt(40)) = 7).
KERNEL = [
    dict(input_mode="clamp", plasticity="per_connection", rule="hebb", eta=0.5, interval=7),
    dict(input_mode="clamp", plasticity="shared", rule="hebb", eta=0.2),
    dict(input_mode="add", plasticity="shared", rule="oja", eta=0.05),
    dict(input_mode="clamp", plasticity="per_connection", rule="oja", eta=0.5),
]
KERNEL_SLOW = [
    dict(input_mode=m, plasticity=p, rule=r, eta=eta, interval=interval)
    for m in ("clamp", "add")
    for p in ("per_connection", "shared")
    for r in ("hebb", "oja")
    for eta, interval in ((0.01, None), (0.5, None), (0.5, 20), (0.2, None))
]


def sequence(rng, config, batch=2, steps=12):
    """Inputs with free, partly clamped, fully clamped and held steps."""
    n = config["units"] if config["input_mode"] != "dense" else 3
    x = np.where(rng.random((batch, steps, n)) < 0.5, np.sign(rng.normal(size=(batch, steps, n))), 0)
    x[:, 2:5] = np.where(rng.random((1, 1, n)) < 0.5, -1.0, 1.0)  # held, every neuron
    x[:, 7] = 0.0
    return x.astype("float32")


def tf_layer(config, x, weights=None, fused=False):
    layer = PlasticRNN(**config, return_sequences=True, return_state=True, use_fused=fused)
    layer.build(x.shape)
    if weights is not None:
        layer.set_weights(weights)
    return layer, [keras.ops.convert_to_numpy(o) for o in layer(x)]


def run_worker(backend, spec, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, WORKER, str(path)], env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), dict(
        np.load(tmp_path / f"outputs_{backend}.npz"))


def backend_or_skip(backend):
    if importlib.util.find_spec({"jax": "jax", "torch": "torch"}[backend]) is None:
        pytest.skip(f"{backend} is not installed (CI installs jax[cpu] only)")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_layers_and_saved_models_match_tensorflow(backend, tmp_path):
    backend_or_skip(backend)
    rng = np.random.default_rng(0)
    inputs, tf_outputs = {}, []
    for i, config in enumerate(LAYERS):
        x = sequence(rng, config)
        layer, _ = tf_layer(config, x)
        # Weights large enough that the trace matters; eta kept as configured.
        weights = [rng.normal(size=v.shape).astype("float32") * 0.7 if v.ndim else v
                   for v in layer.get_weights()]
        _, cell = tf_layer(config, x, weights)
        tf_outputs.append(cell)
        inputs.update({f"x{i}": x, f"n{i}": len(weights)})
        inputs.update({f"w{i}_{k}": w for k, w in enumerate(weights)})
    # A model saved here (TensorFlow), loaded there; and one saved there, loaded here.
    saved_x = sequence(rng, SAVED)
    model_in = keras.Input((None, SAVED["units"]))
    model = keras.Model(model_in, PlasticRNN(**SAVED)(model_in))
    model.set_weights([rng.normal(size=w.shape).astype("float32") if w.ndim else w
                       for w in model.get_weights()])
    model.save(tmp_path / "saved_tf.keras")
    inputs.update(load_x0=saved_x, save_x=sequence(rng, SAVED_BY_WORKER))
    np.savez(tmp_path / "inputs.npz", **inputs)

    spec = dict(dir=str(tmp_path), layers=LAYERS, load=[str(tmp_path / "saved_tf.keras")],
                save=SAVED_BY_WORKER, kernel=[])
    if backend == "jax":
        spec["kernel"] = [dict(c, seed=i, batch=2, steps=40, units=4) for i, c in enumerate(KERNEL)]
    report, out = run_worker(backend, spec, tmp_path)

    assert report["backend"] == backend
    for i, cell in enumerate(tf_outputs):
        for k, want in enumerate(cell):  # ys, y_T, hebb_T
            np.testing.assert_allclose(out[f"cell{i}_{k}"], want, atol=1e-5, err_msg=f"{i} {k}")
            np.testing.assert_allclose(out[f"fused{i}_{k}"], want, atol=1e-5, err_msg=f"{i} {k}")
    if backend == "jax":  # the fused path's gradients: autodiff through the cell loop
        assert max(report["gaps"]) < 1e-4, report["gaps"]
        assert max(report["kernel"]) < 1e-5, report["kernel"]
    np.testing.assert_allclose(out["loaded0"], model(saved_x), atol=1e-5)
    loaded = keras.saving.load_model(report["saved"])
    np.testing.assert_allclose(loaded(inputs["save_x"]), out["saved"], atol=1e-5)


@pytest.mark.slow
def test_jax_kernel_every_option_400_steps(tmp_path):
    backend_or_skip("jax")
    np.savez(tmp_path / "inputs.npz", unused=0)
    cases = [dict(c, seed=i, batch=2, steps=400, units=4) for i, c in enumerate(KERNEL_SLOW)]
    report, _ = run_worker("jax", dict(dir=str(tmp_path), kernel=cases), tmp_path)
    errors = {json.dumps(c): e for c, e in zip(KERNEL_SLOW, report["kernel"])}
    assert max(errors.values()) < 1e-5, errors


HIDE_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                raise ImportError(f"No module named {name!r} (hidden by the test)")

    sys.meta_path.insert(0, NoTensorFlow())
    import numpy as np
    import keras
    import hebbkeras
    layer = hebbkeras.PlasticRNN(4, input_mode="add", return_sequences=True)
    y = keras.ops.convert_to_numpy(layer(np.ones((1, 3, 4), "float32")))
    errors = []
    for name in ("episodes", "images", "native"):
        try:
            getattr(hebbkeras, name)
        except ImportError as error:
            errors.append(str(error))
    try:
        from hebbkeras import episodes  # noqa: F401
    except ImportError as error:
        errors.append(str(error))
    print(json.dumps(dict(shape=list(y.shape), errors=errors,
                          tf_loaded=any(m.startswith("tensorflow") for m in sys.modules))))
""")


def test_import_and_layers_without_tensorflow():
    backend_or_skip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", HIDE_TENSORFLOW], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["shape"] == [1, 3, 4]
    assert not report["tf_loaded"]
    assert len(report["errors"]) == 4, report
    for message in report["errors"]:
        assert "needs TensorFlow" in message and "pip install tensorflow" in message, message
