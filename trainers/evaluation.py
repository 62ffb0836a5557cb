"""Evaluation on held-out data during a run: every `eval_every` episodes and at the end."""

import os

import keras
import tensorflow as tf

from trainers import files, loop


class PeriodicEvaluation(keras.callbacks.Callback):
    """Evaluates every `config.eval_every` training episodes and when training ends.

    Each evaluation appends a row of `keys` to `run_dir/eval.csv` (a resumed
    run first drops the rows after its backup, so each evaluation is there
    once) and logs them as TensorBoard scalars under `tensorboard/eval`; at the
    end `evaluation.json` holds the last one and `finish` draws the figures.

    Subclasses implement `evaluate()` -> `(means, details)` (`means` a dict
    over `keys`; `details` whatever `finish` needs), `finish(details, step)`
    and `describe(means)` (the line printed after each evaluation).
    """

    def __init__(self, config, run_dir, keys):
        super().__init__()
        self.config, self.run_dir, self.keys = config, run_dir, tuple(keys)
        self.path = os.path.join(run_dir, "eval.csv")
        self.last = self.done = 0
        self.final = None  # (means, details) of the last evaluation

    def evaluate(self):
        raise NotImplementedError

    def finish(self, details, step):
        """Draws the figures of the last evaluation (nothing by default)."""

    def describe(self, means):
        return ", ".join(f"{k} {means[k]:.4f}" for k in self.keys)

    def on_train_begin(self, logs=None):
        self.last = self.done = int(self.model.optimizer.iterations.numpy()) * self.config.batch_size
        files.truncate_csv(self.path, lambda episode: episode <= self.done)

    def on_train_batch_end(self, batch, logs=None):
        self.done += self.config.batch_size
        every = self.config.eval_every
        if self.done // every > self.last // every:
            self.run_evaluation()

    def on_train_end(self, logs=None):
        if self.last != self.done or self.final is None:
            self.run_evaluation()
        files.write_json(os.path.join(self.run_dir, "evaluation.json"),
                         {"episodes": self.done, **self.final[0]})
        self.finish(self.final[1], self.done)

    def run_evaluation(self):
        self.last = self.done
        self.final = self.evaluate()
        means = self.final[0]
        # A run resumed after its last epoch evaluates at the end again: one row per episode.
        files.truncate_csv(self.path, lambda episode: episode < self.done)
        files.append_row(self.path, [self.done] + [f"{means[k]:g}" for k in self.keys],
                         ("episode",) + self.keys)
        writer = tf.summary.create_file_writer(os.path.join(self.run_dir, "tensorboard", "eval"))
        with writer.as_default():
            for k in self.keys:
                tf.summary.scalar(k, means[k], step=self.done)
        writer.close()
        if self.config.verbose:
            print(f"\n[evaluation after {self.done} episodes] {self.describe(means)}")


class EvaluatedTask(loop.Task):
    """A task evaluated on held-out data by its `Evaluation` (a `PeriodicEvaluation`
    subclass taking `(config, data, run_dir)`); the run's summary holds the last evaluation.
    """

    Evaluation = None
    outputs = ("eval.csv", "evaluation.json")

    def __init__(self, config, data):
        super().__init__(config)
        self.data = data
        self.evaluation = None

    def callbacks(self, run_dir):
        self.evaluation = self.Evaluation(self.config, self.data, run_dir)
        return [self.evaluation]

    def extra_summary(self):
        return {"evaluation": self.evaluation.final[0]}
