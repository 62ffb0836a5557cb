"""Seconds and peak memory per episode of PlasticRNN, every variant side by side.

    python -m benchmarks.speed            # everything (about four times the quick run)
    python -m benchmarks.speed --quick    # binary task, batch 1 and 32 (about 10 minutes)

Each variant (task x path x jit x batch) runs in its own process, so its peak
resident memory (ru_maxrss of that process, TensorFlow's runtime included) is
its own. Paths: "cell" is autodiff through the cell loop (`use_fused=False`),
"fused" the fused kernel with the hand-written gradient and its trace passes
in the native kernels of `hebbkeras.kernels.native` (the default), "fused_tf" the
same kernel with those passes in plain TensorFlow ops (`HEBBKERAS_NATIVE=0`,
what runs where the kernels cannot be built). jit: for the cell loop, Keras
`jit_compile=True`; for fused, Keras `jit_compile=True` too, where the layer
runs the kernel of `hebbkeras.kernels.xla_fused` (static loops, the whole train step
one XLA program; the native kernels have no XLA variant); for fused_tf,
`fused_xla=True` (XLA compiles only the per-step gradient; inference never
uses XLA, so its inference column repeats the plain path's).

Backends (`--backends tensorflow,jax,torch`): on JAX, "cell" is autodiff through
the cell loop (`lax.scan`) and "fused" the kernel of `hebbkeras.kernels.jax_fused`;
Keras compiles the whole JAX train step with XLA, so JAX runs jit "on" only.
PyTorch has no fused kernel: it runs "cell" only (the Keras RNN loop in
Python, eager autograd: training memory grows as T x B x N^2), jit "off"
(Keras's `jit_compile=True` on torch is `torch.compile`, not measured here).
The episodes are made once per (task, batch) by a TensorFlow process and
handed over as .npz files, so a JAX variant's peak memory holds no TensorFlow.

The floor is the fewest bytes a training episode must move, counted from the
math (see `floor_bytes`), divided by this machine's memory bandwidth measured
at the start of the run (a numpy copy of 256 MB arrays).
"""

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

TASKS = {
    # name: (units, input_mode, schedule kwargs)
    "binary": (1001, "clamp", dict(num_items=5, presentation_steps=10, gap_steps=3,
                                   presentations=3, query_steps=6)),
    "binary_add": (1001, "add", dict(num_items=5, presentation_steps=10, gap_steps=3,
                                     presentations=3, query_steps=6)),
    "cifar": (1025, "clamp", dict(num_items=3, presentation_steps=20, gap_steps=3,
                                  presentations=3, query_steps=3)),
}

flags.DEFINE_bool("quick", False, "Only the binary tasks at batch 1 and 32 (about 10 minutes).")
flags.DEFINE_list("tasks", list(TASKS), "Tasks to run: binary (clamped inputs, the paper), binary_add (additive inputs, every step computed), cifar (N=1025, 3 images x 3 presentations x 20 steps).")
flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Episodes per batch.")
flags.DEFINE_list("paths", ["cell", "fused_tf", "fused"], "cell: autodiff through the cell loop; fused_tf: the fused kernel in plain TensorFlow ops; fused: the fused kernel with the native trace kernels.")
flags.DEFINE_list("jit", ["off", "on"], "XLA off and/or on (see the module docstring; fused with jit on is the XLA kernel of hebbkeras.kernels.xla_fused on TensorFlow).")
flags.DEFINE_integer("units", None, "Override every task's N (patterns of N - 1 bits), for a small run.")
flags.DEFINE_list("backends", ["tensorflow"], "Keras backends: tensorflow, jax (paths cell and fused, jit on) and/or torch (path cell, jit off).")
flags.DEFINE_integer("repeats", 2, "Timed batches per variant, after one warm-up batch.")
flags.DEFINE_integer("timeout", 900, "Seconds before a variant's process is stopped.")
flags.DEFINE_float("memory_budget_gb", None, "Skip training variants whose estimated memory exceeds this (default: 70% of this machine's memory).")
flags.DEFINE_string("variant", None, "Internal: run one variant (JSON) and print its timings.")

FLAGS = flags.FLAGS


def task_units(task, override=None):
    return override or TASKS[task][0]


def episode_batch(task, batch, units):
    """A batch of episodes of the task: `(inputs, targets)` as numpy."""
    import tensorflow as tf

    from hebbkeras.tasks import episodes

    _, _, schedule = TASKS[task]
    schedule = episodes.Schedule(**schedule)
    if task == "cifar":  # grey images with values in [-1, 1]; half the query zeroed
        erase = episodes.erase_random_bits(0.5)
        xs, ys = [], []
        for i in range(batch):
            seed = tf.constant([7, i], tf.int64)
            items = tf.random.stateless_uniform((schedule.num_items, units - 1), seed, -1, 1)
            x, y = episodes.make_episode(items, seed, schedule, erase)
            xs.append(x), ys.append(y)
        return tf.stack(xs).numpy(), tf.stack(ys).numpy()
    data = episodes.binary_dataset(pattern_size=units - 1, schedule=schedule, batch_size=batch)
    x, y = next(iter(data))
    return x.numpy(), y.numpy()


def step_kinds(x):
    """Counts of (computed steps, trace-only segments) the fused kernel runs.

    A step is computed unless it clamps every neuron of every episode; clamped
    steps that repeat the previous step's pattern join one segment (the
    geometric series of eq. 2).
    """
    import numpy as np

    full = np.all(x != 0, axis=(0, 2))
    same = np.concatenate([[False], np.all(x[:, 1:] == x[:, :-1], axis=(0, 2)) & full[1:] & full[:-1]])
    computed = int(np.sum(~full))
    trace_only = int(np.sum(full & ~same))
    return computed, trace_only


def floor_bytes(units, batch, computed, trace_only, itemsize=4):
    """The fewest bytes one training batch must move, counted from the math.

    Forward, computed step: read w and alpha once for the batch, read and
    write each episode's trace (eq. 1 and eq. 2 fused): 2 N^2 + 2 B N^2.
    Backward, computed step: read w and alpha (2 N^2), read hebb_{t+1} and
    write hebb_t, read and write its gradient (4 B N^2). A trace-only
    segment (clamped step or held run): 2 B N^2 forward, 4 B N^2 backward.
    galpha need only be written once per batch (N^2; the native kernels
    gather its terms over 16 segments). Everything of size O(B N) is left out.
    """
    n2 = units * units * itemsize
    computed_bytes = (2 + 2 * batch) * n2 + (2 + 4 * batch) * n2
    trace_bytes = 6 * batch * n2
    return computed * computed_bytes + trace_only * trace_bytes + n2


def memory_bandwidth():
    """Bytes per second of a large numpy copy (read + write), best of 5."""
    import numpy as np

    a = np.ones(64 * 2**20, np.float32)
    b = np.empty_like(a)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - start)
    return 2 * a.nbytes / best


def estimated_gb(path, units, steps, batch):
    """Rough peak memory: autodiff keeps about 3 N x N tensors per step and episode."""
    base = 1.0
    if path == "cell":
        return base + 3 * steps * batch * units * units * 4 / 2**30
    return base + 8 * batch * units * units * 4 / 2**30


def run_variant(spec):
    """In a child process: time training and inference of one variant."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    import hebbkeras

    task, path, jit, batch = spec["task"], spec["path"], spec["jit"], spec["batch"]
    _, mode, _ = TASKS[task]
    units = spec["units"]
    if "save_data" in spec:  # TensorFlow makes the episodes for every backend
        x, y = episode_batch(task, batch, units)
        np.savez(spec["save_data"], x=x, y=y)
        return {}
    with np.load(spec["data"]) as data:
        x, y = data["x"], data["y"]
    tensorflow = keras.backend.backend() == "tensorflow"
    if tensorflow and hebbkeras.kernels.native.available() != (path == "fused"):  # HEBBKERAS_NATIVE=0 for fused_tf
        raise RuntimeError(f"native kernels available: {hebbkeras.kernels.native.available()}")
    inputs = keras.Input(x.shape[1:])
    layer = hebbkeras.PlasticRNN(
        units, input_mode=mode, use_fused=(path != "cell"),
        fused_xla=(tensorflow and path == "fused_tf" and jit == "on"),
    )
    model = keras.Model(inputs, layer(inputs))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=hebbkeras.summed_squared_error,
        jit_compile=(jit == "on") if not tensorflow else (path != "fused_tf" and jit == "on"),
    )
    result = {}
    if spec["train"]:
        model.train_on_batch(x, y)  # trace and compile
        start = time.perf_counter()
        for _ in range(spec["repeats"]):
            model.train_on_batch(x, y)
        result["train"] = (time.perf_counter() - start) / spec["repeats"] / batch
    model.predict_on_batch(x)
    start = time.perf_counter()
    for _ in range(spec["repeats"]):
        model.predict_on_batch(x)
    result["infer"] = (time.perf_counter() - start) / spec["repeats"] / batch
    # Only clamped inputs leave steps out; "add" computes every step.
    computed, trace_only = step_kinds(x) if mode == "clamp" else (x.shape[1], 0)
    result.update(steps=x.shape[1], computed=computed, trace_only=trace_only)
    return result


def measure(spec, timeout):
    """Runs a variant in a fresh process; returns its result and peak RSS in GB."""
    cmd = [sys.executable, "-m", "benchmarks.speed", "--variant", json.dumps(spec)]
    env = dict(os.environ, HEBBKERAS_NATIVE="1" if spec["path"] == "fused" else "0",
               KERAS_BACKEND=spec["backend"])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"timeout {timeout}s"}, math.nan
    # The child reports its own ru_maxrss (RUSAGE_CHILDREN would be the
    # largest over all children so far).
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            return result, result.pop("peak_gb")
    if proc.returncode < 0:  # SIGKILL: most often the kernel's out-of-memory killer
        return {"error": f"killed by signal {-proc.returncode} (out of memory?)"}, math.nan
    lines = [line for line in err.strip().splitlines() if not line.startswith(("I0000", "W0000"))]
    return {"error": (lines or ["failed"])[-1][:60]}, math.nan


def variants():
    """`(backend, path, jit)` of every variant the flags ask for, in table order."""
    out = []
    for backend in FLAGS.backends:
        if backend not in ("tensorflow", "jax", "torch"):
            sys.exit(f"error: unknown backend {backend!r}; choose from tensorflow, jax, torch")
        for path in FLAGS.paths:
            for jit in FLAGS.jit:
                if backend == "jax" and (path == "fused_tf" or jit == "off"):
                    continue  # Keras compiles the JAX step; fused_tf is TensorFlow's
                if backend == "torch" and (path != "cell" or jit == "on"):
                    continue  # torch: only the cell loop, eager (see the module docstring)
                out.append((backend, path, jit))
    return out


def main(argv):
    if FLAGS.variant:
        result = run_variant(json.loads(FLAGS.variant))
        result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        print("RESULT " + json.dumps(result), flush=True)
        return
    tasks, batches = FLAGS.tasks, [int(b) for b in FLAGS.batch_sizes]
    if FLAGS.quick:
        tasks, batches = ["binary", "binary_add"], [1, 32]
    for t in tasks:
        if t not in TASKS:
            sys.exit(f"error: unknown task {t!r}; choose from {', '.join(TASKS)}")
    budget = FLAGS.memory_budget_gb
    if budget is None:  # the estimates are rough: leave room
        budget = 0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    bandwidth = memory_bandwidth()
    load = os.getloadavg()[0]
    print(f"Memory bandwidth (numpy copy, 256 MB): {bandwidth / 1e9:.1f} GB/s; "
          f"load average at start {load:.1f} on {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    header = ("task", "backend", "N", "T", "path", "jit", "B", "train s/ep", "train ep/s",
              "infer s/ep", "infer ep/s", "peak GB", "floor s/ep", "x floor")
    rows = []
    data_dir = tempfile.mkdtemp(prefix="hebbkeras_speed_")
    for task in tasks:
        _, _, sched = TASKS[task]
        units = task_units(task, FLAGS.units)
        steps = sched["presentations"] * sched["num_items"] * (
            sched["presentation_steps"] + sched["gap_steps"]) + sched["query_steps"]
        for batch in batches:
            data = os.path.join(data_dir, f"{task}_{batch}.npz")
            made, _ = measure(dict(task=task, path="cell", jit="off", batch=batch,
                                   backend="tensorflow", save_data=data, units=units), FLAGS.timeout)
            if "error" in made:
                sys.exit(f"error: could not make the episodes of {task}: {made['error']}")
            for backend, path, jit in variants():
                need = estimated_gb(path, units, steps, batch)
                train = need <= budget
                spec = dict(task=task, path=path, jit=jit, batch=batch, backend=backend,
                            repeats=FLAGS.repeats, train=train, data=data, units=units)
                result, peak = measure(spec, FLAGS.timeout)
                if "error" in result:
                    rows.append((task, backend, units, steps, path, jit, batch,
                                 result["error"]))
                    print("  ", rows[-1], flush=True)
                    continue
                floor = floor_bytes(units, batch, result["computed"],
                                    result["trace_only"]) / batch / bandwidth
                tr = result.get("train")
                row = (
                    task, backend, units, result["steps"], path, jit, batch,
                    f"{tr:.3f}" if tr else f"skipped (~{need:.0f} GB)",
                    f"{1 / tr:.2f}" if tr else "-",
                    f"{result['infer']:.3f}", f"{1 / result['infer']:.2f}",
                    f"{peak:.2f}", f"{floor:.3f}",
                    f"{tr / floor:.1f}" if tr else "-",
                )
                rows.append(row)
                print("  " + " | ".join(map(str, row)), flush=True)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = list(map(str, row)) + [""] * (len(header) - len(row))
        print("| " + " | ".join(cells) + " |")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
