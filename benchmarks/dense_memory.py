"""Seconds and peak memory of one PlasticDense training step, keras.ops path vs fused path.

    python -m benchmarks.dense_memory                       # 512 x 512, T = 50, batch 4
    python -m benchmarks.dense_memory --width 4096 --units 4096 --steps 20 --batch 1

Each variant runs in its own process, so its peak resident memory (ru_maxrss,
TensorFlow's runtime included) is its own; "baseline" is that of a process
that builds the layer and runs no step, and "trace" the size of one
`(batch, in, units)` trace. "ops" is autodiff through the `keras.ops` step
loop (`use_fused=False`: one trace kept per step), "fused" the TensorFlow
path of `hebbkeras.kernels.dense_fused` (the trace rebuilt backwards).
"""

import json
import resource
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_integer("width", 512, "Input width `in`.")
flags.DEFINE_integer("units", 512, "Output width `units`.")
flags.DEFINE_integer("steps", 50, "Sequence length T.")
flags.DEFINE_integer("batch", 4, "Sequences per batch.")
flags.DEFINE_list("rules", ["hebb", "oja"], "Plasticity rules to run.")
flags.DEFINE_list("paths", ["ops", "fused"], "ops: autodiff through the keras.ops loop; fused: the TensorFlow path.")
flags.DEFINE_integer("repeats", 2, "Timed steps after one warm-up step.")
flags.DEFINE_string("variant", None, "Internal: run one variant (JSON) and print its result.")
FLAGS = flags.FLAGS


def run_variant(spec):
    import numpy as np
    import tensorflow as tf

    from hebbkeras.layers.plastic_dense import PlasticDense

    layer = PlasticDense(spec["units"], activation="tanh", rule=spec["rule"], eta=0.1,
                         trainable_eta=True, teacher_mode="add", teacher_scale=1.0,
                         return_sequences=True, use_fused=spec["path"] == "fused")
    rng = np.random.default_rng(0)
    shape = (spec["batch"], spec["steps"])
    x = tf.constant(rng.normal(size=shape + (spec["width"],)).astype("float32"))
    u = tf.constant(rng.normal(size=shape + (spec["units"],)).astype("float32") * 0.1)
    layer.build([x.shape, u.shape])

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer([x, u])))
        return tape.gradient(loss, layer.trainable_weights)

    seconds = None
    if spec["path"] != "baseline":
        train_step()
        start = time.perf_counter()
        for _ in range(spec["repeats"]):
            train_step()
        seconds = (time.perf_counter() - start) / spec["repeats"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print(json.dumps({"seconds": seconds, "peak_gb": peak}))


def main(argv):
    del argv
    if FLAGS.variant:
        return run_variant(json.loads(FLAGS.variant))
    trace_gb = FLAGS.batch * FLAGS.width * FLAGS.units * 4 / 1e9
    print(f"PlasticDense training step: in={FLAGS.width} units={FLAGS.units} T={FLAGS.steps} "
          f"batch={FLAGS.batch}, float32; one trace = {trace_gb:.3f} GB")
    print(f"{'rule':6} {'path':9} {'seconds':>9} {'peak GB':>8} {'over baseline GB':>17}")
    for rule in FLAGS.rules:
        base = None
        for path in ["baseline"] + FLAGS.paths:
            spec = dict(width=FLAGS.width, units=FLAGS.units, steps=FLAGS.steps,
                        batch=FLAGS.batch, rule=rule, path=path, repeats=FLAGS.repeats)
            out = subprocess.run([sys.executable, "-m", "benchmarks.dense_memory",
                                  "--variant", json.dumps(spec)], capture_output=True, text=True,
                                 check=False)
            if out.returncode:
                print(f"{rule:6} {path:9} failed (exit {out.returncode}): {out.stderr[-300:]}")
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            base = result["peak_gb"] if path == "baseline" else base
            secs = "" if result["seconds"] is None else f"{result['seconds']:.3f}"
            extra = "" if base is None else f"{result['peak_gb'] - base:.3f}"
            print(f"{rule:6} {path:9} {secs:>9} {result['peak_gb']:>8.3f} {extra:>17}", flush=True)


if __name__ == "__main__":
    app.run(main)
