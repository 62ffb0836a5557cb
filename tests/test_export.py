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

The networks are built here as the trainers build theirs (the exporter must
not depend on the trainers): `Input(steps, P + 1) -> [zero padding for the
extra neurons] -> PlasticRNN(P + extra_units)`, with `extra_units = 3`, so that
the layers before the plastic layer are part of every signature.
"""

import dataclasses
import json
import os
import shutil
import signal
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_python, serve, start_python

import export
import hebbkeras
from export import capacity, exporter
from hebbkeras.tasks import episodes

SCHEDULE = episodes.Schedule(
    num_items=2, presentation_steps=2, gap_steps=1, presentations=2, query_steps=2
)
PATTERN = 24  # large enough that a half-erased query names one pattern (capacity test)
EXTRA = 3  # neurons beyond the pattern: the bias neuron and two that get no input
UNITS = PATTERN + EXTRA
WIDTH = PATTERN + 1  # the pattern, then the bias input
TOL = dict(rtol=1e-5, atol=1e-5)



def build(schedule, plasticity="per_connection", extra_units=EXTRA, **layer_args):
    """The trainers' plastic network for `schedule` (no weights assigned); `layer_args`
    for the PlasticRNN (a modulation)."""
    inputs = keras.Input((schedule.steps, WIDTH), name="episode")
    x = inputs
    if extra_units > 1:  # input i drives neuron i; the neurons beyond the input get none
        x = keras.layers.Permute((2, 1))(x)
        x = keras.layers.ZeroPadding1D((0, extra_units - 1))(x)
        x = keras.layers.Permute((2, 1))(x)
    outputs = hebbkeras.PlasticRNN(PATTERN + extra_units, plasticity=plasticity, name="plastic_rnn",
                                   **layer_args)(x)
    return keras.Model(inputs, outputs)


def make_run(run_dir, plasticity="per_connection", seed=0, **layer_args):
    """A run directory with config.json and a model.keras whose weights matter."""
    model = build(SCHEDULE, plasticity, **layer_args)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.path.endswith(("/w", "/alpha", "/modulator_kernel", "/modulator_bias")):
            v.assign(rng.normal(0, 0.5, v.shape))
    settings = {
        "pattern_size": PATTERN, "schedule": dataclasses.asdict(SCHEDULE), "extra_units": EXTRA,
        "plasticity": plasticity, "learning_rate": 0.001, "run_dir": str(run_dir),
        "a_task_setting": [1, "two"],  # a task's config adds keys the exporter does not know
    }
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(settings, f)
    model.save(os.path.join(run_dir, "model.keras"))
    return settings, model


def keras_model(model, schedule):
    """An independent Keras model of `schedule`'s episode length with `model`'s weights."""
    layer = model.get_layer("plastic_rnn").get_config()
    other = build(schedule, **{k: layer[k] for k in ("modulation", "trace_clip", "eta")})
    other.set_weights(model.get_weights())
    return other


def complete_case(model, k, seed, batch=3):
    """Patterns, queries and the Keras completion of the episodes `complete` documents."""
    schedule = dataclasses.replace(SCHEDULE, num_items=k)
    rng = np.random.default_rng(seed)
    patterns = rng.choice([-1.0, 1.0], size=(batch, k, PATTERN)).astype(np.float32)
    query = patterns[:, -1] * (rng.random((batch, PATTERN)) < 0.5)
    inputs = np.stack([
        episodes.schedule_inputs(p, q, schedule, tf.constant(export.ORDER_SEED, tf.int64)).numpy()
        for p, q in zip(patterns, query)
    ])
    want = keras_model(model, schedule)(inputs).numpy()[:, :PATTERN]
    return patterns, query.astype(np.float32), want


def read_asset(path, name):
    with open(os.path.join(path, "assets", name)) as f:
        return json.load(f)


def plant_staging(base):
    """What killed exports leave in `base`, and what live ones have (this process is one).

    Returns `{name: what the next export must do with it}`.
    """
    from export import versions

    dead = run_python(["-c", "import os; print(os.getpid())"])  # no TensorFlow: quick
    dead_pid, host, me = int(dead.stdout), versions.HOST, os.getpid()
    stale = {
        f".tmp-1-{dead_pid}.{host}-abcdefgh": "removed",
        f".old-2-{dead_pid}.{host}-abcdefgh": "restored as version 2",
        f".tmp-7-{dead_pid}.elsewhere-abcdefgh": "removed: another host's, 2 days old",
        ".tmp-8-abcdefgh": "removed: an older exporter's, 2 days old",
        f".tmp-5-{me}.{host}-abcdefgh": "kept: a live export",
        f".tmp-6-{dead_pid}.elsewhere-abcdefgh": "kept: another host's, young",
    }
    for name in stale:
        (base / name / "v").mkdir(parents=True)
        (base / name / "v" / "marker").write_text(name)
        if "2 days" in stale[name]:
            os.utime(base / name, (0, os.path.getmtime(base / name) - 2 * 86400))
    return stale


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A model exported by the command line, with TensorFlow's log level left to it,
    into a base directory where killed and live exports left staging directories."""
    base = tmp_path_factory.mktemp("export")
    settings, model = make_run(base / "run")
    model_path = base / "run" / "model.keras"
    stale = plant_staging(base / "models" / "tiny")
    proc = run_python(["-m", "export", "--model", str(model_path),
                       "--export_dir", str(base / "models" / "tiny")],
                      env={"TF_CPP_MIN_LOG_LEVEL": None})
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = base / "models" / "tiny" / "3"  # 1 and 2 were taken by the staging
    assert path.is_dir() and str(path) in proc.stdout
    return types.SimpleNamespace(settings=settings, model=model, model_path=model_path, path=path,
                                 stderr=proc.stderr, stale=stale)


def test_cli_export_is_quiet_and_keeps_the_runs_settings(exported):
    """No TensorFlow start-up or CUDA-probe noise; the run's config.json travels
    unchanged (keys the exporter does not know included); serving.json says so."""
    import hebbcli

    assert "oneDNN" not in exported.stderr and "I0000" not in exported.stderr, exported.stderr
    if not any(os.path.exists(p) for p in hebbcli.GPU_DEVICE_FILES):  # else level 2: CUDA errors show
        assert exported.stderr == "", exported.stderr
    assert read_asset(exported.path, "config.json") == exported.settings
    serving = read_asset(exported.path, "serving.json")
    assert serving["schedule_from"] == "run_config"
    assert serving["run_config"] == str(exported.model_path.parent / "config.json")
    assert serving["schedule"] == dataclasses.asdict(SCHEDULE)
    assert (serving["pattern_size"], serving["input_width"], serving["units"]) == (PATTERN, WIDTH, UNITS)


def signature_requests(model):
    """Requests of each signature, with the answers Keras (or the plastic layer alone) gives."""
    rng = np.random.default_rng(1)
    # serving_default: episodes of the trained length and of another length.
    long = dataclasses.replace(SCHEDULE, presentations=3)
    episodes_ = {
        s: rng.choice([-1.0, 0.0, 1.0], size=(2, s.steps, WIDTH)).astype(np.float32)
        for s in (SCHEDULE, long)
    }
    for x in episodes_.values():
        x[..., -1] = 1.0
    # complete: the trained k, fewer and more.
    cases = {k: complete_case(model, k, seed=k) for k in (1, 2, 3)}
    # step: the whole episode from zeros, and the same episode in two chunks.
    x = episodes_[long]
    # The reference: the plastic layer alone, on inputs zero-padded in numpy.
    padded = np.concatenate([x, np.zeros(x.shape[:2] + (UNITS - WIDTH,), np.float32)], -1)
    reference = hebbkeras.PlasticRNN.from_config(
        {**model.get_layer("plastic_rnn").get_config(), "return_sequences": True, "return_state": True}
    )
    reference.build(padded.shape)
    reference.set_weights(model.get_layer("plastic_rnn").get_weights())
    zeros = {"y": np.zeros((2, UNITS), np.float32), "hebb": np.zeros((2, UNITS, UNITS), np.float32)}

    requests = [("run", "serving_default", {"episode": e}) for e in episodes_.values()]
    requests += [("run", "complete", {"patterns": p, "query": q}) for p, q, _ in cases.values()]
    requests += [
        ("raw", "step", {"inputs": x, **zeros}),
        ("raw", "step", {"inputs": x[:, :7], **zeros}),
        ("run", "step", {"inputs": x[:, 7:], "y": ("ref", 6, "y"), "hebb": ("ref", 6, "hebb")}),
    ]
    want = {
        "serving_default": [keras_model(model, s)(e).numpy()[:, :PATTERN] for s, e in episodes_.items()],
        "complete": [w for _, _, w in cases.values()],
        "step": [t.numpy() for t in reference(padded)],  # outputs, y, hebb
    }
    return requests, want


def bad_requests(model):
    """Pairs of (bad request, good request), and what the errors and the good answer must be."""
    patterns, query, want = complete_case(model, 2, seed=7)
    good = ("complete", {"patterns": patterns, "query": query})
    nan = patterns.copy()
    nan[0, 1, 3] = np.nan
    episode = np.ones((2, SCHEDULE.steps, WIDTH), np.float32)
    P, W, N = PATTERN, WIDTH, UNITS
    bad = [
        # (signature, inputs, expected in the graph's message, in Python's)
        ("complete", {"patterns": patterns[..., :5], "query": query}, f"[batch, k, {P}]", f"(None, None, {P})"),
        ("complete", {"patterns": patterns, "query": query[:, None]}, f"[batch, {P}]", f"(None, {P})"),
        ("complete", {"patterns": patterns[0], "query": query}, f"[batch, k, {P}]", f"(None, None, {P})"),
        ("complete", {"patterns": nan, "query": query}, f"[batch, k, {P}]", "NaN"),
        ("complete", {"patterns": np.ones((2, 5, P), np.float32), "query": query[:2]}, "1 <= k <= 4", "1 <= k <= 4"),
        ("complete", {"patterns": np.ones((2, 0, P), np.float32), "query": query[:2]}, "1 <= k <= 4", "1 <= k <= 4"),
        ("complete", {"patterns": patterns, "query": query[:1]}, "same batch size", "same batch size"),
        ("serving_default", {"episode": episode[0]}, f"[batch, time, {W}]", f"(None, None, {W})"),
        ("serving_default", {"episode": episode[..., :-1]}, f"[batch, time, {W}]", f"(None, None, {W})"),
        ("step", {"inputs": episode, "y": np.zeros((2, N), np.float32),
                  "hebb": np.zeros((2, N, N - 1), np.float32)}, f"[batch, {N}, {N}]", f"(None, {N}, {N})"),
        ("step", {"inputs": episode, "y": np.zeros((2, W), np.float32),
                  "hebb": np.zeros((2, N, N), np.float32)}, f"[batch, {N}]", f"(None, {N})"),
    ]
    requests = []
    for mode in ("raw", "run"):
        for name, inputs, _, _ in bad:
            requests += [(mode, name, inputs), (mode, *good)]
    return requests, bad, want


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    """The requests of both serving tests, answered by one fresh TF1 client process."""
    signature, signature_want = signature_requests(exported.model)
    bad, bad_cases, bad_want = bad_requests(exported.model)
    results = serve(exported.path, signature + bad, tmp_path_factory.mktemp("serve"))
    assert len(results) == len(signature) + len(bad)
    return types.SimpleNamespace(
        signature=(results[: len(signature)], signature_want),
        bad=(bad, results[len(signature):], bad_cases, bad_want))


def test_signatures_match_keras_in_a_fresh_tf1_session(served):
    results, want = served.signature
    first_chunk, second = results[6]["outputs"], results[7]["outputs"]

    for w, r in zip(want["serving_default"], results[:2]):
        np.testing.assert_allclose(r["outputs"]["completion"], w, **TOL)
    for w, r in zip(want["complete"], results[2:5]):
        np.testing.assert_allclose(r["outputs"]["completion"], w, **TOL)
    ys, y_last, hebb_last = want["step"]
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
    assert np.abs(whole["y"][:, WIDTH:]).max() > 1e-3  # so did the neurons without input


def test_bad_requests_name_the_shape_and_serving_goes_on(served):
    requests, results, bad, want = served.bad
    assert len(results) == len(requests) == 4 * len(bad)
    for i, r in enumerate(results):
        mode, (name, inputs, in_graph, in_python) = requests[i][0], bad[(i // 2) % len(bad)]
        if i % 2:  # the good request after a bad one
            np.testing.assert_allclose(r["outputs"]["completion"], want, **TOL)
            continue
        assert "error" in r, (mode, name, {k: v.shape for k, v in inputs.items()})
        assert (in_graph if mode == "raw" else in_python) in r["error"], r["error"]
        if mode == "raw" or in_python == in_graph:
            assert "InvalidArgumentError" in r["error"]


def test_capacity_counts_the_wrong_signs_of_the_erased_bits(exported):
    """`export.capacity` against a numpy count over the requests it sent and the
    completions the SavedModel gave: every k from 1 to max_items, a last batch
    that is not full, and an output of 0 counted as wrong."""
    info, complete = capacity.load(str(exported.path))
    assert info["max_items"] == 4 and info["schedule"]["num_items"] == SCHEDULE.num_items

    def run(zeros):
        calls = []

        def recording(**inputs):
            out = complete(**{k: tf.constant(v) for k, v in inputs.items()})["completion"].numpy()
            out[:, :zeros] = 0.0  # no answer: wrong whatever the bit
            calls.append((inputs["patterns"], inputs["query"], out))
            return {"completion": out}

        return capacity.measure(recording, info, episodes=7, seed=3, batch=3), calls

    for zeros in (0, 5):
        errors, calls = run(zeros)
        wrong, total, count = {}, {}, {}
        for patterns, query, out in calls:
            k = patterns.shape[1]
            for p, q, o in zip(patterns, query, out):
                known = q != 0
                target = [c for c in p if np.array_equal(c[known], q[known])]
                assert len(target) == 1, "ambiguous query: choose another seed"
                right = np.where(target[0] > 0, o > 0, o < 0)
                wrong[k] = wrong.get(k, 0) + int((~right)[~known].sum())
                total[k] = total.get(k, 0) + int((~known).sum())
                count[k] = count.get(k, 0) + 1
        assert count == dict.fromkeys([1, 2, 3, 4], 7)
        assert total == dict.fromkeys([1, 2, 3, 4], 7 * (PATTERN // 2))
        assert errors == {k: wrong[k] / total[k] for k in count}
        assert 0 < errors[4] < 1
        if zeros:
            assert all(errors[k] > plain[k] for k in count)
        else:
            plain = errors
    # The command's own path (loading, sending tensors) gives the same numbers.
    assert capacity.bit_errors(str(exported.path), episodes=7, seed=3, batch=3)[1] == plain


def test_versions_overwrite_failed_check_and_stale_staging(exported, tmp_path, monkeypatch):
    """Versions are numbered and kept; a failed check keeps nothing; the
    staging directories of exports that stopped are cleaned up, and only those."""
    settings, stale = exported.settings, exported.stale
    model = keras.models.load_model(exported.model_path, compile=False)
    # The command line's export (the fixture's) met the staging `plant_staging` left.
    kept = sorted(n for n, what in stale.items() if what.startswith("kept"))
    restored = next(n for n, what in stale.items() if what.startswith("restored"))
    assert exported.path == exported.path.parent / "3"
    assert sorted(os.listdir(exported.path.parent)) == kept + ["2", "3"]
    assert (exported.path.parent / "2" / "marker").read_text() == restored

    base = tmp_path / "models" / "m"  # a copy, so that the shared export stays as it is
    shutil.copytree(exported.path.parent, base, symlinks=True)
    with pytest.raises(ValueError, match="exists.*--overwrite"):
        export.export_model(model, str(base), version=3, config=settings, verbose=False)
    (base / "3" / "marker").write_text("old")
    export.export_model(model, str(base), version=3, overwrite=True, config=settings, verbose=False)
    assert not (base / "3" / "marker").exists()
    assert read_asset(base / "3", "config.json") == settings

    # A SavedModel that computes something else is not kept, and the old version stays.
    real = exporter.run_signature

    def off_by_a_little(path, requests):
        results = real(path, requests)
        results[1]["completion"] = results[1]["completion"] + 1e-3
        return results

    monkeypatch.setattr(exporter, "run_signature", off_by_a_little)
    (base / "3" / "marker").write_text("old")
    for version, overwrite in ((None, False), (3, True)):
        with pytest.raises(export.ExportCheckError, match="'complete'.*differs"):
            export.export_model(model, str(base), version=version, overwrite=overwrite,
                                config=settings, verbose=False)
    assert sorted(os.listdir(base)) == kept + ["2", "3"]  # no version 4, no staging left
    assert (base / "3" / "marker").read_text() == "old"


def test_ctrl_c_stops_an_export_quietly_and_leaves_nothing(exported, tmp_path):
    """SIGINT while the version is being written: a message, exit status 130, no
    traceback, no staging directory, no base directory (the export made it)."""
    from export import versions

    base = tmp_path / "models" / "m"
    proc = start_python(["-m", "export", "--model", str(exported.model_path), "--export_dir", str(base)])
    staging, deadline = [], time.monotonic() + 300
    while not staging and proc.poll() is None and time.monotonic() < deadline:
        try:  # the export may remove the base directory between a check and a listing
            staging = [n for n in os.listdir(base) if n.startswith(".tmp-")]
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    assert staging, "the export ended before it wrote anything"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert err.splitlines() == [f"interrupted: the export was stopped; {base} holds only complete versions (none)."], err
    # The staging name carries what the next export needs to tell a dead export.
    assert staging[0].startswith(f".tmp-1-{proc.pid}.{versions.HOST}-"), staging
    assert os.listdir(tmp_path) == []


def test_switch_to_a_new_version_is_one_rename(tmp_path, monkeypatch):
    """`versions.commit`: a reader of the version directory finds the old or the
    new one, with or without renameat2, and an interrupted switch keeps the old."""
    from export import versions

    for exchange in (True, False):
        base = tmp_path / str(exchange)
        (base / "1").mkdir(parents=True)
        (base / "1" / "f").write_text("old")
        new = versions.make_staging(str(base), 1)
        with open(os.path.join(new, "f"), "w") as f:
            f.write("new")
        if not exchange:
            monkeypatch.setattr(versions, "_renameat2", lambda a, b, flag: False)
        assert versions.commit(new, str(base), 1, overwrite=True) == str(base / "1")
        assert (base / "1" / "f").read_text() == "new"
        assert os.listdir(base) == ["1"]
    # Without renameat2 an error between the two renames puts the old one back.
    real_rename = os.rename

    def failing(src, dst):
        if os.path.basename(src).startswith(".tmp-"):
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    new = versions.make_staging(str(base), 1)
    with pytest.raises(KeyboardInterrupt):
        versions.commit(new, str(base), 1, overwrite=True)
    assert (base / "1" / "f").read_text() == "new"
    assert sorted(os.listdir(base)) == sorted(["1", os.path.basename(new)])


def test_non_finite_weights_are_refused_before_anything_is_written(exported, tmp_path):
    model = keras.models.load_model(exported.model_path, compile=False)
    alpha = model.get_layer("plastic_rnn").weights[1]
    assert alpha.path.endswith("/alpha")
    value = alpha.numpy()
    value[0, 1], value[2, 2] = np.nan, np.inf
    alpha.assign(value)
    base = tmp_path / "models" / "m"
    with pytest.raises(ValueError, match=r"not finite: .*alpha \(1 NaN, 1 Inf of 729\)"):
        export.export_model(model, str(base), config=exported.settings, verbose=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.native_cpu
def test_exports_use_stock_ops_only_though_training_used_native_kernels(exported, tmp_path):
    """The fused path's native kernels (hebbkeras.kernels.native) never reach a SavedModel,
    and a SavedModel holding one is caught."""
    assert hebbkeras.kernels.native.available()  # so the exporting process (same cache) had them
    assert exporter.custom_ops(str(exported.path)) == []

    class WithNativeOp(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 3, 3], tf.float32)])
        def update(self, hebb):
            v, w = tf.ones([1, 3]), tf.ones([3, 3])
            return hebbkeras.kernels.native.load().hebbkeras_trace_update(hebb, 1.0, w, 0.5, v, v,
                                                                          False, True)

    tf.saved_model.save(WithNativeOp(), str(tmp_path / "bad"))
    assert exporter.custom_ops(str(tmp_path / "bad")) == ["HebbkerasTraceUpdate"]


def test_schedule_must_match_the_model(exported, tmp_path):
    from export import trained

    model, settings = exported.model, exported.settings
    other = dataclasses.replace(SCHEDULE, presentations=3)
    m = str(tmp_path / "m")
    with pytest.raises(ValueError, match="presentations=3 disagrees with the run's settings"):
        export.export_model(model, m, config=settings, schedule=other)
    with pytest.raises(ValueError, match=f"episodes of {other.steps} steps.*built for {SCHEDULE.steps}"):
        export.export_model(model, m, schedule=other)
    with pytest.raises(ValueError, match="pattern_size=5 needs an input width of 6"):
        export.export_model(model, m, schedule=SCHEDULE, pattern_size=5)
    with pytest.raises(ValueError, match="No run config.*default schedule"):
        export.export_model(model, m)
    bad_run = {**settings, "schedule": {**settings["schedule"], "jitter": 1}}
    with pytest.raises(ValueError, match="needs a dict with the fields"):
        export.export_model(model, m, config=bad_run)
    assert not os.path.exists(m)
    # Without a run config nothing claims to be one: which fields came from where.
    assert trained.resolve(model, None, schedule={"presentations": 2, "num_items": 2,
                                                  "presentation_steps": 2, "gap_steps": 1,
                                                  "query_steps": 2}).schedule_from == "arguments"
    default_length = build(episodes.Schedule(), extra_units=1)
    t = trained.resolve(default_length, None)
    assert (t.schedule_from, t.schedule, t.pattern_size, t.run_config) == ("defaults", episodes.Schedule(), PATTERN, None)


def test_networks_without_trace_or_step_or_run_config(tmp_path):
    """plasticity="none": `step` carries only `y`. An LSTM network: no `step`.
    Exported without a run config: no assets/config.json, and serving.json says
    where the schedule came from."""
    settings, model = make_run(tmp_path / "run", plasticity="none")
    path = export.export_model(model, str(tmp_path / "rnn"), config=settings, verbose=False)
    inputs = keras.Input((SCHEDULE.steps, WIDTH))
    lstm = keras.Model(inputs, keras.layers.Dense(PATTERN, "tanh")(keras.layers.LSTM(12)(inputs)))
    lstm_path = export.export_model(lstm, str(tmp_path / "lstm"), schedule=SCHEDULE, verbose=False)
    for p, names in ((path, {"serving_default", "complete", "step"}),
                     (lstm_path, {"serving_default", "complete"})):
        meta = tf.saved_model.load(p).signatures
        assert set(meta) == names
    step = tf.saved_model.load(path).signatures["step"]
    assert set(step.structured_input_signature[1]) == {"inputs", "y"}
    assert set(step.structured_outputs) == {"y", "outputs"}
    assert read_asset(path, "config.json") == settings
    assert sorted(os.listdir(os.path.join(lstm_path, "assets"))) == ["serving.json"]
    serving = read_asset(lstm_path, "serving.json")
    assert (serving["schedule_from"], serving["run_config"], serving["step_state"]) == ("arguments", None, None)


# ---------------------------------------------------------------- neuromodulated networks
# Issue 27, item 5: a modulated PlasticRNN exports and serves like any other; the
# step signature carries the eligibility trace E of "retroactive" mode.
MODULATED = dict(eta=0.5, trace_clip=0.2)  # a fast E and a clip that the episodes reach


@pytest.fixture(scope="module")
def modulated(tmp_path_factory):
    """A "retroactive" network exported by the command line and a "simple" one by
    `export_model`, each served by a fresh TF1 client process."""
    base = tmp_path_factory.mktemp("modulated")
    long = dataclasses.replace(SCHEDULE, presentations=3)
    rng = np.random.default_rng(5)
    x = rng.choice([-1.0, 0.0, 1.0], size=(2, long.steps, WIDTH)).astype(np.float32)
    x[..., -1] = 1.0
    padded = np.concatenate([x, np.zeros(x.shape[:2] + (UNITS - WIDTH,), np.float32)], -1)
    out = {}
    for mode in ("retroactive", "simple"):
        settings, model = make_run(base / mode, seed=2, modulation=mode, **MODULATED)
        if mode == "retroactive":
            proc = run_python(["-m", "export", "--model", str(base / mode / "model.keras"),
                               "--export_dir", str(base / "models" / mode)])
            assert proc.returncode == 0, proc.stderr[-3000:]
            path = base / "models" / mode / "1"
        else:
            path = export.export_model(model, str(base / "models" / mode), config=settings,
                                       verbose=False)
        # The reference: the plastic layer alone (its whole-sequence path,
        # kernels.modulated_fused; the export's step runs the cell loop), inputs padded in numpy.
        layer = model.get_layer("plastic_rnn")
        reference = hebbkeras.PlasticRNN.from_config(
            {**layer.get_config(), "return_sequences": True, "return_state": True})
        reference.build(padded.shape)
        reference.set_weights(layer.get_weights())
        want = [t.numpy() for t in reference(padded)]  # outputs, y, hebb[, E]
        assert reference.last_path.kernel == "modulated_fused"
        names = reference.state_names
        zeros = {n: np.zeros(w.shape, np.float32) for n, w in zip(names, want[1:])}
        patterns, query, completion = complete_case(model, 2, seed=9)
        requests = [
            ("run", "serving_default", {"episode": x}),
            ("run", "complete", {"patterns": patterns, "query": query}),
            ("raw", "step", {"inputs": x, **zeros}),
            ("raw", "step", {"inputs": x[:, :5], **zeros}),
            # The states of request 3 carried into the rest of the episode.
            ("run", "step", {"inputs": x[:, 5:], **{n: ("ref", 3, n) for n in names}}),
            ("raw", "step", {"inputs": x, **{**zeros, names[-1]: zeros["hebb"][:, :, :-1]}}),
        ]
        results = serve(path, requests, tmp_path_factory.mktemp("serve"))
        out[mode] = types.SimpleNamespace(
            path=path, model=model, settings=settings, names=names, want=want, results=results,
            serving_default=keras_model(model, long)(x).numpy()[:, :PATTERN],
            complete=completion)
    return out


@pytest.mark.slow  # its fixture exports through a fresh `python -m export` process (15 s)
@pytest.mark.parametrize("mode, states", [("retroactive", ("y", "hebb", "E")),
                                          ("simple", ("y", "hebb"))])
def test_a_modulated_network_serves_its_states_in_a_fresh_tf1_session(modulated, mode, states):
    """serving_default and complete against the Keras model; step over a whole episode
    against the layer's own whole-episode call (final y, hebb and E included), and two
    chained step requests carrying the states against one; a bad E named; no XLA, no
    hebbkeras op in the SavedModel."""
    case = modulated[mode]
    assert case.names == states
    serving = read_asset(case.path, "serving.json")
    assert serving["step_state"] == list(states)
    step = tf.saved_model.load(str(case.path)).signatures["step"]
    assert set(step.structured_input_signature[1]) == {"inputs", *states}
    assert set(step.structured_outputs) == {"outputs", *states}
    assert exporter.xla_functions(str(case.path)) == [] and exporter.custom_ops(str(case.path)) == []

    r = case.results
    np.testing.assert_allclose(r[0]["outputs"]["completion"], case.serving_default, **TOL)
    np.testing.assert_allclose(r[1]["outputs"]["completion"], case.complete, **TOL)
    whole, first, second = (r[i]["outputs"] for i in (2, 3, 4))
    np.testing.assert_allclose(whole["outputs"], case.want[0], **TOL)
    for name, want in zip(states, case.want[1:]):
        np.testing.assert_allclose(whole[name], want, **TOL, err_msg=name)
        np.testing.assert_allclose(second[name], whole[name], **TOL, err_msg=name)
    np.testing.assert_allclose(np.concatenate([first["outputs"], second["outputs"]], 1),
                               whole["outputs"], **TOL)
    np.testing.assert_allclose(whole["y"][:, :PATTERN], case.serving_default, **TOL)
    # The episode reached the clip (so serving clips as Keras does) and E moved.
    hebb = whole["hebb"]
    assert np.abs(hebb).max() == pytest.approx(MODULATED["trace_clip"])
    assert 0 < np.mean(np.abs(hebb) >= MODULATED["trace_clip"] * (1 - 1e-6)) < 1
    if "E" in states:
        assert np.abs(whole["E"]).max() > 1e-2
    last = states[-1]
    assert "InvalidArgumentError" in r[5]["error"]
    assert f"{last} must be float32 [batch, {UNITS}, {UNITS}]" in r[5]["error"], r[5]["error"]


# ---------------------------------------------------------------- concurrency and kills
# Issue 24, item 2: exports into one base directory at once claim distinct versions.

CLAIM = """
import os, shutil, sys, time
from export import versions
base, source, start, fallback = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
if fallback:  # no renameat2: mkdir of the version, then a rename over it
    versions._renameat2 = lambda a, b, flag: False
staging = versions.make_staging(base, versions.next_version(base))
os.rmdir(staging)
shutil.copytree(source, staging)
version = versions.next_version(base)  # what every process sees before any commit
time.sleep(max(0.0, start - time.time()))
print(versions.commit(staging, base, version, next_free=True))
"""


@pytest.mark.parametrize("count, fallback", [
    (2, False), (3, True),
    pytest.param(10, False, marks=pytest.mark.slow), pytest.param(10, True, marks=pytest.mark.slow)])
def test_exports_started_at_once_claim_distinct_versions(exported, tmp_path, count, fallback):
    """`count` exporters (without TensorFlow: the claim alone) commit a copy of one
    SavedModel into one base at the same moment: each gets its own version, and every
    version is a whole SavedModel that loads and answers as the original."""
    base = tmp_path / "models"
    base.mkdir()
    start = time.time() + 3.0
    procs = [start_python(["-c", CLAIM, str(base), str(exported.path), str(start), str(int(fallback))])
             for _ in range(count)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    claimed = sorted(int(os.path.basename(o[0].strip())) for o in outputs)
    assert claimed == list(range(1, count + 1))
    assert sorted(os.listdir(base)) == sorted(str(v) for v in claimed)  # no staging left
    patterns = np.ones((1, 2, PATTERN), np.float32)
    query = np.ones((1, PATTERN), np.float32)
    want = exporter.run_signature(str(exported.path), [("complete", {"patterns": patterns, "query": query})])
    for v in claimed:
        got = exporter.run_signature(str(base / str(v)), [("complete", {"patterns": patterns, "query": query})])
        np.testing.assert_array_equal(got[0]["completion"], want[0]["completion"])


@pytest.mark.slow
@pytest.mark.parametrize("count", [2, 10])
def test_export_commands_started_at_once_write_distinct_loadable_versions(exported, tmp_path, count):
    """The same as whole `python -m export` commands (each imports TensorFlow: slow)."""
    base = tmp_path / "models"
    procs = [start_python(["-m", "export", "--model", str(exported.model_path),
                           "--export_dir", str(base)]) for _ in range(count)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    assert sorted(int(v) for v in os.listdir(base)) == list(range(1, count + 1))
    for v in range(1, count + 1):
        assert f"{base / str(v)} with" in "".join(o[0] for o in outputs)
        exporter.run_signature(str(base / str(v)), [("serving_default", {
            "episode": np.zeros((1, SCHEDULE.steps, WIDTH), np.float32)})])


KILL_POINTS = ["variables.data-*",
               pytest.param("saved_model.pb", marks=pytest.mark.slow),
               pytest.param("serving.json", marks=pytest.mark.slow),
               pytest.param("fingerprint.pb", marks=pytest.mark.slow),
               pytest.param("variables.index", marks=pytest.mark.slow),
               pytest.param("config.json", marks=pytest.mark.slow),
               pytest.param("commit", marks=pytest.mark.slow)]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_an_export_killed_in_the_middle_of_any_file_leaves_only_whole_versions(
        exported, tmp_path, point):
    """SIGKILL in the middle of writing each file of the export (the test hook), or just
    after the switch: the base holds whole versions only, and the next export removes what
    the killed one left and writes a version that loads."""
    base = tmp_path / "models"
    shutil.copytree(exported.path, base / "1")
    args = ["-m", "export", "--model", str(exported.model_path), "--export_dir", str(base)]
    killed = run_python(args, env={"HEBBKERAS_TEST_KILL_IN": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = sorted(os.listdir(base))
    whole = [d for d in left if d.isdigit()]
    assert whole == (["1", "2"] if point == "commit" else ["1"]), left
    for v in whole:
        exporter.check_export_ops(str(base / v))  # a whole SavedModel: its graph parses
    again = run_python(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Removed .tmp-" in again.stdout or point == "commit"
    assert sorted(os.listdir(base)) == [*whole, str(len(whole) + 1)]
    exporter.run_signature(str(base / str(len(whole) + 1)), [("serving_default", {
        "episode": np.zeros((1, SCHEDULE.steps, WIDTH), np.float32)})])
