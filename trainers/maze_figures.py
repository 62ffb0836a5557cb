"""The maze task's figure: reward per episode during training, per group of runs.

(The maze itself, with an agent's path, is drawn by `hebbkeras.tasks.maze.path_figure`.)
"""

import numpy as np
from matplotlib.figure import Figure

from trainers.figures import running_mean


def episode_rewards(episodes, rewards):
    """Per-episode rewards from `episodes.csv` rows: each row's value repeated for its batch.

    A row holds the mean reward of the batch ending at episode `episodes[i]`,
    so it stands for `episodes[i] - episodes[i - 1]` episodes (the first for
    `episodes[0]`).
    """
    episodes = np.asarray(episodes, np.int64)
    counts = np.diff(np.concatenate([[0], episodes]))
    if (counts <= 0).any():
        raise ValueError("episode numbers must increase from row to row (a corrupt episodes.csv?).")
    return np.repeat(np.asarray(rewards, np.float64), counts)


TITLE = "Maze: reward per episode during training"


def reward_curves(groups, window=1000, points=400, baseline=None, title=TITLE,
                  size=(7.5, 4.4), dpi=110):
    """Reward against training episodes: per group, the mean of its runs and their spread.

    Each run's per-episode rewards are smoothed by a running mean over the
    last `window` episodes (fewer at the start). A group of several runs
    (e.g. seeds of one model) is drawn as the mean of its runs' smoothed
    curves with a shaded band from their lowest to their highest, over the
    episodes that all its runs reached.

    Args:
        groups: `{legend label: [per-episode rewards of a run, ...]}` (see
            `episode_rewards`); a group may hold one run.
        window: episodes of the running mean.
        points: at most this many points per curve.
        baseline: `(label, value)` drawn as a dashed horizontal line (e.g.
            the random policy's mean reward), or None.
        title: the figure title; size: inches; dpi: pixels per inch.

    Returns:
        A Figure with one axes.

    Example:

        fig = reward_curves({"plastic": [seed0, seed1], "rnn": [seed0]}, window=1000,
                            baseline=("random policy", -2.0))
        save_png(fig, "maze_curves.png")
    """
    if not groups:
        raise ValueError("reward_curves needs at least one group of runs; got none.")
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for label, runs in groups.items():
        runs = [np.asarray(r, np.float64) for r in runs]
        length = min((r.size for r in runs), default=0)
        if length == 0:
            raise ValueError(f"reward_curves: group {label!r} has a run without episodes.")
        smooth = np.stack([running_mean(r[:length], window) for r in runs])
        keep = np.unique(np.linspace(0, length - 1, min(points, length)).astype(int))
        x, mean = keep + 1, smooth.mean(axis=0)[keep]
        if len(runs) > 1:
            label = f"{label} (mean of {len(runs)} runs, band min-max)"
        (line,) = ax.plot(x, mean, "-", label=label, linewidth=1.6)
        if len(runs) > 1:
            ax.fill_between(x, smooth.min(axis=0)[keep], smooth.max(axis=0)[keep],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    if baseline is not None:
        ax.axhline(baseline[1], color="0.4", linestyle="--", linewidth=1.2, label=baseline[0])
    ax.set_xlabel("training episodes")
    ax.set_ylabel(f"reward per episode (mean of the last {window:,})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return fig
