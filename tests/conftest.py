"""Helpers every test file shares: the repository root, fresh processes, small tasks, CSVs."""

import csv
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}


def run_python(args, env=None, timeout=300, **kwargs):
    """`python ARGS` in a fresh process at the repository root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def start_python(args, env=None, **kwargs):
    """`python ARGS` started in the background (a Popen with text pipes)."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def read_csv(path):
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(path, key, kind=float):
    return [kind(r[key]) for r in read_csv(path)]


@pytest.fixture
def tiny_binary(tmp_path):
    """A factory of binary-task configs small enough to train in a second or two."""
    from hebbkeras import episodes
    from trainers import binary

    def make(name="run", **changes):
        values = dict(pattern_size=8, schedule=episodes.Schedule(2, 2, 1, 1, 3), episodes=12,
                      batch_size=2, steps_per_epoch=2, learning_rate=0.01, seed=3, verbose=0,
                      run_dir=str(tmp_path / name))
        values.update(changes)
        return binary.BinaryConfig(**values)

    return make


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
