"""What every trainer's figures share: rendering, atomic PNGs, TensorBoard, CSV logs.

Figures are `matplotlib.figure.Figure`s built without pyplot: no backend is
selected and no global figure list is touched, so importing this module (or a
task's figure module) changes nothing for a caller who uses pyplot itself.
`to_rgb` renders a figure with the Agg canvas; `save_png` writes a figure (or
an RGB array) atomically; `log_images` sends them to TensorBoard; `publish`
does all three for a run's figures. Each task's own figures live beside it
(`cifar_figures`, `compare_figures`, `maze_figures`, `omniglot_figures`).

Example:

    fig = figures.learning_curve({"test": (episodes, mse)},
                                 baselines={"zero fill": (episodes, zero)})
    figures.publish({"learning_curve": fig}, "runs/cifar", step=episodes[-1])
"""

import csv
import io
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainers import files


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


def publish(drawn, run_dir, step):
    """Writes a run's figures: `run_dir/<name>.png` and TensorBoard images at `step`.

    Each figure is rendered once (`to_rgb`), so the PNG and the TensorBoard
    image hold the same pixels. The PNGs are written atomically (`save_png`);
    the images go to `run_dir/tensorboard/figures` under their names.

    Args:
        drawn: `{name: Figure or (h, w, 3) uint8 array}`.
        run_dir: the run directory.
        step: the TensorBoard step (the training episode the figures show).

    Returns:
        The PNG paths, in the order of `drawn`.
    """
    pictures = {name: to_rgb(fig) for name, fig in drawn.items()}
    paths = [save_png(p, os.path.join(run_dir, f"{n}.png")) for n, p in pictures.items()]
    log_images(os.path.join(run_dir, "tensorboard", "figures"), pictures, step)
    return paths


# ------------------------------------------------------------------ curves

def learning_curve(curves, baselines=None, title="Erased-half MSE during training",
                   xlabel="training episodes", ylabel="erased-half MSE", size=(7.5, 4.4), dpi=110,
                   bands=None):
    """Solid lines for `curves`, dashed ones for `baselines`, with a legend.

    Args:
        curves: `{legend label: (episodes, values)}`, drawn solid (with a dot
            at each point when there are fewer than 40, so one point shows).
        baselines: `{legend label: (episodes, values)}`, drawn dashed.
        bands: `{label of a curve: (low, high)}`, values at the curve's
            episodes, shaded in the curve's colour (e.g. a confidence interval).
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
            line, = ax.plot(x[keep], y[keep], style, label=label, linewidth=1.6,
                            marker="o" if keep.sum() < 40 else None, markersize=3.5)
            if bands and label in bands:
                low, high = (np.asarray(b, np.float64)[keep] for b in bands[label])
                ax.fill_between(x[keep], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
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
