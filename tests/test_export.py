"""`export/`: SavedModels served the way TF Serving serves them, against the Keras model.

The exports are loaded in a fresh Python process that cannot import hebbkeras
(its working directory is a temporary one, PYTHONPATH is unset), through the TF1
`saved_model` loader in a `tf.compat.v1.Session`, and run by the tensor names
of their SignatureDefs. Two feeding modes:

    "run": `sess.run` with the signature's placeholders, as `saved_model_cli run`
           does; Python rejects a wrong shape before the graph runs.
    "raw": the placeholders are replaced (`input_map`) by ones of unknown shape,
           so the graph receives whatever is sent, as in TF Serving (C++), which
           does not compare requests with the signature's shapes.
"""

import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import export
import hebbkeras
from export import exporter
from hebbkeras import episodes
from trainers import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
SCHEDULE = episodes.Schedule(
    num_items=2, presentation_steps=2, gap_steps=1, presentations=2, query_steps=2
)
PATTERN = 8
TOL = dict(rtol=1e-5, atol=1e-5)

CLIENT = textwrap.dedent(
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
    names = {i.name for s in saved.meta_graphs[0].signature_def.values() for i in s.inputs.values()}

    def open_session(raw):
        graph = tf.Graph()
        input_map = {}
        if raw:
            with graph.as_default():
                input_map = {n: tf.compat.v1.placeholder(tf.float32, shape=None) for n in names}
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
    """Runs `[(mode, signature, inputs)]` in one fresh process; returns the results."""
    requests_path, results_path = tmp_path / "requests.pkl", tmp_path / "results.pkl"
    with open(requests_path, "wb") as f:
        pickle.dump(requests, f)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [PYTHON, "-c", CLIENT, str(path), str(requests_path), str(results_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(results_path, "rb") as f:
        results = pickle.load(f)
    assert results[-1] == {"modules": []}, "the client imported project code"
    return results[:-1]


def cli(*args, cwd=ROOT):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return subprocess.run(
        [PYTHON, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def make_run(run_dir, plasticity="per_connection", seed=0):
    """A run directory with config.json and a model.keras whose weights matter."""
    config = common.Config(
        pattern_size=PATTERN, schedule=SCHEDULE, plasticity=plasticity, run_dir=str(run_dir),
        verbose=0,
    )
    model = common.build_model(config)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.path.endswith(("/w", "/alpha")):
            v.assign(rng.normal(0, 0.5, v.shape))
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write(config.to_json())
    model.save(os.path.join(run_dir, "model.keras"))
    return config, model


def keras_model(config, model, schedule):
    """An independent Keras model of `schedule`'s episode length with `model`'s weights."""
    other = common.build_model(dataclasses.replace(config, schedule=schedule))
    other.set_weights(model.get_weights())
    return other


def complete_case(config, model, k, seed, batch=3):
    """Patterns, queries and the Keras completion of the episodes `complete` documents."""
    schedule = dataclasses.replace(config.schedule, num_items=k)
    rng = np.random.default_rng(seed)
    patterns = rng.choice([-1.0, 1.0], size=(batch, k, PATTERN)).astype(np.float32)
    query = patterns[:, -1] * (rng.random((batch, PATTERN)) < 0.5)
    inputs = np.stack([
        episodes.schedule_inputs(p, q, schedule, tf.constant(export.ORDER_SEED, tf.int64)).numpy()
        for p, q in zip(patterns, query)
    ])
    want = keras_model(config, model, schedule)(inputs).numpy()[:, :PATTERN]
    return patterns, query.astype(np.float32), want


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A model exported by the command line: `(config, model, version_dir)`."""
    base = tmp_path_factory.mktemp("export")
    config, model = make_run(base / "run")
    proc = cli("export", "--model", str(base / "run" / "model.keras"),
               "--export_dir", str(base / "models" / "tiny"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = base / "models" / "tiny" / "1"
    assert path.is_dir() and str(path) in proc.stdout
    return config, model, path


def test_signatures_match_keras_in_a_fresh_tf1_session(exported, tmp_path):
    config, model, path = exported
    rng = np.random.default_rng(1)
    n = config.units
    # serving_default: episodes of the trained length and of another length.
    long = dataclasses.replace(SCHEDULE, presentations=3)
    episodes_ = {
        s: rng.choice([-1.0, 0.0, 1.0], size=(2, s.steps, n)).astype(np.float32)
        for s in (SCHEDULE, long)
    }
    for x in episodes_.values():
        x[..., -1] = 1.0
    # complete: the trained k, fewer and more.
    cases = {k: complete_case(config, model, k, seed=k) for k in (1, 2, 3)}
    # step: the whole episode from zeros, and the same episode in two chunks.
    x = episodes_[long]
    reference = hebbkeras.PlasticRNN.from_config(
        {**model.get_layer("plastic_rnn").get_config(), "return_sequences": True, "return_state": True}
    )
    reference.build(x.shape)
    reference.set_weights(model.get_layer("plastic_rnn").get_weights())
    ys, y_last, hebb_last = (t.numpy() for t in reference(x))
    zeros = {"y": np.zeros((2, n), np.float32), "hebb": np.zeros((2, n, n), np.float32)}

    requests = [("run", "serving_default", {"episode": e}) for e in episodes_.values()]
    requests += [("run", "complete", {"patterns": p, "query": q}) for p, q, _ in cases.values()]
    requests += [
        ("raw", "step", {"inputs": x, **zeros}),
        ("raw", "step", {"inputs": x[:, :7], **zeros}),
        ("run", "step", {"inputs": x[:, 7:], "y": ("ref", 6, "y"), "hebb": ("ref", 6, "hebb")}),
    ]
    results = serve(path, requests, tmp_path)
    first_chunk, second = results[6]["outputs"], results[7]["outputs"]

    for (s, e), r in zip(episodes_.items(), results[:2]):
        want = keras_model(config, model, s)(e).numpy()[:, :PATTERN]
        np.testing.assert_allclose(r["outputs"]["completion"], want, **TOL)
    for (_, _, want), r in zip(cases.values(), results[2:5]):
        np.testing.assert_allclose(r["outputs"]["completion"], want, **TOL)
    whole = results[5]["outputs"]
    np.testing.assert_allclose(whole["outputs"], ys, **TOL)
    np.testing.assert_allclose(whole["y"], y_last, **TOL)
    np.testing.assert_allclose(whole["hebb"], hebb_last, **TOL)
    np.testing.assert_allclose(whole["y"][:, :PATTERN], results[1]["outputs"]["completion"], **TOL)
    # Streaming: two requests carrying the state equal one request.
    np.testing.assert_allclose(second["y"], whole["y"], **TOL)
    np.testing.assert_allclose(second["hebb"], whole["hebb"], **TOL)
    np.testing.assert_allclose(
        np.concatenate([first_chunk["outputs"], second["outputs"]], 1), whole["outputs"], **TOL
    )
    assert np.abs(whole["hebb"]).max() > 1e-3  # the trace did something


def test_bad_requests_name_the_shape_and_serving_goes_on(exported, tmp_path):
    config, model, path = exported
    n = config.units
    patterns, query, want = complete_case(config, model, 2, seed=7)
    good = ("complete", {"patterns": patterns, "query": query})
    nan = patterns.copy()
    nan[0, 1, 3] = np.nan
    episode = np.ones((2, SCHEDULE.steps, n), np.float32)
    bad = [
        # (signature, inputs, expected in the graph's message, in Python's)
        ("complete", {"patterns": patterns[..., :5], "query": query}, "[batch, k, 8]", "(None, None, 8)"),
        ("complete", {"patterns": patterns, "query": query[:, None]}, "[batch, 8]", "(None, 8)"),
        ("complete", {"patterns": patterns[0], "query": query}, "[batch, k, 8]", "(None, None, 8)"),
        ("complete", {"patterns": nan, "query": query}, "[batch, k, 8]", "NaN"),
        ("complete", {"patterns": np.ones((2, 5, 8), np.float32), "query": query[:2]}, "1 <= k <= 4", "1 <= k <= 4"),
        ("complete", {"patterns": np.ones((2, 0, 8), np.float32), "query": query[:2]}, "1 <= k <= 4", "1 <= k <= 4"),
        ("complete", {"patterns": patterns, "query": query[:1]}, "same batch size", "same batch size"),
        ("serving_default", {"episode": episode[0]}, f"[batch, time, {n}]", f"(None, None, {n})"),
        ("serving_default", {"episode": episode[..., :-1]}, f"[batch, time, {n}]", f"(None, None, {n})"),
        ("step", {"inputs": episode, "y": np.zeros((2, n), np.float32),
                  "hebb": np.zeros((2, n, n - 1), np.float32)}, f"[batch, {n}, {n}]", f"(None, {n}, {n})"),
    ]
    requests = []
    for mode in ("raw", "run"):
        for name, inputs, _, _ in bad:
            requests += [(mode, name, inputs), (mode, *good)]
    results = serve(path, requests, tmp_path)
    for i, r in enumerate(results):
        mode, (name, inputs, in_graph, in_python) = requests[i][0], bad[(i // 2) % len(bad)]
        if i % 2:  # the good request after a bad one
            np.testing.assert_allclose(r["outputs"]["completion"], want, **TOL)
            continue
        assert "error" in r, (mode, name, {k: v.shape for k, v in inputs.items()})
        assert (in_graph if mode == "raw" else in_python) in r["error"], r["error"]
        if mode == "raw" or in_python == in_graph:
            assert "InvalidArgumentError" in r["error"]


def test_cli_versions_and_overwrite(exported, tmp_path):
    config, model, path = exported
    base = path.parent
    assert export.list_versions(base) == [1]
    proc = cli("export", "--model", str(path.parent.parent.parent / "run" / "model.keras"),
               "--export_dir", str(base), "--version", "1")
    assert proc.returncode != 0
    assert "exists" in proc.stderr and "--overwrite" in proc.stderr, proc.stderr[-2000:]
    assert export.list_versions(base) == [1]


def test_versions_overwrite_and_failed_check(tmp_path, monkeypatch):
    config, model = make_run(tmp_path / "run", seed=3)
    model_path = tmp_path / "run" / "model.keras"
    base = tmp_path / "models" / "m"
    assert export.export_model(str(model_path), str(base), verbose=False) == str(base / "1")
    assert export.export_model(model, str(base), config=config, verbose=False) == str(base / "2")
    with pytest.raises(ValueError, match="exists.*overwrite"):
        export.export_model(model, str(base), version=2, config=config, verbose=False)
    (base / "2" / "marker").write_text("old")
    export.export_model(model, str(base), version=2, overwrite=True, config=config, verbose=False)
    assert not (base / "2" / "marker").exists()

    # A SavedModel that computes something else is not kept, and the old version stays.
    real = exporter.run_signature

    def off_by_a_little(path, requests):
        results = real(path, requests)
        results[1]["completion"] = results[1]["completion"] + 1e-3
        return results

    monkeypatch.setattr(exporter, "run_signature", off_by_a_little)
    (base / "2" / "marker").write_text("old")
    for version, overwrite in ((None, False), (2, True)):
        with pytest.raises(export.ExportCheckError, match="'complete'.*differs"):
            export.export_model(model, str(base), version=version, overwrite=overwrite,
                                config=config, verbose=False)
    assert sorted(os.listdir(base)) == ["1", "2"]  # no version 3, no temporary directory
    assert (base / "2" / "marker").read_text() == "old"


def test_exports_use_stock_ops_only_though_training_used_native_kernels(exported, tmp_path):
    """The fused path's native kernels (hebbkeras.native) never reach a SavedModel,
    and a SavedModel holding one is caught."""
    _, _, path = exported
    assert hebbkeras.native.available()  # so the exporting process (same cache) had them
    assert exporter.custom_ops(str(path)) == []

    class WithNativeOp(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 3, 3], tf.float32)])
        def update(self, hebb):
            v = tf.ones([1, 3])
            return hebbkeras.native.load().hebbkeras_trace_update(hebb, 1.0, 0.5, v, v, False)

    tf.saved_model.save(WithNativeOp(), str(tmp_path / "bad"))
    assert exporter.custom_ops(str(tmp_path / "bad")) == ["HebbkerasTraceUpdate"]


def test_schedule_must_match_the_model(tmp_path):
    config, model = make_run(tmp_path / "run")
    other = dataclasses.replace(SCHEDULE, presentations=3)
    with pytest.raises(ValueError, match="disagrees with the training config"):
        export.export_model(model, str(tmp_path / "m"), config=config, schedule=other)
    with pytest.raises(ValueError, match=f"episodes of {other.steps} steps.*built for {SCHEDULE.steps}"):
        export.export_model(model, str(tmp_path / "m"), schedule=other)
    with pytest.raises(ValueError, match="pattern_size=5 needs an input width of 6"):
        export.export_model(model, str(tmp_path / "m"), schedule=SCHEDULE, pattern_size=5)
    assert not os.path.exists(tmp_path / "m") or os.listdir(tmp_path / "m") == []


def test_networks_without_trace_or_step(tmp_path):
    """plasticity="none": `step` carries only `y`. An LSTM network: no `step`."""
    config, model = make_run(tmp_path / "run", plasticity="none")
    path = export.export_model(model, str(tmp_path / "rnn"), config=config, verbose=False)
    inputs = keras.Input((SCHEDULE.steps, PATTERN + 1))
    lstm = keras.Model(inputs, keras.layers.Dense(PATTERN, "tanh")(keras.layers.LSTM(12)(inputs)))
    lstm_path = export.export_model(lstm, str(tmp_path / "lstm"), schedule=SCHEDULE, verbose=False)
    for p, names in ((path, {"serving_default", "complete", "step"}),
                     (lstm_path, {"serving_default", "complete"})):
        meta = tf.saved_model.load(p).signatures
        assert set(meta) == names
    step = tf.saved_model.load(path).signatures["step"]
    assert set(step.structured_input_signature[1]) == {"inputs", "y"}
    assert set(step.structured_outputs) == {"y", "outputs"}


def test_trained_model_completes_held_out_query_as_in_keras(tmp_path):
    """What `python -m trainers.binary --pattern_size 16 --episodes 20 ...` runs."""
    run_dir = tmp_path / "run"
    schedule = episodes.Schedule(num_items=2, presentation_steps=3, gap_steps=1,
                                 presentations=2, query_steps=2)
    common.run(common.Config(pattern_size=16, schedule=schedule, episodes=20, steps_per_epoch=10,
                             learning_rate=0.01, run_dir=str(run_dir), verbose=0))
    path = export.export_model(str(run_dir / "model.keras"), str(tmp_path / "models" / "b"), verbose=False)
    config = common.Config.from_json((run_dir / "config.json").read_text())
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    # Held out: patterns from a seed the training episodes never used.
    items = np.stack([
        episodes.binary_patterns(tf.constant([987654, b], tf.int64), 2, 16).numpy() for b in range(8)
    ])
    target = items[np.arange(8), np.arange(8) % 2]
    erase = episodes.erase_random_bits(config.erase_fraction)
    query = np.stack([erase(t, tf.constant([5, b], tf.int64)).numpy() for b, t in enumerate(target)])
    seed = tf.constant(export.ORDER_SEED, tf.int64)
    x = np.stack([episodes.schedule_inputs(i, q, config.schedule, seed).numpy()
                  for i, q in zip(items, query)])
    want = model(x).numpy()[:, :16]
    got = serve(path, [("run", "complete", {"patterns": items, "query": query})], tmp_path)[0]
    got = got["outputs"]["completion"]
    np.testing.assert_allclose(got, want, **TOL)
    erased = query == 0
    bit_error = lambda out: np.mean(np.sign(out)[erased] != target[erased])
    assert bit_error(got) == bit_error(want)
