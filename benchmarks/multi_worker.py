"""Episodes per second of the binary task: Keras `fit` in one process, the multi-worker loop with 1 and 2 workers.

    python -m benchmarks.multi_worker                          # pattern_size 50, batch 8
    python -m benchmarks.multi_worker --pattern_size 200 --epochs 6

Every variant trains the same run (`--batch_size` is the global batch) through
`trainers.loop.run`, in fresh processes: "fit" with the default strategy
(Keras's `fit`), "loop x1" with `--strategy multi_worker` and a one-worker
TF_CONFIG (the custom loop of `trainers.distributed`, no peer), "loop x2" with
two worker processes on 127.0.0.1. Throughput is counted after the first epoch
(which traces the step), backups and logs included. On a machine with two
cores, two workers share them: the table shows the loop's and the collectives'
overhead, not a speed-up.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from trainers import distributed

flags.DEFINE_integer("pattern_size", 50, "Bits per pattern (the paper: 1000).")
flags.DEFINE_integer("batch_size", 8, "Global batch (episodes per step, over all workers).")
flags.DEFINE_integer("steps_per_epoch", 10, "Steps per epoch.")
flags.DEFINE_integer("epochs", 4, "Epochs; the first is not counted (it traces the step).")
flags.DEFINE_list("variants", ["fit", "loop x1", "loop x2"], "Which variants to run.")
flags.DEFINE_string("worker", None, "Internal: run one process of a variant (JSON) and print its timings.")

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(spec):
    """Trains one process's part of a run; prints `{"first": s, "rest": s, "episodes": n}`."""
    import keras

    from hebbkeras.tasks import episodes
    from trainers import binary, loop

    marks = []

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            marks.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            marks.append(time.perf_counter())

    class Task(binary.BinaryTask):
        def callbacks(self, run_dir):
            return [Clock()]

    config = binary.BinaryConfig(
        pattern_size=spec["pattern_size"], schedule=episodes.Schedule(),
        episodes=spec["episodes"], batch_size=spec["batch_size"],
        steps_per_epoch=spec["steps_per_epoch"], verbose=0, strategy=spec["strategy"],
        run_dir=spec["run_dir"])
    loop.run(Task(config))
    steps = spec["steps_per_epoch"] * spec["batch_size"]
    print(json.dumps({"first": marks[1] - marks[0], "rest": marks[-1] - marks[1],
                      "episodes": steps * (len(marks) - 2)}))


def run_variant(name, directory):
    """Starts the variant's processes; returns the chief's timings."""
    processes = 2 if name == "loop x2" else 1
    spec = {"pattern_size": FLAGS.pattern_size, "batch_size": FLAGS.batch_size,
            "steps_per_epoch": FLAGS.steps_per_epoch,
            "episodes": FLAGS.epochs * FLAGS.steps_per_epoch * FLAGS.batch_size,
            "strategy": "default" if name == "fit" else "multi_worker",
            "run_dir": os.path.join(directory, name.replace(" ", "_"))}
    cluster = {"worker": [f"127.0.0.1:{p}" for p in distributed.free_ports(processes)]}
    started = []
    for index in range(processes):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
        if name != "fit":
            env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                           "task": {"type": "worker", "index": index}})
        started.append(subprocess.Popen(
            [sys.executable, "-m", "benchmarks.multi_worker", "--worker", json.dumps(spec)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate() for p in started]
    for p, (_, err) in zip(started, outputs):
        if p.returncode:
            raise RuntimeError(f"{name} failed:\n{err[-3000:]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def main(argv):
    if FLAGS.worker:
        worker(json.loads(FLAGS.worker))
        return
    print(f"binary task, pattern_size {FLAGS.pattern_size}, paper schedule, global batch "
          f"{FLAGS.batch_size}, {FLAGS.epochs} epochs of {FLAGS.steps_per_epoch} steps, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'variant':<9} {'processes':>9} {'episodes/s':>11} {'first epoch s':>14}")
    with tempfile.TemporaryDirectory() as directory:
        for name in FLAGS.variants:
            t = run_variant(name, directory)
            processes = 2 if name == "loop x2" else 1
            print(f"{name:<9} {processes:>9} {t['episodes'] / t['rest']:>11.1f} "
                  f"{t['first']:>14.1f}", flush=True)


if __name__ == "__main__":
    app.run(main)
