"""Reinforcement-learning runs side by side: their learning curves and a table.

What `--compare` of a reward-per-episode trainer does (`trainers.cue_reward`,
`trainers.maze`): read each run directory's
`config.json`, `episodes.csv` and `summary.json`, group the runs by a label
(e.g. seeds of one model), draw the groups' curves
(`maze_figures.reward_curves`) and write the table beside the figure.
"""

import json
import os

import numpy as np
from absl import flags

from trainers import figures, files, maze_figures
from trainers.config import define_flags, from_flags


def read_run(run_dir, config_class, trainer, kind=""):
    """`(config, per-episode rewards, summary or None)` of a run directory of `trainer`
    (`kind`: a word for the error messages, e.g. "maze ")."""
    config_path = os.path.join(run_dir, "config.json")
    episodes_path = os.path.join(run_dir, "episodes.csv")
    if not (os.path.isfile(config_path) and os.path.isfile(episodes_path)):
        raise ValueError(
            f"{run_dir} holds no {kind}run (config.json and episodes.csv): pass the run_dir of "
            f"runs of python -m {trainer}.")
    with open(config_path) as f:
        config = config_class.from_json(f.read())
    rows = figures.read_csv(episodes_path)
    if "reward" not in rows:
        raise ValueError(f"{episodes_path} has no reward column: is {run_dir} a {kind}run of {trainer}?")
    summary = None
    if os.path.isfile(os.path.join(run_dir, "summary.json")):
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
    return config, maze_figures.episode_rewards(rows["episode"], rows["reward"]), summary


def compare(run_dirs, figure_path, read, label, window, title, baseline=None):
    """Draws the runs' learning curves, grouped by `label(config)`, into `figure_path`.

    Args:
        run_dirs: the run directories.
        figure_path: the PNG to write; the table goes beside it (`.md`).
        read: `read(run_dir)` -> `(config, per-episode rewards, summary or None)`.
        label: `label(config)` -> the group's legend label.
        window: episodes of the running mean and of the table's final mean.
        title: the figure's title.
        baseline: `(label, value)` of a dashed line, None, or a function of the
            runs' `[(config, summary or None)]` that returns one of those.

    Returns the table (markdown): per group, the runs, their episodes and
    batch, the mean reward per episode over each run's last `window`
    episodes (mean and range over the runs) and episodes per second
    (episodes / wall time of finished runs).
    """
    if not run_dirs:
        raise ValueError("--compare is empty: give run directories, comma-separated.")
    seen = {}
    for run_dir in run_dirs:  # one run counted twice would weigh double in its group
        first = seen.setdefault(os.path.realpath(run_dir), run_dir)
        if first is not run_dir:
            raise ValueError(f"--compare names the run {first} twice ({first} and {run_dir}): "
                             "name each run directory once.")
    files.check_output_file("figure", figure_path)
    groups, rows, loaded = {}, {}, []
    for run_dir in run_dirs:
        config, rewards, summary = read(run_dir)
        loaded.append((config, summary))
        if rewards.size == 0:
            raise ValueError(f"{run_dir}/episodes.csv has no episodes yet.")
        name = label(config)
        groups.setdefault(name, []).append(rewards)
        speed = summary["episodes"] / summary["wall_seconds"] if summary else float("nan")
        rows.setdefault(name, []).append(
            (rewards.size, float(rewards[-window:].mean()), speed, config.batch_size))
    if callable(baseline):
        baseline = baseline(loaded)
    figure = maze_figures.reward_curves(groups, window=window, baseline=baseline, title=title)
    figures.save_png(figure, figure_path)
    head = ("model", "runs", "episodes", "batch", f"reward/episode, last {window:,} (mean)",
            "range over runs", "episodes/s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, values in rows.items():
        counts, finals, speeds, batches = (np.array(v) for v in zip(*values))
        episodes_text = (f"{counts.min():,}" if counts.min() == counts.max()
                         else f"{counts.min():,}-{counts.max():,}")
        lines.append("| " + " | ".join((
            name, str(len(finals)), episodes_text, ",".join(str(b) for b in sorted(set(batches))),
            f"{finals.mean():.2f}", f"{finals.min():.2f} to {finals.max():.2f}",
            f"{np.nanmean(speeds):.1f}" if np.isfinite(speeds).any() else "n/a")) + " |")
    text = "\n".join(lines) + "\n"
    files.write_text(os.path.splitext(figure_path)[0] + ".md", text)
    return text


def define_cli_flags(config_class, figure):
    """The trainer's flags (`config_class`'s) and `--compare`, `--figure` (default `figure`)."""
    define_flags(config_class)
    flags.DEFINE_list("compare", [], "Do not train: draw the learning curves of these run "
                      "directories (comma-separated; runs of one model and size are averaged) "
                      "into --figure, and print their table.")
    flags.DEFINE_string("figure", figure, "With --compare: the PNG to write (the table goes "
                        "beside it, as .md).")


def main(config_class, run, compare):
    """With `--compare`: `compare(runs, figure)` and its table printed; else `run(config)`."""
    if flags.FLAGS.compare:
        print(compare(flags.FLAGS.compare, flags.FLAGS.figure) + f"Figure: {flags.FLAGS.figure}")
        return
    run(from_flags(config_class))
