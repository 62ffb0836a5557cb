"""The 50-bit comparison's figure: mean bit error per log-spaced bin of episodes."""

import numpy as np
from matplotlib.figure import Figure


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
