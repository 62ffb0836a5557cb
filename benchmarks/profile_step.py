"""Where one training step's time goes, op type by op type (TensorFlow's profiler).

    python -m benchmarks.profile_step --batch 32              # binary, batch 32
    python -m benchmarks.profile_step --task binary_add       # batch 1

Builds `benchmarks.batch1`'s model for the task (`train_on_batch`, N = 1001 by
default), runs two steps to trace and warm it, times three more (wall and CPU),
then profiles one step with `tf.profiler.experimental` and reads the trace it
writes (the XSpace protobuf TensorFlow ships): per op type, the calls and the
summed time of its events on the executor's threads, and each type's share of the
profiled step's wall time (ops on the two threads can overlap, so shares may sum
to more than 100%). The native trace passes are `HebbkerasTraceUpdate` (forward)
and `HebbkerasTraceBackward`.
"""

import collections
import glob
import os
import tempfile
import time

from absl import app, flags

from benchmarks.batch1 import keras_episode  # and its flags --batch, --units

flags.DEFINE_string("task", "binary", "binary (clamped inputs) or binary_add (additive inputs).")
flags.DEFINE_integer("top", 15, "Op types to list.")
FLAGS = flags.FLAGS


def op_times(logdir):
    """`{op type: [calls, seconds]}` over the executor's threads of the profile in `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    times = collections.defaultdict(lambda: [0, 0.0])
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name.split(":")[-1]
                if name in ("Process", "ParallelFor"):  # containers, not ops
                    continue
                times[name][0] += 1
                times[name][1] += event.duration_ps * 1e-12
    return times


def main(argv):
    del argv
    import tensorflow as tf

    step = keras_episode(FLAGS.task, FLAGS.units, FLAGS.batch)
    for _ in range(2):
        step()
    timed = []
    for _ in range(3):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        timed.append((time.perf_counter() - w0, time.process_time() - c0))
    print(f"{FLAGS.task}, batch {FLAGS.batch}, N {FLAGS.units}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("unprofiled steps, wall / CPU s: " + ", ".join(f"{w:.3f} / {c:.3f}" for w, c in timed))
    with tempfile.TemporaryDirectory() as logdir:
        # Level 3: every op, cheap ones too (the default level leaves most of them out).
        tf.profiler.experimental.start(
            logdir, options=tf.profiler.experimental.ProfilerOptions(host_tracer_level=3))
        w0 = time.perf_counter()
        step()
        wall = time.perf_counter() - w0
        tf.profiler.experimental.stop()
        times = op_times(logdir)
    print(f"profiled step: {wall:.3f} s wall")
    print("| op type | calls | s | share of the step |")
    print("|---|---|---|---|")
    ranked = sorted(times.items(), key=lambda kv: -kv[1][1])
    for name, (calls, seconds) in ranked[:FLAGS.top]:
        print(f"| {name} | {calls} | {seconds:.3f} | {seconds / wall:.1%} |")
    native = sum(s for name, (_, s) in times.items() if name.startswith("Hebbkeras"))
    rest = sum(s for name, (_, s) in times.items() if not name.startswith("Hebbkeras"))
    print(f"native passes {native:.3f} s ({native / wall:.1%} of the step), every other op "
          f"{rest:.3f} s ({rest / wall:.1%}); load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    app.run(main)
