"""Batch groups side by side: one training batch of the binary tasks run in groups of each size.

    python -m benchmarks.groups --tasks binary,binary_add    # groups of 0 (whole batch), 1, 2
    python -m benchmarks.groups --tasks binary_add --sizes 0,1,2,4 --batch 32 --rounds 7

`fused.plastic_sequence(group=g)` runs a batch known when traced in groups of `g`
episodes, whose traces can stay in the L3 cache (`hebbkeras.kernels.groups`; the
most that fit: `group_size`); by default the whole batch runs at once. Here
one model per group size (0: the whole batch at once, the default) trains on
the same batch (N = 1001, T = 201, the episodes of `benchmarks.speed`), all in
one process, taking turns batch by batch (`--rounds`, from `benchmarks.speed`, as
`--tasks`), so load from elsewhere falls on
all of them alike; the table gives per size the median wall and CPU seconds per
episode, the median over rounds of the whole batch's time over this size's, and the
wall seconds of the first training step (tracing included: groups trace more).
The first line says the largest group that fits the cache here (`group_size`).
"""

import os
import statistics
import time
from unittest import mock

from absl import app, flags

from benchmarks import speed  # its flags too: --tasks, --rounds

flags.DEFINE_list("sizes", ["0", "1", "2"], "Episodes per group (0: the whole batch at once).")
flags.DEFINE_integer("batch", 32, "Episodes per training batch.", lower_bound=1)
flags.register_validator(
    "sizes", lambda v: all(s.isdigit() for s in v) and bool(v),
    "must be whole numbers of episodes per group, e.g. --sizes 0,1,2 (0: the whole batch)")

FLAGS = flags.FLAGS


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import hebbkeras
    from hebbkeras.kernels import fused, groups

    groups_of = fused._groups  # the layer passes no `group`: each model is traced with its size

    sizes = [int(s) for s in FLAGS.sizes]
    print(f"largest group that fits here: {groups.group_size(1001, 4)} (L3 {groups.l3_size()} "
          f"bytes, FILL {groups.FILL}); batch {FLAGS.batch}; load average at start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    print("| task | group | wall s/ep | CPU s/ep | whole batch / this (wall, CPU) | first step s |")
    print("|---|---|---|---|---|---|")
    for task in FLAGS.tasks:
        units, mode, trainable_eta, _ = speed.TASKS[task]
        x, y = speed.episode_batch(task, FLAGS.batch, units)
        models, first = {}, {}
        for size in sizes:
            keras.utils.set_random_seed(0)
            inputs = keras.Input(x.shape[1:])
            layer = hebbkeras.PlasticRNN(units, input_mode=mode, trainable_eta=trainable_eta)
            model = keras.Model(inputs, layer(inputs))
            model.compile(optimizer=keras.optimizers.Adam(1e-3),
                          loss=hebbkeras.summed_squared_error)
            start = time.perf_counter()
            with mock.patch.object(fused, "_groups", lambda y0, group, size=size: groups_of(
                    y0, size)):
                model.train_on_batch(x, y)  # traced with this group size
            first[size] = time.perf_counter() - start
            model.train_on_batch(x, y)
            models[size] = model
        wall, cpu = {s: [] for s in sizes}, {s: [] for s in sizes}
        for _ in range(FLAGS.rounds):
            for size, model in models.items():
                w, c = time.perf_counter(), time.process_time()
                model.train_on_batch(x, y)
                wall[size].append((time.perf_counter() - w) / FLAGS.batch)
                cpu[size].append((time.process_time() - c) / FLAGS.batch)
        base = sizes[0]
        for size in sizes:
            rw = statistics.median(a / b for a, b in zip(wall[base], wall[size]))
            rc = statistics.median(a / b for a, b in zip(cpu[base], cpu[size]))
            print(f"| {task} | {size} | {statistics.median(wall[size]):.3f} | "
                  f"{statistics.median(cpu[size]):.3f} | {rw:.2f}x, {rc:.2f}x | "
                  f"{first[size]:.1f} |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    app.run(main)
