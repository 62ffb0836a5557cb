"""Runs `hebbkeras.kernels.jax_modfused` on JAX (a fresh process: the tests' own run
the TensorFlow backend) for tests/test_jax_native.py; prints one JSON line.

    python tests/jax_native_worker.py CASES_JSON [NO_COMPILER]

Per case: native vs plain XLA. With NO_COMPILER (a path that is no compiler): then,
as where the native kernels cannot be built, the first case on the default path.
"""

import json
import os
import sys
import warnings

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hebbkeras.kernels import jax_modfused  # noqa: E402
from modulated_cases import inputs  # noqa: E402

FFI_TARGETS = ("hebbkeras_modulated_update", "hebbkeras_modulated_backward",
               "hebbkeras_modulated_chunk")


def outputs_and_grads(case, native, dtype="float64"):
    """The outputs and the gradients of every input of a probe loss, the compiled
    program's text, as numpy."""
    args = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), inputs(case))
    rng = np.random.default_rng(case["seed"] + 1)
    b, t, n = case["batch"], case["steps"], case["units"]
    probes = [jnp.asarray(rng.normal(size=s), dtype)
              for s in [(b, t, n)] + [(b, n, n)] * len(args[2])]

    def loss(*a):
        ys, traces = jax_modfused.plastic_sequence(
            *a, input_mode=case["input_mode"], rule=case["rule"],
            trace_clip=case["trace_clip"], interval=case["interval"], native=native)
        outs = (ys, *traces)
        return sum(jnp.sum(o * p) for o, p in zip(outs, probes)), outs

    fn = jax.jit(jax.grad(loss, tuple(range(7)), has_aux=True))
    text = fn.lower(*args).as_text()
    grads, outs = fn(*args)
    leaves = jax.tree_util.tree_leaves((outs, grads))
    return [np.asarray(a) for a in leaves], text


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def agree(cases):
    report, plain = [], None
    for case in cases:
        dtype = case.get("dtype", "float64")
        got, native_text = outputs_and_grads(case, True, dtype)
        want, xla_text = outputs_and_grads(case, False, dtype)
        plain = plain or want
        assert len(got) == len(want)
        clipped = float(np.mean(np.abs(got[1]) == case["trace_clip"]))  # hebb_T at the bound
        report.append(dict(
            error=max(rel(a, b) for a, b in zip(got, want)), clipped=clipped,
            native_calls=[t for t in FFI_TARGETS if t in native_text],
            xla_calls=[t for t in FFI_TARGETS if t in xla_text]))
    return report, plain


def fallback(case, plain, compiler):
    """As in a fresh process where the native kernels cannot be built (no compiler,
    an empty cache): the default path on `case`, its hebbkeras warnings, and
    whether it equals the plain path's `plain`."""
    from hebbkeras.kernels import jax_native

    os.environ.update(CXX=compiler, HEBBKERAS_CACHE=os.path.join(os.path.dirname(compiler),
                                                                 "empty-cache"))
    jax_native._loaded.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, text = outputs_and_grads(case, None, case.get("dtype", "float64"))
        again = jax_native.available(jnp.float64)
    return dict(warnings=[str(w.message) for w in caught if "hebbkeras" in str(w.message)],
                same=all(np.array_equal(a, b) for a, b in zip(got, plain, strict=True)),
                calls=[t for t in FFI_TARGETS if t in text], again=again)


if __name__ == "__main__":
    cases = json.loads(sys.argv[1])
    report, plain = agree(cases)
    out = dict(cases=report)
    if len(sys.argv) > 2:
        out["fallback"] = fallback(cases[0], plain, sys.argv[2])
    print(json.dumps(out))
