"""Training under tf.distribute strategies, and resuming a killed or interrupted run.

A strategy over several logical CPUs runs in its own process: logical devices
are fixed at TensorFlow start-up and must not leak into other tests.
"""

import json
import textwrap

import keras
import numpy as np
import pytest
from absl import flags

from conftest import column, model_weights, read_csv, run_python, stop_at
from trainers import binary, loop
from trainers.config import define_flags, from_flags

# A small task: 8-bit patterns, 2 per episode, 9 steps.
TASK = ["--pattern_size=8", "--num_patterns=2", "--presentation_steps=2", "--gap_steps=1",
        "--presentations=1", "--query_steps=3", "--learning_rate=0.01", "--verbose=0"]


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


MIRRORED = textwrap.dedent("""
    import dataclasses, json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from hebbkeras import episodes
    from trainers import binary, loop
    sys.path.insert(0, "tests")
    from test_distribute import StoppingTask

    def config(strategy, name):
        return binary.BinaryConfig(
            pattern_size=8, schedule=episodes.Schedule(2, 2, 1, 1, 3), episodes=24,
            batch_size=4, steps_per_epoch=2, learning_rate=0.01, seed=3, verbose=0,
            strategy=strategy, devices=("/cpu:0", "/cpu:1") if strategy == "mirrored" else (),
            run_dir=sys.argv[1] + "/" + name)

    out = {}
    for strategy in ("default", "mirrored"):
        binary.run(config(strategy, strategy))
        out[strategy] = loop.make_strategy(strategy, config(strategy, "").devices).num_replicas_in_sync
    try:  # interrupted in the middle of its third epoch, then resumed, still mirrored
        loop.run(StoppingTask(config("mirrored", "resumed"), 5))
    except KeyboardInterrupt:
        pass
    binary.run(config("mirrored", "resumed"))
    try:
        binary.run(dataclasses.replace(config("mirrored", "odd"), batch_size=3))
    except ValueError as e:
        out["odd"] = str(e)
    print(json.dumps(out))
""")


def test_mirrored_over_two_cpus_matches_default_and_resumes(tmp_path):
    result = run_python(["-c", MIRRORED, str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert (out["default"], out["mirrored"]) == (1, 2)
    assert "batch_size=3 is the global batch and must split evenly across the 2 replicas" in out["odd"]
    default = read_csv(tmp_path / "default" / "episodes.csv")
    assert [r["episode"] for r in default] == [str(4 * i) for i in range(1, 7)]
    losses = [float(r["loss"]) for r in default]
    assert losses[0] != losses[-1]  # it trained
    # The same global batches of episodes, split over two replicas: the same
    # loss at every step, and the same trained weights, up to float32 rounding.
    for name in ("mirrored", "resumed"):
        assert column(tmp_path / name / "episodes.csv", "episode", int) == [4 * i for i in range(1, 7)]
        np.testing.assert_allclose(column(tmp_path / name / "episodes.csv", "loss"), losses, rtol=1e-5)
        for a, b in zip(model_weights(tmp_path / name / "model.keras"),
                        model_weights(tmp_path / "default" / "model.keras")):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


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


def test_killed_run_resumes_and_trains_every_episode_once(tmp_path):
    """SIGKILL in the middle of an epoch; the same command finishes the run exactly once."""
    args = [*TASK, "--episodes=16", "--batch_size=2", "--steps_per_epoch=2", "--seed=7",
            f"--run_dir={tmp_path / 'killed'}"]
    killed = run_python(["-c", KILLER, "5", *args])  # in epoch 3, after the backup of epoch 2
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert len(read_csv(tmp_path / "killed" / "history.csv")) == 2

    resumed = run_python(["-m", "trainers.binary", *args])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout and "2 epochs (8 episodes) done" in resumed.stdout
    assert column(tmp_path / "killed" / "history.csv", "epoch", int) == list(range(4))
    assert column(tmp_path / "killed" / "episodes.csv", "episode", int) == list(range(2, 17, 2))
    assert not (tmp_path / "killed" / "backup").exists()  # deleted once complete

    # The uninterrupted run of the same command gives the same model and losses.
    straight = config_of(args[:-1] + [f"--run_dir={tmp_path / 'straight'}"])
    binary.run(straight)
    for a, b in zip(model_weights(tmp_path / "killed" / "model.keras"),
                    model_weights(tmp_path / "straight" / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(column(tmp_path / "killed" / "episodes.csv", "loss"),
                               column(tmp_path / "straight" / "episodes.csv", "loss"), rtol=1e-5)


def test_resuming_compares_settings_not_spellings_and_names_what_differs(tiny_binary, tmp_path):
    config = tiny_binary("run")
    with pytest.raises(KeyboardInterrupt):
        loop.run(StoppingTask(config, 3))
    assert (tmp_path / "run" / "backup").exists()
    changed = tiny_binary(run_dir=str(tmp_path / "run") + "/", eta=0.2, steps_per_epoch=3)
    with pytest.raises(loop.RunError) as error:
        binary.run(changed)
    message = str(error.value)
    assert "eta=0.2 (was 0.01)" in message and "steps_per_epoch=3 (was 2)" in message
    assert "run_dir=" not in message
    # The same settings, the directory spelled another way: it resumes and completes.
    summary = binary.run(tiny_binary(run_dir=f"{tmp_path}/x/../run", verbose=1))
    assert summary["episodes"] == 12
    assert column(tmp_path / "run" / "episodes.csv", "episode", int) == list(range(2, 13, 2))


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(loop.RunError, match="TF_CONFIG environment variable, which is not set"):
        loop.make_strategy("multi_worker")


class _StopAfterEpoch(keras.callbacks.Callback):
    """Interrupts training after the backup of epoch `epoch` is written."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


class _EpochStoppingTask(binary.BinaryTask):
    def callbacks(self, run_dir):
        return [_StopAfterEpoch(2)]


@pytest.mark.parametrize("damage", ["epoch_behind", "epoch_file_cut_off"])
def test_backup_cut_off_while_written_still_resumes(tiny_binary, tmp_path, damage):
    """A kill between Keras writing the weights and the epoch number loses nothing."""
    with pytest.raises(KeyboardInterrupt):
        loop.run(_EpochStoppingTask(tiny_binary("cut", steps_per_epoch=1)))
    epoch_file = tmp_path / "cut" / "backup" / "training_metadata.json"
    assert json.loads(epoch_file.read_text())["epoch"] == 3
    # What a kill at that moment leaves: the weights of epoch 3, the epoch of 2 or half a file.
    epoch_file.write_text('{"epoch": 2, "batch": 0}' if damage == "epoch_behind" else '{"epo')

    binary.run(tiny_binary("cut", steps_per_epoch=1))
    binary.run(tiny_binary("straight", steps_per_epoch=1))
    assert column(tmp_path / "cut" / "history.csv", "epoch", int) == list(range(6))
    assert column(tmp_path / "cut" / "episodes.csv", "episode", int) == list(range(2, 13, 2))
    for a, b in zip(model_weights(tmp_path / "cut" / "model.keras"),
                    model_weights(tmp_path / "straight" / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
