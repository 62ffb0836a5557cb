"""One batch-1 training episode, side by side: PlasticRNN against the original algorithm in PyTorch.

    python -m benchmarks.batch1                          # this checkout and the torch loop
    python -m benchmarks.batch1 --before a3d483c         # also the library at another commit
    python -m benchmarks.batch1 --tasks binary --rounds 10
    python -m benchmarks.batch1 --before main --batch 32 --notorch   # batches of 32 (s/ep)

The binary task of the paper (N = 1001, T = 201: `episodes.Schedule()`, the
episodes of `benchmarks.speed`): "binary" clamps the inputs (`PlasticRNN` as a user
writes it), "binary_add" adds them (x 20) with a trainable eta, so every step
is computed. Each variant is `model.train_on_batch` (forward, gradient, Adam)
in its own long-lived process; "torch" is the original algorithm written
plainly in PyTorch (`y.mm(w + alpha * hebb)`, autograd through the episode,
Adam, 2 threads), the same math and episode as "binary_add". Its time
suffers far more from other load than ours: on 2026-12-06, under load averages
of 6 to 10 on the 2 cores, it took 5-38 s per episode (and 4.5-19 s of CPU),
against 0.6 s in a quieter moment that day (the issue measured 0.87 s on a
quiet machine), so its ratios mean something only from a quiet machine. The
processes take turns, one episode (or `--reps`) each per round, so load from
elsewhere falls on all of them alike; the table gives per variant the median and the fastest wall
time, the median CPU time (all threads) and torch's time over each, and with
`--before` the median over rounds of each round's ratio of the two commits (load
that changes from round to round falls on both sides of a ratio). Run it on
a quiet machine: the load average is printed at the start and the end.
`--before COMMIT` runs `hebbkeras/` of that commit (`git archive`) beside this
checkout's, with its own native-kernel cache.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_list("tasks", ["binary", "binary_add"], "binary (clamped inputs) and/or binary_add (additive inputs, trainable eta).")
flags.DEFINE_string("before", None, "A commit whose hebbkeras/ also runs, side by side (git archive).")
flags.DEFINE_integer("rounds", 6, "Rounds; each variant runs once per round.")
flags.DEFINE_integer("reps", 1, "Episodes per variant and round.")
flags.DEFINE_bool("torch", True, "Run the PyTorch reference.")
flags.DEFINE_integer("units", 1001, "N (the paper's 1001).")
flags.DEFINE_integer("batch", 1, "Episodes per training batch (times are per episode).")
flags.DEFINE_string("worker", None, "Internal: run one variant (JSON) and time it on request.")

FLAGS = flags.FLAGS


def episode_data(units, batch=1):
    """The first batch of `episodes.binary_dataset` (the paper's schedule), as numpy."""
    from hebbkeras.tasks import episodes

    data = episodes.binary_dataset(pattern_size=units - 1, schedule=episodes.Schedule(),
                                   batch_size=batch)
    return tuple(a.numpy() for a in next(iter(data)))


def keras_episode(task, units, batch=1):
    """A function that trains PlasticRNN on one batch of `task` and returns nothing."""
    import keras

    import hebbkeras

    x, y = episode_data(units, batch)
    mode = "clamp" if task == "binary" else "add"
    inputs = keras.Input(x.shape[1:])
    layer = hebbkeras.PlasticRNN(units, input_mode=mode, trainable_eta=(mode == "add"))
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=hebbkeras.summed_squared_error)
    return lambda: model.train_on_batch(x, y)


def torch_episode(units):
    """The original algorithm (`benchmarks.reference_torch`, "add" mode with eta learned,
    2 threads) on the same episode."""
    import torch

    from benchmarks import reference_torch

    x, target = (torch.from_numpy(a) for a in episode_data(units))
    torch.set_num_threads(2)
    params = reference_torch.make_params(units, trainable_eta=True)
    optimizer = torch.optim.Adam([p for p in params if isinstance(p, torch.Tensor)], 1e-3)
    return lambda: reference_torch.train_step(params, optimizer, x, target, "add")


def worker(spec):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if spec["task"] == "torch":
        episode = torch_episode(spec["units"])
    else:
        episode = keras_episode(spec["task"], spec["units"], spec.get("batch", 1))
    episode()  # trace, build, warm the allocator
    episode()
    print("READY", flush=True)
    for _ in sys.stdin:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(spec["reps"]):
            episode()
        per = spec["reps"] * spec.get("batch", 1)  # seconds per episode
        print(f"T {(time.perf_counter() - wall) / per} {(time.process_time() - cpu) / per}",
              flush=True)


def start(name, spec, tree):
    env = dict(os.environ)
    if tree is not None:  # the library of another commit, with its own kernel cache
        env["PYTHONPATH"] = os.pathsep.join([tree, os.getcwd()])
        env["HEBBKERAS_CACHE"] = os.path.join(tree, "cache")
    return subprocess.Popen([sys.executable, "-m", "benchmarks.batch1", "--worker",
                             json.dumps(spec)], env=env, cwd=tree or os.getcwd(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def main(argv):
    if FLAGS.worker:
        return worker(json.loads(FLAGS.worker))
    tree = None
    if FLAGS.before:
        tree = tempfile.mkdtemp(prefix="hebbkeras_before_")
        archive = subprocess.run(["git", "archive", FLAGS.before, "hebbkeras"],
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            sys.exit(f"error: git archive {FLAGS.before} failed: "
                     f"{archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        shutil.copytree("benchmarks", os.path.join(tree, "benchmarks"))
    print(f"batch {FLAGS.batch}; load average at start {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    procs = {}
    for task in FLAGS.tasks:
        if task not in ("binary", "binary_add"):
            sys.exit(f"error: unknown task {task!r}; choose from binary, binary_add")
        spec = dict(task=task, units=FLAGS.units, reps=FLAGS.reps, batch=FLAGS.batch)
        procs[(task, "this")] = start("this", spec, None)
        if tree:
            procs[(task, FLAGS.before)] = start(FLAGS.before, spec, tree)
    if FLAGS.torch and FLAGS.batch != 1:
        sys.exit("error: the torch reference runs at batch 1 only; add --notorch")
    if FLAGS.torch:
        procs[("torch", "torch")] = start("torch", dict(task="torch", units=FLAGS.units,
                                                        reps=FLAGS.reps), None)
    for key, proc in procs.items():
        if proc.stdout.readline().strip() != "READY":
            sys.exit(f"error: the {key[0]} ({key[1]}) process failed to start")
    walls, cpus = {k: [] for k in procs}, {k: [] for k in procs}
    for _ in range(FLAGS.rounds):
        for key, proc in procs.items():
            proc.stdin.write("go\n")
            proc.stdin.flush()
            _, wall, cpu = proc.stdout.readline().split()
            walls[key].append(float(wall))
            cpus[key].append(float(cpu))
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    if tree:
        shutil.rmtree(tree, ignore_errors=True)
    median = lambda v: sorted(v)[len(v) // 2]
    ref = ("torch", "torch") if FLAGS.torch else None
    print("| variant | code | wall s/ep (median) | fastest | CPU s/ep | torch / this (median, fastest) |")
    print("|---|---|---|---|---|---|")
    for key in procs:
        ratio = (f"{median(walls[ref]) / median(walls[key]):.1f}x, "
                 f"{min(walls[ref]) / min(walls[key]):.1f}x") if ref else "-"
        print(f"| {key[0]} | {key[1]} | {median(walls[key]):.3f} | {min(walls[key]):.3f} | "
              f"{median(cpus[key]):.3f} | {ratio} |")
    if tree:  # per round, this checkout over the other commit: steadier under load
        for task in FLAGS.tasks:
            ratios = [a / b for a, b in zip(walls[(task, "this")], walls[(task, FLAGS.before)])]
            cpu = [a / b for a, b in zip(cpus[(task, "this")], cpus[(task, FLAGS.before)])]
            print(f"{task}: this / {FLAGS.before} per round, median: wall {median(ratios):.3f}, "
                  f"CPU {median(cpu):.3f}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    app.run(main)
