"""Seconds and peak memory of a PlasticRNN training step with neuromodulation, by path.

    python -m benchmarks.modulated                  # batch 32, 128 units, T = 200
    python -m benchmarks.modulated --steps 400 --jit

Each variant runs in its own process, so its peak resident memory (ru_maxrss) is
its own: the table gives how much the peak grew over the first training steps
(after one forward pass, so tracing is mostly counted out), and the mean
seconds of the next 3 steps (`model.fit`, Adam, a dense input of width 8), in
wall-clock time and in the process's CPU time (all threads: load from other
jobs inflates it less than the wall-clock seconds).
Variants (`--variants` picks some by name): `modulation="none"` on the fused
kernel (`none`), and "simple" and "retroactive" on the fused kernel for them
(`modulated_fused`: native ops, `-plain`: plain TensorFlow ops,
HEBBKERAS_NATIVE=0; with `--jit`, `xla_modfused`), on the checkpointed scan
with autodiff per chunk (`-tf_remat`, inside and outside XLA) and on the cell
loop (`cell`: `use_fused=False`); all checkpoint every ceil(sqrt(T)) steps.

    python -m benchmarks.modulated --variants none,simple,retroactive   # the fused paths only
    python -m benchmarks.modulated --variants none,simple,retroactive --interleaved 9
    python -m benchmarks.modulated --jit --variants none,simple,retroactive --interleaved 9
    python -m benchmarks.modulated --backend jax --variants none,simple,retroactive
    python -m benchmarks.modulated --backend jax --variants none,simple,retroactive --interleaved 9

`--interleaved R` times the variants in one process instead, round robin, one
training step each per round for R rounds, and gives the median seconds and
the median over the rounds of each round's ratio to the first variant: on a
loaded machine the ratios between variants then suffer less from load that
changes between processes and between rounds (no memory column: the variants
share the process; `-plain` variants cannot be mixed with the others there).
With `--jit` and the native passes (`xla_modfused` on CPU), `model.fit`'s wall-clock
time per step is up to twice its CPU time on this 2-core machine (2026-12-06
22:15-22:24, load 2.2-3.9): over 6-step epochs 0.215 and 0.43 s per step for "simple"
and "retroactive" against 0.145 and 0.22 CPU s, where on the plain passes wall and CPU
time agree; and a one-step `fit` took 0.33 s for "simple" on either passes, against
0.08-0.14 s (native) and 0.175 s (plain) by `train_on_batch`. The excess is waiting, on
the same compiled step that `train_on_batch` runs without it; the cause is not found.
At load 0.6-0.9 (22:37, 6-step epochs of "retroactive", a scratch script) the wait is
gone: `fit` 0.106-0.116 s wall and 0.19-0.20 CPU s per step, `train_on_batch` 0.10 and
0.18; so it comes with load from other processes (a guess, not verified: each native
call, about 400 a step, waits for the pool thread that took a row block, and under `fit`
tf.data's prefetch thread competes for the two cores with those threads). A
`tf.data.Dataset` with a partial last batch (batch dimension unknown when traced) runs
the plain passes: 0.42 s wall, 0.53-0.55 CPU s per step; `drop_remainder=True` 0.10-0.18 s.
`--train_on_batch` times that step alone:

    python -m benchmarks.modulated --jit --variants none,simple,retroactive \
        --interleaved 9 --train_on_batch
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_integer("units", 128, "Neurons N.")
flags.DEFINE_integer("steps", 200, "Sequence length T.")
flags.DEFINE_integer("batch", 32, "Sequences per batch.")
flags.DEFINE_bool("jit", False, "Compile the train step with XLA (jit_compile=True).")
flags.DEFINE_enum("backend", "tensorflow", ["tensorflow", "jax"],
                  "Keras backend of the variants (jax: 'none' runs jax_fused, the modulated "
                  "rules jax_modfused; XLA always; the -plain and -tf_remat variants do not "
                  "apply).")
flags.DEFINE_list("variants", None, "Run only these variants (names as in the table's first "
                  "column, e.g. none,simple,retroactive-tf_remat); default: all.")
flags.DEFINE_integer("interleaved", 0, "Time the variants round robin in one process for this "
                     "many rounds (median s/step); 0: one process per variant, mean of 3 steps.")
flags.DEFINE_bool("train_on_batch", False, "With --interleaved: time `model.train_on_batch` (the "
                  "compiled step alone) instead of `model.fit(epochs=1)`, whose tf.data epoch "
                  "adds a wait to the modulated variants' wall time (see the docstring).")
flags.DEFINE_string("variant", None, "Internal: run one variant (JSON) and print its result.")
FLAGS = flags.FLAGS
# name: (modulation, use_fused, how: "native", "plain" (HEBBKERAS_NATIVE=0) or "tf_remat").
VARIANTS = {
    "none": ("none", True, "native"),
    "simple": ("simple", True, "native"),
    "retroactive": ("retroactive", True, "native"),
    "simple-plain": ("simple", True, "plain"),
    "retroactive-plain": ("retroactive", True, "plain"),
    "simple-tf_remat": ("simple", True, "tf_remat"),
    "retroactive-tf_remat": ("retroactive", True, "tf_remat"),
    "simple-cell": ("simple", False, "native"),
    "retroactive-cell": ("retroactive", False, "native"),
}


def build(spec):
    """The variant's compiled model, its data, and its layer."""
    import keras
    import numpy as np

    import hebbkeras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(spec["batch"], spec["steps"], 8)).astype("float32")
    y = rng.normal(size=(spec["batch"], spec["units"])).astype("float32")
    inputs = keras.Input((spec["steps"], 8))
    layer = hebbkeras.PlasticRNN(spec["units"], input_mode="dense",
                                 modulation=spec["modulation"], use_fused=spec["fused"])
    model = keras.Model(inputs, layer(inputs))
    model.compile("adam", "mse", jit_compile=spec["jit"] or keras.backend.backend() == "jax")
    return model, x, y, layer


def use_fallback(dispatch, spec):
    """The modulated rules' kernels for `spec`: `tf_remat` inside and outside XLA for
    the `-tf_remat` variants, else `modulated_fused` and, inside XLA, `xla_modfused`."""
    remat = spec["how"] == "tf_remat"
    dispatch.FALLBACK["fused"] = "tf_remat" if remat else "modulated_fused"
    dispatch.FALLBACK["xla_fused"] = "tf_remat" if remat else "xla_modfused"


def run_variant(spec):
    from hebbkeras.kernels import dispatch

    use_fallback(dispatch, spec)
    model, x, y, layer = build(spec)
    model.predict(x, verbose=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.fit(x, y, epochs=1, verbose=0, batch_size=len(x))
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, epochs=3, verbose=0, batch_size=len(x))
    seconds = (time.perf_counter() - start) / 3
    cpu = (time.process_time() - cpu) / 3
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"path": layer.last_path.kernel, "seconds": seconds, "cpu": cpu,
            "peak_mib": grown / 1024}


def interleaved(names, specs, rounds, on_batch=False):
    """Per variant: median seconds and CPU seconds of one training step, timed round
    robin, and the medians over the rounds of each round's ratios to the first variant."""
    import statistics

    from hebbkeras.kernels import dispatch

    built, times, cpus = [], {name: [] for name in names}, {name: [] for name in names}
    for name, spec in zip(names, specs):
        use_fallback(dispatch, spec)
        model, x, y, layer = build(spec)
        model.fit(x, y, epochs=1, verbose=0, batch_size=len(x))  # traced with this FALLBACK
        if on_batch:
            model.train_on_batch(x, y)  # its own function, traced here too
        built.append((name, model, x, y, layer.last_path.kernel))
    for _ in range(rounds):
        for name, model, x, y, _ in built:
            start, cpu = time.perf_counter(), time.process_time()
            if on_batch:
                model.train_on_batch(x, y)
            else:
                model.fit(x, y, epochs=1, verbose=0, batch_size=len(x))
            times[name].append(time.perf_counter() - start)
            cpus[name].append(time.process_time() - cpu)
    first = names[0]
    return [(name, path, statistics.median(times[name]), median_ratio(times[name], times[first]),
             statistics.median(cpus[name]), median_ratio(cpus[name], cpus[first]))
            for name, _, _, _, path in built]


def median_ratio(seconds, first):
    """The median over the rounds of `seconds[r] / first[r]` (round r's ratio to the
    first variant; load that changes between rounds falls on both)."""
    import statistics

    return statistics.median(a / b for a, b in zip(seconds, first, strict=True))


def main(argv):
    del argv
    if FLAGS.variant:
        print(json.dumps(run_variant(json.loads(FLAGS.variant))))
        return
    names = FLAGS.variants or [n for n in VARIANTS if FLAGS.backend == "tensorflow" or (
        VARIANTS[n][2] == "native")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if FLAGS.backend == "jax" and any(VARIANTS[n][2] != "native" for n in names):
        raise app.UsageError("--backend jax: no -plain or -tf_remat variants")
    if FLAGS.interleaved:  # the variants share this process, and so its backend
        os.environ["KERAS_BACKEND"] = FLAGS.backend
    print(f"{FLAGS.backend}, batch {FLAGS.batch}, {FLAGS.units} units, T = {FLAGS.steps}, "
          f"jit {FLAGS.jit}, "
          f"load average {open('/proc/loadavg').read().split()[:3]}")
    specs = [dict(modulation=VARIANTS[n][0], fused=VARIANTS[n][1], how=VARIANTS[n][2],
                  units=FLAGS.units, steps=FLAGS.steps, batch=FLAGS.batch, jit=FLAGS.jit)
             for n in names]
    if FLAGS.interleaved:
        if len({s["how"] == "plain" for s in specs}) > 1:
            raise app.UsageError("--interleaved: -plain variants run alone (HEBBKERAS_NATIVE=0)")
        if specs[0]["how"] == "plain":
            os.environ["HEBBKERAS_NATIVE"] = "0"
        print(f"| variant | path | median s/step over {FLAGS.interleaved} rounds | vs the first "
              "| CPU s/step | vs the first |\n|---|---|---|---|---|---|")
        for name, path, seconds, ratio, cpu, cpu_ratio in interleaved(
                names, specs, FLAGS.interleaved, FLAGS.train_on_batch):
            print(f"| {name} | {path} | {seconds:.3f} | {ratio:.2f}x | {cpu:.3f} | "
                  f"{cpu_ratio:.2f}x |")
        print(f"load average after: {open('/proc/loadavg').read().split()[:3]}")
        return
    print("| variant | modulation | path | s/step | CPU s/step | peak RSS growth (MiB) |\n"
          "|---|---|---|---|---|---|")
    for name in names:
        modulation, fused, how = VARIANTS[name]
        spec = dict(modulation=modulation, fused=fused, how=how, units=FLAGS.units,
                    steps=FLAGS.steps, batch=FLAGS.batch, jit=FLAGS.jit)
        env = dict(os.environ, KERAS_BACKEND=FLAGS.backend,
                   **({"HEBBKERAS_NATIVE": "0"} if how == "plain" else {}))
        out = subprocess.run([sys.executable, "-m", "benchmarks.modulated", "--variant",
                              json.dumps(spec)], capture_output=True, text=True, check=True,
                             env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {modulation} | {r['path']} | {r['seconds']:.3f} | {r['cpu']:.3f} | "
              f"{r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    app.run(main)
