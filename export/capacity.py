"""Bit error of an exported model's `complete` signature for each number of patterns k.

    python -m export.capacity --saved_model models/binary/1 --episodes 200

Sends batches of random +1/-1 patterns and a copy of one of them with half its
bits zeroed, as in training, and reports the fraction of the zeroed bits whose
sign the completion gets wrong (an output of exactly 0 counts as wrong). Shows
how far `k` can go beyond the trained number of patterns. Uses only
TensorFlow, as a serving client would.
"""

import hebbcli  # first: Ctrl-C is one line from here on

import json
import os

import numpy as np
from absl import flags, logging

from export import versions

flags.DEFINE_string("saved_model", None, "An exported version directory, MODELS/NAME/<version>.")
flags.DEFINE_integer("episodes", 200, "Episodes per k.")
flags.DEFINE_integer("seed", 1, "Seed of the patterns.")
flags.mark_flag_as_required("saved_model")
FLAGS = flags.FLAGS


def check_version_dir(path):
    """Raises a ValueError unless `path` is a version written by `python -m export`."""
    serving = os.path.join(path, "assets", "serving.json")
    if os.path.isfile(serving):
        try:
            with open(serving) as f:
                signature = json.load(f).get("signature", "complete")
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"saved_model={path}: {serving} cannot be read ({e}); export "
                             "the model again.") from None
        if signature != "complete":
            raise ValueError(
                f"saved_model={path} is a few-shot classifier (signature {signature}); "
                "export.capacity measures the complete signature of the pattern-completion "
                "networks (trainers.binary, cifar, compare). docs/serving.md says how to query "
                "classify.")
        return
    found = versions.list_versions(path)
    if found:
        raise ValueError(
            f"saved_model={path} is a model's base directory (versions {found}); pass "
            f"one version directory, e.g. {os.path.join(path, str(found[-1]))}."
        )
    if not os.path.exists(path):
        raise ValueError(f"saved_model={path} does not exist; pass MODELS/NAME/<version> of an export.")
    if not os.path.isdir(path):
        raise ValueError(f"saved_model={path} is a file; pass MODELS/NAME/<version> of an export.")
    raise ValueError(
        f"saved_model={path} has no assets/serving.json; pass a version directory "
        "written by python -m export, MODELS/NAME/<version>."
    )


def load(saved_model):
    """`(info, complete)`: the export's serving.json and its `complete` signature."""
    import tensorflow as tf

    check_version_dir(saved_model)
    with open(os.path.join(saved_model, "assets", "serving.json")) as f:
        info = json.load(f)
    return info, tf.saved_model.load(saved_model).signatures["complete"]


def measure(complete, info, episodes=200, seed=1, batch=50):
    """`{k: bit error}` for k from 1 to `info["max_items"]`.

    `complete(patterns=..., query=...)` returns `{"completion": [batch, P]}`.
    """
    if int(episodes) != episodes or episodes < 1:
        raise ValueError(f"episodes={episodes} must be a positive integer.")
    size, rng, errors = info["pattern_size"], np.random.default_rng(seed), {}
    for k in range(1, info["max_items"] + 1):
        wrong = total = 0
        for start in range(0, episodes, batch):
            n = min(batch, episodes - start)
            patterns = rng.choice([-1.0, 1.0], size=(n, k, size)).astype(np.float32)
            target = patterns[np.arange(n), rng.integers(0, k, n)]
            erased = np.zeros((n, size), bool)
            for row in erased:
                row[rng.permutation(size)[: size // 2]] = True
            query = np.where(erased, 0.0, target).astype(np.float32)
            out = np.asarray(complete(patterns=patterns, query=query)["completion"])
            wrong += int(np.sum(np.sign(out)[erased] != target[erased]))
            total += int(erased.sum())
        errors[k] = wrong / total
    return errors


def bit_errors(saved_model, episodes=200, seed=1, batch=50):
    """`(info, {k: bit error})` of the export at `saved_model`."""
    import tensorflow as tf

    info, complete = load(saved_model)
    send = lambda **x: complete(**{name: tf.constant(v) for name, v in x.items()})  # noqa: E731
    return info, measure(send, info, episodes, seed, batch)


def main(argv):
    del argv
    try:
        check_version_dir(FLAGS.saved_model)  # before the slow import
        hebbcli.import_tensorflow()
        if not FLAGS["verbosity"].present:
            # Loading warns that the exported functions have no gradients: by design.
            logging.set_verbosity(logging.ERROR)
        info, errors = bit_errors(FLAGS.saved_model, FLAGS.episodes, FLAGS.seed)
    except (ValueError, OSError) as e:
        hebbcli.fail(e)
    trained = info["schedule"]["num_items"]
    print(f"{FLAGS.saved_model}: pattern_size {info['pattern_size']}, trained with k = {trained}")
    print("k   bit error on the erased bits")
    for k, e in errors.items():
        print(f"{k:<3} {e:.4f}{'   (trained)' if k == trained else ''}")


if __name__ == "__main__":
    hebbcli.run(main)
