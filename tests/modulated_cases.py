"""The cases and random inputs the native passes are checked on against the plain
ones (tests/test_jax_native.py through tests/jax_native_worker.py on JAX,
tests/test_xla_native.py inside TensorFlow's XLA): numpy only, no framework."""

import numpy as np

BASE = dict(seed=0, batch=3, steps=11, units=6, eta=0.3, trace_clip=0.5, interval=4)
# Both rules, with and without the fan-out, both input modes and plasticities; 11
# steps in chunks of 6 or 4 leave a padded last chunk.
CASES = [
    dict(BASE, rule="retroactive", fanout=True, input_mode="clamp", plasticity="per_connection",
         interval=6),  # E kept every 4th step (`ANCHORS`): rebuilt from the second too
    dict(BASE, rule="simple", fanout=False, input_mode="add", plasticity="shared", seed=1),
]
SLOW_CASES = [dict(CASES[0], dtype="float32")] + [
    dict(BASE, rule=r, fanout=f, input_mode=m, plasticity=p, seed=4 + i, units=17, steps=30,
         interval=None)
    for i, (r, f, m, p) in enumerate(
        (r, f, m, p) for r in ("simple", "retroactive") for f in (False, True)
        for m in ("clamp", "add") for p in ("per_connection", "shared"))]


def inputs(case):
    """Random inputs of a case: x, y0, traces, w, alpha, eta, modulator (numpy)."""
    rng = np.random.default_rng(case["seed"])
    b, t, n = case["batch"], case["steps"], case["units"]
    x = rng.normal(size=(b, t, n))
    if case["input_mode"] == "clamp":
        x = np.where(rng.random((b, t, n)) < 0.5, np.sign(x), 0.0)
        x[:, 2] = np.where(x[:, 2] == 0, 1.0, x[:, 2])  # a fully clamped step
    traces = [rng.normal(0, 0.5, (b, n, n))]
    if case["rule"] == "retroactive":
        traces.append(rng.normal(0, 0.3, (b, n, n)))
    alpha = rng.normal(size=() if case["plasticity"] == "shared" else (n, n)) / np.sqrt(n)
    modulator = [rng.normal(size=(n, 1)), rng.normal(0, 0.3, (1,))]
    if case["fanout"]:
        modulator.append(rng.normal(size=(n,)))
    return [x, 0.3 * rng.normal(size=(b, n)), traces, rng.normal(size=(n, n)) / np.sqrt(n),
            alpha, np.asarray(case["eta"]), modulator]
