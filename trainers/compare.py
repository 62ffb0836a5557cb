"""The paper's 50-bit comparison (Figure 2, right): plastic network vs RNN vs LSTM.

Two 50-bit patterns per episode, each shown once for 3 steps with 1 zero step
after it, then one of them with half its bits zeroed for 3 steps (11 steps).
The plastic network has 51 neurons (eta = 0.05, Adam 3e-4); the non-plastic
RNN and the LSTM have 2,050 neurons / units (Adam 3e-5), as in the original
code. Each model is trained by the shared trainer (`trainers.common.run`) in
`<run_dir>/<model>/`; then this writes

    <run_dir>/bit_error.csv        model, episode, bit_error (one row per episode)
    <run_dir>/learning_curves.png  mean bit error against episodes (log axis)
    <run_dir>/table.md             the table printed at the end

A model whose run already completed with the same settings is not retrained;
an interrupted one resumes from its backup.

    python -m trainers.compare --plastic_episodes 2000 --baseline_episodes 20000
"""

import csv
import dataclasses
import json
import math
import os
import sys

import numpy as np
from absl import app, flags

from hebbkeras import episodes, ops
from trainers import common, figures

SCHEDULE = episodes.Schedule(
    num_items=2, presentation_steps=3, gap_steps=1, presentations=1, query_steps=3
)

def define_flags():
    """Defines the flags; only when run as a command, so trainers can be imported together."""
    flags.DEFINE_list("models", list(common.MODELS), "Models to train and compare, from plastic, rnn, lstm.")
    flags.DEFINE_integer("plastic_episodes", 2000, "Training episodes of the plastic network.")
    flags.DEFINE_integer("baseline_episodes", 20000, "Training episodes of the rnn and lstm baselines (the paper ran up to millions).")
    flags.DEFINE_integer("extra_units", 2000, "Neurons / units of the baselines beyond the 50-bit pattern (2000 in the paper).")
    flags.DEFINE_enum("input_mode", "clamp", ("clamp", "add"), "How inputs reach neurons, for every model but the lstm: clamp (the paper) or add (input * 20 added to the pre-activation, the original code; tanh(20) rounds to 1 in float32, so the two agree).")
    flags.DEFINE_bool("trainable_eta", False, "Learn the plastic network's eta (the original code does, starting from 0.01).")
    flags.DEFINE_float("eta", 0.05, "Plasticity rate of the plastic network (0.05 in the paper's 50-bit experiment).")
    flags.DEFINE_float("plastic_learning_rate", 3e-4, "Adam learning rate of the plastic network (3e-4 in the original code).")
    flags.DEFINE_float("baseline_learning_rate", 3e-5, "Adam learning rate of the rnn and lstm (3e-5 in the original code; it notes 3e-4 fails for the lstm).")
    flags.DEFINE_integer("steps_per_epoch", 100, "Episodes per Keras epoch (batch 1): the unit of backups and of resumption.")
    flags.DEFINE_float("threshold", 0.01, "Bit error to reach.")
    flags.DEFINE_integer("window", 10, "A model reaches the threshold at the first episode where the mean bit error of the last `window` episodes is below it.")
    flags.DEFINE_integer("seed", 0, "Seed of weights and episodes (the same for every model).")
    flags.DEFINE_string("run_dir", "runs/compare", "Directory of the runs, the CSV, the figure and the table.")
    flags.DEFINE_integer("verbose", 0, "Keras fit verbosity of each run.")

FLAGS = flags.FLAGS


def model_config(model, num_episodes, run_dir, extra_units=2000, eta=0.05,
                 input_mode="clamp", trainable_eta=False,
                 plastic_learning_rate=3e-4, baseline_learning_rate=3e-5,
                 steps_per_epoch=100, seed=0, verbose=0, **distribution):
    """The trainer `Config` of one model in the 50-bit comparison."""
    plastic = model == "plastic"
    return common.Config(
        model=model,
        pattern_size=50,
        extra_units=1 if plastic else extra_units,
        schedule=SCHEDULE,
        erase_fraction=0.5,
        input_mode=input_mode,
        eta=eta,
        trainable_eta=trainable_eta,
        episodes=num_episodes,
        batch_size=1,
        learning_rate=plastic_learning_rate if plastic else baseline_learning_rate,
        steps_per_epoch=steps_per_epoch,
        seed=seed,
        run_dir=os.path.join(run_dir, model),
        verbose=verbose,
        **distribution,
    )


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


def _completed(config):
    """True if `config.run_dir` holds a finished run of exactly `config`."""
    path = config.run_dir
    if not os.path.exists(os.path.join(path, "model.keras")) or os.path.exists(
        os.path.join(path, "backup")
    ):
        return False
    try:
        with open(os.path.join(path, "config.json")) as f:
            previous = common.Config.from_json(f.read())
        return (dataclasses.replace(previous, verbose=config.verbose) == config
                and len(read_bit_errors(path)) >= config.episodes)
    except (OSError, ValueError, KeyError):
        return False


def plot(curves, path, threshold):
    """Mean bit error in log-spaced episode bins, log episode axis, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, (errors, label) in curves.items():
        edges = np.unique(np.round(np.geomspace(1, len(errors), 60)).astype(int))
        edges = np.concatenate([[0], edges])
        x = edges[1:]
        y = [errors[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]
        ax.plot(x, y, label=label)
    ax.axhline(threshold, color="gray", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("Episodes")
    ax.set_ylabel("Mean bit error (log-spaced bins)")
    ax.set_ylim(bottom=0)
    ax.set_title("50-bit patterns: plastic vs non-plastic")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(rows):
    head = ("model", "neurons", "episodes", "episodes to < {t}", "error at 2,000", "final error")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in r) + " |")
    return "\n".join(lines)


def compare(models, run_dir, plastic_episodes, baseline_episodes, threshold=0.01,
            window=10, **settings):
    """Trains (or reuses) each model, writes CSV, PNG and table; returns the table rows."""
    for model in models:
        ops.check_option("model", model, common.MODELS)
    os.makedirs(run_dir, exist_ok=True)
    curves, rows = {}, []
    for model in models:
        n = plastic_episodes if model == "plastic" else baseline_episodes
        config = model_config(model, n, run_dir, **settings)
        if _completed(config):
            print(f"{model}: reusing the finished run in {config.run_dir}")
        else:
            print(f"{model}: {config.units} neurons, {n} episodes -> {config.run_dir}", flush=True)
            summary = common.run(config)
            with open(os.path.join(config.run_dir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
        errors = read_bit_errors(config.run_dir)
        curves[model] = (errors, f"{model} ({config.units} neurons)")
        reached = episodes_to_reach(errors, threshold, window)
        rows.append((
            model, config.units, len(errors),
            reached if reached is not None else "not reached",
            f"{mean_over(errors, 100, 2000):.4f}",
            f"{mean_over(errors, 100):.4f}",
        ))
    with open(os.path.join(run_dir, "bit_error.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("model", "episode", "bit_error"))
        for model, (errors, _) in curves.items():
            writer.writerows((model, i + 1, e) for i, e in enumerate(errors))
    plot(curves, os.path.join(run_dir, "learning_curves.png"), threshold)
    text = table(rows).replace("{t}", f"{threshold:g}")
    text += (f"\n\nepisodes to < {threshold:g}: first episode whose last {window} episodes "
             f"average below {threshold:g}; error at 2,000: mean of episodes 1,901-2,000; "
             "final error: mean of the last 100 episodes.\n")
    with open(os.path.join(run_dir, "table.md"), "w") as f:
        f.write(text)
    print(text)
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        compare(
            FLAGS.models, FLAGS.run_dir, FLAGS.plastic_episodes, FLAGS.baseline_episodes,
            threshold=FLAGS.threshold, window=FLAGS.window, extra_units=FLAGS.extra_units,
            eta=FLAGS.eta, input_mode=FLAGS.input_mode, trainable_eta=FLAGS.trainable_eta,
            plastic_learning_rate=FLAGS.plastic_learning_rate,
            baseline_learning_rate=FLAGS.baseline_learning_rate,
            steps_per_epoch=FLAGS.steps_per_epoch, seed=FLAGS.seed, verbose=FLAGS.verbose,
            **common.strategy_flags(),
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    define_flags()
    common.define_strategy_flags()
    app.run(main)
