"""The paper's 50-bit comparison (Figure 2, right): plastic network vs RNN vs LSTM.

Two 50-bit patterns per episode, each shown once for 3 steps with 1 zero step
after it, then one of them with half its bits zeroed for 3 steps (11 steps).
The plastic network has 51 neurons (eta = 0.05, Adam 3e-4); the non-plastic
RNN and the LSTM have 2,050 neurons / units (Adam 3e-5), as in the original
code. Each model is trained by the binary task on the shared loop in
`<run_dir>/<model>/`; then this writes

    <run_dir>/bit_error.csv        model, episode, bit_error (one row per episode)
    <run_dir>/learning_curves.png  mean bit error against episodes (log axis)
    <run_dir>/table.md             the table printed at the end

A model whose run already finished with the same settings is not retrained;
an interrupted one resumes from its backup.

    python -m trainers.compare --plastic_episodes 2000 --baseline_episodes 20000
"""

import hebbcli

hebbcli.import_tensorflow()  # first: TensorFlow's start-up noise stays hidden

import csv
import dataclasses
import math
import os

import numpy as np

from hebbkeras import checks
from hebbkeras.tasks import episodes
from trainers import binary, compare_figures, completion, figures, files
from trainers.config import define_flags, from_flags, positive_int, setting

TABLE_AT = 2000  # the table's "error at" column: the paper's plot reads its curves here
TABLE_LAST = 100  # episodes averaged for the table's errors


def _models(name, value):
    if not value:
        raise ValueError(f"{name} is empty: name models from {', '.join(completion.MODELS)}.")
    for model in value:
        checks.check_option("model", model, completion.MODELS)


@dataclasses.dataclass
class CompareConfig(binary.BinaryConfig):
    """The 50-bit comparison: the binary task's settings at the paper's 50-bit values."""

    pattern_size: int = 50
    schedule: episodes.Schedule = episodes.Schedule(
        num_items=2, presentation_steps=3, gap_steps=1, presentations=1, query_steps=3)
    extra_units: int = 2000  # of the baselines; the plastic network has 1 (the bias)
    eta: float = 0.05
    steps_per_epoch: int = 100
    run_dir: str = "runs/compare"
    verbose: int = 0
    models: tuple = setting(completion.MODELS, "Models to train and compare, from plastic, rnn, lstm.", _models)
    plastic_episodes: int = setting(2000, "Training episodes of the plastic network.", positive_int)
    baseline_episodes: int = setting(
        20000, "Training episodes of the rnn and lstm baselines (the paper ran up to millions).",
        positive_int)
    plastic_learning_rate: float = setting(
        3e-4, "Adam learning rate of the plastic network (3e-4 in the original code).",
        checks.check_positive)
    baseline_learning_rate: float = setting(
        3e-5, "Adam learning rate of the rnn and lstm (3e-5 in the original code; it notes 3e-4 "
        "fails for the lstm).", checks.check_positive)
    threshold: float = setting(0.01, "Bit error to reach.", checks.check_positive)
    window: int = setting(
        10, "A model reaches the threshold at the first episode where the mean bit error of the "
        "last `window` episodes is below it.", positive_int)

    NO_FLAGS = ("episodes", "learning_rate", "model")  # one per model: see model_config

    def model_config(self, model):
        """The `binary.BinaryConfig` of `model`'s run in this comparison."""
        plastic = model == "plastic"
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(binary.BinaryConfig)}
        values.update(
            model=model,
            extra_units=1 if plastic else self.extra_units,
            episodes=self.plastic_episodes if plastic else self.baseline_episodes,
            learning_rate=self.plastic_learning_rate if plastic else self.baseline_learning_rate,
            run_dir=os.path.join(self.run_dir, model),
        )
        return binary.BinaryConfig(**values).validate()


def read_bit_errors(run_dir):
    """The per-episode bit errors of a run's `episodes.csv`, in episode order."""
    return figures.read_csv(os.path.join(run_dir, "episodes.csv"))["bit_error"]


def episodes_to_reach(errors, threshold=0.01, window=10):
    """First episode (1-based) whose last `window` episodes average below `threshold`."""
    if len(errors) < window:
        return None
    means = np.convolve(errors, np.ones(window) / window, mode="valid")
    below = np.flatnonzero(means < threshold)
    return int(below[0]) + window if below.size else None


def mean_over(errors, last, upto=None):
    """Mean bit error of the `last` episodes up to episode `upto` (all by default)."""
    upto = len(errors) if upto is None else min(upto, len(errors))
    part = errors[max(0, upto - last):upto]
    return float(part.mean()) if part.size else math.nan


def _finished_with(config):
    """True if `config.run_dir` holds a finished run of exactly `config`."""
    try:
        with open(os.path.join(config.run_dir, "config.json")) as f:
            previous = type(config).from_json(f.read())
        return (os.path.exists(os.path.join(config.run_dir, "summary.json"))
                and not config.differences(previous))
    except (OSError, ValueError, TypeError):
        return False


def table(rows, threshold):
    head = ("model", "neurons", "episodes", f"episodes to < {threshold:g}",
            f"error at {TABLE_AT:,}", "final error")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def compare(config):
    """Trains (or reuses) each model, writes CSV, PNG and table; returns the table rows."""
    config = config.validate()
    configs = {m: config.model_config(m) for m in config.models}  # every check before any run
    os.makedirs(config.run_dir, exist_ok=True)
    curves, rows = {}, []
    for model, run_config in configs.items():
        if _finished_with(run_config) and not config.overwrite:
            print(f"{model}: reusing the finished run in {run_config.run_dir}")
        else:
            print(f"{model}: {run_config.units} neurons, {run_config.episodes} episodes -> "
                  f"{run_config.run_dir}", flush=True)
            binary.run(run_config)
        errors = read_bit_errors(run_config.run_dir)
        curves[model] = (errors, f"{model} ({run_config.units} neurons)")
        reached = episodes_to_reach(errors, config.threshold, config.window)
        at = (f"{mean_over(errors, TABLE_LAST, TABLE_AT):.4f}" if len(errors) >= TABLE_AT
              else f"n/a ({len(errors):,} episodes)")
        rows.append((model, run_config.units, len(errors),
                     reached if reached is not None else "not reached", at,
                     f"{mean_over(errors, TABLE_LAST):.4f}"))
    with files.atomic_path(os.path.join(config.run_dir, "bit_error.csv")) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("model", "episode", "bit_error"))
            for model, (errors, _) in curves.items():
                writer.writerows((model, i + 1, e) for i, e in enumerate(errors))
    figure = compare_figures.bit_error_curves({label: errors for errors, label in curves.values()},
                                              config.threshold, title="50-bit patterns: plastic vs non-plastic")
    figures.save_png(figure, os.path.join(config.run_dir, "learning_curves.png"))
    text = table(rows, config.threshold)
    text += (f"\n\nepisodes to < {config.threshold:g}: first episode whose last {config.window} "
             f"episodes average below {config.threshold:g}; error at {TABLE_AT:,}: mean of "
             f"episodes {TABLE_AT - TABLE_LAST + 1:,}-{TABLE_AT:,} (n/a for a run of fewer "
             f"episodes); final error: mean of the last {TABLE_LAST} episodes (of all, for a "
             "shorter run).\n")
    files.write_text(os.path.join(config.run_dir, "table.md"), text)
    print(text)
    return rows


def main(argv):
    compare(from_flags(CompareConfig))


if __name__ == "__main__":
    define_flags(CompareConfig)
    hebbcli.run(main)
