"""The native passes of `xla_modfused` inside TensorFlow's XLA (the XLA FFI handlers
of `native/modulated_ffi.cc` as custom calls, `hebbkeras.kernels.xla_native`)
against its plain-XLA passes, and the fallback where they cannot be built.

The plain passes are held to an independent reference in float64 by
tests/test_rules.py and tests/test_neuromodulation.py, which run `xla_modfused`
on the native passes (on CPU) unless HEBBKERAS_NATIVE=0.
"""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from hebbkeras.kernels import cxx, xla_modfused, xla_native
from modulated_cases import CASES, SLOW_CASES, inputs

TARGETS = ("hebbkeras_modulated_update", "hebbkeras_modulated_backward",
           "hebbkeras_modulated_chunk")


def flat_inputs(case, dtype):
    """A case's inputs (`modulated_cases.inputs`), flat: x, y0, traces..., w, alpha,
    eta, modulator..."""
    x, y0, traces, w, alpha, eta, modulator = inputs(case)
    return [tf.constant(a, dtype) for a in (x, y0, *traces, w, alpha, eta, *modulator)]


def outputs_and_grads(case, native, dtype):
    """The outputs, final traces and the gradients of every input of a probe loss
    (numpy), and the compiled program's HLO text."""
    args = flat_inputs(case, dtype)
    n_traces = 2 if case["rule"] == "retroactive" else 1
    rng = np.random.default_rng(case["seed"] + 1)
    b, t, n = case["batch"], case["steps"], case["units"]
    probes = [tf.constant(rng.normal(size=s), dtype)
              for s in [(b, t, n)] + [(b, n, n)] * n_traces]

    @tf.function(jit_compile=True)
    def run(*a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            x, y0, traces = a[0], a[1], a[2:2 + n_traces]
            w, alpha, eta, *modulator = a[2 + n_traces:]
            ys, final = xla_modfused.plastic_sequence(
                x, y0, traces, w, alpha, eta, modulator, input_mode=case["input_mode"],
                rule=case["rule"], trace_clip=case["trace_clip"], interval=case["interval"],
                native=native)
            loss = sum(tf.reduce_sum(p * o) for p, o in zip(probes, (ys, *final)))
        return (ys, *final), tape.gradient(loss, a)

    outs, grads = run(*args)
    hlo = run.experimental_get_compiler_ir(*args)(stage="hlo")
    return [o.numpy() for o in (*outs, *grads)], hlo


@pytest.mark.parametrize("case", CASES + [pytest.param(c, marks=pytest.mark.slow)
                                          for c in SLOW_CASES])
def test_native_and_xla_passes_agree(case):
    """Outputs, final traces and the gradient of every input (x, y0, hebb, E, w,
    alpha, eta, the modulator's weights and fan-out), float64 to rounding, inside
    XLA; the native program calls the three handlers, the plain one none."""
    if not xla_native.available(tf.float64):
        pytest.skip("the native kernels for XLA are unavailable here")
    dtype = case.get("dtype", "float64")
    native, native_hlo = outputs_and_grads(case, True, dtype)
    plain, plain_hlo = outputs_and_grads(case, False, dtype)
    assert all(name in native_hlo for name in TARGETS)
    assert not any(name in plain_hlo for name in TARGETS)
    clipped = np.mean(np.abs(plain[1]) >= case["trace_clip"] - 1e-12)
    assert clipped > 0.05, clipped  # the clip is active on the final trace
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    for a, b in zip(native, plain, strict=True):
        assert a.shape == b.shape
        assert np.max(np.abs(a - b), initial=0.0) <= tolerance * (1 + np.max(np.abs(b))), (a, b)


def test_default_is_native_on_cpu_and_plain_where_shapes_are_unknown():
    """`native=None` picks the handlers for static shapes (what `jit_compile` traces
    with here) and the plain passes where the batch is unknown at trace time."""
    if not xla_native.available(tf.float64):
        pytest.skip("the native kernels for XLA are unavailable here")
    case = CASES[1]
    args = flat_inputs(case, "float64")

    def program(signature):
        @tf.function(jit_compile=True, input_signature=signature)
        def run(*a):
            return xla_modfused.plastic_sequence(
                a[0], a[1], a[2:3], *a[3:6], a[6:], input_mode=case["input_mode"],
                rule=case["rule"], trace_clip=case["trace_clip"])[0]
        return run.experimental_get_compiler_ir(*args)(stage="hlo")

    assert "hebbkeras_modulated_update" in program(None)
    unknown = [tf.TensorSpec([None] + a.shape[1:], a.dtype) if i < 3 else
               tf.TensorSpec(a.shape, a.dtype) for i, a in enumerate(args)]
    assert "hebbkeras_modulated_update" not in program(unknown)


def test_failed_build_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(xla_native, "_loaded", {})
    monkeypatch.setenv("HEBBKERAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not xla_native.available(tf.float64)
        assert not xla_native.available(tf.float32)  # decided once per process
    messages = [str(w.message) for w in caught if "hebbkeras" in str(w.message)]
    assert len(messages) == 1 and "no C++ compiler" in messages[0], messages
    assert "plain XLA" in messages[0]


def test_hebbkeras_native_0_and_export_choose_plain_quietly(monkeypatch, tmp_path):
    from hebbkeras.kernels import native as tf_native

    monkeypatch.setattr(xla_native, "_loaded", {})
    monkeypatch.setenv("HEBBKERAS_CACHE", str(tmp_path / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tf_native.disabled():  # what export/ traces under
            assert not xla_native.available(tf.float64)
        monkeypatch.setenv("HEBBKERAS_NATIVE", "0")
        assert not xla_native.available(tf.float64) and not xla_native.load()
        assert not xla_native.available(tf.float16)
    assert [w for w in caught if "hebbkeras" in str(w.message)] == []
    assert not (tmp_path / "cache").exists()  # nothing was built


def test_build_command_and_cache_key(monkeypatch):
    """The handlers compile against TensorFlow's FFI headers and link its framework
    library (which exports `XLA_FFI_GetApi`); the key changes with TensorFlow."""
    monkeypatch.setenv("CXX", "my-c++")
    command = xla_native._build_command("/out/lib.so")
    assert command[0] == "my-c++" and all(s in command for s in xla_native._SOURCES)
    assert command[command.index("-I") + 1] == tf.sysconfig.get_include()
    assert command[command.index("-o") + 1] == "/out/lib.so"
    assert "-l:libtensorflow_framework.so.2" in command
    path = xla_native.library_path()
    assert path.startswith(cxx.cache_dir())
    monkeypatch.setattr(xla_native.tf, "__version__", "0.0.0")
    assert xla_native.library_path() != path
