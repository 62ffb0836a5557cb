"""hebbkeras on the JAX and PyTorch backends, against TensorFlow.

This process runs TensorFlow and computes the references; each other backend
runs in one fresh process (`tests/backend_worker.py`, the backend is fixed per
process) that checks every case, prints JSON and writes its arrays. The
workers start together (each loads the `.keras` files the others save) and
run with TensorFlow hidden, as where it is not installed. requirements.txt
pins `jax[cpu]` and the CPU build of `torch`; a backend that is not installed
skips. `-k torch` (or `-k jax`) runs only that backend's worker.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import RULE_PATHS, numpy_kinds, schedule_cases

import hebbkeras
from hebbkeras import PlasticDense, PlasticRNN, PlasticRNNCell
from tests.backend_worker import fit_model, fit_step
from tests.test_dense import reference as dense_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "backend_worker.py")

LAYERS = [
    dict(units=6, input_mode="clamp", plasticity="per_connection", rule="hebb", eta=0.3),
    dict(units=6, input_mode="add", input_scale=2.0, plasticity="shared", rule="oja", eta=0.1),
    dict(units=5, input_mode="dense", plasticity="per_connection", rule="oja", eta=0.5,
         trainable_eta=True),
    dict(units=5, input_mode="dense", plasticity="none"),
    # Neuromodulated (Backpropamine): the cell loop on every backend, the clip active.
    dict(units=5, input_mode="dense", plasticity="per_connection", eta=0.3, trainable_eta=True,
         modulation="retroactive", trace_clip=0.5),
    dict(units=6, input_mode="clamp", plasticity="shared", modulation="simple", trace_clip=0.4,
         modulation_fanout=True),
]
# The saved models (the oja rule crosses in the fit model): modulated, the state E too.
SAVED = dict(units=6, input_mode="clamp", plasticity="per_connection", rule="hebb", eta=0.2,
             modulation="retroactive", trace_clip=0.6)
SAVED_BY_WORKER = dict(units=5, input_mode="dense", plasticity="shared", eta=0.3,
                       trainable_eta=True, modulation="simple")

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
# The rule table (conftest.RULE_PATHS) drives these: every rule the JAX kernel runs.
assert {c["rule"] for c in KERNEL} == {r for r, p in RULE_PATHS.items() if "jax_fused" in p}
# The neuromodulated rules on JAX's checkpointed scan (hebbkeras.kernels.jax_remat), the
# clip active; a remainder chunk (40 steps, intervals 7 by default and 6).
KERNEL_REMAT = [
    dict(input_mode="clamp", plasticity="per_connection", rule="simple", eta=0.3, trace_clip=0.5),
    dict(input_mode="add", plasticity="shared", rule="retroactive", eta=0.2, trace_clip=0.5,
         interval=6),
    dict(input_mode="clamp", plasticity="per_connection", rule="retroactive", eta=0.5,
         trace_clip=0.5),
]
assert {c["rule"] for c in KERNEL_REMAT} == {r for r, p in RULE_PATHS.items() if "jax_remat" in p}
# The same cases on the hand-written backward (hebbkeras.kernels.jax_modfused).
KERNEL_MODFUSED = [dict(c, kernel="jax_modfused") for c in KERNEL_REMAT]
assert {c["rule"] for c in KERNEL_MODFUSED} == {
    r for r, p in RULE_PATHS.items() if "jax_modfused" in p}
# Held +-1 clamps land the trace exactly on the clip's bound (an increment, then its
# negative): no derivative exists there, the docs take the mask -c <= S <= c (1), and
# the reference writes it out (JAX's autodiff of jnp.clip takes 1/2: jax_remat and the
# cell loop then differed from jax_modfused and TensorFlow in dL/dx, 5e-2 to 4e-1).
# T = 23 and 17 leave remainder chunks (interval 5); "ties" asserts |S| = c occurs.
KERNEL_TIES = [dict(KERNEL_REMAT[0], kernel=k, steps=t, seed=0, ties=True)
               for k, t in (("jax_remat", 23), ("jax_modfused", 23), ("jax_modfused", 17))] + [
    dict(input_mode="add", plasticity="shared", rule="simple", eta=0.3, trace_clip=0.5,
         kernel="jax_modfused", steps=23, seed=1)]
KERNEL_SLOW = [
    dict(input_mode=m, plasticity=p, rule=r, eta=eta, interval=interval)
    for m in ("clamp", "add")
    for p in ("per_connection", "shared")
    for r in ("hebb", "oja")
    for eta, interval in ((0.01, None), (0.5, None), (0.5, 20), (0.2, None))
]


# One more cell (run by keras.layers.RNN), PlasticDense configs and the model of
# one fit step; the same on every backend.
RNN_CELL = dict(units=4, input_mode="add", input_scale=1.5, plasticity="per_connection",
                rule="hebb", eta=0.4)
DENSE = [
    dict(units=5, activation="softmax", rule="oja", eta=0.3, teacher_mode="add",
         teacher_scale=3.0, use_bias=True, return_sequences=True, return_state=True),
    dict(units=4, activation="tanh", plasticity="shared", rule="hebb", eta=0.5,
         trainable_eta=True, teacher_mode="clamp", return_sequences=True, return_state=True),
    dict(units=4, activation="sigmoid", plasticity="none", use_bias=True),
]
FIT = dict(steps=6, width=3, learning_rate=0.5,
           rnn=dict(units=5, input_mode="dense", plasticity="per_connection", rule="oja",
                    eta=0.3, trainable_eta=True),
           dense=dict(units=4, activation="tanh", use_bias=True, plasticity="shared",
                      rule="hebb", eta=0.2, trainable_eta=True))
OTHER_BACKENDS = ("jax", "torch")


def sequence(rng, config, batch=2, steps=12):
    """Inputs with free, partly clamped, fully clamped and held steps."""
    n = config["units"] if config["input_mode"] != "dense" else 3
    x = np.where(rng.random((batch, steps, n)) < 0.5, np.sign(rng.normal(size=(batch, steps, n))), 0)
    x[:, 2:5] = np.where(rng.random((1, 1, n)) < 0.5, -1.0, 1.0)  # held, every neuron
    x[:, 7] = 0.0
    return x.astype("float32")


def random_weights(rng, layer, scale=0.7):
    """Weights large enough that the trace matters; `eta` kept as configured."""
    return [w if v.name == "eta" else rng.normal(size=w.shape).astype("float32") * scale
            for v, w in zip(layer.weights, layer.get_weights())]


def tf_layer(config, x, weights=None, fused=False):
    layer = PlasticRNN(**config, return_sequences=True, return_state=True, use_fused=fused)
    layer.build(x.shape)
    if weights is not None:
        layer.set_weights(weights)
    return layer, [keras.ops.convert_to_numpy(o) for o in layer(x)]


def tf_outputs_and_grads(layer, x, call=None):
    """The outputs of `call(x)` (default `layer(x)`) and the gradients of
    `backend_worker.probe_loss` (every trainable weight, then `x`), by TensorFlow."""
    import tensorflow as tf

    from tests.backend_worker import as_list, probe_loss

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = as_list((call or layer)(x))
        loss = probe_loss(outputs)
    grads = tape.gradient(loss, layer.trainable_variables + [x])
    return [np.asarray(o) for o in outputs], [np.asarray(g) for g in grads]


def run_workers(backends, spec, folder, timeout=900, extra_env=None):
    """Runs one worker per backend at once (they load each other's saved models):
    `{backend: (report, outputs)}`, or `{backend: stderr}` for a worker that failed.
    When one fails, the others stop waiting for its files (`abort`). `extra_env`:
    more environment variables of the workers."""
    procs, logs = {}, {}
    for backend in backends:
        path = folder / f"spec_{backend}.json"
        path.write_text(json.dumps(spec[backend]))
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **(extra_env or {}))
        logs[backend] = [open(folder / f"{backend}.{kind}", "w+") for kind in ("out", "err")]
        procs[backend] = subprocess.Popen([sys.executable, WORKER, str(path)], env=env,
                                          stdout=logs[backend][0], stderr=logs[backend][1])
    started, results = time.time(), {}
    while len(results) < len(procs):
        for backend, proc in procs.items():
            if backend in results:
                continue
            if proc.poll() is None and time.time() - started > timeout:
                proc.kill()
            if proc.poll() is None:
                continue
            stdout, stderr = [(f.seek(0), f.read(), f.close())[1] for f in logs[backend]]
            if proc.returncode != 0:
                (folder / "abort").write_text(backend)
                results[backend] = f"{backend} worker failed:\n{stderr[-3000:]}"
            else:
                results[backend] = (json.loads(stdout.strip().splitlines()[-1]),
                                    dict(np.load(folder / f"outputs_{backend}.npz")))
        time.sleep(0.2)
    return results


@pytest.fixture(scope="module")
def backend_runs(request, tmp_path_factory):
    """The TensorFlow references (this process) and one run of the worker of each
    installed backend that a selected test asks for (`-k torch`: torch alone),
    started together."""
    folder = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(0)
    inputs, ref = {}, {}
    for i, config in enumerate(LAYERS):
        x = sequence(rng, config)
        layer, _ = tf_layer(config, x)
        weights = random_weights(rng, layer)
        layer, _ = tf_layer(config, x, weights)
        ref[f"cell{i}"], ref[f"grad{i}"] = tf_outputs_and_grads(layer, x)
        inputs.update({f"x{i}": x, f"n{i}": len(weights)})
        inputs.update({f"w{i}_{k}": w for k, w in enumerate(weights)})
    # keras.layers.RNN(PlasticRNNCell): the cell on its own.
    x = sequence(rng, RNN_CELL)
    rnn = keras.layers.RNN(PlasticRNNCell(**RNN_CELL), return_sequences=True, return_state=True)
    rnn.build(x.shape)
    weights = random_weights(rng, rnn)
    rnn.set_weights(weights)
    ref["rnn_cell"], ref["rnn_cell_grad"] = tf_outputs_and_grads(rnn, x)
    inputs.update(cell_x=x, cw_n=len(weights), **{f"cw_{k}": w for k, w in enumerate(weights)})
    # PlasticDense: outputs against test_dense's numpy reference, gradients against
    # TensorFlow's autodiff of the keras.ops path.
    for i, config in enumerate(DENSE):
        x = rng.normal(size=(2, 7, 3)).astype("float32")
        u = np.zeros((2, 7, config["units"]), "float32")
        labels = rng.integers(0, config["units"], (2, 5))
        u[:, :5] = np.eye(config["units"], dtype="float32")[labels]  # one-hot, then untaught
        u[0, 1] = 0.0
        layer = PlasticDense(**config, use_fused=False)
        teacher = u if config.get("teacher_mode") else None
        call = (lambda v, layer=layer, u=teacher: layer(v if u is None else [v, u]))
        call(x)
        weights = random_weights(rng, layer)
        layer.set_weights(weights)
        ref[f"dense{i}"], ref[f"dense_grad{i}"] = tf_outputs_and_grads(layer, x, call)
        # plasticity="none" has no eta; the reference updates an unused trace with one.
        p = {"eta": 0.5, **{v.name: np.float64(w) for v, w in zip(layer.weights, weights)}}
        ys, hebb = dense_reference(
            x.astype("float64"), u.astype("float64"), p, config.get("plasticity", "per_connection"),
            config.get("rule", "hebb"), config["activation"], config.get("teacher_mode"),
            config.get("teacher_scale", 0.0))
        ref[f"dense_numpy{i}"] = [ys, hebb] if config.get("return_state") else [ys[:, -1]]
        inputs.update({f"dx{i}": x, f"du{i}": u, f"dn{i}": len(weights)})
        inputs.update({f"dw{i}_{k}": w for k, w in enumerate(weights)})
    # One fit step; its model, saved here, is loaded by every worker (and theirs here).
    fit_x = rng.normal(size=(3, FIT["steps"], FIT["width"])).astype("float32")
    fit_y = np.sign(rng.normal(size=(3, FIT["dense"]["units"]))).astype("float32")
    model = fit_model(FIT)
    weights = random_weights(rng, model)
    model, ref["fit_logs"] = fit_step(FIT, weights, fit_x, fit_y)
    ref["fit_w"] = model.get_weights()
    ref["fit_pred"] = np.asarray(model(fit_x))
    ref["fit_w0"] = weights
    model.save(folder / "fit_tensorflow.keras")
    inputs.update(fit_x=fit_x, fit_y=fit_y, fw_n=len(weights),
                  **{f"fw_{k}": w for k, w in enumerate(weights)})
    # A model saved here (TensorFlow), loaded there; and one saved there, loaded here.
    saved_x = sequence(rng, SAVED)
    model_in = keras.Input((None, SAVED["units"]))
    model = keras.Model(model_in, PlasticRNN(**SAVED)(model_in))
    model.set_weights([rng.normal(size=w.shape).astype("float32") if w.ndim else w
                       for w in model.get_weights()])
    model.save(folder / "saved_tensorflow.keras")
    ref["saved_tensorflow"] = np.asarray(model(saved_x))
    inputs.update(load_x0=saved_x, save_x=sequence(rng, SAVED_BY_WORKER))
    inputs.update({f"sx{i}": x for i, (x, _) in enumerate(schedule_cases())})
    np.savez(folder / "inputs.npz", **inputs)

    wanted = {item.callspec.params.get("backend") for item in request.session.items
              if "backend_runs" in getattr(item, "fixturenames", ()) and hasattr(item, "callspec")}
    backends = [b for b in OTHER_BACKENDS
                if b in wanted and importlib.util.find_spec(b) is not None]
    spec = {}
    for backend in backends:
        load = [dict(path=str(folder / "saved_tensorflow.keras"), x="load_x0"),
                dict(path=str(folder / "fit_tensorflow.keras"), x="fit_x")]
        for other in backends:
            if other != backend:
                load += [dict(path=str(folder / f"saved_{other}.keras"), x="save_x"),
                         dict(path=str(folder / f"fit_{other}.keras"), x="fit_x")]
        spec[backend] = dict(dir=str(folder), layers=LAYERS, rnn_cell=RNN_CELL, dense=DENSE,
                             fit=FIT, load=load, save=SAVED_BY_WORKER, kernel=[],
                             hide_tensorflow=True)
    if "jax" in spec:
        # Compiling JAX's train step costs more than the rest of its checks: its
        # fit model is saved untrained (fit_epochs=0), so the files still cross.
        spec["jax"]["fit"] = dict(FIT, fit_epochs=0)
        cases = KERNEL + KERNEL_REMAT + KERNEL_MODFUSED + KERNEL_TIES
        spec["jax"]["kernel"] = [dict(dict(seed=i, batch=2, steps=40, units=4), **c)
                                 for i, c in enumerate(cases)]
        spec["jax"]["schedule"] = [dict(interval=interval, clamp_mode=True, rule="hebb")
                                   for _, interval in schedule_cases()]
    runs = run_workers(backends, spec, folder)
    return folder, ref, runs


def close(got, want, what, atol=1e-5):
    """Equal to 1e-5, relative to the largest entry of `want` where that exceeds 1."""
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, atol=atol * scale, err_msg=what)


def worker_run(backend_runs, backend):
    backend_or_skip(backend)
    run = backend_runs[2][backend]
    assert not isinstance(run, str), run
    return run


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_layers_match_tensorflow(backend, backend_runs):
    """PlasticRNN (both paths), keras.layers.RNN(PlasticRNNCell) and PlasticDense:
    outputs as on TensorFlow (PlasticDense: as test_dense's numpy reference), and the
    gradients of every weight and the input as TensorFlow's autodiff (torch, JAX cell loop)."""
    _, ref, _ = backend_runs
    report, out = worker_run(backend_runs, backend)
    assert report["backend"] == backend
    for i in range(len(LAYERS)):
        for k, want in enumerate(ref[f"cell{i}"]):  # ys, y_T, hebb_T
            close(out[f"cell{i}_{k}"], want, f"layer {i} output {k}")
            close(out[f"fused{i}_{k}"], want, f"layer {i} fused output {k}")
        for k, want in enumerate(ref[f"grad{i}"]):  # w, alpha, [eta], [kernel, bias], x
            close(out[f"grad{i}_{k}"], want, f"layer {i} gradient {k}")
    for k, want in enumerate(ref["rnn_cell"]):
        close(out[f"rnn_cell_{k}"], want, f"RNN(PlasticRNNCell) output {k}")
    for i in range(len(DENSE)):
        for k, want in enumerate(ref[f"dense_numpy{i}"]):
            close(out[f"dense{i}_{k}"], want, f"PlasticDense {i} output {k}")
    if backend == "torch":
        for k, want in enumerate(ref["rnn_cell_grad"]):
            close(out[f"rnn_cell_grad_{k}"], want, f"RNN(PlasticRNNCell) gradient {k}")
        for i in range(len(DENSE)):
            for k, want in enumerate(ref[f"dense_grad{i}"]):
                close(out[f"dense_grad{i}_{k}"], want, f"PlasticDense {i} gradient {k}")
    if backend == "jax":  # the fused path's gradients: autodiff through the cell loop
        assert max(report["gaps"]) < 1e-4, report["gaps"]
        assert max(report["kernel"]) < 1e-5, report["kernel"]
        # jax_remat (autodiff) and jax_modfused (hand-written) compute the same float64
        # steps: to rounding
        assert max(report["kernel"][len(KERNEL):]) < 1e-11, report["kernel"]
        for i, (x, interval) in enumerate(schedule_cases()):  # the kernel's step schedule
            for k, want in enumerate(numpy_kinds(x, True, "hebb", interval)):
                np.testing.assert_array_equal(out[f"schedule{i}_{k}"].ravel(), want,
                                              err_msg=f"schedule {i} ({k}: kind, j, k)")


def check_fit_step(ref, report, out):
    """One `fit` step (SGD) left the weights TensorFlow's step leaves, and logged
    the same loss and bit error rate."""
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(ref["fit_w"], ref["fit_w0"]))
    assert moved > 1e-2  # the step changed the weights
    for k, want in enumerate(ref["fit_w"]):
        close(out[f"fit_w_{k}"], want, f"weight {k} after one fit step")
    for key in ("loss", "bit_error"):
        np.testing.assert_allclose(report["fit"][key], ref["fit_logs"][key], rtol=1e-5)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_fit_step_and_saved_models_match_tensorflow(backend, backend_runs):
    """On torch, one `fit` step as on TensorFlow; `.keras` files saved on each
    backend load and predict the same on every other."""
    folder, ref, runs = backend_runs
    report, out = worker_run(backend_runs, backend)
    if backend == "torch":  # JAX saves its model unfitted (see backend_runs)
        check_fit_step(ref, report, out)
    # Only TensorFlow's fused paths keep a model from being compiled (jit, torch.compile).
    assert report["supports_jit"] and all(report["supports_jit"].values()), report["supports_jit"]
    close(out["loaded_saved_tensorflow"], ref["saved_tensorflow"], "saved on TensorFlow")
    close(out["loaded_fit_tensorflow"], ref["fit_pred"], "fitted on TensorFlow")
    # Saved there, loaded here.
    x = dict(np.load(folder / "inputs.npz"))
    loaded = keras.saving.load_model(report["saved"])
    close(loaded(x["save_x"]), out["saved"], f"saved on {backend}")
    loaded = keras.saving.load_model(folder / f"fit_{backend}.keras")
    close(loaded(x["fit_x"]), out["fit_pred"], f"fit model saved on {backend}")
    # And loaded by the other workers.
    for other in OTHER_BACKENDS:
        if other != backend and other in runs and not isinstance(runs[other], str):
            other_out = runs[other][1]
            close(other_out[f"loaded_saved_{backend}"], out["saved"], f"{backend} -> {other}")
            close(other_out[f"loaded_fit_{backend}"], out["fit_pred"], f"{backend} -> {other}")


def run_worker(backend, spec, tmp_path, env=None):
    """One worker, alone: `(report, outputs)`."""
    spec = dict(spec, dir=str(tmp_path))
    result = run_workers([backend], {backend: spec}, tmp_path, extra_env=env)[backend]
    assert not isinstance(result, str), result
    return result


def backend_or_skip(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (requirements.txt pins it)")


@pytest.mark.slow
def test_jax_kernel_every_option_400_steps(tmp_path):
    backend_or_skip("jax")
    np.savez(tmp_path / "inputs.npz", unused=0)
    cases = [dict(c, seed=i, batch=2, steps=400, units=4) for i, c in enumerate(KERNEL_SLOW)]
    report, _ = run_worker("jax", dict(dir=str(tmp_path), kernel=cases), tmp_path)
    errors = {json.dumps(c): e for c, e in zip(KERNEL_SLOW, report["kernel"])}
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_import_and_layers_without_tensorflow(backend, backend_runs):
    """The workers hide TensorFlow (an import hook): every check above ran without
    it, and each TensorFlow-only module raises one ImportError that says so."""
    report, _ = worker_run(backend_runs, backend)
    assert report["tensorflow_loaded"] == []
    assert len(report["tensorflow_only"]) == 2 * len(hebbkeras._TENSORFLOW_MODULES)
    for name, message in report["tensorflow_only"].items():
        assert "needs TensorFlow" in message, (name, message)
        assert "pip install tensorflow" in message, (name, message)


def test_every_tensorflow_module_is_listed():
    """Each hebbkeras module that imports TensorFlow at its top is one that its
    package imports lazily, with the clear error above (read from the source)."""
    package = os.path.join(ROOT, "hebbkeras")
    found = set()
    for folder, _, names in os.walk(package):
        for entry in names:
            if not entry.endswith(".py"):
                continue
            path = os.path.join(folder, entry)
            name = os.path.relpath(path, package)[: -len(".py")].replace(os.sep, ".")
            name = name[: -len(".__init__")] if name.endswith(".__init__") else name
            if re.search(r"^(import|from) tensorflow\b", open(path).read(), re.MULTILINE):
                found.add(name)
    assert "tasks.episodes" in found and "kernels.native" in found  # the scan works
    assert found <= set(hebbkeras._TENSORFLOW_MODULES), found - set(hebbkeras._TENSORFLOW_MODULES)
