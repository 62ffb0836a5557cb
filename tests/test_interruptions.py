"""Issue 24: a run killed at the worst moment, or interrupted at random moments, loses nothing.

Each trainer's command is stopped in the middle of each write of its run directory
(`HEBBKERAS_TEST_KILL_IN`, the test hook of `hebbcli.kill_point`), each time resumed by
the same command, and must end with the uninterrupted run's `episodes.csv` rows and
final weights. The random variant (`slow`) stops every trainer many times at random
moments with SIGINT and SIGKILL. Each command runs in a fresh process.
"""

import json
import os

import numpy as np
import pytest
from conftest import (
    assert_same_weights,
    interrupt_until_done,
    kill_chain,
    read_csv,
    run_python,
    trainer_command,
)

# Small runs of each trainer, as flags (explicit: the trainers' defaults change).
BINARY = ["--pattern_size=8", "--num_patterns=2", "--presentation_steps=2", "--gap_steps=1",
          "--presentations=1", "--query_steps=3", "--learning_rate=0.01", "--verbose=0",
          "--episodes=12", "--batch_size=2", "--steps_per_epoch=2", "--seed=3"]
OMNIGLOT = ["--ways=3", "--image_size=9", "--conv_layers=2", "--channels=8",
            "--learning_rate=0.01", "--episodes=64", "--batch_size=8", "--steps_per_epoch=2",
            "--eval_every=32", "--eval_episodes=16", "--figure_episodes=1", "--seed=0",
            "--verbose=0"]
CIFAR = ["--num_images=2", "--presentation_steps=2", "--gap_steps=1", "--presentations=1",
         "--query_steps=2", "--eta=0.1", "--learning_rate=1e-3", "--episodes=24",
         "--batch_size=2", "--steps_per_epoch=3", "--eval_every=12", "--eval_episodes=4",
         "--figure_episodes=1", "--verbose=0"]
MAZE = ["--size=5", "--episode_length=12", "--units=8", "--batch_size=4", "--episodes=48",
        "--steps_per_epoch=3", "--learning_rate=0.01", "--seed=2", "--verbose=0"]
COMPARE = ["--pattern_size=8", "--models=plastic,rnn", "--extra_units=4",
           "--plastic_episodes=12", "--baseline_episodes=12", "--batch_size=2",
           "--steps_per_epoch=2", "--window=2", "--seed=1"]
TRAINERS = {"binary": BINARY, "omniglot": OMNIGLOT, "cifar": CIFAR, "maze": MAZE,
            "compare": COMPARE}


def command(name, run_dir):
    return trainer_command(f"trainers.{name}", [*TRAINERS[name], f"--run_dir={run_dir}"])


def runs_of(name, run_dir):
    """The run directories a trainer's command writes (compare: one per model)."""
    if name == "compare":
        return [os.path.join(run_dir, m) for m in ("plastic", "rnn")]
    return [str(run_dir)]


def finished(name, run_dir):
    last = "table.md" if name == "compare" else "summary.json"
    return os.path.exists(os.path.join(run_dir, last))


def assert_same_run(name, got, want):
    """Every run of `got` has `want`'s episodes.csv rows and final weights."""
    for a, b in zip(runs_of(name, got), runs_of(name, want)):
        rows, expected = read_csv(os.path.join(a, "episodes.csv")), read_csv(os.path.join(b, "episodes.csv"))
        assert [r["episode"] for r in rows] == [r["episode"] for r in expected]
        for key in expected[0]:
            np.testing.assert_allclose([float(r[key]) for r in rows],
                                       [float(r[key]) for r in expected], rtol=1e-5, err_msg=key)
        assert_same_weights(os.path.join(a, "model.keras"), os.path.join(b, "model.keras"))
        with open(os.path.join(a, "summary.json")) as f:
            assert json.load(f)["episodes"] == int(expected[-1]["episode"])
        assert not os.path.exists(os.path.join(a, "backup"))
        assert not [f for f in os.listdir(a) if f.startswith(".tmp-")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """`{trainer: run_dir}` of the uninterrupted runs, made on first use."""
    base, done = tmp_path_factory.mktemp("straight"), {}

    def get(name):
        if name not in done:
            proc = run_python(command(name, base / name))
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[name] = base / name
        return done[name]

    return get


# Kill points: each a write of the run directory, in the order a run meets them
# (@N: the N-th write of that file by the process; each process resumes the one before).
BINARY_POINTS = [
    "config.json",            # before training
    "episodes.csv@3",         # a row of the first epoch, before any backup
    "epoch-*.weights.h5@2",   # the weights of the second backup
    "epoch-*.json@2",         # its manifest (the first backup is whole)
    "history.csv",            # an epoch's row, before its backup
    "model.keras",            # the trained model, after the last backup
    "summary.json",           # the very end
]
OMNIGLOT_POINTS = ["eval.csv", "evaluation.json", "episodes.png", "accuracy.png"]


# The default run kills binary at the write that completes a backup (its manifest, after
# its weights: the worst moment); `-m slow` at every point above.
BINARY_DEFAULT_POINTS = ["epoch-*.json@2"]


@pytest.mark.parametrize("name, points", [
    pytest.param("binary", BINARY_DEFAULT_POINTS, id="binary-default_points"),
    pytest.param("binary", BINARY_POINTS, marks=pytest.mark.slow, id="binary-every_point"),
    pytest.param("omniglot", OMNIGLOT_POINTS, marks=pytest.mark.slow),
    pytest.param("maze", ["learning_curve.png", "path.png"], marks=pytest.mark.slow),
    pytest.param("compare", ["episodes.csv@2", "bit_error.csv", "learning_curves.png", "table.md"],
                 marks=pytest.mark.slow),
    pytest.param("cifar", ["eval.csv@2", "episodes.png", "weights.png", "learning_curve.png"],
                 marks=pytest.mark.slow),
])
def test_a_kill_in_the_middle_of_any_write_loses_nothing(straight, tmp_path, name, points):
    run_dir = tmp_path / name
    final = kill_chain(command(name, run_dir), points)
    assert "Traceback" not in final.stderr
    assert_same_run(name, run_dir, straight(name))
    if name == "omniglot":  # each evaluation once, across the kills
        assert [r["episode"] for r in read_csv(run_dir / "eval.csv")] == ["32", "64"]
        assert "dataset_info" not in final.stderr  # tfds's notices stay hidden (issue 24)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRAINERS))
def test_random_interruptions_lose_nothing(straight, tmp_path, name):
    """Stopped a dozen times at random moments (SIGINT or SIGKILL), rerun until finished:
    the uninterrupted run's rows and weights."""
    import time

    reference = straight(name)
    started = time.perf_counter()
    run_python(command(name, tmp_path / "timing"))
    seconds = time.perf_counter() - started  # one whole run, start-up included
    rng = np.random.default_rng(sum(map(ord, name)))
    run_dir = tmp_path / name
    stops = interrupt_until_done(command(name, run_dir), lambda: finished(name, run_dir),
                                 seconds, rng)
    print(f"{name}: {stops} in runs of {seconds:.1f} s")
    assert_same_run(name, run_dir, reference)
