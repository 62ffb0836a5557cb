"""The image task's figures (paper Fig. 3): episodes, weights, the learning curve.

Drawn as `matplotlib.figure.Figure`s without pyplot (see `trainers.figures`);
`trainers.cifar.write_figures` publishes them.
"""

import math
import os

import numpy as np
from matplotlib.figure import Figure

from trainers.figures import learning_curve, read_csv, running_mean

# Titles of the weight panels by matrix name; other names are used as given.
MATRIX_TITLES = {"w": "w (fixed weights)", "alpha": "alpha (plasticity coefficients)"}


def _square(image, what):
    image = np.asarray(image, np.float64).ravel()
    side = math.isqrt(image.size)
    if side * side != image.size:
        raise ValueError(f"{what} has {image.size} pixels, not a square number: "
                         "pass images flattened row by row from a square grid.")
    return image.reshape(side, side)


def episode_grid(rows, low=-1.0, high=1.0, title="Test episodes", cell=1.15, dpi=100):
    """Paper Fig. 3, left: one row per episode, one column per image.

    Columns: "stored 1" .. "stored k", then (after a gap) "cue",
    "reconstruction", "truth". Grey levels are fixed: `low` is black, `high`
    white (values outside are clipped), the same in every cell.

    Args:
        rows: a list of `(stored, cue, reconstruction, truth)`: `stored` is
            `(k, pixels)`, the others `(pixels,)`; images are square, flattened
            row by row (side = sqrt(pixels)).
        low, high: the values drawn black and white.
        title: the figure title; the grey scale is added below it.
        cell: inches per image; dpi: pixels per inch.

    Returns:
        A Figure; its axes are the cells in row-major order.

    Example:

        fig = episode_grid([(stored, cue, model_output, truth)], low=-1.0, high=1.0)
        save_png(fig, "episodes.png")
    """
    rows = list(rows)
    if not rows:
        raise ValueError("episode_grid needs at least one row (episode); got none.")
    if not high > low:
        raise ValueError(f"episode_grid needs low < high; got low={low}, high={high}.")
    k = len(rows[0][0])
    headings = [f"stored {i + 1}" for i in range(k)] + ["cue", "reconstruction", "truth"]
    gap = 0.25
    fig = Figure(figsize=(cell * (k + 3 + gap) + 0.5, cell * len(rows) + 0.75), dpi=dpi,
                 layout="constrained")
    grid = fig.add_gridspec(len(rows), k + 4, width_ratios=[1] * k + [gap] + [1] * 3)
    for r, row in enumerate(rows):
        if len(row) != 4:
            raise ValueError(f"Episode {r + 1} has {len(row)} entries; pass (stored, cue, "
                             "reconstruction, truth) for each episode.")
        stored, *others = row
        if len(stored) != k:
            raise ValueError(f"Episode {r + 1} has {len(stored)} stored images, episode 1 has {k}: "
                             "every row needs the same number.")
        for c, (image, heading) in enumerate(zip(list(stored) + others, headings)):
            ax = fig.add_subplot(grid[r, c if c < k else c + 1])
            ax.imshow(_square(image, f"Episode {r + 1}, {heading}"), cmap="gray", vmin=low, vmax=high,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heading, fontsize=10)
            if c == 0:
                ax.set_ylabel(f"episode {r + 1}", fontsize=9)
    fig.suptitle(f"{title}\n(grey scale: black {low:g}, white {high:g})", fontsize=11)
    return fig


def _limit(matrix, percentile):
    limit = float(np.nanpercentile(np.abs(matrix), percentile)) if matrix.size else 0.0
    return limit if limit > 0 and math.isfinite(limit) else 1.0


def weight_matrices(named, percentile=99.5, title=None, panel=4.2, dpi=110):
    """Paper Fig. 3, right: `{name: (n, m) matrix}` side by side, each with a colour bar.

    Row i, column j is the connection from (presynaptic) neuron i to
    (postsynaptic) neuron j: column j holds the inputs of neuron j. Blue is
    negative, white 0, red positive; each matrix has its own symmetric scale
    ±limit, limit = the `percentile`th percentile of |matrix|, so a few
    outliers do not wash out the rest (larger values are drawn at full colour;
    the colour bar label says so).

    Args:
        named: `{name: matrix}`; names in `MATRIX_TITLES` get a descriptive title.
        percentile: where the colour scale saturates.
        title: the figure title (default: a line saying how to read the panels).
        panel: inches per matrix; dpi: pixels per inch.

    Returns:
        A Figure with one axes per matrix (`fig.axes`, in the order of `named`);
        each axes' colour bar is its inset child axes (`image.colorbar`).
    """
    if not named:
        raise ValueError("weight_matrices needs at least one matrix; got none.")
    # A fixed layout in inches: constrained layout keeps re-centring square
    # images next to colour bars for many draws, so two renderings would differ.
    sep = " " if len(named) > 1 else "\n"  # one panel is too narrow for the title on one line
    title = title or ("Row i, column j: the connection from neuron i to neuron j"
                      f"{sep}(column j holds the inputs of neuron j)")
    left, right, bottom = 0.8, 1.5, 0.6  # tick labels + axis label; colour bar + its label
    top = 0.55 + 0.2 * (title.count("\n") + 1)  # panel titles; figure title
    width, height = len(named) * (left + panel + right), bottom + panel + top
    fig = Figure(figsize=(width, height), dpi=dpi)
    for k, (name, matrix) in enumerate(named.items()):
        matrix = np.asarray(matrix, np.float64)
        if matrix.ndim != 2:
            raise ValueError(f"weight_matrices: {name!r} has shape {matrix.shape}; pass a 2-D matrix.")
        x0 = k * (left + panel + right) + left
        ax = fig.add_axes((x0 / width, bottom / height, panel / width, panel / height))
        limit = _limit(matrix, percentile)
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit,
                          interpolation="nearest" if max(matrix.shape) <= 256 else "antialiased")
        ax.set_title(MATRIX_TITLES.get(name, name), fontsize=11)
        ax.set_xlabel("postsynaptic neuron j")
        ax.set_ylabel("presynaptic neuron i")
        bar = fig.colorbar(image, cax=ax.inset_axes((1.04, 0.04, 0.045, 0.92)), extend="both")
        bar.set_label(f"{name}[i, j], clipped at ±{limit:.3g}\n"
                      f"({percentile:g}th percentile of |{name}|)", fontsize=9)
    fig.suptitle(title, fontsize=11, y=1 - 0.1 / height)
    return fig


def cifar_learning_curve(run_dir, points=400):
    """The image task's learning curve from `episodes.csv` and `eval.csv` in `run_dir`.

    Training: the erased-half MSE of the training batches (one row of
    `episodes.csv` each) as a running mean over 1/40 of the rows, at most
    `points` of them; the legend gives the window in episodes. Test: the evaluations;
    baselines: zero fill and mean fill of the erased half on the test episodes.

    Returns:
        A Figure, or None if neither file has an `erased_mse` column with data.
    """
    train = read_csv(os.path.join(run_dir, "episodes.csv"))
    test = read_csv(os.path.join(run_dir, "eval.csv"))
    curves, baselines = {}, {}
    if len(train.get("erased_mse", ())):
        x, y = train["episode"], train["erased_mse"]
        window = max(1, len(y) // 40)  # rows; a row is one batch of episodes
        per_row = int(np.median(np.diff(x))) if len(x) > 1 else 1
        keep = np.unique(np.linspace(0, len(x) - 1, min(points, len(x))).astype(int))
        span = window * per_row
        label = f"training (mean of the last {span} episodes)" if span > 1 else "training episodes"
        curves[label] = (x[keep], running_mean(y, window)[keep])
    if len(test.get("erased_mse", ())):
        curves["test episodes"] = (test["episode"], test["erased_mse"])
        baselines["zero fill (test)"] = (test["episode"], test["zero_fill_mse"])
        baselines["mean of stored images (test)"] = (test["episode"], test["mean_fill_mse"])
    if not curves:
        return None
    return learning_curve(curves, baselines, title="Image completion: erased-half MSE")
