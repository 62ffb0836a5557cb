"""Training under tf.distribute strategies, and resuming a killed run.

Each strategy runs in its own process: logical devices and collective ops are
fixed at TensorFlow start-up and must not leak into other tests.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

import hebbkeras  # noqa: F401  (registers the custom objects for load_model)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
# A small task: 8-bit patterns, 2 per episode, 9 steps.
TASK = ["--pattern_size=8", "--num_patterns=2", "--presentation_steps=2", "--gap_steps=1",
        "--presentations=1", "--query_steps=3", "--learning_rate=0.01", "--verbose=0"]


def python(args, **kwargs):
    return subprocess.run([sys.executable, *args], env=kwargs.pop("env", ENV), cwd=ROOT,
                          capture_output=True, text=True, timeout=300, **kwargs)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def weights(path):
    return keras.models.load_model(path).get_weights()


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from hebbkeras import episodes
    from trainers import common
    out = {}
    for strategy in ("default", "mirrored"):
        config = common.Config(
            pattern_size=8, schedule=episodes.Schedule(2, 2, 1, 1, 3), episodes=24,
            batch_size=4, steps_per_epoch=2, learning_rate=0.01, seed=3, verbose=0,
            strategy=strategy, devices=("/cpu:0", "/cpu:1") if strategy == "mirrored" else (),
            run_dir=sys.argv[1] + "/" + strategy)
        common.run(config)
        replicas = common.make_strategy(strategy, config.devices).num_replicas_in_sync
        out[strategy] = replicas
    print(json.dumps(out))
""")


def test_mirrored_over_two_cpus_matches_default(tmp_path):
    result = python(["-c", MIRRORED, str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"default": 1, "mirrored": 2}
    default = read_csv(tmp_path / "default" / "episodes.csv")
    mirrored = read_csv(tmp_path / "mirrored" / "episodes.csv")
    assert [r["episode"] for r in default] == [str(4 * i) for i in range(1, 7)]
    assert [r["episode"] for r in mirrored] == [r["episode"] for r in default]
    # The same global batches of episodes, split over two replicas: the same
    # loss at every step, and the same trained weights, up to float32 rounding.
    np.testing.assert_allclose([float(r["loss"]) for r in mirrored],
                               [float(r["loss"]) for r in default], rtol=1e-5)
    losses = [float(r["loss"]) for r in default]
    assert losses[0] != losses[-1]  # it trained
    for a, b in zip(weights(tmp_path / "mirrored" / "model.keras"),
                    weights(tmp_path / "default" / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.xfail(strict=True, reason=(
    "Keras 3.15 fit under MultiWorkerMirroredStrategy reduces the logged scalar "
    "metrics with strategy.reduce('MEAN', v, axis=0), which fails for scalars "
    "(keras/src/backend/tensorflow/trainer.py reduce_per_replica); strict, so it "
    "reports when a Keras upgrade fixes it"))
def test_two_multi_worker_processes_finish_with_identical_weights(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    args = ["-m", "trainers.binary", *TASK, "--strategy=multi_worker", "--episodes=16",
            "--batch_size=4", "--steps_per_epoch=2", "--seed=5", f"--run_dir={tmp_path}"]
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env={**ENV, "TF_CONFIG": tf_config},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [w.communicate(timeout=300) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    chief = tmp_path / "model.keras"
    other = tmp_path / "workers" / "worker_1" / "model.keras"
    for a, b in zip(weights(chief), weights(other)):
        np.testing.assert_array_equal(a, b)
    history = read_csv(tmp_path / "history.csv")
    assert [r["epoch"] for r in history] == ["0", "1"]
    assert read_csv(tmp_path / "episodes.csv")[-1]["episode"] == "16"


def test_killed_run_resumes_and_trains_every_episode_once(tmp_path):
    """SIGKILL after a few epochs; the same command finishes the run exactly once."""
    epochs, batch = 200, 2
    args = ["-m", "trainers.binary", *TASK, f"--episodes={epochs * batch}",
            f"--batch_size={batch}", "--steps_per_epoch=1", "--seed=7",
            f"--run_dir={tmp_path / 'killed'}"]
    history_path = tmp_path / "killed" / "history.csv"
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if history_path.exists() and len(read_csv(history_path)) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = len(read_csv(history_path))
    assert 3 <= done_before < epochs

    resumed = python(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    history = read_csv(history_path)
    assert [int(r["epoch"]) for r in history] == list(range(epochs))
    episodes = read_csv(tmp_path / "killed" / "episodes.csv")
    assert [int(r["episode"]) for r in episodes] == list(range(batch, epochs * batch + 1, batch))
    assert not (tmp_path / "killed" / "backup").exists()  # deleted once complete

    # The uninterrupted run with the same command gives the same model.
    straight = python(args[:-1] + [f"--run_dir={tmp_path / 'straight'}"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    for a, b in zip(weights(tmp_path / "killed" / "model.keras"),
                    weights(tmp_path / "straight" / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    straight_losses = [r["loss"] for r in read_csv(tmp_path / "straight" / "episodes.csv")]
    np.testing.assert_allclose([float(r["loss"]) for r in episodes],
                               [float(x) for x in straight_losses], rtol=1e-5)


def test_batch_must_split_across_replicas(tmp_path):
    script = textwrap.dedent("""
        import sys, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from trainers import common
        common.run(common.Config(pattern_size=8, batch_size=3, strategy="mirrored",
                                 devices=("/cpu:0", "/cpu:1"), run_dir=sys.argv[1], verbose=0))
    """)
    result = python(["-c", script, str(tmp_path)])
    assert result.returncode != 0
    assert "batch_size=3 is the global batch and must split evenly across the 2 replicas" in result.stderr


@pytest.mark.parametrize("strategy", ["multi_worker"])
def test_multi_worker_without_tf_config_is_a_clear_error(strategy, tmp_path):
    env = {k: v for k, v in ENV.items() if k != "TF_CONFIG"}
    result = python(["-m", "trainers.binary", *TASK, f"--strategy={strategy}",
                     f"--run_dir={tmp_path}"], env=env)
    assert result.returncode != 0
    assert "TF_CONFIG environment variable, which is not set" in result.stderr


class _StopAfterEpoch(keras.callbacks.Callback):
    """Interrupts training after the backup of epoch `epoch` is written."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("damage", ["epoch_behind", "epoch_file_cut_off"])
def test_backup_cut_off_while_written_still_resumes(tmp_path, damage):
    """A kill between Keras writing the weights and the epoch number loses nothing."""
    from hebbkeras import episodes
    from trainers import common

    def config(name):
        return common.Config(
            pattern_size=8, schedule=episodes.Schedule(2, 2, 1, 1, 3), episodes=12,
            batch_size=2, steps_per_epoch=1, learning_rate=0.01, seed=11, verbose=0,
            run_dir=str(tmp_path / name))

    with pytest.raises(KeyboardInterrupt):
        common.run(config("cut"), callbacks=[_StopAfterEpoch(2)])
    epoch_file = tmp_path / "cut" / "backup" / "training_metadata.json"
    assert json.loads(epoch_file.read_text())["epoch"] == 3
    # What a kill at that moment leaves: the weights of epoch 3, the epoch of 2 or half a file.
    epoch_file.write_text('{"epoch": 2, "batch": 0}' if damage == "epoch_behind" else '{"epo')

    common.run(config("cut"))
    common.run(config("straight"))
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "cut" / "history.csv")] == list(range(6))
    assert [int(r["episode"]) for r in read_csv(tmp_path / "cut" / "episodes.csv")] == list(range(2, 13, 2))
    for a, b in zip(weights(tmp_path / "cut" / "model.keras"), weights(tmp_path / "straight" / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
