"""How a run goes: strategy, model, compile, fit, logs, resumption, saving. No task defaults.

A task (`Task` subclass) says what differs: its model, its episode dataset, its
loss and metrics, the per-step values it logs, extra callbacks and its final
line. `run(task)` does the rest, the same way for every task, in the run
directory that `trainers.files` lays out and writes.

Resumption: the backup (weights, optimizer state and step) is written after
every epoch; a restarted run restores the newest good one, truncates the logs
to it and restarts the episode stream at the first episode not yet trained on,
so the result is the uninterrupted run's. The backup stays until summary.json
is written: a kill while the model, the figures or the summary are written
resumes after the last epoch and writes them again.

Under `strategy="multi_worker"`, where Keras's `fit` fails, the same callbacks
are driven by the loop of `trainers.distributed` instead (docs/distributed.md).
"""

import collections
import dataclasses
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from trainers import distributed, files
from trainers.files import RunError  # noqa: F401 (the loop's errors; tasks raise it too)


class Task:
    """What a task gives the shared loop. Subclasses override what differs.

    Attributes:
        config: the run's config (a `trainers.config.RunConfig`).
        log_keys: the per-step values written to `episodes.csv` (Keras log names).
        summary_window: the final line averages the last this many episodes.
        outputs: files and directories the task writes in the run directory
            (removed with the run's own by `overwrite`).
    """

    log_keys = ("loss",)
    summary_window = 10
    outputs = ()

    def __init__(self, config):
        self.config = config

    def model(self):
        """The uncompiled `keras.Model` (built inside the strategy's scope)."""
        raise NotImplementedError

    def dataset(self, config, input_context=None, start=0):
        """The endless training dataset of batched episodes from episode index `start`.

        `config.batch_size` is the per-replica batch under a strategy, where
        this is called once per input pipeline with its `input_context`: each
        pipeline must get disjoint episodes (`hebbkeras.tasks.episodes.episode_indices`).
        """
        raise NotImplementedError

    def optimizer(self):
        return keras.optimizers.Adam(self.config.learning_rate)

    def compile_args(self):
        """`loss` and `metrics` for `model.compile`."""
        return {}

    def callbacks(self, run_dir):
        """Callbacks of the task, run after the loop's own (logs, backup, TensorBoard)."""
        return []

    def extra_summary(self):
        """More entries of the run's summary (e.g. a final evaluation)."""
        return {}

    def summary_line(self, summary):
        """The line printed at the end of the run, from `summary` (see `run`)."""
        means = ", ".join(f"{k} {summary[f'{k}_last_{self.summary_window}']:.4f}"
                          for k in self.log_keys)
        return f"mean over the last {self.summary_window} episodes: {means}"


class EpisodeLog(keras.callbacks.Callback):
    """Writes each training step's values of `keys` to `episodes.csv`.

    Keras reports running means over the epoch at every batch; the value of
    batch `b` is recovered as `b * mean_b - (b - 1) * mean_{b-1}`. `recent`
    keeps the rows of the last `window` episodes for the final summary. The
    rows are on disk at every epoch end, before that epoch's backup.
    `start`: the episodes a resumed run has done.
    """

    def __init__(self, path, batch_size, keys, window=10, start=0):
        super().__init__()
        self.path, self.batch_size, self.keys = path, batch_size, tuple(keys)
        self.recent = collections.deque(maxlen=window)
        self.episodes_done = start
        self._log = None

    def on_train_begin(self, logs=None):
        # A resumed run: its summary averages the episodes before the restart too.
        for line in files.read_rows(self.path)[1:]:
            values = line.split(",")[1:]
            self.recent.extend([dict(zip(self.keys, map(float, values)))] * self.batch_size)
        self._log = files.CsvLog(self.path, ("episode",) + self.keys)

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
        self.recent.extend([row] * self.batch_size)
        self._log.append((self.episodes_done,) + tuple(row[k] for k in self.keys))

    def on_epoch_end(self, epoch, logs=None):
        self._log.flush()

    def on_train_end(self, logs=None):
        self.close()

    def means(self):
        """`{key: mean over the recent episodes}` (NaN before the first step)."""
        return {k: float(np.mean([r[k] for r in self.recent])) if self.recent else math.nan
                for k in self.keys}

    def close(self):
        if self._log is not None:
            self._log.close()


class HistoryLog(keras.callbacks.Callback):
    """`history.csv`: the epoch's logs (Keras's means over the epoch), one row per epoch,
    columns `epoch` and the log names in sorted order (as Keras's CSVLogger)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        keys = sorted(logs or {})
        files.append_row(self.path, [epoch] + [float(logs[k]) for k in keys], ["epoch"] + keys)


class Backup(keras.callbacks.Callback):
    """Backs up the model after every epoch (`trainers.files.save_backup`)."""

    def __init__(self, backup_dir):
        super().__init__()
        self.backup_dir = backup_dir

    def on_epoch_end(self, epoch, logs=None):
        files.save_backup(self.model, self.backup_dir, epoch + 1)


class StepClock(keras.callbacks.Callback):
    """Seconds per training step, the first step (tracing, compilation) left out.

    Last of the callbacks, so a step's time holds the other callbacks' work on it
    and, spread over the steps, every epoch end (logs, backup, TensorBoard): the
    time from the end of the first step to the end of the last epoch, divided by
    the steps after the first. `seconds_per_step()` is None before the second step.
    """

    def __init__(self):
        super().__init__()
        self.steps, self._first, self._last = 0, None, None

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()
        self.steps += 1
        if self._first is None:
            self._first = self._last

    def on_epoch_end(self, epoch, logs=None):
        self._last = time.perf_counter()

    def seconds_per_step(self):
        if self.steps < 2:
            return None
        return (self._last - self._first) / (self.steps - 1)


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step whose loss is not finite, before any backup of it.

    Unlike `keras.callbacks.TerminateOnNaN`, it stops by raising, so the run
    does not end as if completed: the last backup (of the last good epoch) stays.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLoss(float(loss))


def _per_step(seconds):
    return "" if seconds is None else f" ({seconds:.3f} s/step after the first)"


def check_devices(devices):
    """Raises a RunError if a device in `devices` does not exist on this machine."""
    present = {(d.device_type, int(d.name.rsplit(":", 1)[-1])): d.name
               for d in tf.config.list_logical_devices()}
    missing = []
    for name in devices:
        try:
            spec = tf.DeviceSpec.from_string(name)
        except ValueError:
            missing.append(name)
            continue
        if (str(spec.device_type).upper(), spec.device_index or 0) not in present:
            missing.append(name)
    if missing:
        raise RunError(
            f"devices {', '.join(missing)} do not exist on this machine; it has "
            f"{', '.join(sorted(present.values()))}. Name those, or leave --devices empty to "
            "mirror over all local GPUs (the CPU where there is none).")


def make_strategy(name, devices=()):
    """The `tf.distribute.Strategy` called `name` (one of `config.STRATEGIES`)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        check_devices(devices)  # a missing GPU would hang in an NCCL all-reduce
        return tf.distribute.MirroredStrategy(devices=list(devices) or None)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise RunError(
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


def _same_on_workers(strategy, what, value, backup_dir):
    """Raises a RunError on every worker unless `value` is the same on all (a collective)."""
    values = distributed.gather_int(strategy, value)
    if len(set(values)) > 1:
        raise RunError(
            f"the workers' backups differ ({what}: {values}, one per replica): a worker lost "
            "its backup or was stopped while the others wrote theirs. Start every worker "
            f"over with --overwrite (this worker's backup: {backup_dir}).")


def run(task):
    """Trains `task.config`'s run of `task`; returns a summary dict.

    The summary holds `episodes`, `wall_seconds` (of training), `step_seconds` (per
    step after the first: `StepClock`), `model_path`, `run_dir` and,
    for each of the task's `log_keys`, `<key>_last_<summary_window>`: its mean
    over the last episodes. It is also written to `summary.json`, last.

    Raises:
        ValueError (a `RunError`): bad settings, a run directory that cannot be
            used as asked, or a loss that became NaN (the last backup stays).
        KeyboardInterrupt: after saving the model (the backup stays).
    """
    config = task.config.validate()
    strategy = make_strategy(config.strategy, config.devices)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise RunError(
            f"batch_size={config.batch_size} is the global batch and must split evenly "
            f"across the {replicas} replicas of strategy={config.strategy!r}; use a "
            f"multiple of {replicas}.")
    run_dir = worker_dir(config.run_dir, strategy)
    resuming = files.prepare_run_dir(run_dir, config, task.outputs)
    backup_dir = os.path.join(run_dir, "backup")
    files.write_text(os.path.join(run_dir, "config.json"), config.to_json())
    keras.utils.set_random_seed(config.seed)

    steps = math.ceil(config.episodes / config.batch_size)
    steps_per_epoch = min(config.steps_per_epoch, steps)
    epochs = math.ceil(steps / steps_per_epoch)
    total_episodes = epochs * steps_per_epoch * config.batch_size
    if total_episodes != config.episodes and config.verbose:
        print(f"Running {total_episodes} episodes: whole epochs of "
              f"{steps_per_epoch} steps x batch {config.batch_size}.")

    with strategy.scope():
        model = task.model()
        model.compile(optimizer=task.optimizer(), jit_compile=config.jit_compile,
                      **task.compile_args())
        if config.strategy == "multi_worker":  # restoring takes collectives: all or none
            _same_on_workers(strategy, "present", int(os.path.isdir(backup_dir)), backup_dir)
        # Restore before fit, to learn where the episode stream resumes.
        _, passed_over = files.restore_backup(model, backup_dir)
    done_steps = int(model.optimizer.iterations.numpy())
    if config.strategy == "multi_worker":
        _same_on_workers(strategy, "steps", done_steps, backup_dir)
    if done_steps % steps_per_epoch:
        raise RunError(
            f"The backup in {backup_dir} stopped after {done_steps} steps, not a whole "
            f"number of epochs of {steps_per_epoch} steps. Resume with the "
            "steps_per_epoch it was written with, or pass --overwrite to start over.")
    first_epoch, start = done_steps // steps_per_epoch, done_steps * config.batch_size
    episodes_path = os.path.join(run_dir, "episodes.csv")
    history_path = os.path.join(run_dir, "history.csv")
    files.truncate_csv(episodes_path, lambda episode: episode <= start)
    files.truncate_csv(history_path, lambda epoch: epoch < first_epoch)
    for note in passed_over:
        print(f"Backup passed over: {note}.")
    if done_steps:
        print(f"Resuming from {backup_dir}: {first_epoch} epochs ({start} episodes) done.")
    elif resuming:
        print(f"Starting over in {run_dir}: its backup holds no completed epoch.")

    if config.strategy == "default":
        data = task.dataset(config, start=start)
    else:
        def per_pipeline(input_context):
            local = dataclasses.replace(
                config, batch_size=input_context.get_per_replica_batch_size(config.batch_size))
            return task.dataset(local, input_context=input_context, start=start)
        data = strategy.distribute_datasets_from_function(per_pipeline)

    log = EpisodeLog(episodes_path, config.batch_size, task.log_keys, task.summary_window, start)
    clock = StepClock()
    # The logs come before the backup, so they never lag behind it; a restart
    # truncates whatever they wrote after it. A NaN loss stops the run before
    # the backup of its epoch is written.
    callbacks = [
        log,
        HistoryLog(history_path),
        StopOnNonFiniteLoss(),
        Backup(backup_dir),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard")),
        *task.callbacks(run_dir),
        clock,  # last: its steps hold the others' work
    ]
    model_path = os.path.join(run_dir, "model.keras")
    start_time = time.perf_counter()
    try:
        with strategy.scope():
            if config.strategy == "multi_worker":  # Keras's fit fails there: docs/distributed.md
                distributed.fit(model, strategy, data, epochs, steps_per_epoch, callbacks,
                                verbose=config.verbose, initial_epoch=first_epoch)
            else:
                model.fit(
                    data,
                    epochs=epochs,
                    initial_epoch=first_epoch,
                    steps_per_epoch=steps_per_epoch,
                    callbacks=callbacks,
                    verbose=config.verbose,
                    shuffle=False,  # episodes are generated, not sampled from a set
                )
    except KeyboardInterrupt:
        log.close()
        files.save_model(model, model_path)
        print(f"\nInterrupted after {log.episodes_done} episodes. Model saved to "
              f"{model_path}; run the same command again to resume from the last "
              f"completed epoch (backup in {backup_dir}).")
        raise
    except NonFiniteLoss as e:
        log.close()
        raise RunError(
            f"the training loss became {e.args[0]} at episode {log.episodes_done}; training "
            f"stopped and no model was saved. The backup of the last good epoch stays in "
            f"{backup_dir} (rerunning resumes from it and would diverge the same way). "
            "Lower --learning_rate or check the settings, and use another run_dir or "
            "--overwrite.") from None
    wall = time.perf_counter() - start_time
    files.save_model(model, model_path)
    summary = {
        "episodes": log.episodes_done,
        **{f"{k}_last_{task.summary_window}": v for k, v in log.means().items()},
        "wall_seconds": wall,
        "step_seconds": clock.seconds_per_step(),
        "model_path": model_path,
        "run_dir": run_dir,
    }
    summary.update(task.extra_summary())
    files.write_json(os.path.join(run_dir, "summary.json"), summary)
    shutil.rmtree(backup_dir, ignore_errors=True)  # only now: the run is finished
    if config.verbose:
        print(f"Episodes: {summary['episodes']}  {task.summary_line(summary)}  "
              f"wall time: {wall:.1f} s{_per_step(summary['step_seconds'])}  model: {model_path}")
    return summary
