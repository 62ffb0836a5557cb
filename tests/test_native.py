"""The native trace kernels (`hebbkeras/native`) against numpy, and their fallbacks."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from hebbkeras import native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def kernels():
    ops = native.load()
    assert ops is not None, "the native kernels did not build (see the warning)"
    return ops


def outer(u, v):
    return u[:, :, None] * v[:, None, :]


def random(rng, dtype, *shape):
    return rng.normal(size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("matrix_alpha", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_trace_update_matches_numpy(kernels, dtype, matrix_alpha, reverse):
    rng = np.random.default_rng(0)
    b, n = 3, 37
    hebb, u, v = random(rng, dtype, b, n, n), random(rng, dtype, b, n), random(rng, dtype, b, n)
    alpha = random(rng, dtype, n, n) if matrix_alpha else np.asarray(0.7, dtype)
    before = hebb.copy()
    out, q = kernels.hebbkeras_trace_update(hebb, alpha, np.asarray(0.9, dtype), u, v, reverse)
    want = 0.9 * hebb + outer(u, v)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(q, np.einsum("bi,bij->bj", v, alpha * want), rtol=tol * 10,
                               atol=tol * 10)
    np.testing.assert_array_equal(hebb, before)  # a caller's array is never overwritten


def backward_reference(hebb, g, galpha, alpha, invert, inv_u, inv_v, inv_scale, free, g_decay,
                       yp, gpre, next_u, next_v, pending, flush):
    hp = (hebb - outer(inv_u, inv_v)) * inv_scale if invert else hebb
    dot = np.sum(g * hp)
    o = outer(yp, gpre)
    g_new = g_decay * g + (alpha * o if free else 0.0)
    plastic = np.einsum("bij,bj->bi", alpha * hp, gpre) if free else np.zeros_like(yp)
    ga = np.array(galpha, copy=True)
    h = hp
    dec, pu, pv, pyp, pgp = pending
    for e in range(flush):
        term = h * outer(pyp[e], pgp[e])
        ga = ga + (term.sum(0) if ga.ndim == 2 else term.sum())
        h = dec[e] * h + outer(pu[e], pv[e])
    post = np.einsum("bi,bij->bj", next_u, g_new)
    pre = np.einsum("bij,bj->bi", g_new, next_v)
    return hp, g_new, ga, plastic, post, pre, dot


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("matrix_alpha", [True, False])
@pytest.mark.parametrize("invert,free,flush", [
    (True, True, 0), (True, False, 3), (False, True, 4), (False, False, 1), (True, True, 4),
])
def test_trace_backward_matches_numpy(kernels, dtype, matrix_alpha, invert, free, flush):
    rng = np.random.default_rng(1)
    b, n, m = 2, 29, 4
    hebb, g = random(rng, dtype, b, n, n), random(rng, dtype, b, n, n)
    alpha = random(rng, dtype, n, n) if matrix_alpha else np.asarray(0.7, dtype)
    galpha = random(rng, dtype, n, n) if matrix_alpha else np.asarray(0.3, dtype)
    vecs = [random(rng, dtype, b, n) for _ in range(6)]
    pending = (random(rng, dtype, m),) + tuple(random(rng, dtype, m, b, n) for _ in range(4))
    inv_scale, g_decay = np.asarray(1.1, dtype), np.asarray(0.95, dtype)
    args = (hebb, g, galpha, alpha, invert, vecs[0], vecs[1], inv_scale, free, g_decay,
            vecs[2], vecs[3], vecs[4], vecs[5])
    copies = [np.array(a, copy=True) for a in (hebb, g, galpha)]
    got = kernels.hebbkeras_trace_backward(*args, False, *pending, np.int32(flush))
    want = backward_reference(*args, pending, flush)
    tol = 1e-10 if dtype == "float64" else 2e-4
    for name, x, y in zip(["hebb_prev", "ghebb", "galpha", "plastic", "post", "pre", "dot"],
                          got, want):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol * max(1.0, np.abs(y).max()),
                                   err_msg=name)
    for a, c in zip((hebb, g, galpha), copies):
        np.testing.assert_array_equal(a, c)  # inputs still referenced are not overwritten


def test_bad_shapes_say_what_is_expected(kernels):
    hebb = np.zeros((2, 5, 5), "float32")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"vectors must be \(batch, N\)"):
        kernels.hebbkeras_trace_update(hebb, np.zeros((5, 5), "float32"), np.float32(1),
                                       np.zeros((2, 4), "float32"), np.zeros((2, 5), "float32"),
                                       False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="alpha must be a scalar or"):
        kernels.hebbkeras_trace_update(hebb, np.zeros((4, 4), "float32"), np.float32(1),
                                       np.zeros((2, 5), "float32"), np.zeros((2, 5), "float32"),
                                       False)


def run_fresh(code, **env):
    """Runs `code` in a fresh Python with `env` added; returns its completed process."""
    full = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=300, check=False)


LAYER_RUNS = """
    import warnings
    import numpy as np
    import hebbkeras
    from hebbkeras import native
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer = hebbkeras.PlasticRNN(6, input_mode="add", eta=0.3)
        out = layer(np.ones((2, 4, 6), "float32"))
        print("available", native.available(), "shape", tuple(out.shape))
    print("warnings", [str(w.message)[:80] for w in caught if "native" in str(w.message)])
"""


def test_without_a_compiler_the_fused_path_falls_back_and_says_so(tmp_path):
    done = run_fresh(LAYER_RUNS, CXX=str(tmp_path / "no-such-compiler"),
                     HEBBKERAS_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "available False shape (2, 6)" in done.stdout
    assert "hebbkeras: the native trace kernels are unavailable (no C++ compiler" in done.stdout


def test_hebbkeras_native_0_turns_the_kernels_off_quietly(tmp_path):
    done = run_fresh(LAYER_RUNS, HEBBKERAS_NATIVE="0", HEBBKERAS_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "available False shape (2, 6)" in done.stdout
    assert "warnings []" in done.stdout
    assert not os.listdir(tmp_path)  # nothing was built


def test_build_caches_by_source_and_tensorflow_version(tmp_path, monkeypatch):
    monkeypatch.setenv("HEBBKERAS_CACHE", str(tmp_path))
    path = native.build()
    assert os.path.dirname(path) == str(tmp_path) and os.path.exists(path)
    stamp = os.path.getmtime(path)
    assert native.build() == path and os.path.getmtime(path) == stamp  # no rebuild
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no leftovers


def test_disabled_turns_the_kernels_off_in_its_block():
    assert native.available()
    with native.disabled():
        assert not native.available()
    assert native.available()
    assert not native.available("float16")


def test_native_kernels_refuse_ojas_rule():
    from hebbkeras import fused

    x = np.zeros((1, 3, 4), "float32")
    with pytest.raises(ValueError, match="Hebbian rule only"):
        fused.plastic_sequence(x, None, x[:, 0], np.zeros((1, 4, 4), "float32"),
                               np.zeros((4, 4), "float32"), 1.0, 0.1, rule="oja", native=True)
