"""Seconds and peak memory per episode of PlasticRNN, side by side with the original algorithm.

    python -m benchmarks.speed --quick    # reference vs ours, binary tasks, batch 1 and 32
    python -m benchmarks.speed            # every path, batch 1, 8, 32, the CIFAR settings too
    python -m benchmarks.speed --scaling  # ours for N in {256, 1001, 2048} x B in {1, 8, 32, 128}

Each variant (task x path x jit x batch) runs in its own process, so its peak
resident memory (ru_maxrss of that process, its runtime included) is its own.

The reference ("reference", `benchmarks.reference_torch`) is the original
algorithm written plainly in PyTorch (`y.mm(w + alpha * hebb)` each step,
autograd through the episode, Adam; `--reference_threads` threads), on the
same episodes. The variants run in `--rounds` rounds, each round every
variant once in table order (reference first), so reference and ours
alternate and share the machine's mood; a row shows the median over rounds,
and "x ref" the median over rounds of that round's reference time over this
row's. binary_add learns eta on both sides (the original binary code does);
binary and cifar keep it fixed (the paper's binary task does).

Paths: "cell" is autodiff through the cell loop (`use_fused=False`),
"fused" the fused kernel with the hand-written gradient and its trace passes
in the native kernels of `hebbkeras.kernels.native` (the default: "ours"),
"fused_tf" the same kernel with those passes in plain TensorFlow ops
(`HEBBKERAS_NATIVE=0`, what runs where the kernels cannot be built). jit: for
the cell loop, Keras `jit_compile=True`; for fused, Keras `jit_compile=True`
too, where the layer runs the kernel of `hebbkeras.kernels.xla_fused` (static
loops, the whole train step one XLA program; the native kernels have no XLA
variant); for fused_tf, `fused_xla=True` (XLA compiles only the per-step
gradient; inference never uses XLA, so its inference column repeats the
plain path's).

Backends (`--backends tensorflow,jax,torch`): on JAX, "cell" is autodiff through
the cell loop (`lax.scan`) and "fused" the kernel of `hebbkeras.kernels.jax_fused`;
Keras compiles the whole JAX train step with XLA, so JAX runs jit "on" only.
Keras on PyTorch has no fused kernel: it runs "cell" only (the Keras RNN loop in
Python, eager autograd: training memory grows as T x B x N^2), jit "off"
(Keras's `jit_compile=True` on torch is `torch.compile`, not measured here).
The episodes are made once per (task, batch) by a TensorFlow process and
handed over as .npz files, so a JAX or reference variant's peak memory holds
no TensorFlow.

Floors (`benchmarks.floors`): the fewest bytes a training episode must move,
counted from the math (`floor_bytes`), over this machine's L3 and DRAM
bandwidth (`floors.bandwidths`: read + write passes over a 4 MB and a 256 MB
array), measured at the start of the run (the header) and again right before
and right after each measurement: on a VM the host's other guests take a share
of the memory bandwidth that moves by the minute (this one's probe read 51 to 98
GB/s over 256 MB within ten idle minutes), so a round's time is divided by the
mean of the floors of its two probes (`floors.bracketed`: both ends of the
measurement weigh alike), "x floor" is the median over rounds of those ratios,
and the floor columns show the floors of the median of those bandwidths. The L3
floor holds while the working set (w, alpha, their gradients, each episode's
trace and its gradient) fits in the L3 cache; the DRAM floor once it does not.
The reference's own traffic, counted operator by operator as PyTorch runs it, is
printed under the table.
"""

import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import floors

TASKS = {
    # name: (units, input_mode, trainable_eta, schedule kwargs)
    "binary": (1001, "clamp", False, dict(num_items=5, presentation_steps=10, gap_steps=3,
                                          presentations=3, query_steps=6)),
    "binary_add": (1001, "add", True, dict(num_items=5, presentation_steps=10, gap_steps=3,
                                           presentations=3, query_steps=6)),
    "cifar": (1025, "clamp", False, dict(num_items=3, presentation_steps=20, gap_steps=3,
                                         presentations=3, query_steps=3)),
}
OURS = ("tensorflow", "fused", "off")  # what a user gets by default

flags.DEFINE_bool("quick", False, "The reference and ours (the default path) on the binary tasks at batch 1 and 32: --tasks binary,binary_add --batch_sizes 1,32 --paths fused --jit off.")
flags.DEFINE_list("tasks", list(TASKS), "Tasks to run: binary (clamped inputs, the paper), binary_add (additive inputs x20, eta learned, every step computed), cifar (N=1025, 3 images x 3 presentations x 20 steps).")
flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Episodes per batch.")
flags.DEFINE_list("paths", ["cell", "fused_tf", "fused"], "cell: autodiff through the cell loop; fused_tf: the fused kernel in plain TensorFlow ops; fused: the fused kernel with the native trace kernels.")
flags.DEFINE_list("jit", ["off", "on"], "XLA off and/or on (see the module docstring; fused with jit on is the XLA kernel of hebbkeras.kernels.xla_fused on TensorFlow).")
flags.DEFINE_integer("units", None, "Override every task's N (patterns of N - 1 bits), for a small run.")
flags.DEFINE_list("backends", ["tensorflow"], "Keras backends: tensorflow, jax (paths cell and fused, jit on) and/or torch (path cell, jit off).")
flags.DEFINE_bool("reference", True, "Run the original algorithm in plain PyTorch (benchmarks.reference_torch) side by side.")
flags.DEFINE_integer("reference_threads", 2, "torch.set_num_threads of the reference.")
flags.DEFINE_integer("rounds", 3, "Rounds: each runs every variant once, in order, so the reference and ours alternate.")
flags.DEFINE_integer("repeats", 2, "Timed batches per variant and round, after one warm-up batch.")
flags.DEFINE_integer("timeout", 900, "Seconds before a variant's process is stopped.")
flags.DEFINE_float("memory_budget_gb", None, "Skip training variants whose estimated memory exceeds this (default: 70% of this machine's memory).")
flags.DEFINE_bool("scaling", False, "Instead: ours (the default path) on the binary task for every N of --scaling_units and B of --scaling_batches, against its floors.")
flags.DEFINE_list("scaling_units", ["256", "1001", "2048"], "N of the --scaling table.")
flags.DEFINE_list("scaling_batches", ["1", "8", "32", "128"], "B of the --scaling table.")
flags.DEFINE_string("variant", None, "Internal: run one variant (JSON) and print its timings.")

FLAGS = flags.FLAGS


def task_units(task, override=None):
    return override or TASKS[task][0]


def episode_batch(task, batch, units):
    """A batch of episodes of the task: `(inputs, targets)` as numpy."""
    import tensorflow as tf

    from hebbkeras.tasks import episodes

    schedule = episodes.Schedule(**TASKS[task][3])
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


def estimated_gb(path, units, steps, batch):
    """Rough peak memory: autodiff keeps about 3 N x N tensors per step and episode
    through the Keras cell loop, about 6 in the PyTorch reference (5.1 GB measured at
    N = 1001, T = 201, B = 1)."""
    base = 1.0
    if path in ("cell", "reference"):
        per_step = 6 if path == "reference" else 3
        return base + per_step * steps * batch * units * units * 4 / 2**30
    return base + 8 * batch * units * units * 4 / 2**30


def run_variant(spec):
    """In a child process: time training and inference of one variant."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    task, path, jit, batch = spec["task"], spec["path"], spec["jit"], spec["batch"]
    _, mode, trainable_eta, _ = TASKS[task]
    units = spec["units"]
    if path == "reference":  # no TensorFlow in this process
        from benchmarks import reference_torch

        return reference_torch.run(dict(spec, mode=mode, trainable_eta=trainable_eta))
    import keras
    import numpy as np

    import hebbkeras

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
        units, input_mode=mode, trainable_eta=trainable_eta, use_fused=(path != "cell"),
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
    # The message, not TensorFlow's trailer of graph node names ("\t [[{{node ...}}]]").
    lines = [line for line in err.strip().splitlines()
             if not line.startswith(("I0000", "W0000")) and not line.lstrip().startswith("[[")]
    sys.stderr.write(err[-4000:])
    return {"error": (lines or ["failed"])[-1][:200]}, math.nan


def variants():
    """`(backend, path, jit)` of every variant the flags ask for, in table order."""
    out = [("torch", "reference", "off")] if FLAGS.reference else []
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


def task_steps(task):
    """T of the task's episodes."""
    sched = TASKS[task][3]
    return sched["presentations"] * sched["num_items"] * (
        sched["presentation_steps"] + sched["gap_steps"]) + sched["query_steps"]


def make_episodes(task, batch, units, data_dir):
    """Makes the episodes in a TensorFlow process; returns `(path, computed, trace_only)`.

    computed / trace_only: the steps the fused kernel computes and the
    trace-only segments it runs (`floors.step_kinds`; "add" computes every step).
    """
    import numpy as np

    data = os.path.join(data_dir, f"{task}_{units}_{batch}.npz")
    made, _ = measure(dict(task=task, path="cell", jit="off", batch=batch,
                           backend="tensorflow", save_data=data, units=units), FLAGS.timeout)
    if "error" in made:
        sys.exit(f"error: could not make the episodes of {task}: {made['error']}")
    with np.load(data) as npz:
        x = npz["x"]
    kinds = floors.step_kinds(x) if TASKS[task][1] == "clamp" else (x.shape[1], 0)
    return data, kinds[0], kinds[1]


def header_line(bw, cache):
    """Date, load average, both bandwidths and the L3 size: the context of every number."""
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    size = f"{cache / 2**20:.0f} MB" if cache else "unknown"
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average {load} (1, 5, 15 min) on "
            f"{os.cpu_count()} cores; read + write bandwidth: L3 {bw['l3'] / 1e9:.0f} GB/s "
            f"(4 MB array), DRAM {bw['dram'] / 1e9:.1f} GB/s (256 MB array); L3 size {size}")


def print_table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = list(map(str, row)) + [""] * (len(header) - len(row))
        print("| " + " | ".join(cells) + " |")


def ratios(ref, results):
    """Per round: the reference's training (or inference) time over this variant's."""
    out = {}
    for key in ("train", "infer"):
        out[key] = [r[key] / o[key] for r, o in zip(ref, results) if key in r and key in o]
    return out


def schedule_floors(units, batch, computed, trace_only, bw, cache, group=None):
    """`(L3 floor s/ep, DRAM floor s/ep, which holds)` of the default path's schedule.

    The fused path runs the whole batch at once by default (`fused._groups`);
    with `group` episodes at a time, one group after another, the L3 floor counts
    that schedule's bytes and holds where a group's working set fits ("L3, groups
    of g"). The DRAM floor is the whole batch's at once (w and alpha once per
    step), the goal's measure.
    """
    group = min(group or batch, batch)
    l3, _, holds = floors.floors(
        floors.floor_bytes(units, batch, computed, trace_only, group=group), units, batch, bw,
        cache, group)
    _, dram, _ = floors.floors(floors.floor_bytes(units, batch, computed, trace_only), units,
                               batch, bw, cache)
    return l3, dram, holds + (f", groups of {group}" if group < batch else "")


SIDE_HEADER = ("task", "backend", "N", "T", "path", "jit", "B", "train s/ep", "infer s/ep",
               "peak GB", "x ref (train)", "L3 floor s/ep", "DRAM floor s/ep", "floor holds",
               "x L3 floor", "x DRAM floor")


def side_by_side(tasks, batches, budget, cache, data_dir):
    """The main table: every variant, `FLAGS.rounds` rounds in turn; and the ratio summary."""
    rows, summary, notes, probes = [], [], [], []
    for task in tasks:
        units, steps = task_units(task, FLAGS.units), task_steps(task)
        for batch in batches:
            data, computed, trace_only = make_episodes(task, batch, units, data_dir)
            nbytes = floors.floor_bytes(units, batch, computed, trace_only)

            def floors_at(probe):
                return schedule_floors(units, batch, computed, trace_only, probe, cache)

            runs = {v: [] for v in variants()}
            for round_ in range(FLAGS.rounds):
                for backend, path, jit in runs:
                    need = estimated_gb(path, units, steps, batch)
                    if path == "reference" and need > budget:  # its inference tells nothing
                        runs[backend, path, jit].append({"skipped": need})
                        continue
                    spec = dict(task=task, path=path, jit=jit, batch=batch, backend=backend,
                                repeats=FLAGS.repeats, train=need <= budget, data=data,
                                units=units, threads=FLAGS.reference_threads,
                                count=round_ == 0)
                    # The memory this moment allows, probed right before and right after
                    # (see the module's docstring and `floors.bracketed`).
                    before = floors.bandwidths()
                    result, peak = measure(spec, FLAGS.timeout)
                    after = floors.bandwidths()
                    probe = floors.bracketed(before, after)
                    result.update(peak=peak, need=need, bw=probe)
                    runs[backend, path, jit].append(result)
                    probes.append((before["dram"], after["dram"], probe["dram"]))
                    print(f"  round {round_ + 1}: {task} B={batch} {backend}/{path}/{jit}: "
                          + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                        for k, v in result.items() if k != "bw"})
                          + f", DRAM probe {before['dram'] / 1e9:.1f} GB/s before, "
                          f"{after['dram'] / 1e9:.1f} after (floor at "
                          f"{probe['dram'] / 1e9:.1f})", flush=True)
            ref = runs.get(("torch", "reference", "off"))
            if ref and any("skipped" in r or "error" in r for r in ref):
                ref = None
            for (backend, path, jit), results in runs.items():
                key = (task, backend, units, steps, path, jit, batch)
                errors = [r["error"] for r in results if "error" in r]
                if errors or "skipped" in results[0]:
                    rows.append(key + (errors[0] if errors else
                                       f"skipped (~{results[0]['skipped']:.3g} GB)",))
                    continue
                train = [r["train"] for r in results if "train" in r]
                tr = statistics.median(train) if train else None
                infer = statistics.median(r["infer"] for r in results)
                x_ref = ratios(ref, results)["train"] if ref and path != "reference" else []
                # Each round's time over the floors of its own probes (bracketed); the
                # floors shown are those of the median of them.
                at = [floors_at(r["bw"]) for r in results]
                l3, dram, holds = floors_at({k: statistics.median(r["bw"][k] for r in results)
                                             for k in ("l3", "dram")})
                x_l3 = [r["train"] / f[0] for r, f in zip(results, at) if "train" in r]
                x_dram = [r["train"] / f[1] for r, f in zip(results, at) if "train" in r]
                rows.append(key + (
                    f"{tr:.3f}" if tr else f"skipped (~{results[0]['need']:.0f} GB)",
                    f"{infer:.3f}", f"{max(r['peak'] for r in results):.2f}",
                    f"{statistics.median(x_ref):.2f}" if x_ref else "-",
                    f"{l3:.3g}", f"{dram:.3g}", holds,
                    f"{statistics.median(x_l3):.2f}" if tr else "-",
                    f"{statistics.median(x_dram):.2f}" if tr else "-"))
                if ref and (backend, path, jit) == OURS and x_ref:
                    both = ratios(ref, results)
                    summary.append((task, units, steps, batch,
                                    f"{statistics.median(r['train'] for r in ref):.3f}", f"{tr:.3f}",
                                    f"{statistics.median(both['train']):.2f}x",
                                    " ".join(f"{v:.2f}" for v in both["train"]),
                                    f"{statistics.median(both['infer']):.2f}x" if both["infer"] else "-"))
                if path == "reference" and "bytes" in results[0]:
                    moved = results[0]["bytes"] / batch
                    every = floors.floor_bytes(units, batch, steps, 0) / batch
                    notes.append(
                        f"reference, {task}, B={batch}: moves {moved / 1e6:.0f} MB per training "
                        f"episode (counted op by op: {moved / (steps * units * units * 4):.1f} "
                        f"passes over N x N per step); the floor of computing every step is "
                        f"{every / 1e6:.0f} MB, ours (fused, skipping clamped steps) "
                        f"{nbytes / batch / 1e6:.0f} MB")
    print()
    print_table(SIDE_HEADER, rows)
    if probes:
        def spread(values):
            return (f"{min(values) / 1e9:.1f} to {max(values) / 1e9:.1f} GB/s "
                    f"(median {statistics.median(values) / 1e9:.1f})")
        print(f"\nDRAM probe before each measurement: {spread([p[0] for p in probes])}, "
              f"after each: {spread([p[1] for p in probes])}; x floor: the median over "
              "rounds of each round's time over the mean of the floors of its two probes "
              "(a VM's share of the host's memory bandwidth moves by the minute)")
    if summary:
        print("\nSide by side (train s/ep: median over rounds; ratio: reference / ours, per round):\n")
        print_table(("task", "N", "T", "B", "reference s/ep", "ours s/ep", "ratio",
                     "ratio per round", "infer ratio"), summary)
    if notes:
        print()
        for note in notes:
            print(note)


SCALING_HEADER = ("N", "B", "T", "train s/ep", "infer s/ep", "peak GB", "floor MB/ep",
                  "L3 floor s/ep", "DRAM floor s/ep", "floor holds", "x its floor")


def scaling(budget, bw, cache, data_dir):
    """Ours (the default path) on the binary task for every N x B, against its floors."""
    steps, rows = task_steps("binary"), []
    for units in (int(n) for n in FLAGS.scaling_units):
        for batch in (int(b) for b in FLAGS.scaling_batches):
            need = estimated_gb("fused", units, steps, batch)
            if need > budget:
                rows.append((units, batch, steps, f"skipped: needs ~{need:.1f} GB, over the "
                             f"{budget:.1f} GB budget (--memory_budget_gb)"))
                print("  " + " | ".join(map(str, rows[-1])), flush=True)
                continue
            data, computed, trace_only = make_episodes("binary", batch, units, data_dir)
            backend, path, jit = OURS
            result, peak = measure(dict(task="binary", path=path, jit=jit, batch=batch,
                                        backend=backend, repeats=FLAGS.repeats, train=True,
                                        data=data, units=units), FLAGS.timeout)
            os.remove(data)
            if "error" in result:
                rows.append((units, batch, steps, result["error"]))
                continue
            nbytes = floors.floor_bytes(units, batch, computed, trace_only)
            l3, dram, holds = schedule_floors(units, batch, computed, trace_only, bw, cache)
            tr = result["train"]
            rows.append((units, batch, steps, f"{tr:.3g}", f"{result['infer']:.3g}",
                         f"{peak:.2f}", f"{nbytes / batch / 1e6:.1f}", f"{l3:.3g}",
                         f"{dram:.3g}", holds, f"{tr / (l3 if holds.startswith('L3') else dram):.1f}"))
            print("  " + " | ".join(map(str, rows[-1])), flush=True)
    print()
    print_table(SCALING_HEADER, rows)


def main(argv):
    if FLAGS.variant:
        result = run_variant(json.loads(FLAGS.variant))
        result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        print("RESULT " + json.dumps(result), flush=True)
        return
    tasks, batches = FLAGS.tasks, [int(b) for b in FLAGS.batch_sizes]
    if FLAGS.quick:
        tasks, batches = ["binary", "binary_add"], [1, 32]
        FLAGS.paths, FLAGS.jit, FLAGS.backends = ["fused"], ["off"], ["tensorflow"]
    for t in tasks:
        if t not in TASKS:
            sys.exit(f"error: unknown task {t!r}; choose from {', '.join(TASKS)}")
    if FLAGS.rounds < 1 or FLAGS.repeats < 1:
        sys.exit("error: --rounds and --repeats must be at least 1")
    budget = FLAGS.memory_budget_gb
    if budget is None:  # the estimates are rough: leave room
        budget = 0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    bw, cache = floors.bandwidths(), floors.l3_size()
    print(header_line(bw, cache), flush=True)
    if os.getloadavg()[0] > 1.0:
        print("note: other processes share the cores (load average above 1): every time is an "
              "upper bound" + ("" if FLAGS.scaling or not FLAGS.reference else
                               ", and the reference's threads wait for each other at every "
                               "operator (on 2 cores under load 7-10, 2 threads ran 10-50x "
                               "slower than 1); rerun on a quiet machine for ratios"), flush=True)
    data_dir = tempfile.mkdtemp(prefix="hebbkeras_speed_")
    try:
        if FLAGS.scaling:
            scaling(budget, bw, cache, data_dir)
        else:
            side_by_side(tasks, batches, budget, cache, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"\nload average at end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    app.run(main)
