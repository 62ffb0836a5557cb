"""Each kind of native trace pass at one batch size, against a plain read + write pass.

    python -m benchmarks.passes                  # batch 32, N = 1001, 3 rounds
    python -m benchmarks.passes --batch 1 --rounds 5
    python -m benchmarks.passes --only "free step,forward"   # some of the passes

Times the two ops of `hebbkeras/kernels/native/hebb_ops.cc` on random
`(batch, N, N)` traces, one case per kind of call the fused path makes (the
forward update with and without the next pre-activation `q`; the backward pass
of a clamped and of a free step, with an absorbed segment, after one, with a
queue of 16 slots applied, with a queue of one slot), each as 8 calls inside
one `tf.while_loop` that carries the trace and its gradient (so both are
updated in place, as in training). The
reference is a read + write pass over the trace's bytes at the bandwidth that
`floors.pass_bandwidth` measures over 256 MB on every core (the DRAM floor's): the
table gives wall and CPU milliseconds per call (CPU: all threads), the bytes
of trace (and gradient) each call reads and writes, and the call's wall time
over that many reference passes (the fastest reference pass of the run). On a
loaded machine the CPU column means more than the wall column (the op's threads
wait for cores).
"""

import os
import time

from absl import app, flags

flags.DEFINE_integer("batch", 32, "Episodes (B).")
flags.DEFINE_integer("units", 1001, "N.")
flags.DEFINE_integer("rounds", 3, "Rounds (the fastest counts).")
flags.DEFINE_list("only", [], "Run only the passes whose names contain one of these words.")
FLAGS = flags.FLAGS

CALLS = 8


def cases(lib, b, n):
    """`{name: (fn(hebb) -> hebb, arrays read + written, queue slots)}`."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def f(*shape):
        return tf.constant(rng.standard_normal(shape).astype(np.float32) * 0.1)

    ck, alpha, w, galpha = f(b, n, n), f(n, n), f(n, n), f(n, n)
    vecs = [f(b, n) for _ in range(12)]
    one, yes, no = tf.constant(1.0), tf.constant(True), tf.constant(False)

    def update(need_q):
        return lambda h, g: (lib.hebbkeras_trace_update(h, alpha, w, tf.constant(0.99), vecs[0],
                                                        vecs[1], no, need_q)[0], g)

    def backward(free=yes, count=0, slots=16, absorb=no, lagged=no, gscale=1.0):
        pend_dec, pend = tf.ones([slots]), f(slots, 4, b, n)

        def run(h, g):
            return lib.hebbkeras_trace_backward(
                h, g, galpha, alpha, w, ck, yes, vecs[0], vecs[1], one, free,
                tf.constant(0.99), vecs[2], vecs[3], vecs[4], vecs[5], no, pend_dec, pend,
                tf.constant(count), no, no, vecs[6], vecs[7], one, lagged,
                tf.constant(gscale), absorb, vecs[8], vecs[9], one, one, vecs[10],
                vecs[11])[:2]
        return run

    return {  # each `fn(hebb, ghebb) -> (hebb, ghebb)`
        "forward, q": (update(yes), 2),
        "forward, no q (next step clamped)": (update(no), 2),
        "backward, clamped step": (backward(free=no), 4),
        "backward, free step": (backward(), 4),
        "backward, free, absorbs a clamped segment": (backward(absorb=yes), 4),
        "backward, free, after an absorbed segment": (backward(lagged=yes, gscale=0.9), 4),
        "backward, free, applies a queue of 16": (backward(count=15), 4),
        "backward, free, a queue of 1 (batch >= 4)": (backward(slots=1), 4),
    }


def looped(fn, hebb):
    """`run(hebb)`: CALLS calls of `fn` in a loop that carries the trace and its gradient
    (each a buffer of its own, updated in place as in training)."""
    import tensorflow as tf

    @tf.function
    def run(h):
        h, g = tf.identity(h) * 1.0, tf.identity(h) * 0.5
        return tf.while_loop(lambda i, h, g: i < CALLS, lambda i, h, g: (i + 1, *fn(h, g)),
                             (0, h, g))[1]

    run(hebb)
    return run


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from benchmarks import floors
    from hebbkeras import rules
    from hebbkeras.kernels import native

    lib = native.implementation(rules.get("hebb"))
    b, n = FLAGS.batch, FLAGS.units
    nbytes = b * n * n * 4
    hebb = tf.constant(np.random.default_rng(1).standard_normal((b, n, n)).astype(np.float32))
    print(f"batch {b}, N {n}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows, ref = [], np.inf
    for name, (fn, arrays) in cases(lib, b, n).items():
        if FLAGS.only and not any(word in name for word in FLAGS.only):
            continue
        run = looped(fn, hebb)
        best, cpu = np.inf, np.inf
        for _ in range(FLAGS.rounds):
            ref = min(ref, 2 * nbytes / floors.pass_bandwidth(floors.DRAM_PROBE, tries=1))
            w0, c0 = time.perf_counter(), time.process_time()
            run(hebb).numpy()
            best = min(best, (time.perf_counter() - w0) / CALLS)
            cpu = min(cpu, (time.process_time() - c0) / CALLS)
        rows.append((name, arrays, best, cpu))
    print("| pass | trace arrays read + written | wall ms | CPU ms | x reference pass (wall) |")
    print("|---|---|---|---|---|")
    for name, arrays, best, cpu in rows:  # against the fastest reference pass of the run
        print(f"| {name} | {arrays} | {best * 1e3:.2f} | {cpu * 1e3:.2f} | "
              f"{best / (ref * arrays / 2):.2f} |")
    print(f"reference: one read + write pass over {nbytes / 2**20:.0f} MB at the DRAM probe's "
          f"bandwidth ({2 * nbytes / ref / 1e9:.1f} GB/s), "
          f"{ref * 1e3:.1f} ms (the fastest of the run); load average at the end "
          f"{os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    app.run(main)
