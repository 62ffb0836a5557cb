"""The native passes of `jax_modfused` (XLA FFI, `hebbkeras.kernels.jax_native`)
against its plain-XLA passes, and the fallback where they cannot be built.

The plain passes are held to an independent reference in float64 (and the clip-tie
cases) by tests/test_backends.py, which runs `jax_modfused` on the native passes
(on CPU) unless HEBBKERAS_NATIVE=0. JAX runs in a fresh process
(`tests/jax_native_worker.py`): the tests' own process runs the TensorFlow backend.
"""

import json
import os
import warnings

import numpy as np
import pytest

from conftest import run_python
from hebbkeras.kernels import jax_native

WORKER = os.path.join(os.path.dirname(__file__), "jax_native_worker.py")
from modulated_cases import CASES, SLOW_CASES


def run_worker(cases, tmp_path, *args):
    out = run_python([WORKER, json.dumps(cases), *args], env={
        "HEBBKERAS_CACHE": os.environ.get("HEBBKERAS_CACHE", str(tmp_path / "cache")),
        "HEBBKERAS_NATIVE": None, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_agree(cases, report):
    for case, got in zip(cases, report, strict=True):
        # The native program calls the FFI targets, the plain one none.
        assert len(got["native_calls"]) == 3 and got["xla_calls"] == [], got
        assert got["clipped"] > 0.05, (case, got)  # the clip is active
        tolerance = 1e-4 if case.get("dtype") == "float32" else 1e-10
        assert got["error"] < tolerance, (case, got)


def test_native_and_xla_passes_agree_and_a_failed_build_falls_back(tmp_path):
    """Outputs, final traces and the gradient of every input (x, y0, hebb, E, w,
    alpha, eta, the modulator's weights and fan-out), float64, to rounding; then,
    where the kernels cannot be built, the default path is the plain one, with one
    warning that names the cause."""
    got = run_worker(CASES, tmp_path, str(tmp_path / "no-such-compiler"))
    check_agree(CASES, got["cases"])
    fallback = got["fallback"]
    assert len(fallback["warnings"]) == 1, fallback  # once per process
    assert "no C++ compiler" in fallback["warnings"][0]
    assert "plain XLA" in fallback["warnings"][0]
    assert fallback["same"] and fallback["calls"] == [] and not fallback["again"], fallback


@pytest.mark.slow
def test_native_and_xla_passes_agree_every_combination_and_float32(tmp_path):
    check_agree(SLOW_CASES, run_worker(SLOW_CASES, tmp_path)["cases"])


def test_hebbkeras_native_0_chooses_xla_quietly(monkeypatch, tmp_path):
    monkeypatch.setattr(jax_native, "_loaded", {})
    monkeypatch.setenv("HEBBKERAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HEBBKERAS_NATIVE", "0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not jax_native.available(np.float64) and not jax_native.load()
    assert [w for w in caught if "hebbkeras" in str(w.message)] == []
    assert not (tmp_path / "cache").exists()  # nothing was built


def test_build_command_and_cache_key(monkeypatch):
    """The handlers compile against jaxlib's FFI headers; the key changes with jaxlib."""
    monkeypatch.setenv("CXX", "my-c++")
    command = jax_native._build_command("/out/lib.so")
    assert command[0] == "my-c++" and jax_native._SOURCE in command
    assert command[command.index("-I") + 1] == jax_native.jax.ffi.include_dir()
    assert command[command.index("-o") + 1] == "/out/lib.so"
    path = jax_native.library_path()
    monkeypatch.setattr(jax_native.jaxlib, "__version__", "0.0.0")
    assert jax_native.library_path() != path
