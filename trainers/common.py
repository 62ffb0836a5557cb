"""The training loop every task shares: build, compile, fit, log, save.

A task supplies a `Config` (its defaults) and a function that makes its
episode dataset; everything else (the model, the loss, callbacks, the run
directory, interruption) is here.
"""

import collections
import csv
import dataclasses
import inspect
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

import hebbkeras
from hebbkeras import episodes, ops

MODELS = ("plastic", "rnn", "lstm")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass
class Config:
    """Everything a training run needs. Defaults are the paper's binary task."""

    # Task.
    pattern_size: int = 1000
    schedule: episodes.Schedule = episodes.Schedule()
    erase_fraction: float = 0.5
    # Model.
    model: str = "plastic"
    extra_units: int = 1
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
    jit_compile: bool = False  # XLA runs the cell loop, not the fused kernel: slower here (BENCHMARKS.md)
    run_dir: str = "runs/binary"
    verbose: int = 1
    # Distribution.
    strategy: str = "default"
    devices: tuple = ()

    @property
    def units(self):
        """Neurons (plastic, rnn) or LSTM units: the pattern, then `extra_units`."""
        return self.pattern_size + self.extra_units

    @property
    def input_width(self):
        return self.pattern_size + 1  # the pattern, then the bias input

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        values = json.loads(text)
        values["schedule"] = episodes.Schedule(**values["schedule"])
        values["devices"] = tuple(values.get("devices", ()))
        fields = {f.name for f in dataclasses.fields(cls)}  # a task's subclass adds fields
        return cls(**{k: v for k, v in values.items() if k in fields})


def check_config(config):
    """Raises a ValueError that names the bad setting before any work is done."""
    episodes.check_pattern_size(config.pattern_size, config.erase_fraction)
    ops.check_option("model", config.model, MODELS)
    ops.check_option("strategy", config.strategy, STRATEGIES)
    if int(config.extra_units) != config.extra_units or config.extra_units < 1:
        raise ValueError(
            f"extra_units={config.extra_units} must be an integer >= 1: the network "
            f"needs at least the {config.pattern_size} pattern neurons plus the bias "
            "neuron (the paper's baselines use 2000)."
        )
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


def build_model(config, metrics=None, loss=None):
    """The network of `config.model`, compiled; its output is read at the last step.

    plastic: `Input(steps, pattern + 1) -> PlasticRNN(pattern + extra_units)`.
    rnn:     the same with `plasticity="none"`: the plastic cell without
             `alpha * hebb`, so the only difference to the plastic network is
             the plasticity (neurons, clamped inputs, tanh, initialisation agree).
    lstm:    `keras.layers.LSTM(pattern + extra_units) -> Dense(pattern, tanh)`;
             the LSTM's input kernel takes the `pattern + 1` inputs.
    With more neurons than inputs in "clamp" or "add" input mode, input `i`
    still drives neuron `i` and the extra neurons get no input (the inputs are
    zero-padded): they are reached only through the recurrent weights.
    `metrics` defaults to the bit error rate of the binary task, `loss` to the
    summed squared error over the pattern. Call it inside
    `strategy.scope()` to train under a `tf.distribute` strategy.
    """
    inputs = keras.Input((config.schedule.steps, config.input_width), name="episode")
    if config.model == "lstm":
        x = keras.layers.LSTM(config.units, name="lstm")(inputs)
        outputs = keras.layers.Dense(config.pattern_size, activation="tanh", name="readout")(x)
    else:
        x = inputs
        extra = config.units - config.input_width
        if extra and config.input_mode != "dense":
            # (batch, time, width) -> (batch, time, units): zeros for the extra neurons.
            x = keras.layers.Permute((2, 1), name="to_features_first")(x)
            x = keras.layers.ZeroPadding1D((0, extra), name="pad_extra_neurons")(x)
            x = keras.layers.Permute((2, 1), name="to_time_first")(x)
        outputs = hebbkeras.PlasticRNN(
            config.units,
            input_mode=config.input_mode,
            input_scale=config.input_scale,
            eta=config.eta,
            trainable_eta=config.trainable_eta,
            plasticity=config.plasticity if config.model == "plastic" else "none",
            rule=config.rule,
            name="plastic_rnn" if config.model == "plastic" else "rnn",
        )(x)
    model = keras.Model(inputs, outputs, name=f"{config.model}_network")
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=hebbkeras.summed_squared_error if loss is None else loss,
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


# The flags every trainer shares; a task passes its `Config` for the defaults.
_SHARED_FLAGS = (
    "eta", "trainable_eta", "plasticity", "rule", "episodes", "batch_size",
    "learning_rate", "steps_per_epoch", "seed", "jit_compile", "run_dir", "verbose",
)


def define_config_flags(defaults, item="pattern", items_flag="num_patterns"):
    """Defines the schedule, model and training flags with a task's `defaults`.

    Call it from the entry point (`if __name__ == "__main__"`), not at import,
    so that trainers can be imported together.
    """
    d, s = defaults, defaults.schedule
    flags.DEFINE_integer(items_flag, s.num_items, f"{item.capitalize()}s stored per episode.")
    flags.DEFINE_integer("presentation_steps", s.presentation_steps, f"Steps each {item} is shown for.")
    flags.DEFINE_integer("gap_steps", s.gap_steps, "Zero-input steps after each presentation.")
    flags.DEFINE_integer("presentations", s.presentations, "Times the whole set is shown, each time in a new random order.")
    flags.DEFINE_integer("query_steps", s.query_steps, "Steps the half-erased query is shown for at the end.")
    flags.DEFINE_float("eta", d.eta, "Plasticity rate in (0, 1] (0.01 in the paper).")
    flags.DEFINE_bool("trainable_eta", d.trainable_eta, "Learn eta by gradient descent (the paper keeps it fixed; the original code learns it).")
    flags.DEFINE_enum("plasticity", d.plasticity, ops.PLASTICITY, "One alpha per connection, one shared alpha, or none (a plain RNN).")
    flags.DEFINE_enum("rule", d.rule, ops.RULES, "Trace update: hebb (decaying Hebbian trace, eq. 2) or oja (Oja's rule).")
    flags.DEFINE_integer("episodes", d.episodes, "Training episodes (rounded up to whole epochs).")
    flags.DEFINE_integer("batch_size", d.batch_size, "Episodes per gradient step (1 in the paper); the global batch under --strategy.")
    flags.DEFINE_float("learning_rate", d.learning_rate, "Adam learning rate (the default is the paper's or original code's for this task).")
    flags.DEFINE_integer("steps_per_epoch", d.steps_per_epoch, "Gradient steps per Keras epoch: the unit of logs, progress and resumption.")
    flags.DEFINE_integer("seed", d.seed, "Seed of the weights and of the episodes.")
    flags.DEFINE_bool("jit_compile", d.jit_compile, "Compile the training step with XLA. Applies to --model rnn and lstm; a plastic network keeps its fused kernel, which XLA cannot compile, and trains without XLA (Keras warns). Measurements: BENCHMARKS.md.")
    flags.DEFINE_string("run_dir", d.run_dir, "Directory for logs, backups, figures and the trained model.keras.")
    flags.DEFINE_integer("verbose", d.verbose, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")
    define_strategy_flags()


def config_from_flags(cls, items_flag="num_patterns", names=()):
    """A `cls` (a `Config`) from the flags of `define_config_flags` and `names`."""
    values = flags.FLAGS
    schedule = episodes.Schedule(
        num_items=values[items_flag].value,
        presentation_steps=values.presentation_steps,
        gap_steps=values.gap_steps,
        presentations=values.presentations,
        query_steps=values.query_steps,
    )
    fields = {n: values[n].value for n in (*_SHARED_FLAGS, *names)}
    return cls(schedule=schedule, **fields, **strategy_flags())


def define_strategy_flags():
    """Defines `--strategy` and `--devices` for a trainer; once per process."""
    if "strategy" in flags.FLAGS:
        return  # another trainer in this process defined them
    flags.DEFINE_enum(
        "strategy", Config.strategy, STRATEGIES,
        "default: one device. mirrored: tf.distribute.MirroredStrategy over all local "
        "GPUs (or --devices). multi_worker: MultiWorkerMirroredStrategy over the "
        "machines in the TF_CONFIG environment variable (each runs the same command). "
        "tpu: TPUStrategy (--devices names the TPU, empty for the local one). "
        "--batch_size is the global batch, split evenly across replicas.")
    flags.DEFINE_list(
        "devices", list(Config.devices),
        "Comma-separated devices of --strategy=mirrored (e.g. /gpu:0,/gpu:1; default: "
        "all local GPUs), or the TPU name or address of --strategy=tpu.")


def strategy_flags():
    """The values of the flags of `define_strategy_flags`, as `Config` fields."""
    return {"strategy": flags.FLAGS.strategy, "devices": tuple(flags.FLAGS.devices)}


def make_strategy(name, devices=()):
    """The `tf.distribute.Strategy` called `name` (one of `STRATEGIES`)."""
    ops.check_option("strategy", name, STRATEGIES)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) or None)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy='multi_worker' reads the cluster from the TF_CONFIG "
                "environment variable, which is not set; see docs/distributed.md.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=",".join(devices))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def worker_dir(run_dir, strategy):
    """The chief writes to `run_dir`; other workers to `run_dir/workers/<type>_<id>`.

    Every worker keeps its own logs and backup (each restores its own state
    after a restart); only the chief's files are the run's results.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return run_dir
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0):
        return run_dir
    return os.path.join(run_dir, "workers", f"{task_type}_{task_id}")


def _truncate_csv(path, keep):
    """Keeps the header and the complete rows for which `keep(first_field)` holds."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a row cut off by the interruption
    lines = [line for line in lines if line]
    rows = lines[:1] + [line for line in lines[1:] if keep(int(line.split(",")[0]))]
    with open(path, "w", newline="") as f:
        f.write("".join(line + "\n" for line in rows))


_BACKUP_EPOCH_FILE = "training_metadata.json"  # where BackupAndRestore keeps the epoch


def _restore(model, backup_dir):
    """A `BackupAndRestore` for `backup_dir`, its weights and optimizer state restored.

    Keras writes the weights (with the optimizer's step) and then, in a separate
    file, the epoch number. A run killed while it writes that small file leaves
    it unreadable; it is rebuilt from the weights by `_settle_backup_epoch`.
    """
    backup = keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True)
    backup.set_model(model)
    try:
        backup.on_train_begin()
    except ValueError:  # json: the epoch file was cut off mid-write
        os.remove(os.path.join(backup_dir, _BACKUP_EPOCH_FILE))
        backup.on_train_begin()
    return backup


def _settle_backup_epoch(backup_dir, epoch):
    """Makes the backup's epoch number agree with its weights' optimizer step.

    A kill between Keras writing the weights and writing the epoch leaves the
    epoch one behind (or missing). The weights are those of a completed epoch,
    and the run's logs were written before the backup, so the weights are the
    truth: `fit` resumes after them.
    """
    path = os.path.join(backup_dir, _BACKUP_EPOCH_FILE)
    try:
        with open(path) as f:
            if json.load(f).get("epoch") == epoch:
                return
    except (OSError, ValueError):
        pass
    with open(path, "w") as f:
        json.dump({"epoch": epoch, "batch": 0}, f)


def _dataset(dataset_fn, config, start, input_context=None):
    """`dataset_fn`'s episodes from episode `start` on (skipping if it has no `start`)."""
    if start == 0:
        return dataset_fn(config, input_context=input_context)
    if "start" in inspect.signature(dataset_fn).parameters:
        return dataset_fn(config, input_context=input_context, start=start)
    pipelines = input_context.num_input_pipelines if input_context else 1
    return dataset_fn(config, input_context=input_context).skip(
        start // (config.batch_size * pipelines))


def run(config, dataset_fn=None, metrics=None, callbacks=(), log_keys=("loss", "bit_error"),
        loss=None):
    """Trains a model as `config` says; returns a summary dict.

    `dataset_fn(config, input_context=None, start=0)` returns the endless
    training dataset of batched `(inputs, target)` episodes (binary patterns by
    default), batched with `config.batch_size` and starting at episode index
    `start` (a `dataset_fn` without `start` is skipped forward instead). Under a
    strategy it is called per input pipeline with a `tf.distribute.InputContext`
    and the per-replica batch size in `config.batch_size`; it must give each
    pipeline disjoint episodes. `metrics` and `loss` are compiled into the model
    (default: bit error, summed squared error); `callbacks` are added to the run's own; `log_keys` are the
    per-step values written to `episodes.csv`. The run directory receives
    `config.json`, `history.csv` (per epoch), `episodes.csv` (per step),
    TensorBoard logs, a `backup/` that lets the same command resume an
    interrupted run, and the trained `model.keras`.

    Resumption: the backup (weights, optimizer state and step, epoch) is
    written after every epoch; a restarted run restores it, truncates the logs
    to the restored epoch and restarts the episode stream at the first episode
    not yet trained on, so the result is the uninterrupted run's.
    """
    check_config(config)
    strategy = make_strategy(config.strategy, config.devices)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"batch_size={config.batch_size} is the global batch and must split evenly "
            f"across the {replicas} replicas of strategy={config.strategy!r}; use a "
            f"multiple of {replicas}.")
    dataset_fn = dataset_fn or binary_dataset
    run_dir = worker_dir(config.run_dir, strategy)
    os.makedirs(run_dir, exist_ok=True)
    backup_dir = os.path.join(run_dir, "backup")
    config_path = os.path.join(run_dir, "config.json")
    if os.path.exists(backup_dir) and os.path.exists(config_path):
        with open(config_path) as f:
            previous = type(config).from_json(f.read())
        if dataclasses.replace(previous, verbose=config.verbose) != config:
            raise ValueError(
                f"{run_dir} holds the backup of an interrupted run with other settings "
                f"(see {config_path}). Resume it with the same settings, use another "
                f"run_dir, or delete {backup_dir} to start over.")
    with open(config_path, "w") as f:
        f.write(config.to_json())
    keras.utils.set_random_seed(config.seed)

    steps = math.ceil(config.episodes / config.batch_size)
    steps_per_epoch = min(config.steps_per_epoch, steps)
    epochs = math.ceil(steps / steps_per_epoch)
    total_episodes = epochs * steps_per_epoch * config.batch_size
    if total_episodes != config.episodes and config.verbose:
        print(f"Running {total_episodes} episodes: whole epochs of "
              f"{steps_per_epoch} steps x batch {config.batch_size}.")

    with strategy.scope():
        model = build_model(config, metrics, loss)
        # Restore now, not only in fit, to learn where the episode stream resumes.
        backup = _restore(model, backup_dir)
    done_steps = int(model.optimizer.iterations.numpy())
    if done_steps % steps_per_epoch:
        raise ValueError(
            f"The backup in {backup_dir} stopped after {done_steps} steps, not a whole "
            f"number of epochs of {steps_per_epoch} steps. Resume with the "
            "steps_per_epoch it was written with, or delete it to start over.")
    first_epoch, start = done_steps // steps_per_epoch, done_steps * config.batch_size
    if done_steps:
        _settle_backup_epoch(backup_dir, first_epoch)
    episodes_path = os.path.join(run_dir, "episodes.csv")
    history_path = os.path.join(run_dir, "history.csv")
    for path in (episodes_path, history_path):
        if not done_steps and os.path.exists(path):
            os.remove(path)  # a new run: logs of an earlier one go
    _truncate_csv(episodes_path, lambda episode: episode <= start)
    _truncate_csv(history_path, lambda epoch: epoch < first_epoch)
    if done_steps:
        print(f"Resuming from {backup_dir}: {first_epoch} epochs ({start} episodes) done.")

    if config.strategy == "default":
        data = _dataset(dataset_fn, config, start)
    else:
        def per_pipeline(input_context):
            local = dataclasses.replace(
                config, batch_size=input_context.get_per_replica_batch_size(config.batch_size))
            return _dataset(dataset_fn, local, start, input_context)
        data = strategy.distribute_datasets_from_function(per_pipeline)

    log = EpisodeLog(episodes_path, config.batch_size, log_keys)
    # The logs come before the backup, so they never lag behind it; a restart
    # truncates whatever they wrote after it.
    callbacks = [
        log,
        keras.callbacks.CSVLogger(history_path, append=True),
        backup,
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard")),
        *callbacks,
    ]
    model_path = os.path.join(run_dir, "model.keras")
    start_time = time.perf_counter()
    try:
        with strategy.scope():
            model.fit(
                data,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                callbacks=callbacks,
                verbose=config.verbose,
                shuffle=False,  # episodes are generated, not sampled from a set
            )
    except KeyboardInterrupt:
        log.close()
        model.save(model_path)
        print(f"\nInterrupted after {log.episodes_done} episodes. Model saved to "
              f"{model_path}; run the same command again to resume from the last "
              f"completed epoch (backup in {backup_dir}).")
        raise
    wall = time.perf_counter() - start_time
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


def binary_dataset(config, input_context=None, start=0):
    return episodes.binary_dataset(
        pattern_size=config.pattern_size,
        schedule=config.schedule,
        erase_fraction=config.erase_fraction,
        seed=config.seed,
        batch_size=config.batch_size,
        input_context=input_context,
        start=start,
    )
