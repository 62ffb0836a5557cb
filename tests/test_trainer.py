"""The binary-pattern trainer: it learns, it logs, it saves, it fails clearly."""

import csv
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import hebbkeras
from hebbkeras import episodes
from trainers import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANCE = 0.25  # half the bits erased, each right half the time by chance


def trainer(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, "-m", "trainers.binary", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def held_out_bit_error(model, config, seed, count=20):
    """Bit error of `model` on fresh episodes, counted in numpy."""
    data = episodes.binary_dataset(
        pattern_size=config.pattern_size, schedule=config.schedule, seed=seed, batch_size=count
    )
    x, target = next(iter(data))
    y = model.predict(x, verbose=0)[:, : config.pattern_size]
    return float(np.mean(np.sign(y) != target.numpy()))


def test_short_run_learns_well_below_chance(tmp_path):
    config = common.Config(
        pattern_size=100, learning_rate=3e-3, episodes=80, run_dir=str(tmp_path), verbose=0
    )
    summary = common.run(config)
    assert summary["episodes"] == 80
    assert summary["bit_error_last_10"] < CHANCE / 3, summary

    with open(tmp_path / "episodes.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["episode"]) for r in rows] == list(range(1, 81))
    first = np.mean([float(r["bit_error"]) for r in rows[:10]])
    last = np.mean([float(r["bit_error"]) for r in rows[-10:]])
    assert last < first / 2
    assert abs(last - summary["bit_error_last_10"]) < 1e-6
    with open(tmp_path / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 8  # epochs of 10 steps
    assert os.listdir(tmp_path / "tensorboard")
    assert common.Config.from_json((tmp_path / "config.json").read_text()) == config

    model = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(model.get_layer("plastic_rnn"), hebbkeras.PlasticRNN)
    assert held_out_bit_error(model, config, seed=1234) < CHANCE / 3


@pytest.mark.parametrize(
    "args,message",
    [
        (["--eta", "2"], "eta=2.0 is outside (0, 1]"),
        (["--pattern_size", "1"], "pattern_size=1 must be an integer >= 2"),
        (["--presentation_steps", "0"], "presentation_steps=0 must be an integer >= 1"),
        (["--input_mode", "sum"], "input_mode"),
    ],
)
def test_bad_flags_fail_with_a_clear_message(args, message, tmp_path):
    proc = trainer(*args, "--run_dir", str(tmp_path / "run"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert message in err, err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_ctrl_c_saves_the_model_and_says_where(tmp_path):
    run_dir = tmp_path / "run"
    proc = trainer("--pattern_size", "30", "--episodes", "100000", "--run_dir", str(run_dir), "--verbose", "0")
    log = run_dir / "episodes.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) > 25):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Interrupted after" in out and str(run_dir / "model.keras") in out
    model = keras.saving.load_model(run_dir / "model.keras")
    assert model.get_layer("plastic_rnn").units == 31


@pytest.mark.slow
def test_paper_settings_converge_within_300_episodes(tmp_path):
    """The issue's bar: mean bit error < 1% over 10 consecutive episodes within 300."""
    summary = common.run(common.Config(run_dir=str(tmp_path), verbose=2))
    with open(tmp_path / "episodes.csv") as f:
        errors = np.array([float(r["bit_error"]) for r in csv.DictReader(f)])
    means = np.convolve(errors, np.ones(10) / 10, mode="valid")
    assert means.min() < 0.01, (summary, means.min())
    print("first 10-episode window below 1%: ends at episode", int(np.argmax(means < 0.01)) + 10)
