"""Trained `.keras` model -> `MODELS/NAME/<version>/`, a SavedModel that TF Serving loads.

The version is written under a hidden temporary name (TF Serving only loads
directories named by an integer), loaded back through the TF1 loader that TF
Serving uses, compared with the Keras model, and only then renamed to its
version number. A failed comparison removes what was written.
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
from hebbkeras import episodes, native
from trainers.common import Config

# Outputs lie in [-1, 1] (tanh); the saved graph runs the same float32 ops in
# the same order, so anything beyond a few float32 rounding steps is a bug.
ATOL = 1e-5
RTOL = 1e-5
CHECK_SEED = 12345


class ExportCheckError(RuntimeError):
    """The reloaded SavedModel does not compute what the Keras model computes."""


def next_version(export_dir):
    """1 + the largest integer-named version in `export_dir` (1 if none)."""
    versions = list_versions(export_dir)
    return max(versions) + 1 if versions else 1


def list_versions(export_dir):
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(d) for d in os.listdir(export_dir) if d.isdigit())


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
        config: the `trainers.common.Config` of the training run. Default:
            `config.json` beside a `.keras` path, if there is one.
        schedule, pattern_size: the trained episode schedule
            (`hebbkeras.episodes.Schedule`) and pattern size, for a model
            without a config (default: `Schedule()` and input width - 1).
            Given with a config, they must agree with it.
        max_items: the largest `k` that `complete` accepts (default: twice the
            trained number of items).
        check_batch: episodes per signature in the check after writing.
        verbose: print what was written.

    Raises:
        ValueError: inconsistent settings or an existing version (the message
            says which and what to do).
        ExportCheckError: the reloaded SavedModel differs from the Keras model;
            nothing is left behind.
    """
    model_path = None
    if isinstance(model, (str, os.PathLike)):
        model_path = os.fspath(model)
        if not os.path.exists(model_path):
            raise ValueError(f"No model at {model_path}: pass RUN_DIR/model.keras of a training run.")
        if config is None:
            config = _read_config(model_path)
        model = keras.models.load_model(model_path, compile=False)
    config = resolve_config(model, config, schedule, pattern_size)
    max_items = 2 * config.schedule.num_items if max_items is None else max_items
    if int(max_items) != max_items or max_items < 1:
        raise ValueError(f"max_items={max_items} must be a positive integer.")
    max_items = int(max_items)

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

    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide it from a server run as another user
    try:
        with native.disabled(), tempfile.TemporaryDirectory() as scratch:
            # Stock TensorFlow ops only: TF Serving cannot run hebbkeras's kernels.
            module, signatures, spec = sig.build(
                model, config.pattern_size, config.schedule, max_items
            )
            module.assets = _assets(scratch, config, spec, model_path)
            # Serving needs no gradients; the fused kernel's custom gradient
            # captures loop state that a SavedModel cannot hold.
            options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
            tf.saved_model.save(module, staging, signatures=signatures, options=options)
        check_export(staging, model, spec, check_batch)
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=f".old-{version}-", dir=export_dir)
            os.rename(target, os.path.join(old, "v"))
            os.rename(staging, target)
            shutil.rmtree(old)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if verbose:
        print(f"Exported {model_path or model.name} to {target} with signatures "
              f"{', '.join(signatures)} (pattern_size {spec.pattern_size}, "
              f"k from 1 to {spec.max_items}, trained with {spec.schedule}).")
    return target


def _read_config(model_path):
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return Config.from_json(f.read())


def resolve_config(model, config, schedule=None, pattern_size=None):
    """The `Config` to export with, checked against the model's input shape."""
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 3:
        raise ValueError(
            f"The model takes inputs of shapes {[tuple(i.shape) for i in model.inputs]}; "
            "the exporter needs one episode input (batch, steps, pattern_size + 1)."
        )
    _, steps, width = model.inputs[0].shape
    if config is None:
        config = Config(
            pattern_size=width - 1 if pattern_size is None else pattern_size,
            schedule=schedule or episodes.Schedule(),
        )
    else:
        for name, given in (("schedule", schedule), ("pattern_size", pattern_size)):
            if given is not None and given != getattr(config, name):
                raise ValueError(
                    f"{name}={given} disagrees with the training config "
                    f"({name}={getattr(config, name)}); leave it out to use the config's."
                )
    if config.pattern_size + 1 != width:
        raise ValueError(
            f"pattern_size={config.pattern_size} needs an input width of "
            f"{config.pattern_size + 1} (the pattern, then the bias input), but the "
            f"model's input is (batch, {steps}, {width})."
        )
    if steps is not None and config.schedule.steps != steps:
        raise ValueError(
            f"The schedule {config.schedule} makes episodes of {config.schedule.steps} "
            f"steps, but the model was built for {steps}. Pass the schedule it was "
            "trained with (--num_patterns, --presentation_steps, --gap_steps, "
            "--presentations, --query_steps)."
        )
    return config


def _assets(scratch, config, spec, model_path):
    """Files in the SavedModel's `assets/`: the training config and the serving facts."""
    config_path = os.path.join(scratch, "config.json")
    with open(config_path, "w") as f:
        f.write(config.to_json())
    serving_path = os.path.join(scratch, "serving.json")
    with open(serving_path, "w") as f:
        json.dump(
            {
                "pattern_size": spec.pattern_size,
                "input_width": spec.width,
                "units": spec.units,
                "schedule": dataclasses.asdict(spec.schedule),
                "max_items": spec.max_items,
                "order_seed": list(sig.ORDER_SEED),
                "step_state": (["y", "hebb"] if spec.plastic else ["y"]) if spec.stepper else None,
                "source": model_path,
            },
            f,
            indent=2,
        )
    return [tf.saved_model.Asset(config_path), tf.saved_model.Asset(serving_path)]


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


def check_export(path, model, spec, batch=3):
    """Compares the SavedModel at `path` with `model`; raises ExportCheckError."""
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
    patterns, query, episode = check_episodes(spec, CHECK_SEED, batch)
    want = model(episode, training=False).numpy()
    requests = [
        ("serving_default", {"episode": episode}),
        ("complete", {"patterns": patterns, "query": query}),
    ]
    if spec.stepper:  # from the zero state, the last output is the model's
        state = {"y": np.zeros((batch, spec.units), np.float32)}
        if spec.plastic:
            state["hebb"] = np.zeros((batch, spec.units, spec.units), np.float32)
        requests.append(("step", {"inputs": episode, **state}))
    got = run_signature(path, requests)
    compare("serving_default", got[0]["completion"], want[:, : spec.pattern_size])
    compare("complete", got[1]["completion"], want[:, : spec.pattern_size])
    if spec.stepper:
        compare("step", got[2]["y"], want)


def compare(name, got, want):
    """Raises ExportCheckError unless `got` equals `want` up to float32 rounding."""
    got, want = np.asarray(got), np.asarray(want)
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
