"""Training under tf.distribute strategies, and resuming a killed or interrupted run.

A strategy over several logical CPUs runs in its own process: logical devices
are fixed at TensorFlow start-up and must not leak into other tests. The
uninterrupted run and a run interrupted in its third epoch are trained once
(`runs`); each test that resumes or damages a run works on its own copy.
"""

import json
import textwrap

import numpy as np
import pytest
from absl import flags
from conftest import (
    assert_same_weights,
    column,
    copy_run,
    read_csv,
    run_python,
    stop_at,
    tiny_binary_config,
)

from trainers import binary, loop
from trainers.config import define_flags, from_flags

# A small task: 8-bit patterns, 2 per episode, 9 steps (test_multi_worker uses it too).
TASK = ["--pattern_size=8", "--num_patterns=2", "--presentation_steps=2", "--gap_steps=1",
        "--presentations=1", "--query_steps=3", "--learning_rate=0.01", "--verbose=0"]
# With these, the conftest's tiny run (`tiny_binary_config`), as flags.
TINY = [*TASK, "--episodes=12", "--batch_size=2", "--steps_per_epoch=2", "--seed=3"]
STOP = 5  # the interrupted runs stop after this step: in epoch 3, after the backup of epoch 2


def config_of(args):
    """The `BinaryConfig` that `python -m trainers.binary ARGS` runs."""
    values = flags.FlagValues()
    define_flags(binary.BinaryConfig, values)
    values(["trainers.binary", *args])
    return from_flags(binary.BinaryConfig, values)


class StoppingTask(binary.BinaryTask):
    def __init__(self, config, step):
        super().__init__(config)
        self.step = step

    def callbacks(self, run_dir):
        return [stop_at(self.step)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`straight`: the tiny run, uninterrupted; `partial`: the same run, Ctrl-C after step STOP."""
    base = tmp_path_factory.mktemp("runs")
    binary.run(tiny_binary_config(base / "straight"))
    with pytest.raises(KeyboardInterrupt):
        loop.run(StoppingTask(tiny_binary_config(base / "partial"), STOP))
    manifest = base / "partial" / "backup" / "epoch-000002.json"
    assert json.loads(manifest.read_text())["steps"] == 4
    return base


MIRRORED = textwrap.dedent("""
    import dataclasses, json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from trainers import binary, loop
    sys.path.insert(0, "tests")
    from conftest import tiny_binary_config
    from test_distribute import STOP, StoppingTask

    def config(name, **changes):  # batches of 2 episodes, one per replica
        return tiny_binary_config(sys.argv[1] + "/" + name, strategy="mirrored",
                                  devices=("/cpu:0", "/cpu:1"), **changes)

    out = {s: loop.make_strategy(s, config("").devices if s == "mirrored" else ()).num_replicas_in_sync
           for s in ("default", "mirrored")}
    binary.run(config("mirrored"))
    try:  # interrupted in the middle of its third epoch, then resumed, still mirrored
        loop.run(StoppingTask(config("resumed"), STOP))
    except KeyboardInterrupt:
        pass
    binary.run(config("resumed"))
    try:
        binary.run(config("odd", batch_size=3))
    except ValueError as e:
        out["odd"] = str(e)
    print(json.dumps(out))
""")


def test_mirrored_over_two_cpus_matches_default_and_resumes(runs, tmp_path):
    result = run_python(["-c", MIRRORED, str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert (out["default"], out["mirrored"]) == (1, 2)
    assert "batch_size=3 is the global batch and must split evenly across the 2 replicas" in out["odd"]
    default = read_csv(runs / "straight" / "episodes.csv")
    assert [r["episode"] for r in default] == [str(2 * i) for i in range(1, 7)]
    losses = [float(r["loss"]) for r in default]
    assert losses[0] != losses[-1]  # it trained
    # The same global batches of episodes, split over two replicas: the same
    # loss at every step, and the same trained weights, up to float32 rounding.
    for name in ("mirrored", "resumed"):
        assert column(tmp_path / name / "episodes.csv", "episode", int) == [2 * i for i in range(1, 7)]
        np.testing.assert_allclose(column(tmp_path / name / "episodes.csv", "loss"), losses, rtol=1e-5)
        assert_same_weights(tmp_path / name / "model.keras", runs / "straight" / "model.keras",
                            rtol=1e-5, atol=1e-6)


KILLER = textwrap.dedent("""
    import os, signal, sys
    import keras
    from absl import flags
    from trainers import binary, loop
    from trainers.config import define_flags, from_flags

    class Kill(keras.callbacks.Callback):  # SIGKILL after training step `step`
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == int(sys.argv[1]):
                os.kill(os.getpid(), signal.SIGKILL)

    class Task(binary.BinaryTask):
        def callbacks(self, run_dir):
            return [Kill()]

    define_flags(binary.BinaryConfig)
    flags.FLAGS(["trainers.binary", *sys.argv[2:]])
    loop.run(Task(from_flags(binary.BinaryConfig)))
""")


@pytest.mark.slow  # the default run kills binary at its epochs' writes: tests/test_interruptions.py
def test_killed_run_resumes_and_trains_every_episode_once(runs, tmp_path, capsys):
    """SIGKILL in the middle of an epoch; the same command finishes the run exactly once.

    The kill needs a process of its own; the command run again is the same
    config (parsed from the same flags) run here.
    """
    args = [*TINY, f"--run_dir={tmp_path / 'killed'}"]
    config = config_of(args)
    assert config == tiny_binary_config(tmp_path / "killed")  # the shared straight run's settings
    killed = run_python(["-c", KILLER, str(STOP), *args])
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert len(read_csv(tmp_path / "killed" / "history.csv")) == 2

    capsys.readouterr()
    binary.run(config)
    out = capsys.readouterr().out
    assert "Resuming from" in out and "2 epochs (8 episodes) done" in out
    assert column(tmp_path / "killed" / "history.csv", "epoch", int) == list(range(3))
    assert column(tmp_path / "killed" / "episodes.csv", "episode", int) == list(range(2, 13, 2))
    assert not (tmp_path / "killed" / "backup").exists()  # deleted once complete

    # The uninterrupted run of the same command gives the same model and losses.
    assert_same_weights(tmp_path / "killed" / "model.keras", runs / "straight" / "model.keras")
    np.testing.assert_allclose(column(tmp_path / "killed" / "episodes.csv", "loss"),
                               column(runs / "straight" / "episodes.csv", "loss"), rtol=1e-5)


def test_resuming_compares_settings_not_spellings_and_names_what_differs(runs, tmp_path):
    run = copy_run(runs / "partial", tmp_path / "run")
    assert (run / "backup").exists()
    changed = tiny_binary_config(f"{run}/", eta=0.2, steps_per_epoch=3)
    with pytest.raises(loop.RunError) as error:
        binary.run(changed)
    message = str(error.value)
    assert "eta=0.2 (was 0.01)" in message and "steps_per_epoch=3 (was 2)" in message
    assert "run_dir=" not in message
    # The same settings, the directory spelled another way: it resumes and completes.
    summary = binary.run(tiny_binary_config(f"{tmp_path}/x/../run", verbose=1))
    assert summary["episodes"] == 12
    assert column(run / "episodes.csv", "episode", int) == list(range(2, 13, 2))
    assert_same_weights(run / "model.keras", runs / "straight" / "model.keras")


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(loop.RunError, match="TF_CONFIG environment variable, which is not set"):
        loop.make_strategy("multi_worker")


def newest_backup_weights(run):
    """The newest weights file of the run's backup (whatever the backup's layout)."""
    found = sorted((run / "backup").glob("*.weights.h5"), key=lambda p: p.stat().st_mtime_ns)
    assert found
    return found[-1]


@pytest.mark.parametrize("damage", [pytest.param("weights_cut_off", marks=pytest.mark.slow),
                                    "weights_without_optimizer", "manifest_cut_off"])
def test_a_backup_cut_off_while_written_resumes_from_the_one_before(runs, tmp_path, capsys, damage):
    """Issue 24, item 1: a backup whose write was cut off (Ctrl-C in Keras's writer leaves a
    valid HDF5 file without the optimizer's variables) is detected; the run resumes from the
    backup before it, never from episode 0 in silence, and ends as the uninterrupted run."""
    import h5py

    run = copy_run(runs / "partial", tmp_path / "cut")
    weights = newest_backup_weights(run)
    if damage == "weights_cut_off":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "weights_without_optimizer":
        with h5py.File(weights, "r+") as f:
            del f["optimizer"]
    else:
        manifest = weights.with_name(weights.name.replace(".weights.h5", ".json"))
        manifest.write_text(manifest.read_text()[:20])

    capsys.readouterr()
    summary = binary.run(tiny_binary_config(run, verbose=1))
    out = capsys.readouterr().out
    assert "1 epochs (4 episodes) done" in out and "passed over" in out, out
    assert summary["episodes"] == 12
    assert column(run / "history.csv", "epoch", int) == list(range(3))
    assert column(run / "episodes.csv", "episode", int) == list(range(2, 13, 2))
    assert_same_weights(run / "model.keras", runs / "straight" / "model.keras")
    np.testing.assert_allclose(column(run / "episodes.csv", "loss"),
                               column(runs / "straight" / "episodes.csv", "loss"), rtol=1e-5)


def test_a_run_whose_every_backup_is_damaged_refuses_and_says_what_it_found(runs, tmp_path):
    run = copy_run(runs / "partial", tmp_path / "bad")
    for weights in (run / "backup").glob("*.weights.h5"):
        weights.write_bytes(b"\x89HDF\r\n\x1a\n cut")
    rows = (run / "episodes.csv").read_text()
    with pytest.raises(loop.RunError) as error:
        binary.run(tiny_binary_config(run))
    message = str(error.value)
    assert "no backup in" in message and "does not match its manifest" in message
    assert "--overwrite" in message
    assert (run / "episodes.csv").read_text() == rows  # nothing touched
