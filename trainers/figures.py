"""The trainers' figures, drawn with matplotlib; PNG files and TensorBoard images.

Every figure function returns a `matplotlib.figure.Figure` built without
pyplot: no backend is selected and no global figure list is touched, so
importing this module changes nothing for a caller who uses pyplot itself.
`to_rgb` renders a figure with the Agg canvas; `save_png` writes a figure (or
an RGB array) atomically; `log_images` sends them to TensorBoard.

Example:

    fig = figures.learning_curve({"test": (episodes, mse)},
                                 baselines={"zero fill": (episodes, zero)})
    figures.save_png(fig, "runs/cifar/learning_curve.png")
"""

import csv
import io
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainers import files

# Titles of the weight panels by matrix name; other names are used as given.
MATRIX_TITLES = {"w": "w (fixed weights)", "alpha": "alpha (plasticity coefficients)"}


# ------------------------------------------------------------------ output

def to_rgb(fig):
    """Renders a Figure with the Agg canvas as an `(h, w, 3)` uint8 array.

    Args:
        fig: a matplotlib Figure (h, w = figsize * dpi), or an `(h, w, 3)`,
            `(h, w, 1)` or `(h, w)` uint8 array, returned as `(h, w, 3)`.

    A figure managed by pyplot is closed afterwards; the figures made here are
    not, and need no closing. Rendering the same figure again gives the same
    pixels.
    """
    if isinstance(fig, np.ndarray):
        return _as_rgb(fig)
    pyplot_figure = getattr(fig.canvas, "manager", None) is not None
    canvas = FigureCanvasAgg(fig)
    _settle(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if pyplot_figure:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return rgb


def _settle(fig, passes=6):
    """Lays `fig` out until its axes stop moving.

    Constrained layout moves the axes a little on each draw for a few draws
    (tick labels and colour bars change with the axes' size); without this the
    first rendering differs from the second, and a PNG from the TensorBoard image.
    """
    where = None
    for _ in range(passes):
        fig.draw_without_rendering()
        now = np.array([ax.get_position().bounds for ax in fig.axes]) * fig.bbox.width
        if where is not None and np.abs(now - where).max(initial=0) < 1e-3:  # pixels
            return
        where = now


def _as_rgb(image):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[-1] not in (1, 3)):
        raise ValueError(f"Expected a matplotlib Figure or an (h, w, 3) uint8 array, got "
                         f"{image.dtype} of shape {image.shape}.")
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def save_png(fig_or_array, path):
    """Writes a Figure or `(h, w, 3)` uint8 array to `path` as PNG; returns `path`.

    Atomic: the PNG goes to a temporary file in the same directory, which then
    replaces `path`, so a reader finds the old file or the new one, never a
    truncated one.
    """
    from PIL import Image  # a dependency of matplotlib

    buffer = io.BytesIO()
    Image.fromarray(to_rgb(fig_or_array)).save(buffer, format="png")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_bytes(path, buffer.getvalue())
    return path


def log_images(logdir, images, step):
    """Logs `{name: Figure or (h, w, 3) uint8}` as TensorBoard images at `step`."""
    import tensorflow as tf  # only here: drawing needs no TensorFlow

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for name, image in images.items():
            tf.summary.image(name, to_rgb(image)[None], step=step)
    writer.close()


# ------------------------------------------------------------------ image task

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


def learning_curve(curves, baselines=None, title="Erased-half MSE during training",
                   xlabel="training episodes", ylabel="erased-half MSE", size=(7.5, 4.4), dpi=110):
    """Solid lines for `curves`, dashed ones for `baselines`, with a legend.

    Args:
        curves: `{legend label: (episodes, values)}`, drawn solid (with a dot
            at each point when there are fewer than 40, so one point shows).
        baselines: `{legend label: (episodes, values)}`, drawn dashed.
        title, xlabel, ylabel: the text of the figure.
        size: inches; dpi: pixels per inch.

    Non-finite values are left out. The y axis starts at 0.

    Returns:
        A Figure with one axes.
    """
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    styles = [(curves or {}, "-"), (baselines or {}, "--")]
    if not any(named for named, _ in styles):
        raise ValueError("learning_curve needs at least one curve or baseline; got none.")
    for named, style in styles:
        for label, (x, y) in named.items():
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            keep = np.isfinite(x) & np.isfinite(y)
            ax.plot(x[keep], y[keep], style, label=label, linewidth=1.6,
                    marker="o" if keep.sum() < 40 else None, markersize=3.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
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


# ------------------------------------------------------------------ binary task

def log_bins(count, bins=60):
    """Bin edges `[0, e_1, ..., count]`, log-spaced: bin b is episodes e_b + 1 .. e_{b+1}."""
    edges = np.unique(np.round(np.geomspace(1, count, bins)).astype(int))
    return np.concatenate([[0], edges])


def bit_error_curves(curves, threshold, title="Mean bit error during training", bins=60,
                     size=(7.0, 4.4), dpi=110):
    """Mean bit error per log-spaced bin of episodes against a log episode axis.

    Each curve's point at x = e_{b+1} is the mean bit error of episodes
    e_b + 1 .. e_{b+1} (`log_bins`): early episodes are shown one by one, late
    ones averaged over many, so the noise of single episodes does not hide the
    trend. A dotted line marks `threshold`.

    Args:
        curves: `{legend label: per-episode bit errors in episode order}`.
        threshold: the bit error drawn as a horizontal line.
        title: the figure title (e.g. "50-bit patterns: plastic vs non-plastic").
        bins: the number of log-spaced bin edges before duplicates are merged.
        size: inches; dpi: pixels per inch.

    Returns:
        A Figure with one axes.

    Example:

        fig = bit_error_curves({"plastic (51 neurons)": errors}, threshold=0.01)
        save_png(fig, "learning_curves.png")
    """
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for label, errors in curves.items():
        errors = np.asarray(errors, np.float64)
        if errors.size == 0:
            raise ValueError(f"bit_error_curves: curve {label!r} has no episodes.")
        edges = log_bins(errors.size, bins)
        ax.plot(edges[1:], [errors[a:b].mean() for a, b in zip(edges[:-1], edges[1:])],
                label=label, linewidth=1.6)
    ax.axhline(threshold, color="0.4", linestyle=":", linewidth=1.2, label=f"threshold {threshold:g}")
    ax.set_xscale("log")
    ax.set_xlabel("training episodes (log scale)")
    ax.set_ylabel("mean bit error (log-spaced bins)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    return fig


# ------------------------------------------------------------------ maze task

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


def reward_curves(groups, window=1000, points=400, baseline=None,
                  title="Maze: reward per episode during training", size=(7.5, 4.4), dpi=110):
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


# ------------------------------------------------------------------ logs

def read_csv(path):
    """`{column: np.array}` of a CSV with a header; empty if the file is missing."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])
            for k in rows[0]}


def running_mean(values, window):
    """Mean of the last `window` values at each position (fewer at the start)."""
    values = np.asarray(values, float)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.maximum(np.arange(1, len(values) + 1) - window, 0)]) / counts


# ------------------------------------------------------------------ few-shot task

def fewshot_episodes(rows, title="Held-out episodes", low=0.0, high=1.0, cell=1.0, dpi=100):
    """One row per few-shot episode: the support images, the query, the probabilities.

    Columns: each support image titled with its class position ("class 2"),
    then (after a gap) the query titled with its true class, then a bar chart
    of the network's probabilities per class: the predicted class (the
    largest) is drawn in blue (green where it is the true class), the others
    grey; its title names the prediction and its probability. Grey levels are
    fixed: `low` black, `high` white (Omniglot: strokes 0, background 1).

    Args:
        rows: a list of `(support, support_labels, query, truth, probabilities)`:
            `support` `(n, h, w)`, `support_labels` `(n,)` class positions,
            `query` `(h, w)`, `truth` the query's class position,
            `probabilities` `(ways,)`.
        title: the figure title. low, high: the values drawn black and white.
        cell: inches per image; dpi: pixels per inch.

    Returns:
        A Figure; its axes, row by row: the n support images, the query, the bars.

    Example:

        fig = fewshot_episodes([(support, labels, query, 3, probs)])
        save_png(fig, "episodes.png")
    """
    rows = list(rows)
    if not rows:
        raise ValueError("fewshot_episodes needs at least one row (episode); got none.")
    n = len(rows[0][0])
    ways = len(rows[0][4])
    gap = 0.25
    fig = Figure(figsize=(cell * (n + 1 + gap + 1.8) + 0.5, cell * 1.25 * len(rows) + 0.6),
                 dpi=dpi, layout="constrained")
    grid = fig.add_gridspec(len(rows), n + 3, width_ratios=[1] * n + [gap, 1, 1.8])
    for r, row in enumerate(rows):
        if len(row) != 5:
            raise ValueError(f"Episode {r + 1} has {len(row)} entries; pass (support, "
                             "support_labels, query, truth, probabilities) for each episode.")
        support, support_labels, query, truth, probs = row
        probs = np.asarray(probs, np.float64)
        if len(support) != n or len(support_labels) != n or len(probs) != ways:
            raise ValueError(f"Episode {r + 1} has {len(support)} support images, "
                             f"{len(support_labels)} labels and {len(probs)} probabilities; "
                             f"episode 1 has {n}, {n} and {ways}: every row needs the same.")
        for c, image in enumerate(list(support) + [query]):
            ax = fig.add_subplot(grid[r, c if c < n else n + 1])
            ax.imshow(np.asarray(image, np.float64), cmap="gray", vmin=low, vmax=high,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"class {int(support_labels[c])}" if c < n else f"query ({int(truth)})",
                         fontsize=9)
            if c == 0:
                ax.set_ylabel(f"episode {r + 1}", fontsize=9)
        ax = fig.add_subplot(grid[r, n + 2])
        predicted = int(np.argmax(probs))
        hit = "green" if predicted == int(truth) else "tab:blue"
        ax.bar(np.arange(ways), probs, color=[hit if k == predicted else "0.6" for k in range(ways)])
        ax.set_ylim(0, 1)
        ax.set_xticks(np.arange(ways))
        ax.tick_params(labelsize=8)
        verdict = "right" if predicted == int(truth) else "wrong"
        ax.set_title(f"predicted {predicted} (p={probs[predicted]:.2f}), {verdict}", fontsize=9)
    fig.suptitle(f"{title}\n(support: class position; query: its true class; bars: the "
                 f"network's probabilities)", fontsize=10)
    return fig
