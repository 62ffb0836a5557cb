"""Episodes per second of the maze agent: rollout alone and rollout + A2C update.

    python -m benchmarks.maze                      # plastic/rnn/lstm x batch 1, 64 x 3 modes
    python -m benchmarks.maze --units 100 --batch_sizes 1,8 --modes xla,replay
    python -m benchmarks.maze --units 100 --networks plastic --batch_sizes 30 --modes xla \
        --modulations none,simple,retroactive      # neuromodulated plastic networks

Each variant (network x batch x mode) runs in its own process, so its peak
resident memory (ru_maxrss, TensorFlow's runtime included) is its own. A
variant builds `hebbkeras.tasks.rl.MazeAgent`, compiles it (Adam), runs one
warm-up call of each function (its time, tracing and XLA compilation
included, is the "first" column) and then times `--repeats` calls of the
rollout of a batch of episodes without gradient (`predict_on_batch`; for
replay, `record`), and of `train_on_batch` (rollout, gradient and Adam
update: one `fit` step). Modes:

    graph:  jit_compile=False; autodiff through the rollout's while loop
    xla:    jit_compile=True; the same, compiled by XLA
    replay: MazeAgent(replay=True), jit_compile=False: the rollout compiled
            by XLA without gradient (`record`), then the recorded observations
            run again through the recurrent layer as one sequence (the
            plastic network's fused kernel) for the gradient
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
flags.DEFINE_list("modes", ["graph", "xla", "replay"], "How the step runs: graph, xla, replay (see the module docstring).")
flags.DEFINE_list("modulations", ["none"], "Modulations of the plastic network: none (its Oja "
                  "rule), simple, retroactive (Hebbian, neuromodulated; docs/neuromodulation.md).")
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

    from hebbkeras.tasks import maze, rl

    keras.utils.set_random_seed(0)
    modulation = v.get("modulation", "none")
    agent = rl.MazeAgent(maze.Maze(size=v["size"], episode_length=v["episode_length"]),
                         network=v["network"], units=v["units"], replay=v["mode"] == "replay",
                         modulation=modulation, rule="oja" if modulation == "none" else "hebb")
    agent.compile(optimizer=keras.optimizers.Adam(1e-4, global_clipnorm=4.0),
                  jit_compile=v["mode"] == "xla")
    batch = v["batch"]
    result = {}
    rollout = agent.record if v["mode"] == "replay" else agent.predict_on_batch
    for name, call in (("rollout", rollout), ("train", agent.train_on_batch)):
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
    header = (f"{'network':20} {'batch':>5} {'mode':>6} | {'rollout ep/s':>12} {'first s':>8} | "
              f"{'train ep/s':>10} {'first s':>8} | {'peak GB':>7}")
    print(header)
    print("-" * len(header))
    variants = [(n, m) for n in FLAGS.networks
                for m in (FLAGS.modulations if n == "plastic" else ["none"])]
    for network, modulation in variants:
        for batch in map(int, FLAGS.batch_sizes):
            for mode in FLAGS.modes:
                v = dict(network=network, modulation=modulation, batch=batch, mode=mode,
                         units=FLAGS.units,
                         size=FLAGS.size, episode_length=FLAGS.episode_length,
                         repeats=FLAGS.repeats)
                name = network if modulation == "none" else f"{network}/{modulation}"
                label = f"{name:20} {batch:5d} {mode:>6} | "
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
