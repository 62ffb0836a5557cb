"""The image task's figures as uint8 arrays, encoded as PNG with TensorFlow.

Drawn with numpy alone (no plotting library): the images and weight matrices
are pixel grids anyway, and the learning curve needs only lines, a frame,
grid lines and numbers (a 3 x 5 pixel digit font below).
"""

import csv
import math
import os

import numpy as np
import tensorflow as tf

WHITE = np.array([255, 255, 255], np.uint8)
# Line colours of the learning curve (the legend is in docs/cifar.md).
COLOURS = {
    "train": (31, 119, 180),       # blue: erased-half MSE of training episodes
    "test": (214, 39, 40),         # red: erased-half MSE of test episodes
    "zero_fill": (127, 127, 127),  # grey: baseline, erased half = 0
    "mean_fill": (44, 160, 44),    # green: baseline, erased half = mean of stored images
}


def write_png(path, image):
    """Writes a `(h, w, 1 or 3)` uint8 array as PNG; returns the path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tf.io.write_file(path, tf.image.encode_png(np.asarray(image, np.uint8)))
    return path


def log_images(logdir, images, step):
    """Logs `{name: (h, w, c) uint8}` as TensorBoard images at `step`."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for name, image in images.items():
            tf.summary.image(name, np.asarray(image, np.uint8)[None], step=step)
    writer.flush()


def _gray(image, low, high, scale):
    side = int(round(math.sqrt(image.size)))
    pixels = np.clip((np.reshape(image, (side, side)) - low) / (high - low), 0, 1)
    pixels = np.kron(np.round(255 * pixels), np.ones((scale, scale)))
    return np.repeat(pixels[..., None], 3, axis=-1).astype(np.uint8)


def episode_grid(rows, low=-1.0, high=1.0, scale=3, pad=2, gap=8):
    """Paper Fig. 3, left: one row per episode.

    rows: a list of `(stored, query, reconstruction, target)`: `stored` is
    `(k, pixels)`, the others `(pixels,)`, values mapped from [low, high] to
    black..white. A wider gap separates the stored images from the rest.
    """
    tiles = []
    for stored, query, reconstruction, target in rows:
        cells = [_gray(x, low, high, scale) for x in stored]
        cells += [None] + [_gray(x, low, high, scale) for x in (query, reconstruction, target)]
        side = cells[0].shape[0]
        line = []
        for cell in cells:
            if cell is None:
                line.append(np.full((side, gap, 3), 255, np.uint8))
                continue
            line += [cell, np.full((side, pad, 3), 255, np.uint8)]
        tiles += [np.concatenate(line[:-1], axis=1), np.full((pad, 1, 3), 255, np.uint8)]
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles[:-1]]
    return np.pad(np.concatenate(tiles, axis=0), ((pad, pad), (pad, pad), (0, 0)), constant_values=255)


def diverging(matrix, limit=None):
    """A matrix as RGB: blue (negative), white (0), red (positive).

    `limit` (default: the 99.5th percentile of |matrix|) maps to full colour;
    larger magnitudes are clipped, so a few outliers do not wash out the rest.
    """
    matrix = np.asarray(matrix, np.float64)
    if limit is None:
        limit = float(np.percentile(np.abs(matrix), 99.5)) or 1.0
    v = np.clip(matrix / limit, -1, 1)[..., None]
    red, blue = np.array([178, 24, 43]), np.array([33, 102, 172])
    rgb = np.where(v > 0, WHITE + v * (red - WHITE), WHITE - v * (blue - WHITE))
    return np.round(rgb).astype(np.uint8)


def weight_matrices(named, gap=16):
    """Paper Fig. 3, right: `{name: (n, n) matrix}` side by side, each with its own scale."""
    panels = [diverging(m) for m in named.values()]
    height = max(p.shape[0] for p in panels)
    out = []
    for p in panels:
        out += [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255),
                np.full((height, gap, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=1)


# A 3 x 5 pixel font for tick labels: rows of 3 bits, top to bottom.
_GLYPHS = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7),
    "3": (7, 1, 7, 1, 7), "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7),
    "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1), "8": (7, 5, 7, 5, 7),
    "9": (7, 5, 7, 1, 7), ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0),
    "e": (0, 7, 7, 4, 7), "k": (4, 5, 6, 5, 5),
}


def _text(canvas, text, x, y, scale=2, colour=(0, 0, 0)):
    """Draws `text` with its top-left corner at (x, y)."""
    for ch in text:
        for r, bits in enumerate(_GLYPHS.get(ch, (0,) * 5)):
            for c in range(3):
                if bits >> (2 - c) & 1:
                    canvas[y + r * scale:y + (r + 1) * scale, x + c * scale:x + (c + 1) * scale] = colour
        x += 4 * scale


def _label(value):
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:.3g}".replace("e-0", "e-")


def _ticks(low, high, count=5):
    step = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(step)) if step > 0 else 1
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= step), default=magnitude)
    return [t for t in np.arange(math.ceil(low / step) * step, high + step / 2, step) if low <= t <= high]


def _line(canvas, x0, y0, x1, y1, colour, width=2):
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    for x, y in zip(np.linspace(x0, x1, n), np.linspace(y0, y1, n)):
        canvas[int(y) - width // 2:int(y) + (width + 1) // 2, int(x) - width // 2:int(x) + (width + 1) // 2] = colour


def line_plot(series, width=720, height=400, margin=(60, 20, 20, 30)):
    """Lines of `{name: (xs, ys)}` on a white canvas, with grid and tick numbers.

    Colours come from `COLOURS` (by name). The y axis starts at 0.
    margin: (left, right, top, bottom) in pixels.
    """
    left, right, top, bottom = margin
    canvas = np.full((height, width, 3), 255, np.uint8)
    points = [(np.asarray(x, float), np.asarray(y, float)) for x, y in series.values()]
    points = [(x[np.isfinite(y)], y[np.isfinite(y)]) for x, y in points]
    xs = np.concatenate([x for x, _ in points] + [[0.0]])
    ys = np.concatenate([y for _, y in points] + [[0.0]])
    x_max = float(xs.max()) or 1.0
    y_max = float(ys.max()) * 1.05 or 1.0
    w, h = width - left - right, height - top - bottom

    def px(x, y):
        return left + x / x_max * (w - 1), top + (1 - y / y_max) * (h - 1)

    for t in _ticks(0, y_max):
        _, y = px(0, t)
        canvas[int(y), left:left + w] = (225, 225, 225)
        label = _label(t)
        _text(canvas, label, left - 6 - 8 * len(label), int(y) - 5)
    for t in _ticks(0, x_max):
        x, _ = px(t, 0)
        canvas[top:top + h, int(x)] = (225, 225, 225)
        label = _label(t)
        _text(canvas, label, int(x) - 4 * len(label), top + h + 8)
    for (x, y), name in zip(points, series):
        colour = COLOURS.get(name, (0, 0, 0))
        pts = [px(a, b) for a, b in zip(x, y)]
        if len(pts) == 1:
            _line(canvas, *pts[0], *pts[0], colour, width=6)
        for (a, b), (c, d) in zip(pts, pts[1:]):
            _line(canvas, a, b, c, d, colour)
    canvas[top:top + h, left] = canvas[top:top + h, left + w - 1] = 0
    canvas[top, left:left + w] = canvas[top + h - 1, left:left + w] = 0
    return canvas


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
