"""The Omniglot task's figure: few-shot episodes with the network's probabilities."""

import numpy as np
from matplotlib.figure import Figure


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
