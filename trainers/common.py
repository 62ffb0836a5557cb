"""The training loop every task shares: build, compile, fit, log, save.

A task supplies a `Config` (its defaults) and a function that makes its
episode dataset; everything else (the model, the loss, callbacks, the run
directory, interruption) is here.
"""

import collections
import csv
import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

import hebbkeras
from hebbkeras import episodes


@dataclasses.dataclass
class Config:
    """Everything a training run needs. Defaults are the paper's binary task."""

    # Task.
    pattern_size: int = 1000
    schedule: episodes.Schedule = episodes.Schedule()
    erase_fraction: float = 0.5
    # Model.
    input_mode: str = "clamp"
    input_scale: float = 20.0
    eta: float = 0.01
    trainable_eta: bool = False
    plasticity: str = "per_connection"
    rule: str = "hebb"
    # Training.
    episodes: int = 300
    batch_size: int = 1
    learning_rate: float = 1e-3
    steps_per_epoch: int = 10
    seed: int = 0
    jit_compile: bool = False
    run_dir: str = "runs/binary"
    verbose: int = 1

    @property
    def units(self):
        return self.pattern_size + 1  # the pattern, then the bias neuron

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        values = json.loads(text)
        values["schedule"] = episodes.Schedule(**values["schedule"])
        return cls(**{k: v for k, v in values.items() if k in _FIELDS})


_FIELDS = {f.name for f in dataclasses.fields(Config)}


def check_config(config):
    """Raises a ValueError that names the bad setting before any work is done."""
    episodes.check_pattern_size(config.pattern_size, config.erase_fraction)
    hebbkeras.PlasticRNNCell(  # validates the model options
        config.units,
        input_mode=config.input_mode,
        eta=config.eta,
        plasticity=config.plasticity,
        rule=config.rule,
    )
    for name in ("episodes", "batch_size", "steps_per_epoch"):
        value = getattr(config, name)
        if int(value) != value or value < 1:
            raise ValueError(f"{name}={value} must be a positive integer.")
    if not config.learning_rate > 0:
        raise ValueError(f"learning_rate={config.learning_rate} must be positive.")


def build_model(config, metrics=None):
    """`Input(steps, units) -> PlasticRNN -> y at the last step`, compiled.

    `metrics` defaults to the bit error rate of the binary task.
    """
    inputs = keras.Input((config.schedule.steps, config.units), name="episode")
    outputs = hebbkeras.PlasticRNN(
        config.units,
        input_mode=config.input_mode,
        input_scale=config.input_scale,
        eta=config.eta,
        trainable_eta=config.trainable_eta,
        plasticity=config.plasticity,
        rule=config.rule,
        name="plastic_rnn",
    )(inputs)
    model = keras.Model(inputs, outputs, name="plastic_network")
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=hebbkeras.summed_squared_error,
        metrics=[hebbkeras.BitErrorRate()] if metrics is None else metrics,
        jit_compile=config.jit_compile,
    )
    return model


class EpisodeLog(keras.callbacks.Callback):
    """Writes each training step's loss and bit error to `episodes.csv`.

    Keras reports running means over the epoch at every batch; the value of
    batch `b` is recovered as `b * mean_b - (b - 1) * mean_{b-1}`.
    """

    def __init__(self, path, batch_size, keys=("loss", "bit_error")):
        super().__init__()
        self.path, self.batch_size, self.keys = path, batch_size, keys
        self.recent = collections.deque(maxlen=10)
        self.episodes_done = 0
        self._file = self._writer = None

    def on_train_begin(self, logs=None):
        new = not os.path.exists(self.path)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(("episode",) + self.keys)

    def on_epoch_begin(self, epoch, logs=None):
        self._previous = {k: 0.0 for k in self.keys}
        self.episodes_done = epoch * self.params["steps"] * self.batch_size

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        row = {}
        for k in self.keys:
            mean = float(logs.get(k, math.nan))
            row[k] = (batch + 1) * mean - batch * self._previous[k]
            self._previous[k] = mean
        self.episodes_done += self.batch_size
        self.recent.extend([row.get("bit_error", math.nan)] * self.batch_size)
        self._writer.writerow((self.episodes_done,) + tuple(row[k] for k in self.keys))

    def on_epoch_end(self, epoch, logs=None):
        self._file.flush()

    def on_train_end(self, logs=None):
        self.close()

    def close(self):
        if self._file is not None and not self._file.closed:
            self._file.close()


def run(config, dataset_fn=None, metrics=None, callbacks=(), log_keys=("loss", "bit_error")):
    """Trains a model as `config` says; returns a summary dict.

    `dataset_fn(config, input_context=None)` returns the endless training
    dataset of batched `(inputs, target)` episodes (binary patterns by
    default); `metrics` are compiled into the model (default: bit error);
    `callbacks` are added to the run's own; `log_keys` are the per-step values
    written to `episodes.csv`. The run directory
    receives `config.json`, `history.csv` (per epoch), `episodes.csv` (per
    step), TensorBoard logs, a `backup/` that lets the same command resume an
    interrupted run, and the trained `model.keras`.
    """
    check_config(config)
    dataset_fn = dataset_fn or binary_dataset
    os.makedirs(config.run_dir, exist_ok=True)
    with open(os.path.join(config.run_dir, "config.json"), "w") as f:
        f.write(config.to_json())
    keras.utils.set_random_seed(config.seed)

    steps = math.ceil(config.episodes / config.batch_size)
    steps_per_epoch = min(config.steps_per_epoch, steps)
    epochs = math.ceil(steps / steps_per_epoch)
    total_episodes = epochs * steps_per_epoch * config.batch_size
    if total_episodes != config.episodes and config.verbose:
        print(f"Running {total_episodes} episodes: whole epochs of "
              f"{steps_per_epoch} steps x batch {config.batch_size}.")

    model = build_model(config, metrics)
    log = EpisodeLog(os.path.join(config.run_dir, "episodes.csv"), config.batch_size, log_keys)
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(config.run_dir, "backup")),
        keras.callbacks.CSVLogger(os.path.join(config.run_dir, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(config.run_dir, "tensorboard")),
        log,
        *callbacks,
    ]
    model_path = os.path.join(config.run_dir, "model.keras")
    start = time.perf_counter()
    try:
        model.fit(
            dataset_fn(config),
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=config.verbose,
        )
    except KeyboardInterrupt:
        log.close()
        model.save(model_path)
        print(f"\nInterrupted after {log.episodes_done} episodes. Model saved to "
              f"{model_path}; run the same command again to resume from the last "
              f"completed epoch (backup in {os.path.join(config.run_dir, 'backup')}).")
        raise
    wall = time.perf_counter() - start
    model.save(model_path)
    summary = {
        "episodes": log.episodes_done,
        "bit_error_last_10": float(np.mean(log.recent)) if log.recent else math.nan,
        "wall_seconds": wall,
        "model_path": model_path,
    }
    if config.verbose:
        print(f"Episodes: {summary['episodes']}  "
              f"mean bit error over the last 10 episodes: {summary['bit_error_last_10']:.4f}  "
              f"wall time: {wall:.1f} s  model: {model_path}")
    return summary


def binary_dataset(config, input_context=None):
    return episodes.binary_dataset(
        pattern_size=config.pattern_size,
        schedule=config.schedule,
        erase_fraction=config.erase_fraction,
        seed=config.seed,
        batch_size=config.batch_size,
        input_context=input_context,
    )
