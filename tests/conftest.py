"""Helpers every test file shares: the repository root, fresh processes, small tasks, CSVs."""

import csv
import os
import pickle
import signal
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def python_env(**overrides):
    """The environment of a child Python that imports this tree.

    `os.environ` with PYTHONPATH=ROOT and TF_CPP_MIN_LOG_LEVEL=3, then
    `overrides`; an override of None removes that variable.
    """
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_python(args, cwd=ROOT, env=None, timeout=600):
    """Runs `python *args` (e.g. `["-m", "export", "--help"]`) in a fresh process.

    `env` holds overrides for `python_env`. Returns the `CompletedProcess`,
    with stdout and stderr as text.
    """
    return subprocess.run([PYTHON, *args], cwd=cwd, env=python_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def _default_sigint():
    # A shell starts background jobs (`pytest ... &`, nohup) with SIGINT ignored and
    # children inherit that: Python then installs no KeyboardInterrupt handler and
    # the Ctrl-C tests' SIGINT would do nothing.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_python(args, env=None):
    """`python ARGS` started in the background (a Popen with text pipes), SIGINT at its
    default (so that it can be stopped as Ctrl-C stops it); `env` as in run_python."""
    return subprocess.Popen([PYTHON, *args], cwd=ROOT, env=python_env(**(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def read_csv(path):
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(path, key, kind=float):
    return [kind(r[key]) for r in read_csv(path)]


def tiny_binary_config(run_dir, **changes):
    """A binary-task config small enough to train in a second or two (6 steps, 3 epochs of 2)."""
    from hebbkeras.tasks import episodes
    from trainers import binary

    values = dict(pattern_size=8, schedule=episodes.Schedule(2, 2, 1, 1, 3), episodes=12,
                  batch_size=2, steps_per_epoch=2, learning_rate=0.01, seed=3, verbose=0,
                  run_dir=str(run_dir))
    values.update(changes)
    return binary.BinaryConfig(**values)


@pytest.fixture
def tiny_binary(tmp_path):
    """A factory of `tiny_binary_config`s in `tmp_path / name`."""

    def make(name="run", **changes):
        return tiny_binary_config(changes.pop("run_dir", tmp_path / name), **changes)

    return make


def copy_run(src, dst):
    """Copies the run directory `src` to `dst`, its config.json's run_dir made `dst`.

    Far cheaper than training again: a test that resumes or damages a finished
    or interrupted run works on its own copy of a run other tests share.
    """
    import json
    import shutil

    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["run_dir"] = str(dst)
    with open(path, "w") as f:
        json.dump(config, f)
    return dst


def stop_at(step):
    """A Keras callback that raises KeyboardInterrupt (as Ctrl-C would) after training step `step`."""
    import keras

    class StopAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == step:
                raise KeyboardInterrupt

    return StopAt()


def model_weights(path):
    import keras

    import hebbkeras  # noqa: F401  (registers the custom objects)

    return keras.models.load_model(path).get_weights()


def assert_same_weights(path, reference, rtol=1e-6, atol=1e-7):
    """The weights of the .keras files `path` and `reference` agree (and are as many)."""
    import numpy as np

    got, want = model_weights(path), model_weights(reference)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)

# --- Serving: SavedModels loaded as TF Serving loads them ------------------------

SERVING_CLIENT = textwrap.dedent(
    """
    import pickle, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    path, requests_path, results_path = sys.argv[1:]
    with open(requests_path, "rb") as f:
        requests = pickle.load(f)
    saved = saved_model_pb2.SavedModel()
    with open(path + "/saved_model.pb", "rb") as f:
        saved.ParseFromString(f.read())
    dtypes = {i.name: tf.as_dtype(i.dtype)
              for s in saved.meta_graphs[0].signature_def.values() for i in s.inputs.values()}

    def open_session(raw):
        graph = tf.Graph()
        input_map = {}
        if raw:
            with graph.as_default():
                input_map = {n: tf.compat.v1.placeholder(d, shape=None) for n, d in dtypes.items()}
        sess = tf.compat.v1.Session(graph=graph)
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path, input_map=input_map)
        return sess, meta, input_map

    sessions = {"run": open_session(False), "raw": open_session(True)}
    results = []
    for mode, signature_name, inputs in requests:
        sess, meta, input_map = sessions[mode]
        signature = meta.signature_def[signature_name]
        feed = {}
        for key, value in inputs.items():
            if isinstance(value, tuple):  # ("ref", i, output): an earlier result
                value = results[value[1]]["outputs"][value[2]]
            name = signature.inputs[key].name
            feed[input_map.get(name, name)] = value
        fetch = {k: v.name for k, v in signature.outputs.items()}
        try:
            results.append({"outputs": sess.run(fetch, feed)})
        except Exception as e:
            results.append({"error": f"{type(e).__name__}: {e}"})
    results.append({"modules": sorted(m for m in sys.modules if m.split(".")[0] in ("hebbkeras", "trainers", "export"))})
    with open(results_path, "wb") as f:
        pickle.dump(results, f)
    """
)


def serve(path, requests, tmp_path):
    """Runs `[(mode, signature, inputs)]` against the SavedModel at `path` as TF Serving does.

    In one fresh process that imports no project code: the TF1 loader in a
    Session, inputs fed by the signature's tensor names; mode "raw" feeds
    placeholders of unknown shape (what TF Serving feeds), "run" the graph's own.
    An input `("ref", i, name)` is output `name` of request `i`. Returns one
    `{"outputs": {...}}` or `{"error": "Type: message"}` per request.
    """
    requests_path, results_path = tmp_path / "requests.pkl", tmp_path / "results.pkl"
    with open(requests_path, "wb") as f:
        pickle.dump(requests, f)
    proc = run_python(["-c", SERVING_CLIENT, str(path), str(requests_path), str(results_path)],
                      cwd=tmp_path, env={"PYTHONPATH": None}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(results_path, "rb") as f:
        results = pickle.load(f)
    assert results[-1] == {"modules": []}, "the client imported project code"
    return results[:-1]


# --- The native CPU kernels (hebbkeras.kernels.native) -------------------------------
# Where a GPU (or TPU) is visible the fused path never uses the native CPU
# kernels (`hebbkeras.kernels.native.available()` is False there), so tests that need
# them are marked `@pytest.mark.native_cpu` (or `pytest.param(..., marks=
# pytest.mark.native_cpu)`) and are skipped on such machines, with the reason.

def native_cpu_skip_reason():
    """Why the native-kernel tests cannot run here, or None where they can."""
    import tensorflow as tf

    found = [d.name for kind in ("GPU", "TPU") for d in tf.config.list_logical_devices(kind)]
    if found:
        return (f"needs the native CPU kernels, which the fused path does not use where a "
                f"GPU or TPU is visible ({', '.join(found)})")
    return None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "native_cpu: needs hebbkeras.kernels.native's CPU kernels on the fused path "
        "(skipped where a GPU or TPU is visible)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("native_cpu"):
        reason = native_cpu_skip_reason()
        if reason:
            pytest.skip(reason)


# -- which fused kernel ran -------------------------------------------------

@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls of the XLA kernel and of `hebbkeras.kernels.fused`, to be sure which ran."""
    from hebbkeras.kernels import fused, xla_fused

    calls = {"xla": [], "fused": []}
    for module, key in ((xla_fused, "xla"), (fused, "fused")):
        original = module.plastic_sequence

        def counting(*args, _original=original, _key=key, **kwargs):
            calls[_key].append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "plastic_sequence", counting)
    return calls


# --- The static step schedule of the XLA kernels (hebbkeras.kernels.schedule) ----------
def schedule_cases(seed=3):
    """`(x, interval)` pairs, `x` time-major `(T, 2, 3)`: clamped patterns held
    for 1-5 steps (held runs, many across chunk starts), a few steps free or
    partly clamped."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cases = []
    for steps, interval in [(1, 1), (9, 1), (9, 4), (13, 13), (23, 5), (30, 8), (40, 7)]:
        patterns = rng.choice([-1.0, 1.0], size=(3, 2, 3))
        held = np.repeat(rng.integers(0, 3, steps), rng.integers(1, 6, steps))[:steps]
        x = patterns[held]
        x[rng.random(steps) < 0.1] = 0.0
        x[rng.random(steps) < 0.1, 1, 2] = 0.0
        cases.append((x, interval))
    return cases


def numpy_kinds(x, clamp_mode, rule, interval):
    """The step schedule by a plain walk over time-major `x`: `(kind, j, k)` flat
    (kinds 0 computed, 1 clamped, 2 padding, 3 held; j, k: position and length).
    """
    import numpy as np

    steps = x.shape[0]
    padded = -(-steps // interval) * interval
    full = [clamp_mode and bool(np.all(x[t] != 0)) for t in range(steps)]
    same = [rule == "hebb" and 0 < t < steps and full[t] and full[t - 1]
            and bool(np.array_equal(x[t], x[t - 1])) for t in range(padded)]
    kind, j, k = [], [], []
    for t in range(padded):
        kind.append(2 if t >= steps else 1 if full[t] else 0)
        first = last = t
        while same[t] and first % interval and same[first - 1]:
            first -= 1
        while same[t] and (last + 1) % interval and same[last + 1]:
            last += 1
        j.append(t - first if same[t] else 0)
        k.append(last - first + 1 if same[t] else 0)
        if same[t] and k[-1] >= 2:
            kind[-1] = 3
    return np.array(kind), np.array(j), np.array(k)


# --- The plasticity rules x the paths that run them (hebbkeras.rules) -------------
# One table drives the equivalence tests of every path against the numpy
# references below, forward and gradients in float64 (tests/test_rules.py; the
# JAX kernel's cases in tests/test_backends.py): a rule here is checked on every
# path listed for it, and a (rule, path) pair not listed must be refused with an
# error naming the rule and the kernel. Adding a rule: its definition in
# hebbkeras/rules/ and its row here (with its numpy form in NUMPY_RULES).
RULE_PATHS = {
    "hebb": ("cell", "fused", "fused_native", "xla_fused", "jax_fused", "dense_ops",
             "dense_fused"),
    "oja": ("cell", "fused", "xla_fused", "jax_fused", "dense_ops", "dense_fused"),
    # Neuromodulated (Backpropamine): PlasticRNN(modulation=...) on the cell loop, the fused
    # kernel (plain ops and native; outside XLA), its static twin inside XLA (xla_modfused)
    # and the checkpointed scans with autodiff per chunk (tf_remat; JAX's cases in
    # tests/test_backends.py: KERNEL_REMAT, KERNEL_MODFUSED).
    "simple": ("cell", "modulated_fused", "modulated_fused_native", "xla_modfused", "tf_remat",
               "jax_remat", "jax_modfused"),
    "retroactive": ("cell", "modulated_fused", "modulated_fused_native", "xla_modfused",
                    "tf_remat", "jax_remat", "jax_modfused"),
}
# The rules whose update also takes the modulation M_t and a clip (their numpy form
# in NUMPY_RULES: `(hebb, E, u, y, eta, M, c) -> (hebb, E)`).
MODULATED = ("simple", "retroactive")
PATHS = ("cell", "fused", "fused_native", "xla_fused", "jax_fused", "dense_ops", "dense_fused",
         "tf_remat", "jax_remat", "modulated_fused", "modulated_fused_native", "jax_modfused",
         "xla_modfused")
JAX_PATHS = ("jax_fused", "jax_remat", "jax_modfused")  # checked in the JAX worker (tests/test_backends.py)

# Each rule's trace update in numpy, written from the equations (not from
# hebbkeras): hebb (batch, pre, post), u presynaptic (batch, pre), y postsynaptic.
NUMPY_RULES = {
    "hebb": lambda hebb, u, y, eta: (1 - eta) * hebb + eta * u[:, :, None] * y[:, None, :],
    "oja": lambda hebb, u, y, eta: hebb + eta * y[:, None, :] * (u[:, :, None]
                                                                 - y[:, None, :] * hebb),
    # Backpropamine: M the modulation, (batch, 1) or per receiving neuron (batch, post),
    # c the clip, E the eligibility trace.
    "simple": lambda hebb, e, u, y, eta, m, c: (
        np.clip(hebb + m[:, None, :] * u[:, :, None] * y[:, None, :], -c, c), e),
    "retroactive": lambda hebb, e, u, y, eta, m, c: (
        np.clip(hebb + m[:, None, :] * e, -c, c),
        (1 - eta) * e + eta * u[:, :, None] * y[:, None, :]),
}


def ops_cell_loop(x, y0, h0, w, alpha, eta, mode, rule):
    """Eqs. (1)-(2) step by step through `hebbkeras.ops.step`, as PlasticRNNCell runs
    them (the autodiff reference): `(ys, hebb_T)`, TensorFlow."""
    import tensorflow as tf

    from hebbkeras import ops

    y, hebb, ys = y0, h0, []
    for t in range(x.shape[1]):
        drive, clamp = (None, x[:, t]) if mode == "clamp" else (x[:, t], None)
        y, hebb = ops.step(y, hebb, w, alpha, eta, drive, clamp, rule)
        ys.append(y)
    return tf.stack(ys, 1), hebb


def rule_path_params(paths=PATHS, refused=False, modulated=None):
    """`pytest.param(rule, path)` of every pair in `RULE_PATHS` among `paths` (or,
    with `refused`, of every pair not in it), of the rules in `MODULATED` only
    (`modulated=True`) or the others (`False`); the native path's are `native_cpu`."""
    import pytest

    out = []
    for rule, runs in RULE_PATHS.items():
        if modulated is not None and (rule in MODULATED) != modulated:
            continue
        for path in paths:
            if (path in runs) != refused:
                marks = [pytest.mark.native_cpu] if path.endswith("_native") else []
                out.append(pytest.param(rule, path, marks=marks, id=f"{rule}-{path}"))
    return out


# --- Interrupted runs: the kill hook, commands on fake data, random interruptions ---------
# `HEBBKERAS_TEST_KILL_IN=PATTERN[@N]` SIGKILLs a command in the middle of the N-th write of
# a file matching PATTERN (`hebbcli.kill_point`; every write of trainers.files and export).
KILL_IN = "HEBBKERAS_TEST_KILL_IN"

# `python -c FAKE_DATA_COMMAND trainers.cifar|trainers.omniglot FLAGS...`: the trainer's
# command line on the tests' fake data (tfds mocked: random CIFAR images, generated glyphs),
# with Ctrl-C handled from the start as `python -m trainers.X` handles it.
FAKE_DATA_COMMAND = textwrap.dedent("""
    import importlib, signal, sys
    import hebbcli
    signal.signal(signal.SIGINT, hebbcli._early_ctrl_c)  # what `python -m` gets from hebbcli
    hebbcli.import_tensorflow()
    sys.path.insert(0, "tests")
    name = sys.argv[1]
    if name == "trainers.cifar":
        from test_cifar import random_raw, split_images
        fake = split_images({"train": random_raw(600, 7), "test": random_raw(100, 8)})
    else:
        from test_omniglot import mock_omniglot, tfds_splits
        fake = mock_omniglot(tfds_splits())
    module = importlib.import_module(name)
    module.define_cli_flags()
    with fake:
        hebbcli.run(module.main, argv=sys.argv[1:], errors=(ValueError,))
""")


def trainer_command(trainer, flags):
    """The arguments of `python` that run `trainer` (e.g. "trainers.binary") with `flags`;
    cifar and omniglot on the fake data of FAKE_DATA_COMMAND."""
    if trainer in ("trainers.cifar", "trainers.omniglot"):
        return ["-c", FAKE_DATA_COMMAND, trainer, *flags]
    return ["-m", trainer, *flags]


def kill_chain(args, points):
    """Runs `python ARGS` once per kill point, each SIGKILLed in the middle of the write that
    the point names (KILL_IN), each resuming what the one before left; then once more, to
    the end. Returns that last run's CompletedProcess."""
    for point in points:
        proc = run_python(args, env={KILL_IN: point})
        assert proc.returncode == -signal.SIGKILL, (point, proc.stdout[-2000:], proc.stderr[-3000:])
    final = run_python(args)
    assert final.returncode == 0, final.stderr[-3000:]
    return final


def interrupt_until_done(args, finished, seconds, rng, most=12):
    """Runs `python ARGS` and stops it at a random moment in `[0.1, 0.7) * seconds` (`seconds`:
    a whole run's time) with SIGINT or SIGKILL (chosen at random), again and again (up to
    `most` times: a resumed run may finish first), then lets it finish;
    `finished()` says when the run is complete. Returns `{"SIGINT": n, "SIGKILL": n}`.

    A Ctrl-C must end the command in one line with exit 130; a run found finished by
    the rerun (stopped after its summary was written) ends with exit 2 and says so.
    """
    stops = {"SIGINT": 0, "SIGKILL": 0}
    for attempt in range(most + 50):
        proc = start_python(args)
        if attempt < most:
            try:
                proc.wait(timeout=rng.uniform(0.1, 0.7) * seconds)
            except subprocess.TimeoutExpired:
                how = rng.choice(["SIGINT", "SIGKILL"])
                proc.send_signal(getattr(signal, how))
                stops[how] += 1
        out, err = proc.communicate(timeout=900)
        code = proc.returncode
        if code == 130:
            lines = err.strip().splitlines()
            assert "Traceback" not in err and lines and lines[-1].startswith("interrupted"), err[-3000:]
        elif code == 2:
            assert "holds a finished run" in err, err[-3000:]
        elif code == -signal.SIGINT:  # after the run was complete, while Python shut down
            assert finished(), (code, out[-2000:], err[-3000:])  # (a shell reports 130)
        else:
            assert code in (0, -signal.SIGKILL), (code, out[-2000:], err[-3000:])
        if finished():
            return stops
    raise AssertionError(f"the run did not finish: {stops}")
