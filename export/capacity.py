"""Bit error of an exported model's `complete` signature for each number of patterns k.

    python -m export.capacity --saved_model models/binary/1 --episodes 200

Sends batches of random +1/-1 patterns and a copy of one of them with half its
bits zeroed, as in training, and reports the fraction of the zeroed bits whose
sign the completion gets wrong. Shows how far `k` can go beyond the trained
number of patterns. Uses only TensorFlow, as a serving client would.
"""

import json
import os

import numpy as np
import tensorflow as tf
from absl import app, flags

flags.DEFINE_string("saved_model", None, "An exported version directory, MODELS/NAME/<version>.")
flags.DEFINE_integer("episodes", 200, "Episodes per k.")
flags.DEFINE_integer("seed", 1, "Seed of the patterns.")
flags.mark_flag_as_required("saved_model")
FLAGS = flags.FLAGS


def bit_errors(saved_model, episodes=200, seed=1, batch=50):
    """`{k: bit error}` for k from 1 to the model's max_items."""
    with open(os.path.join(saved_model, "assets", "serving.json")) as f:
        info = json.load(f)
    complete = tf.saved_model.load(saved_model).signatures["complete"]
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
            out = complete(patterns=tf.constant(patterns), query=tf.constant(query))["completion"]
            wrong += int(np.sum(np.sign(out.numpy())[erased] != target[erased]))
            total += int(erased.sum())
        errors[k] = wrong / total
    return info, errors


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    info, errors = bit_errors(FLAGS.saved_model, FLAGS.episodes, FLAGS.seed)
    trained = info["schedule"]["num_items"]
    print(f"{FLAGS.saved_model}: pattern_size {info['pattern_size']}, trained with k = {trained}")
    print("k   bit error on the erased bits")
    for k, e in errors.items():
        print(f"{k:<3} {e:.4f}{'   (trained)' if k == trained else ''}")


if __name__ == "__main__":
    app.run(main)
