"""`--strategy multi_worker`: two worker processes on 127.0.0.1, each with its TF_CONFIG.

The reference is the same run in one process through Keras's `fit` (the
default strategy, the same global batch and seed): the two workers train on
the same global batches of episodes, split between them, so the losses and
weights must agree up to float32 rounding. Each test starts two TensorFlow
processes (twice for the resumed run), 15-20 s per start on two cores.
"""

import json
import os
import signal
import textwrap

import numpy as np
import pytest
from conftest import column, model_weights, read_csv, run_python, start_python
from test_distribute import KILLER, TASK, config_of

from trainers import binary, distributed

# 4 global steps of 4 episodes (2 per worker), epochs of 2 steps.
ARGS = [*TASK, "--strategy=multi_worker", "--episodes=16", "--batch_size=4",
        "--steps_per_epoch=2", "--seed=5"]


def start_workers(commands, ports):
    """Starts `python commands[i]` as worker i of a cluster on 127.0.0.1 `ports`."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index, command in enumerate(commands):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(start_python(command, env={"TF_CONFIG": tf_config}))
    return workers


def finish(workers, timeout=240):
    """`[(returncode, stdout, stderr)]` once every worker has ended; kills them on a timeout."""
    try:
        outputs = [w.communicate(timeout=timeout) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.communicate()
    return [(w.returncode, out, err) for w, (out, err) in zip(workers, outputs)]


def single_process_reference(run_dir):
    """The run of `ARGS` in this process, with the default strategy (Keras's `fit`)."""
    args = [a for a in ARGS if a != "--strategy=multi_worker"]
    binary.run(config_of([*args, f"--run_dir={run_dir}"]))
    return run_dir


def assert_same_run(run_dir, reference):
    """Both workers' models equal each other exactly and the reference to float32 rounding."""
    chief = model_weights(run_dir / "model.keras")
    other = model_weights(run_dir / "workers" / "worker_1" / "model.keras")
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(chief, model_weights(reference / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Every episode exactly once, in order, with the reference's losses and bit errors.
    for name in ("episodes.csv", "history.csv"):
        assert read_csv(run_dir / name)[0].keys() == read_csv(reference / name)[0].keys()
    assert column(run_dir / "episodes.csv", "episode", int) == [4, 8, 12, 16]
    assert column(run_dir / "history.csv", "epoch", int) == [0, 1]
    for key in ("loss", "bit_error"):
        np.testing.assert_allclose(column(run_dir / "episodes.csv", key),
                                   column(reference / "episodes.csv", key), rtol=1e-5)


REPLICAS = textwrap.dedent("""
    import dataclasses, json
    import keras, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from hebbkeras.tasks import episodes
    from hebbkeras.kernels import native
    from trainers import binary, distributed

    config = binary.BinaryConfig(pattern_size=8, schedule=episodes.Schedule(2, 2, 1, 1, 3),
                                 batch_size=4, learning_rate=0.01, seed=3)

    class Task(binary.BinaryTask):  # plain SGD: Adam would hide a wrongly scaled gradient
        def optimizer(self):
            return keras.optimizers.SGD(0.05)

    task = Task(config)

    class Logs(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.calls = []
        def on_epoch_begin(self, epoch, logs=None):
            self.calls.append(["epoch_begin", epoch])
        def on_train_batch_end(self, batch, logs=None):
            self.calls.append(["batch", batch, {k: float(v) for k, v in logs.items()}])
        def on_epoch_end(self, epoch, logs=None):
            self.calls.append(["epoch_end", epoch, {k: float(v) for k, v in logs.items()}])

    def model_in(strategy):
        keras.utils.set_random_seed(3)
        with strategy.scope():
            model = task.model()
            model.compile(optimizer=task.optimizer(), **task.compile_args())
        return model

    out = {}
    # Keras's fit in one process: the reference. 3 epochs of 2 steps of 4 episodes.
    model, logs = model_in(tf.distribute.get_strategy()), Logs()
    model.fit(task.dataset(config), epochs=3, steps_per_epoch=2, callbacks=[logs], verbose=0)
    out["fit"] = {"calls": logs.calls, "weights": [w.tolist() for w in model.get_weights()]}
    # The loop of trainers.distributed over two replicas, each with 2 episodes per step.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    local = dataclasses.replace(config, batch_size=2)
    data = strategy.distribute_datasets_from_function(lambda c: task.dataset(local, c))
    model, logs = model_in(strategy), Logs()
    history = distributed.fit(model, strategy, data, epochs=3, steps_per_epoch=2,
                              callbacks=[logs], verbose=0)
    out["loop"] = {"calls": logs.calls, "weights": [w.tolist() for w in model.get_weights()],
                   "history": history.history, "replicas": strategy.num_replicas_in_sync}
    # The ops of the replica step: the fused kernel's native passes, where they build.
    graph = distributed.make_train_step(model, strategy).get_concrete_function(
        iter(data)).graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    out["native"] = {"available": native.available(tf.float32),
                     "ops": sorted(op for op in ops if op.startswith("Hebbkeras"))}
    print(json.dumps(out))
""")


def test_loop_over_two_replicas_logs_and_trains_as_keras_fit_in_one(tmp_path):
    """`distributed.fit` (MirroredStrategy over two logical CPUs) against Keras's `fit`."""
    result = run_python(["-c", REPLICAS])
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    fit, loop = out["fit"], out["loop"]
    assert loop["replicas"] == 2
    # The same hooks in the same order, with running means over the epoch of the
    # same per-step values: the global batch's loss and bit error.
    assert [c[:2] for c in loop["calls"]] == [c[:2] for c in fit["calls"]]
    for mine, theirs in zip(loop["calls"], fit["calls"]):
        if len(theirs) == 3:
            assert mine[2].keys() == theirs[2].keys() == {"loss", "bit_error"}
            for key in theirs[2]:
                np.testing.assert_allclose(mine[2][key], theirs[2][key], rtol=1e-5)
    assert len(loop["history"]["loss"]) == 3
    np.testing.assert_allclose(loop["history"]["loss"],
                               [c[2]["loss"] for c in fit["calls"] if c[0] == "epoch_end"],
                               rtol=1e-5)
    losses = [c[2]["loss"] for c in fit["calls"] if c[0] == "batch"]
    assert losses[0] != losses[-1]  # it trained
    for a, b in zip(loop["weights"], fit["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if out["native"]["available"]:  # else the same kernel runs in plain TensorFlow ops
        assert out["native"]["ops"] == ["HebbkerasTraceBackward", "HebbkerasTraceUpdate"]


ONE_WORKER = textwrap.dedent("""
    import sys
    from hebbkeras.tasks import episodes
    from trainers import binary, loop
    sys.path.insert(0, "tests")
    from test_distribute import StoppingTask

    def config(strategy):
        return binary.BinaryConfig(
            pattern_size=8, schedule=episodes.Schedule(2, 2, 1, 1, 3), episodes=16,
            batch_size=2, steps_per_epoch=2, learning_rate=0.01, seed=3, verbose=0,
            strategy=strategy, run_dir=sys.argv[1] + "/" + strategy)

    try:  # Ctrl-C in the middle of epoch 2, then the same run again: it resumes
        loop.run(StoppingTask(config("multi_worker"), 3))
    except KeyboardInterrupt:
        pass
    binary.run(config("multi_worker"))
    binary.run(config("default"))  # Keras's fit, the reference
""")


def test_one_worker_run_interrupted_and_resumed_equals_keras_fit(tmp_path):
    """`loop.run` under `multi_worker` (a one-worker cluster): the files of a `fit` run."""
    tf_config = json.dumps({"cluster": {"worker": [f"127.0.0.1:{distributed.free_ports(1)[0]}"]},
                            "task": {"type": "worker", "index": 0}})
    result = run_python(["-c", ONE_WORKER, str(tmp_path)], env={"TF_CONFIG": tf_config})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stdout and "1 epochs (4 episodes) done" in result.stdout
    mw, reference = tmp_path / "multi_worker", tmp_path / "default"
    for name in ("episodes.csv", "history.csv"):
        assert read_csv(mw / name)[0].keys() == read_csv(reference / name)[0].keys()
        for key in read_csv(reference / name)[0]:
            if key.startswith("val_"):  # CSVLogger's "NA" columns
                assert column(mw / name, key, str) == column(reference / name, key, str)
                continue
            np.testing.assert_allclose(column(mw / name, key), column(reference / name, key),
                                       rtol=1e-6)
    assert column(mw / "episodes.csv", "episode", int) == list(range(2, 17, 2))
    assert column(mw / "history.csv", "epoch", int) == [0, 1, 2, 3]
    assert len(list((mw / "tensorboard" / "train").iterdir())) == 2  # one per start
    for a, b in zip(model_weights(mw / "model.keras"), model_weights(reference / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    summary = json.loads((mw / "summary.json").read_text())
    assert summary["episodes"] == 16 and not (mw / "backup").exists()


@pytest.mark.slow
def test_two_multi_worker_processes_finish_with_identical_weights(tmp_path):
    command = ["-m", "trainers.binary", *ARGS, "--verbose=1", f"--run_dir={tmp_path / 'mw'}"]
    results = finish(start_workers([command, command], distributed.free_ports(2)))
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert "Epoch 2/2" in results[0][1] and "Epoch" not in results[1][1]  # the chief's progress
    assert (tmp_path / "mw" / "summary.json").exists()
    assert not (tmp_path / "mw" / "backup").exists()  # deleted once complete
    assert_same_run(tmp_path / "mw", single_process_reference(tmp_path / "single"))


@pytest.mark.slow
def test_killed_worker_then_both_restarted_train_every_episode_once(tmp_path):
    """Worker 1 SIGKILLs itself after step 3 (in epoch 2); worker 0's next collective
    fails and it stops with a clear error; the same two commands then finish the run."""
    run_dir = tmp_path / "mw"
    command = ["-m", "trainers.binary", *ARGS, f"--run_dir={run_dir}"]
    ports = distributed.free_ports(2)
    killer = ["-c", KILLER]
    workers = start_workers([command, [*killer, "3", *command[2:]]], ports)
    try:
        assert workers[1].wait(timeout=240) == -signal.SIGKILL, workers[1].communicate()[1][-3000:]
        # Worker 0's all-reduce of step 4 fails (on 127.0.0.1 the connection is reset
        # at once; across machines it may wait for the heartbeats to stop).
        (code, _, err), _ = finish(workers, timeout=90)
        assert code == 2 and "error: a worker stopped during step 2 of epoch 2" in err, err[-3000:]
    finally:
        finish(workers, timeout=1)
    # Both hold the backup of epoch 1 (the first epoch; rows of epoch 2 may be lost
    # in the killed processes' file buffers or half-written: the restart cuts them).
    for directory in (run_dir, run_dir / "workers" / "worker_1"):
        assert (directory / "backup").exists()
        assert column(directory / "history.csv", "epoch", int) == [0]

    # Worker 1 without its backup (as if its disk were lost): it would start over
    # while worker 0 resumes; both stop with one error instead.
    backup = run_dir / "workers" / "worker_1" / "backup"
    backup.rename(tmp_path / "aside")
    results = finish(start_workers([command, command], ports))
    for code, _, err in results:
        assert code != 0 and "error: the workers' backups differ (present: [1, 0]" in err, err[-3000:]
    (tmp_path / "aside").rename(backup)

    results = finish(start_workers([command, command], ports))
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert "1 epochs (8 episodes) done" in out
    assert_same_run(run_dir, single_process_reference(tmp_path / "single"))
    assert not os.path.exists(run_dir / "backup")
