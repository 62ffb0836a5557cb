"""Batch groups that keep a training step's traces in the last-level cache.

Episodes of a batch share only `w`, `alpha` and `eta` (read going forward)
and their gradients (summed). The fused kernel runs each step over the whole
batch, so at batch 32 and N = 1001 its 32 traces (4 MB each in float32) and
their gradients stream from DRAM in every step. Run in groups of `g`
episodes, one group's whole episode forward and backward before the next
group starts, the group's working set stays in the cache through its steps:
going back, `w`, `alpha`, `alpha`'s gradient and per episode the trace and
its gradient, `(3 + 2 g) N^2` numbers (the forward pass needs fewer). Each
group reads `w` and `alpha` once per step for its episodes, so the largest
group that fits is the best.
"""

import glob
import os

# The share of the cache a group's working set may fill: the rest is for the
# stored traces written on the way, the outputs and other processes. On the
# 2-core, 32 MB L3 machine (2026-12-06, BENCHMARKS.md; binary_add, B = 32,
# N = 1001, over the whole batch at once) groups of 1 (20 MB) and of 2 (28 MB)
# ran 1.31x and 1.36x faster in wall time when quiet, 1.59x and 1.46x in CPU
# time; under load groups of 2 lost (1.04x against 1.41x): so groups of 1. Since the
# native passes over DRAM gained 256-bit vectors and prefetching (2026-12-06 late
# night) the whole batch at once is faster in wall time, and `fused` runs groups only
# where a caller asks (`group=`).
FILL = 0.75


def l3_size(root="/sys/devices/system/cpu/cpu0/cache"):
    """Bytes of the largest cache of level 3 or more, as /sys lists it; None where unknown."""
    best = None
    for index in glob.glob(os.path.join(root, "index*")):
        try:
            with open(os.path.join(index, "level")) as f:
                level = int(f.read())
            with open(os.path.join(index, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        size = int(text.rstrip("KMG")) * unit
        if level >= 3 and (best is None or size > best):
            best = size
    return best


_CACHE = {}


def working_set(units, group, itemsize=4):
    """Bytes a group of `group` episodes keeps hot going back: `w`, `alpha`, `alpha`'s
    gradient and each episode's trace and its gradient, `(3 + 2 g) N^2 * itemsize`."""
    return (3 + 2 * group) * units * units * itemsize


def group_size(units, itemsize, cache=None):
    """Episodes per group: the most whose backward working set, `(3 + 2 g) N^2 * itemsize`
    bytes, fits in `FILL` of the cache; None where none fits or the cache is unknown.

    Args:
        units: N.
        itemsize: bytes per number (4 for float32).
        cache: the cache's bytes (default: `l3_size()`, read once).
    """
    if cache is None:
        if "l3" not in _CACHE:
            _CACHE["l3"] = l3_size()
        cache = _CACHE["l3"]
    if not cache:
        return None
    g = 0
    while working_set(units, g + 1, itemsize) <= FILL * cache:
        g += 1
    return g or None


def split(batch, size):
    """The groups' `(start, length)` for a batch of `batch` in groups of `size`: the last
    one is shorter where `size` does not divide `batch`; one group where size is None."""
    if not size or size >= batch:
        return [(0, batch)]
    return [(s, min(size, batch - s)) for s in range(0, batch, size)]
