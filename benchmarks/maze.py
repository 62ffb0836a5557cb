"""Episodes per second of the maze agent: rollout alone and rollout + A2C update.

    python -m benchmarks.maze                               # plastic/rnn/lstm x batch 1, 64 x XLA off/on
    python -m benchmarks.maze --units 100 --batch_sizes 1,8 --jit on

Each variant (network x batch x jit) runs in its own process, so its peak
resident memory (ru_maxrss, TensorFlow's runtime included) is its own. A
variant builds `hebbkeras.rl.MazeAgent`, compiles it (Adam, `jit_compile` as
given), runs one warm-up call of each function (its time, tracing and XLA
compilation included, is the "first" column) and then times `--repeats`
calls: `predict_on_batch` (the rollout of `--batch_size` episodes, no
gradient) and `train_on_batch` (the rollout, its gradient through all steps
and the Adam update, i.e. one `fit` step).
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_list("networks", ["plastic", "rnn", "lstm"], "Agents: plastic, rnn (plasticity none), lstm.")
flags.DEFINE_list("batch_sizes", ["1", "64"], "Episodes per call.")
flags.DEFINE_list("jit", ["off", "on"], "XLA off and/or on (compile(jit_compile=...)).")
flags.DEFINE_integer("units", 200, "Recurrent neurons (200: the original code's default; 100 in the paper's runs).")
flags.DEFINE_integer("size", 9, "Side of the maze.")
flags.DEFINE_integer("episode_length", 250, "Steps per episode.")
flags.DEFINE_integer("repeats", 3, "Timed calls per variant and function, after one warm-up call.")
flags.DEFINE_integer("timeout", 900, "Seconds before a variant's process is stopped.")
flags.DEFINE_string("variant", None, "Internal: run one variant (JSON) and print its timings.")

FLAGS = flags.FLAGS


def run_variant(v):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from hebbkeras import maze, rl

    keras.utils.set_random_seed(0)
    agent = rl.MazeAgent(maze.Maze(size=v["size"], episode_length=v["episode_length"]),
                         network=v["network"], units=v["units"])
    agent.compile(optimizer=keras.optimizers.Adam(1e-4, global_clipnorm=4.0),
                  jit_compile=v["jit"] == "on")
    batch = v["batch"]
    result = {}
    for name, call in (("rollout", agent.predict_on_batch), ("train", agent.train_on_batch)):
        seeds = lambda i: np.array([[0, i * batch + b] for b in range(batch)], np.int64)
        start = time.perf_counter()
        call(seeds(0))
        result[f"{name}_first_s"] = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(v["repeats"]):
            call(seeds(i + 1))
        result[f"{name}_eps"] = batch * v["repeats"] / (time.perf_counter() - start)
    result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result))


def main(argv):
    del argv
    if FLAGS.variant:
        run_variant(json.loads(FLAGS.variant))
        return
    print(f"maze {FLAGS.size}x{FLAGS.size}, {FLAGS.episode_length} steps, {FLAGS.units} units, "
          f"{FLAGS.repeats} timed calls; episodes per second (higher is better)")
    header = (f"{'network':8} {'batch':>5} {'xla':>4} | {'rollout ep/s':>12} {'first s':>8} | "
              f"{'train ep/s':>10} {'first s':>8} | {'peak GB':>7}")
    print(header)
    print("-" * len(header))
    for network in FLAGS.networks:
        for batch in map(int, FLAGS.batch_sizes):
            for jit in FLAGS.jit:
                v = dict(network=network, batch=batch, jit=jit, units=FLAGS.units, size=FLAGS.size,
                         episode_length=FLAGS.episode_length, repeats=FLAGS.repeats)
                label = f"{network:8} {batch:5d} {jit:>4} | "
                try:
                    out = subprocess.run(
                        [sys.executable, "-m", "benchmarks.maze", "--variant", json.dumps(v)],
                        capture_output=True, text=True, timeout=FLAGS.timeout)
                except subprocess.TimeoutExpired:
                    print(label + f"timed out after {FLAGS.timeout} s", flush=True)
                    continue
                lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                if out.returncode or not lines:
                    tail = (out.stderr.strip().splitlines() or ["?"])[-1]
                    print(label + f"failed (exit {out.returncode}): {tail}", flush=True)
                    continue
                r = json.loads(lines[-1][len("RESULT "):])
                print(label + f"{r['rollout_eps']:12.1f} {r['rollout_first_s']:8.1f} | "
                      f"{r['train_eps']:10.1f} {r['train_first_s']:8.1f} | {r['peak_gb']:7.2f}",
                      flush=True)


if __name__ == "__main__":
    app.run(main)
