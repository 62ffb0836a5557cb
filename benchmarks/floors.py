"""How fast an episode could possibly be: bytes moved, over measured bandwidths.

A training episode of the plastic network is bound by passes over `N x N`
arrays (the trace `hebb`, `w`, `alpha` and their gradients). Its floor is
the fewest bytes the math must move divided by the bandwidth of the memory
those arrays live in: the last-level cache (L3) while the working set fits
there, DRAM once it does not. Both bandwidths are measured here, as a
read + write pass (`a *= s`, in place) over a 4 MB and a 256 MB array, by
every core at once on its own slice, best of several.

The fused path runs a batch in groups whose working set fits in the L3
(`hebbkeras.kernels.groups`), one group's episode after another's: its floor is
the L3 floor of that schedule (w and alpha read once per group and step,
`floor_bytes(..., group=g)`), while the DRAM floor stays that of the whole
batch at once (w and alpha read once per step), the fewest bytes from DRAM.
"""

import math
import os
import threading
import time

from hebbkeras.kernels.groups import l3_size, working_set  # noqa: F401 (floors.l3_size)

L3_PROBE = 4 * 2**20
DRAM_PROBE = 256 * 2**20


def pass_bandwidth(nbytes, threads=None, passes=None, tries=7):
    """Bytes per second of read + write passes (`a *= s`) over `nbytes` of float32.

    Args:
        nbytes: size of the array; 4 MB stays in a 32 MB L3, 256 MB does not.
        threads: threads, each passing over its own contiguous slice
            (default: every core).
        passes: passes per timing (default: 2, or enough for 256 MB).
        tries: timings; the best one counts (the least disturbed by others).

    Returns:
        `2 * nbytes * passes / seconds` of the best timing.
    """
    import numpy as np

    threads = threads or os.cpu_count() or 1
    passes = passes or max(2, (256 * 2**20) // nbytes)
    a = np.ones(nbytes // 4, np.float32)
    slices = np.array_split(a, threads)
    scale = np.float32(1.0)  # keeps the values; the pass is what counts

    def work(s, start, times):
        np.multiply(s, scale, out=s)  # the steady state: the slice just passed over
        start.wait()
        begin = time.perf_counter()
        for _ in range(passes):
            np.multiply(s, scale, out=s)
        times.append((begin, time.perf_counter()))

    best = math.inf
    for _ in range(tries):
        start, times = threading.Barrier(threads), []
        workers = [threading.Thread(target=work, args=(s, start, times)) for s in slices]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        # From the first thread's start to the last one's end (the main thread
        # may be descheduled when they start, so it does not hold the clock).
        best = min(best, max(e for _, e in times) - min(b for b, _ in times))
    return 2 * a.nbytes * passes / best


def bandwidths():
    """`{"l3": B/s, "dram": B/s}`: the best of one thread and every core, each size."""
    out = {}
    for name, size in (("l3", L3_PROBE), ("dram", DRAM_PROBE)):
        out[name] = max(pass_bandwidth(size, threads=1),
                        pass_bandwidth(size, threads=os.cpu_count() or 1))
    return out


def bracketed(before, after):
    """One bandwidth per memory from probes taken right before and right after a
    measurement: the harmonic mean, whose floor (bytes over bandwidth) is the mean of
    the two probes' floors.

    The bandwidth during the measurement is not seen, only at its two ends; the mean
    of the two floors weighs both ends alike (half the time at each probe's speed),
    where taking the nearer probe would favour whichever end a measurement happens
    to start at, and the faster or slower of the two would be a choice of answer.

    Args:
        before, after: `{"l3": B/s, "dram": B/s}` (`bandwidths()`).

    Returns:
        `{name: 2 / (1 / before[name] + 1 / after[name])}`.
    """
    return {k: 2.0 / (1.0 / before[k] + 1.0 / after[k]) for k in before}


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


def floor_bytes(units, batch, computed, trace_only, itemsize=4, group=None):
    """The fewest bytes one training batch must move, counted from the math.

    Forward, computed step: read w and alpha once for the batch, read and
    write each episode's trace (eq. 1 and eq. 2 fused): 2 N^2 + 2 B N^2.
    Backward, computed step: read w and alpha (2 N^2), read hebb_{t+1} and
    write hebb_t, read and write its gradient (4 B N^2). A trace-only
    segment (clamped step or held run): 2 B N^2 forward, 4 B N^2 backward.
    galpha need only be written once per batch (N^2; the native kernels
    gather its terms over 16 segments). Everything of size O(B N) is left out.

    The algorithm that computes every step (the reference) has the floor
    `floor_bytes(units, batch, steps, 0)`.

    `group`: the batch runs in groups of that many episodes, one after another
    (`hebbkeras.kernels.groups`): each group reads w and alpha in each of its
    steps and writes galpha once (the sum of the groups' floors).
    """
    if group and group < batch:
        full, rest = divmod(batch, group)
        return (full * floor_bytes(units, group, computed, trace_only, itemsize)
                + (floor_bytes(units, rest, computed, trace_only, itemsize) if rest else 0))
    n2 = units * units * itemsize
    computed_bytes = (2 + 2 * batch) * n2 + (2 + 4 * batch) * n2
    trace_bytes = 6 * batch * n2
    return computed * computed_bytes + trace_only * trace_bytes + n2


def floors(nbytes, units, batch, bw, cache=None, group=None):
    """Seconds per episode at the L3 and the DRAM floor, and which one holds.

    Args:
        nbytes: bytes one batch moves (`floor_bytes`).
        units, batch: N and B (for the working set).
        bw: `bandwidths()`.
        cache: L3 bytes (default: `l3_size()`); unknown means DRAM holds.
        group: episodes that run together (default: the batch): L3 holds while
            their working set (`working_set`) fits.

    Returns:
        `(l3 s/ep, dram s/ep, "L3" or "DRAM")`.
    """
    cache = l3_size() if cache is None else cache
    holds = "L3" if cache and working_set(units, group or batch) <= cache else "DRAM"
    return nbytes / batch / bw["l3"], nbytes / batch / bw["dram"], holds
