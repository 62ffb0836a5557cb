"""Trained `.keras` model -> `MODELS/NAME/<version>/`, a SavedModel that TF Serving loads.

Nothing is written before the settings, the paths and the weights are checked.
The version is then written under a hidden staging name (TF Serving only loads
directories named by an integer), loaded back through the TF1 loader that TF
Serving uses, compared with the Keras model, and only then renamed to its
version number (`export.versions`). A failed check, an error or Ctrl-C removes
what was written, and a directory the export created; staging directories of
exports that were killed are removed by the next export into the same place.
"""

import dataclasses
import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from export import signatures as sig
from export import trained as trained_lib
from export import versions
from export.versions import list_versions, next_version  # noqa: F401 (public API)
from hebbkeras.kernels import native
from hebbkeras.tasks import episodes

# Outputs lie in [-1, 1] (tanh); the saved graph runs the same float32 ops in
# the same order, so anything beyond a few float32 rounding steps is a bug.
ATOL = 1e-5
RTOL = 1e-5
CHECK_SEED = 12345


class ExportCheckError(RuntimeError):
    """The reloaded SavedModel does not compute what the Keras model computes."""


def export_model(
    model,
    export_dir,
    version=None,
    overwrite=False,
    config=None,
    schedule=None,
    pattern_size=None,
    max_items=None,
    check_batch=3,
    verbose=True,
):
    """Exports a trained network for TF Serving; returns the version directory.

    Args:
        model: a path to a `.keras` file, or a `keras.Model` whose input is an
            episode `(batch, steps, pattern_size + 1)` and whose output at the
            last step starts with the `pattern_size` completed bits (the
            trainers' networks).
        export_dir: the model's base directory, `MODELS/NAME` (TF Serving's
            `--model_base_path`); versions are its integer subdirectories.
        version: the version number (default: the next free one).
        overwrite: replace an existing `version` (only after the new one
            passed the check; a failed export leaves the old one in place).
        config: the training run's settings: a dict as in the run's
            `config.json` (`pattern_size`, `schedule` and any other keys), or
            an object with `to_json()`. Default: the `config.json` beside a
            `.keras` path, if there is one. Copied to `assets/config.json`;
            without one, no `assets/config.json` is written.
        schedule, pattern_size: the trained episode schedule (a
            `hebbkeras.tasks.episodes.Schedule`, or a dict of some of its fields) and
            pattern size, for a model without a run config (default: the
            `Schedule` defaults and input width - 1). Given with a run config,
            they must agree with it.
        max_items: the largest `k` that `complete` accepts (default: twice the
            trained number of items).
        check_batch: episodes per signature in the check after writing.
        verbose: print what was written (and what stale staging was removed).

    Raises:
        ValueError: inconsistent settings, non-finite weights, a path that
            cannot be used, or an existing version (the message says which and
            what to do); nothing is written.
        ExportCheckError: the reloaded SavedModel differs from the Keras model;
            nothing is left behind.

    Example:

        export_model("runs/binary/model.keras", "models/binary")  # -> "models/binary/1"
    """
    export_dir = os.fspath(export_dir)
    versions.check_export_dir(export_dir)
    model_path = run_config = source = None
    if isinstance(model, (str, os.PathLike)):
        model_path = os.fspath(model)
        versions.check_model_path(model_path)
        if config is None:
            run_config, source = trained_lib.read_run_config(model_path)
        model = _load(model_path)
    if config is not None:
        run_config = trained_lib.as_settings(config)
    check_weights(model)
    if not _functional(model):
        raise ValueError(
            f"{model_path or 'the model'} is a {type(model).__name__}, a Keras model without "
            "fixed inputs (a maze agent of trainers.maze is one), which has no serving "
            "signature. python -m export writes the networks of trainers.binary, cifar and "
            "compare (complete) and of trainers.omniglot (classify).")
    if _is_classifier(model):
        return _export(export_dir, version, overwrite, verbose, *_classifier(model, run_config, model_path))
    trained = trained_lib.resolve(model, run_config, source, schedule, pattern_size)
    max_items = 2 * trained.schedule.num_items if max_items is None else max_items
    if int(max_items) != max_items or max_items < 1:
        raise ValueError(f"max_items={max_items} must be a positive integer.")
    max_items = int(max_items)

    def write(staging):
        with native.disabled(), tempfile.TemporaryDirectory() as scratch:
            # Stock TensorFlow ops only: TF Serving cannot run hebbkeras's kernels.
            module, signatures, spec = sig.build(
                model, trained.pattern_size, trained.schedule, max_items
            )
            module.assets = _assets(scratch, trained, spec, model_path)
            # Serving needs no gradients; the fused kernel's custom gradient
            # captures loop state that a SavedModel cannot hold.
            options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
            tf.saved_model.save(module, staging, signatures=signatures, options=options)
        check_export(staging, model, spec, check_batch)
        origin = {
            "run_config": f"the run's settings in {trained.run_config_source}",
            "arguments": "the schedule given",
            "defaults": "the default schedule: no config.json was found",
        }[trained.schedule_from]
        return (f"with signatures {', '.join(signatures)} (pattern_size {spec.pattern_size}, "
                f"k from 1 to {spec.max_items}, trained with {spec.schedule}, from {origin})")

    return _export(export_dir, version, overwrite, verbose, write, model_path or model.name)


def _functional(model):
    """Whether `model` has fixed inputs (a Functional or Sequential model, not a subclass)."""
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def _is_classifier(model):
    """A few-shot network (`trainers.omniglot`): a PlasticDense readout taught by labels."""
    from hebbkeras.layers.plastic_dense import PlasticDense

    return any(isinstance(layer, PlasticDense) for layer in model.layers)


def _classifier(model, run_config, model_path):
    """`(write, name)` of the `classify` export of a few-shot network."""
    from export import classify

    if run_config is None:
        raise ValueError(
            "A few-shot network is exported with its run's settings (ways, shots, image_size): "
            "pass RUN_DIR/model.keras with its config.json beside it, or config=.")

    def write(staging):
        with native.disabled():
            module, signatures = classify.build(model, run_config)
            tf.saved_model.save(module, staging, signatures=signatures, options=classify.SAVE_OPTIONS)
        _classifier_assets(staging, run_config, model_path)
        check_export_ops(staging)
        classify.check(staging, model, run_config, error=ExportCheckError)
        ways, shots, size = classify.settings(run_config)
        return (f"with signature classify ({ways}-way {shots}-shot, images resized to "
                f"{size} x {size})")

    return write, model_path or model.name


def _classifier_assets(staging, run_config, model_path):
    assets = os.path.join(staging, "assets")
    os.makedirs(assets, exist_ok=True)
    with open(os.path.join(assets, "config.json"), "w") as f:
        json.dump(run_config, f, indent=2, sort_keys=True)
    with open(os.path.join(assets, "serving.json"), "w") as f:
        json.dump({"signature": "classify", "source": model_path}, f, indent=2)


def _export(export_dir, version, overwrite, verbose, write, name):
    """Writes a new version with `write(staging)` (which also checks it); returns its directory."""
    # Before the version is chosen: an interrupted overwrite may be put back.
    for line in versions.clean_stale(export_dir):
        if verbose:
            print(line)
    next_free = version is None
    version = next_version(export_dir) if version is None else version
    if int(version) != version or version < 0:
        raise ValueError(f"version={version} must be a non-negative integer.")
    version = int(version)
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target) and not overwrite:
        raise ValueError(
            f"{target} exists (versions there: {list_versions(export_dir)}). Pass "
            f"overwrite=True (--overwrite) to replace it, or leave out the version "
            f"to write version {next_version(export_dir)}."
        )

    created = versions.make_dirs(export_dir)
    staging = None
    try:
        staging = versions.make_staging(export_dir, version)
        what = write(staging)
        versions.kill_in_tree(staging)
        # The number is claimed here: another export may have taken it meanwhile.
        target = versions.commit(staging, export_dir, version, overwrite, next_free)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        versions.remove_if_empty(created)
        raise
    if verbose:
        print(f"Exported {name} to {target} {what}.")
    return target


def _load(model_path):
    try:
        return keras.models.load_model(model_path, compile=False)
    except Exception as e:  # noqa: BLE001 (keras raises many kinds for a bad file)
        raise ValueError(
            f"Cannot load model={model_path} ({type(e).__name__}: {str(e)[:300]}). Pass a "
            ".keras file saved by Keras 3, e.g. RUN_DIR/model.keras of a training run."
        ) from None


def check_weights(model):
    """Raises a ValueError naming the weights that hold NaN or Inf."""
    bad = []
    for v in model.weights:
        value = np.asarray(keras.ops.convert_to_numpy(v))
        if not np.issubdtype(value.dtype, np.floating):
            continue
        nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        if nan or inf:
            bad.append(f"{v.path} ({nan} NaN, {inf} Inf of {value.size})")
    if bad:
        raise ValueError(
            f"The model's weights are not finite: {', '.join(bad)}. Its training "
            "diverged; export a model saved before that, or train again (e.g. with a "
            "smaller learning rate). Nothing was written."
        )


def _assets(scratch, trained, spec, model_path):
    """Files in the SavedModel's `assets/`: the serving facts and, if there was
    one, the training run's settings."""
    paths = []
    if trained.run_config is not None:
        paths.append(os.path.join(scratch, "config.json"))
        with open(paths[-1], "w") as f:
            json.dump(trained.run_config, f, indent=2, sort_keys=True)
    paths.append(os.path.join(scratch, "serving.json"))
    with open(paths[-1], "w") as f:
        json.dump(
            {
                "pattern_size": spec.pattern_size,
                "input_width": spec.width,
                "units": spec.units,
                "schedule": dataclasses.asdict(spec.schedule),
                "schedule_from": trained.schedule_from,
                "run_config": trained.run_config_source,
                "max_items": spec.max_items,
                "order_seed": list(sig.ORDER_SEED),
                "step_state": list(spec.states) if spec.stepper else None,
                "source": model_path,
            },
            f,
            indent=2,
        )
    return [tf.saved_model.Asset(p) for p in paths]


def run_signature(path, requests):
    """Runs `[(signature, {input: array})]` through the TF1 loader, as TF Serving does.

    Returns a list of `{output: array}`. The inputs and outputs are looked up
    by their tensor names in the SignatureDef.
    """
    results = []
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        for name, feeds in requests:
            signature = meta.signature_def[name]
            feed = {signature.inputs[k].name: v for k, v in feeds.items()}
            fetch = {k: v.name for k, v in signature.outputs.items()}
            results.append(sess.run(fetch, feed))
    return results


def _saved_model_proto(path):
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    return saved


def xla_functions(path):
    """Names of the functions in the SavedModel that must be compiled with XLA."""
    saved = _saved_model_proto(path)
    names = []
    for meta in saved.meta_graphs:
        for fn in meta.graph_def.library.function:
            attr = fn.attr.get("_XlaMustCompile")
            if attr is not None and attr.b:
                names.append(fn.signature.name)
    return names


def custom_ops(path):
    """Names of the ops in the SavedModel that stock TensorFlow does not have."""
    from tensorflow.python.framework import op_def_registry

    saved = _saved_model_proto(path)
    graphs = [meta.graph_def for meta in saved.meta_graphs]
    nodes = [n for g in graphs for n in g.node]
    nodes += [n for g in graphs for fn in g.library.function for n in fn.node_def]
    functions = {fn.signature.name for g in graphs for fn in g.library.function}
    return sorted({n.op for n in nodes if n.op not in functions
                   and (n.op.startswith("Hebbkeras") or op_def_registry.get(n.op) is None)})


def check_export_ops(path):
    """Raises ExportCheckError if the SavedModel at `path` needs XLA or ops TF Serving lacks."""
    xla = xla_functions(path)
    if xla:
        raise ExportCheckError(
            f"Functions {xla} are marked for XLA (jit_compile=True); TF Serving runs "
            "without XLA by default, so the export would fail there."
        )
    custom = custom_ops(path)
    if custom:
        raise ExportCheckError(
            f"The SavedModel uses ops {custom} that TF Serving does not have."
        )


def check_export(path, model, spec, batch=3):
    """Compares the SavedModel at `path` with `model`; raises ExportCheckError."""
    check_export_ops(path)
    patterns, query, episode = check_episodes(spec, CHECK_SEED, batch)
    want = model(episode, training=False).numpy()
    requests = [
        ("serving_default", {"episode": episode}),
        ("complete", {"patterns": patterns, "query": query}),
    ]
    if spec.stepper:  # from the zero state, the last output is the model's
        state = {name: np.zeros((batch,) + (spec.units,) * (1 if name == "y" else 2), np.float32)
                 for name in spec.states}
        requests.append(("step", {"inputs": episode, **state}))
    got = run_signature(path, requests)
    compare("serving_default", got[0]["completion"], want[:, : spec.pattern_size])
    compare("complete", got[1]["completion"], want[:, : spec.pattern_size])
    if spec.stepper:
        compare("step", got[2]["y"], want)


def compare(name, got, want):
    """Raises ExportCheckError unless `got` equals `want` up to float32 rounding."""
    got, want = np.asarray(got), np.asarray(want)
    if not np.all(np.isfinite(want)):
        raise ExportCheckError(
            f"The Keras model itself gives NaN or Inf on the check's episodes (for {name!r}), "
            "so the export cannot be checked. The version was not written."
        )
    if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL):
        diff = np.max(np.abs(got - want)) if got.shape == want.shape else "shape"
        raise ExportCheckError(
            f"Signature {name!r} of the SavedModel differs from the Keras model "
            f"(max abs difference {diff}, tolerance {ATOL} + {RTOL} * |value|; "
            f"shapes {got.shape} and {want.shape}). The version was not written."
        )


def check_episodes(spec, seed, batch, num_items=None):
    """`(patterns, query, episode)`: random binary patterns, half-erased queries of
    one of them, and the episodes `complete` builds from them (numpy)."""
    k = spec.schedule.num_items if num_items is None else num_items
    schedule = dataclasses.replace(spec.schedule, num_items=k)
    erase = episodes.erase_random_bits(0.5)
    patterns, queries, inputs = [], [], []
    for b in range(batch):
        items = episodes.binary_patterns(tf.constant([seed, b], tf.int64), k, spec.pattern_size)
        query = erase(items[b % k], tf.constant([seed, b + batch], tf.int64))
        patterns.append(items.numpy())
        queries.append(query.numpy())
        inputs.append(
            episodes.schedule_inputs(
                items, query, schedule, tf.constant(sig.ORDER_SEED, tf.int64)
            ).numpy()
        )
    return np.stack(patterns), np.stack(queries), np.stack(inputs)
