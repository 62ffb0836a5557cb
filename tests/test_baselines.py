"""The rnn and lstm baselines in the shared trainer, and the 50-bit comparison script."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

import hebbkeras  # noqa: F401  (custom objects for load_model)
from hebbkeras import episodes
from trainers import common, compare

SMALL = episodes.Schedule(2, 2, 1, 1, 2)


def param_count(model, p, n):
    """Weights of each architecture, counted by hand: p pattern bits, n units, p + 1 inputs."""
    if model == "plastic":
        return 2 * n * n + 1  # w, alpha, eta
    if model == "rnn":
        return n * n  # w only
    return 4 * ((p + 1) * n + n * n + n) + n * p + p  # LSTM gates, then the readout


@pytest.mark.parametrize("model,extra", [("plastic", 1), ("rnn", 5), ("lstm", 5)])
def test_each_model_trains_saves_and_reloads(model, extra, tmp_path):
    config = common.Config(model=model, extra_units=extra, pattern_size=6, schedule=SMALL,
                           episodes=8, batch_size=2, steps_per_epoch=2, verbose=0,
                           run_dir=str(tmp_path))
    summary = common.run(config)
    assert summary["episodes"] == 8
    loaded = keras.models.load_model(summary["model_path"])
    assert loaded.count_params() == param_count(model, 6, 6 + extra)
    fresh = common.build_model(config)
    fresh.set_weights(loaded.get_weights())
    x, _ = next(iter(common.binary_dataset(config)))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), fresh.predict(x, verbose=0), rtol=1e-6)
    if model != "lstm":  # clamped inputs: unerased query bits are the input, extra neurons free
        y = loaded.predict(x, verbose=0)
        shown = np.asarray(x[:, -1, :6]) != 0
        np.testing.assert_array_equal(y[:, :6][shown], np.asarray(x[:, -1, :6])[shown])


def test_extra_units_must_be_positive():
    with pytest.raises(ValueError, match="extra_units=0 must be an integer >= 1"):
        common.check_config(common.Config(model="rnn", extra_units=0))
    with pytest.raises(ValueError, match="Unknown model='gru'"):
        common.check_config(common.Config(model="gru"))


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


def test_compare_writes_csv_png_and_table(tmp_path):
    rows = compare.compare(["plastic", "rnn", "lstm"], str(tmp_path), plastic_episodes=6,
                           baseline_episodes=4, extra_units=3, steps_per_epoch=2)
    assert [r[0] for r in rows] == ["plastic", "rnn", "lstm"]
    assert [r[1] for r in rows] == [51, 53, 53]
    with open(tmp_path / "bit_error.csv", newline="") as f:
        table = list(csv.DictReader(f))
    counts = {m: sum(r["model"] == m for r in table) for m in ("plastic", "rnn", "lstm")}
    assert counts == {"plastic": 6, "rnn": 4, "lstm": 4}
    for r in table:
        assert 0.0 <= float(r["bit_error"]) <= 1.0
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "learning_curves.png")))
    assert png.shape[0] > 100 and png.shape[1] > 100
    assert "episodes to < 0.01" in (tmp_path / "table.md").read_text()
