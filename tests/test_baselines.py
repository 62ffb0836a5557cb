"""The rnn and lstm baselines, and the 50-bit comparison that trains all three models."""

import os

import keras
import numpy as np
import tensorflow as tf
from conftest import read_csv

import hebbkeras  # noqa: F401  (custom objects for load_model)
from hebbkeras.tasks import episodes
from trainers import binary, compare, completion

SMALL = episodes.Schedule(2, 2, 1, 1, 2)


def param_count(model, p, n):
    """Weights of each architecture, counted by hand: p pattern bits, n units, p + 1 inputs."""
    if model == "plastic":
        return 2 * n * n + 1  # w, alpha, eta
    if model == "rnn":
        return n * n  # w only
    return 4 * ((p + 1) * n + n * n + n) + n * p + p  # LSTM gates, then the readout


def brute_force_reach(errors, threshold, window):
    for end in range(window, len(errors) + 1):
        if sum(errors[end - window:end]) / window < threshold:
            return end
    return None


def test_episodes_to_reach_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        errors = rng.choice([0.0, 0.02, 0.04], size=60, p=[0.7, 0.2, 0.1])
        assert compare.episodes_to_reach(errors, 0.01, 10) == brute_force_reach(errors, 0.01, 10)
    assert compare.episodes_to_reach(np.ones(50), 0.01, 10) is None


def test_compare_trains_each_model_and_writes_csv_png_and_table(tmp_path):
    config = compare.CompareConfig(pattern_size=6, schedule=SMALL, extra_units=5, plastic_episodes=6,
                                   baseline_episodes=4, steps_per_epoch=2, run_dir=str(tmp_path))
    rows = compare.compare(config)
    assert [r[:3] for r in rows] == [("plastic", 7, 6), ("rnn", 11, 4), ("lstm", 11, 4)]
    table = read_csv(tmp_path / "bit_error.csv")
    for model, count in (("plastic", 6), ("rnn", 4), ("lstm", 4)):
        errors = [float(r["bit_error"]) for r in table if r["model"] == model]
        logged = [float(r["bit_error"]) for r in read_csv(tmp_path / model / "episodes.csv")]
        assert len(errors) == count and errors == logged
        assert all(0.0 <= e <= 1.0 for e in errors)
        # Each row's table entries from its own log: the final error is the mean of the last 100.
        row = next(r for r in rows if r[0] == model)
        assert row[5] == f"{np.mean(logged):.4f}" and row[4] == "n/a (%d episodes)" % count
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "learning_curves.png")))
    assert png.shape[0] > 100 and png.shape[1] > 100
    text = (tmp_path / "table.md").read_text()
    assert "episodes to < 0.01" in text and "n/a for a run of fewer episodes" in text

    for model in ("plastic", "rnn", "lstm"):
        run_config = config.model_config(model)
        loaded = keras.models.load_model(os.path.join(run_config.run_dir, "model.keras"))
        assert loaded.count_params() == param_count(model, 6, run_config.units)
        fresh = completion.build_model(run_config)
        fresh.set_weights(loaded.get_weights())
        x, _ = next(iter(binary.BinaryTask(run_config).dataset(run_config)))
        y = loaded(x).numpy()  # eager: a predict function traced per model costs more
        np.testing.assert_allclose(y, fresh(x).numpy(), rtol=1e-6)
        if model != "lstm":  # clamped inputs: unerased query bits are the input, extra neurons free
            shown = np.asarray(x[:, -1, :6]) != 0
            np.testing.assert_array_equal(y[:, :6][shown], np.asarray(x[:, -1, :6])[shown])

    # Run again: the finished runs are reused, not retrained.
    before = {m: os.path.getmtime(tmp_path / m / "model.keras") for m in ("plastic", "rnn", "lstm")}
    assert compare.compare(config) == rows
    assert before == {m: os.path.getmtime(tmp_path / m / "model.keras") for m in before}
