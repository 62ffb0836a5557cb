"""trainers.figures and each task's figures (trainers.*_figures): what each figure
shows (titles, labels, legends, colour bars), where its images land in the rendered
pixels, that PNGs are written atomically and that `publish` writes the same pixels
to the PNG and to TensorBoard.

References are computed here with numpy: the images reshaped row by row, the
99.5th percentile scale, the running mean, the log-spaced bins by assigning
each episode to its bin.
"""

import os
import subprocess
import sys

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from trainers import cifar_figures, compare_figures, figures, maze_figures, omniglot_figures


def _pixel(rgb, ax, x, y):
    """The rendered RGB at data point (x, y) of `ax` (display origin is bottom left)."""
    px, py = ax.transData.transform((x, y))
    return rgb[rgb.shape[0] - 1 - int(round(py)), int(round(px))].astype(int)


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


# ------------------------------------------------------------------ episode grid

def _rows(rng, episodes=2, k=2, side=4):
    return [(rng.normal(size=(k, side * side)),) + tuple(rng.normal(size=side * side) for _ in range(3))
            for _ in range(episodes)]


def test_episode_grid_holds_each_image_under_its_heading():
    rng = np.random.default_rng(0)
    rows = _rows(rng, episodes=2, k=3, side=4)
    fig = cifar_figures.episode_grid(rows, low=-0.5, high=2.0, title="Test episodes")
    headings = ["stored 1", "stored 2", "stored 3", "cue", "reconstruction", "truth"]
    assert len(fig.axes) == 2 * 6
    assert [ax.get_title() for ax in fig.axes[:6]] == headings
    assert all(ax.get_title() == "" for ax in fig.axes[6:])
    assert [fig.axes[6 * r].get_ylabel() for r in range(2)] == ["episode 1", "episode 2"]
    assert fig.get_suptitle().startswith("Test episodes")
    assert "black -0.5, white 2" in fig.get_suptitle()
    for r, (stored, cue, reconstruction, truth) in enumerate(rows):
        expected = list(stored) + [cue, reconstruction, truth]
        for c, image in enumerate(expected):
            (shown,) = fig.axes[6 * r + c].get_images()
            # Row-major: pixel (i, j) of a side-4 image is element 4 i + j.
            np.testing.assert_array_equal(shown.get_array(), image.reshape(4, 4))
            assert shown.get_clim() == (-0.5, 2.0)
            assert shown.get_cmap().name == "gray"


def test_episode_grid_renders_grey_levels_in_order_with_a_gap_before_the_cue():
    # Image c of row r is constant (r * 6 + c) / 11: its rendered grey must be that level.
    k, side = 3, 6
    levels = np.arange(12).reshape(2, 6) / 11
    rows = [(np.repeat(levels[r, :k, None], side * side, 1),)
            + tuple(np.full(side * side, v) for v in levels[r, k:]) for r in range(2)]
    fig = cifar_figures.episode_grid(rows, low=0.0, high=1.0)
    rgb = figures.to_rgb(fig)
    for r in range(2):
        for c in range(6):
            grey = _pixel(rgb, fig.axes[6 * r + c], (side - 1) / 2, (side - 1) / 2)
            assert abs(grey[0] - 255 * levels[r, c]) <= 2 and grey[0] == grey[1] == grey[2], (r, c)
    x0 = [ax.get_position().x0 for ax in fig.axes[:6]]
    steps = np.diff(x0)
    assert (steps > 0).all()  # left to right in heading order
    assert steps[k - 1] > 1.1 * steps[0]  # the stored images are set apart from the rest


def test_episode_grid_refuses_bad_rows_with_one_clear_error():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="at least one row"):
        cifar_figures.episode_grid([])
    bad = [(rng.normal(size=(2, 10)),) + tuple(rng.normal(size=10) for _ in range(3))]
    with pytest.raises(ValueError, match="10 pixels, not a square"):
        cifar_figures.episode_grid(bad)
    rows = _rows(rng, episodes=1, k=2) + _rows(rng, episodes=1, k=3)
    with pytest.raises(ValueError, match="Episode 2 has 3 stored images, episode 1 has 2"):
        cifar_figures.episode_grid(rows)
    with pytest.raises(ValueError, match=r"Episode 1 has 3 entries; pass \(stored, cue"):
        cifar_figures.episode_grid([rows[0][:3]])
    with pytest.raises(ValueError, match="needs low < high; got low=1, high=0"):
        cifar_figures.episode_grid(rows[:1], low=1, high=0)


# ------------------------------------------------------------------ weight matrices

def test_weight_matrices_scale_each_matrix_to_its_own_percentile_around_zero():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(40, 40))
    w[3, 5] = 1000.0  # an outlier must not set the scale
    alpha = 0.01 * rng.normal(size=(40, 40))
    fig = cifar_figures.weight_matrices({"w": w, "alpha": alpha})
    images = fig.axes
    assert len(images) == 2
    assert [ax.get_title() for ax in images] == ["w (fixed weights)", "alpha (plasticity coefficients)"]
    assert "column j holds the inputs of neuron j" in fig.get_suptitle()
    for ax, (name, m) in zip(images, (("w", w), ("alpha", alpha))):
        assert ax.get_xlabel() == "postsynaptic neuron j"
        assert ax.get_ylabel() == "presynaptic neuron i"
        (image,) = ax.get_images()
        np.testing.assert_array_equal(image.get_array(), m)
        limit = np.percentile(np.abs(m), 99.5)
        np.testing.assert_allclose(image.get_clim(), (-limit, limit))
        assert image.colorbar is not None and image.colorbar.ax in ax.child_axes  # its own bar
        label = image.colorbar.ax.get_ylabel()
        assert f"±{limit:.3g}" in label and f"99.5th percentile of |{name}|" in label
    assert images[0].get_images()[0].get_clim()[1] < 10  # not the outlier


def test_weight_matrices_render_negative_blue_zero_white_positive_red_row_i_column_j():
    m = np.zeros((8, 8))
    m[1, 6] = 1.0  # row 1 (presynaptic), column 6 (postsynaptic)
    m[6, 1] = -1.0
    fig = cifar_figures.weight_matrices({"w": m}, percentile=100)
    rgb = figures.to_rgb(fig)
    ax = fig.axes[0]
    red, blue, white = (_pixel(rgb, ax, j, i) for i, j in ((1, 6), (6, 1), (4, 4)))
    assert red[0] > red[2] + 40 > red[1] + 40 and blue[2] > blue[1] + 40 > blue[0] + 40
    assert (white > 240).all()


def test_weight_matrices_refuse_a_vector():
    with pytest.raises(ValueError, match=r"'alpha' has shape \(5,\); pass a 2-D matrix"):
        cifar_figures.weight_matrices({"alpha": np.ones(5)})


# ------------------------------------------------------------------ learning curves

def test_learning_curve_labels_axes_and_names_every_curve_and_dashed_baseline():
    x = np.array([10.0, 20.0, 30.0])
    fig = figures.learning_curve(
        {"training": (x, [0.3, np.nan, 0.1]), "test": (x, [0.25, 0.2, 0.15])},
        baselines={"zero fill": (x, [0.4] * 3), "mean fill": (x, [0.2] * 3)})
    (ax,) = fig.axes
    assert ax.get_title() == "Erased-half MSE during training"
    assert ax.get_xlabel() == "training episodes" and ax.get_ylabel() == "erased-half MSE"
    assert _legend(ax) == ["training", "test", "zero fill", "mean fill"]
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "-", "--", "--"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_xydata(), [[10, 0.3], [30, 0.1]])  # NaN left out
    assert ax.get_ylim()[0] == 0


def _write_csv(path, columns):
    names = list(columns)
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for values in zip(*columns.values()):
            f.write(",".join(f"{v:g}" for v in values) + "\n")


def test_cifar_learning_curve_reads_the_run_logs(tmp_path):
    assert cifar_figures.cifar_learning_curve(str(tmp_path)) is None  # no logs: no figure
    rng = np.random.default_rng(3)
    mse = rng.random(200)  # one row per batch of 2 episodes
    _write_csv(tmp_path / "episodes.csv", {"episode": np.arange(2, 401, 2), "erased_mse": mse})
    evals = {"episode": [200, 400], "erased_mse": [0.2, 0.1],
             "zero_fill_mse": [0.5, 0.5], "mean_fill_mse": [0.3, 0.3]}
    _write_csv(tmp_path / "eval.csv", evals)
    fig = cifar_figures.cifar_learning_curve(str(tmp_path), points=50)
    (ax,) = fig.axes
    assert _legend(ax) == ["training (mean of the last 10 episodes)", "test episodes",
                           "zero fill (test)", "mean of stored images (test)"]
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "-", "--", "--"]
    train = ax.get_lines()[0].get_xydata()
    assert len(train) == 50 and train[0, 0] == 2 and train[-1, 0] == 400
    for episode, value in train:  # mean of the (up to) 5 rows ending at `episode`
        row = int(episode) // 2
        np.testing.assert_allclose(value, np.mean(mse[max(0, row - 5):row]), rtol=1e-5)
    np.testing.assert_array_equal(ax.get_lines()[2].get_xydata(), [[200, 0.5], [400, 0.5]])
    # A short run of one episode per row is drawn as it is.
    _write_csv(tmp_path / "episodes.csv", {"episode": np.arange(1, 31), "erased_mse": mse[:30]})
    (ax,) = cifar_figures.cifar_learning_curve(str(tmp_path)).axes
    assert _legend(ax)[0] == "training episodes"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), mse[:30], rtol=1e-5)


def test_running_mean_against_a_loop():
    values = np.random.default_rng(4).random(23)
    expected = [values[max(0, i - 6):i + 1].mean() for i in range(23)]
    np.testing.assert_allclose(figures.running_mean(values, 7), expected)


def test_bit_error_curves_average_log_spaced_bins_of_episodes():
    rng = np.random.default_rng(5)
    errors = {"plastic (51 neurons)": rng.random(1000), "lstm (2050 neurons)": rng.random(37)}
    fig = compare_figures.bit_error_curves(errors, threshold=0.01, title="50-bit patterns")
    (ax,) = fig.axes
    assert ax.get_title() == "50-bit patterns"
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "training episodes (log scale)"
    assert ax.get_ylabel() == "mean bit error (log-spaced bins)"
    assert _legend(ax) == list(errors) + ["threshold 0.01"]
    *curves, threshold = ax.get_lines()
    np.testing.assert_array_equal(threshold.get_ydata(), [0.01, 0.01])
    for line, e in zip(curves, errors.values()):
        # Episode t (1-based) belongs to the first bin whose right edge is >= t;
        # right edges: the distinct rounded points of 60 log-spaced ones in [1, n].
        right = np.unique(np.round(np.logspace(0, np.log10(len(e)), 60)))
        bin_of = np.searchsorted(right, np.arange(1, len(e) + 1))
        means = np.bincount(bin_of, weights=e) / np.bincount(bin_of)
        np.testing.assert_array_equal(line.get_xdata(), right)
        np.testing.assert_allclose(line.get_ydata(), means)


def test_episode_rewards_repeat_each_batch_mean_for_its_episodes():
    # Rows at episodes 3, 5, 9: batches of 3, 2 and 4 episodes.
    np.testing.assert_array_equal(maze_figures.episode_rewards([3, 5, 9], [1.0, 2.0, 3.0]),
                                  [1, 1, 1, 2, 2, 3, 3, 3, 3])
    with pytest.raises(ValueError, match="must increase"):
        maze_figures.episode_rewards([4, 4], [1.0, 2.0])


def test_reward_curves_draw_the_mean_of_runs_and_their_min_max_band():
    rng = np.random.default_rng(6)
    groups = {"plastic": [rng.normal(size=50), rng.normal(size=40) + 1],  # unequal lengths
              "rnn": [rng.normal(size=30)]}
    fig = maze_figures.reward_curves(groups, window=7, baseline=("random policy", -0.5))
    (ax,) = fig.axes
    assert _legend(ax) == ["plastic (mean of 2 runs, band min-max)", "rnn", "random policy"]
    assert ax.get_xlabel() == "training episodes"
    assert ax.get_ylabel() == "reward per episode (mean of the last 7)"
    plastic, rnn, chance = ax.get_lines()
    # Loops, not running_mean: the mean of the episodes i-6..i of each run, up to the shorter run.
    smooth = [[run[max(0, i - 6):i + 1].mean() for i in range(40)] for run in groups["plastic"]]
    np.testing.assert_array_equal(plastic.get_xdata(), np.arange(1, 41))
    np.testing.assert_allclose(plastic.get_ydata(), np.mean(smooth, axis=0))
    (band,) = ax.collections
    vertices = band.get_paths()[0].vertices
    for x, lo, hi in zip(range(1, 41), np.min(smooth, axis=0), np.max(smooth, axis=0)):
        ys = vertices[np.isclose(vertices[:, 0], x), 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [lo, hi], atol=1e-12)
    np.testing.assert_allclose(rnn.get_ydata(), [groups["rnn"][0][max(0, i - 6):i + 1].mean()
                                                 for i in range(30)])
    assert len(ax.collections) == 1  # one run: no band
    np.testing.assert_array_equal(chance.get_ydata(), [-0.5, -0.5])
    assert chance.get_linestyle() == "--"
    # Long runs are thinned to `points` points, first and last kept.
    (line,) = maze_figures.reward_curves({"a": [np.arange(1000.0)]}, window=1, points=50).axes[0].get_lines()
    assert len(line.get_xdata()) == 50 and line.get_xdata()[[0, -1]].tolist() == [1, 1000]
    np.testing.assert_array_equal(line.get_ydata(), line.get_xdata() - 1)
    with pytest.raises(ValueError, match="group 'b' has a run without episodes"):
        maze_figures.reward_curves({"b": [[]]})


# ------------------------------------------------------------------ output

def test_save_png_writes_what_to_rgb_renders(tmp_path):
    fig = figures.learning_curve({"a": ([1, 2], [1, 2])}, size=(3, 2), dpi=50)
    rgb = figures.to_rgb(fig)
    assert rgb.shape == (100, 150, 3) and rgb.dtype == np.uint8
    path = figures.save_png(fig, str(tmp_path / "new" / "curve.png"))
    decoded = matplotlib.image.imread(path)  # float in [0, 1] for PNG
    assert decoded.shape == (100, 150, 3)
    np.testing.assert_array_equal(np.round(decoded * 255).astype(np.uint8), rgb)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    figures.save_png(grey, str(tmp_path / "grey.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grey.png")), np.stack([grey] * 3, -1))
    assert sorted(os.listdir(tmp_path)) == ["grey.png", "new"]  # no temporary files left
    with open(tmp_path / "plain", "w"):  # the permissions of any new file (the umask's)
        pass
    assert os.stat(path).st_mode == os.stat(tmp_path / "plain").st_mode
    with pytest.raises(ValueError, match=r"uint8 array, got float64 of shape \(3, 4\)"):
        figures.save_png(grey / 2, str(tmp_path / "bad.png"))


@pytest.mark.parametrize("fail", ["encode", "replace"])
def test_save_png_leaves_the_old_file_whole_when_writing_fails(tmp_path, monkeypatch, fail):
    path = str(tmp_path / "figure.png")
    old = np.full((4, 4, 3), 7, np.uint8)
    figures.save_png(old, path)
    with open(path, "rb") as f:
        before = f.read()

    def half_written(self, fp, *args, **kwargs):  # the encoder dies after writing some bytes
        (fp.write if hasattr(fp, "write") else open(fp, "wb").write)(b"\x89PNG half")
        raise OSError("disk full")

    def no_replace(src, dst):
        raise OSError("disk full")

    if fail == "encode":
        monkeypatch.setattr(Image.Image, "save", half_written)
    else:
        monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        figures.save_png(np.zeros((8, 8, 3), np.uint8), path)
    with open(path, "rb") as f:
        assert f.read() == before
    assert os.listdir(tmp_path) == ["figure.png"]


def test_log_images_writes_decodable_tensorboard_images(tmp_path):
    import tensorflow as tf

    fig = compare_figures.bit_error_curves({"a": np.ones(10)}, 0.5, size=(2, 1.5), dpi=40)
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    figures.log_images(str(tmp_path), {"curve": fig, "array": array}, step=7)
    found = {}
    for name in os.listdir(tmp_path):
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / name)):
            for value in event.summary.value:
                encoded = tf.make_ndarray(value.tensor)[2]  # [width, height, png]
                found[value.tag] = (event.step, tf.io.decode_png(encoded).numpy())
    assert set(found) == {"curve", "array"}
    assert found["curve"][0] == found["array"][0] == 7
    np.testing.assert_array_equal(found["curve"][1], figures.to_rgb(fig))
    np.testing.assert_array_equal(found["array"][1], array)


def test_publish_writes_each_png_atomically_and_the_same_pixels_to_tensorboard(tmp_path):
    import tensorflow as tf

    fig = figures.learning_curve({"a": ([1, 2], [1, 2])}, size=(2, 1.5), dpi=40)
    array = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    (tmp_path / "curve.png").write_bytes(b"an older figure")
    paths = figures.publish({"curve": fig, "array": array}, str(tmp_path), step=12)
    assert paths == [str(tmp_path / "curve.png"), str(tmp_path / "array.png")]
    assert sorted(os.listdir(tmp_path)) == ["array.png", "curve.png", "tensorboard"]  # no temporaries
    np.testing.assert_array_equal(np.asarray(Image.open(paths[0]).convert("RGB")),
                                  figures.to_rgb(fig))
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1])), array)
    event_dir = tmp_path / "tensorboard" / "figures"
    found = {}
    for name in os.listdir(event_dir):
        for event in tf.compat.v1.train.summary_iterator(str(event_dir / name)):
            for value in event.summary.value:
                found[value.tag] = (event.step, tf.io.decode_png(tf.make_ndarray(value.tensor)[2]).numpy())
    assert {k: v[0] for k, v in found.items()} == {"curve": 12, "array": 12}
    for name, path in zip(("curve", "array"), paths):
        np.testing.assert_array_equal(found[name][1], np.asarray(Image.open(path).convert("RGB")))


def test_to_rgb_closes_a_pyplot_figure_and_drawing_needs_neither_pyplot_nor_tensorflow():
    code = ("import sys; from trainers import figures; "
            "figures.to_rgb(figures.learning_curve({'a': ([1], [1])})); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
            "assert 'tensorflow' not in sys.modules, 'drawing imported TensorFlow'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1), dpi=20)
    assert figures.to_rgb(fig).shape == (20, 20, 3)
    assert not plt.fignum_exists(fig.number)


# ------------------------------------------------------------------ few-shot episodes

def test_fewshot_episodes_shows_support_query_and_probabilities():
    rng = np.random.default_rng(0)
    rows = []
    for truth in (2, 0):
        support = rng.random((3, 5, 5))
        probs = rng.dirichlet(np.ones(3))
        rows.append((support, np.array([1, 2, 0]), rng.random((5, 5)), truth, probs))
    fig = omniglot_figures.fewshot_episodes(rows, title="Held-out episodes")
    assert len(fig.axes) == 2 * 5  # per row: 3 support images, the query, the bars
    for r, (support, labels, query, truth, probs) in enumerate(rows):
        axes = fig.axes[5 * r: 5 * r + 5]
        assert [ax.get_title() for ax in axes[:4]] == ["class 1", "class 2", "class 0",
                                                      f"query ({truth})"]
        assert axes[0].get_ylabel() == f"episode {r + 1}"
        for ax, image in zip(axes[:4], list(support) + [query]):
            (shown,) = ax.get_images()
            np.testing.assert_array_equal(shown.get_array(), image)
            assert shown.get_clim() == (0.0, 1.0) and shown.get_cmap().name == "gray"
        bars = axes[4].patches
        np.testing.assert_allclose([b.get_height() for b in bars], probs)
        predicted = int(np.argmax(probs))
        colours = [tuple(np.round(b.get_facecolor(), 3)) for b in bars]
        # The predicted bar alone has its own colour: green if right, blue if wrong.
        assert [c != colours[(predicted + 1) % 3] for c in colours].count(True) == 1
        assert colours[predicted] != colours[(predicted + 1) % 3]
        want = "green" if predicted == truth else "tab:blue"
        assert colours[predicted] == tuple(np.round(matplotlib.colors.to_rgba(want), 3))
        verdict = "right" if predicted == truth else "wrong"
        assert axes[4].get_title() == f"predicted {predicted} (p={probs[predicted]:.2f}), {verdict}"
    rgb = figures.to_rgb(fig)
    assert rgb.shape[2] == 3 and rgb.dtype == np.uint8


def test_fewshot_episodes_refuses_rows_that_differ():
    row = (np.zeros((2, 4, 4)), np.array([0, 1]), np.zeros((4, 4)), 0, np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="at least one row"):
        omniglot_figures.fewshot_episodes([])
    with pytest.raises(ValueError, match="every row needs the same"):
        omniglot_figures.fewshot_episodes([row, (np.zeros((3, 4, 4)),) + row[1:]])
