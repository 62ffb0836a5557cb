"""The native trace kernels (`hebbkeras/kernels/native`) against numpy, and their fallbacks."""

import errno
import os
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

import hebbkeras
from hebbkeras.kernels import cxx, native


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
@pytest.mark.parametrize("need_q", [True, False])
@pytest.mark.parametrize("b,n", [(3, 37), (4, 130)])  # from batch 4: 4 row blocks per thread
def test_trace_update_matches_numpy(kernels, dtype, matrix_alpha, reverse, need_q, b, n):
    rng = np.random.default_rng(0)
    hebb, u, v = random(rng, dtype, b, n, n), random(rng, dtype, b, n), random(rng, dtype, b, n)
    alpha = random(rng, dtype, n, n) if matrix_alpha else np.asarray(0.7, dtype)
    w = random(rng, dtype, n, n)
    before = hebb.copy()
    out, q = kernels.hebbkeras_trace_update(hebb, alpha, w, np.asarray(0.9, dtype), u, v,
                                            reverse, need_q)
    want = 0.9 * hebb + outer(u, v)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    want_q = np.einsum("bi,bij->bj", v, w + alpha * want) if need_q else np.zeros_like(v)
    np.testing.assert_allclose(q, want_q, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_array_equal(hebb, before)  # a caller's array is never overwritten


def apply_queue(ga, h, queue):
    """alpha's gradient terms of the waiting segments, the earliest (last) first, from
    `h` the trace before it, rebuilding each later trace."""
    for dec, u, v, pyp, pgp in reversed(queue):
        term = h * outer(pyp, pgp)
        ga = ga + (term.sum(0) if ga.ndim == 2 else term.sum())
        h = dec * h + outer(u, v)
    return ga


def backward_reference(hebb, g, galpha, alpha, w, ckpt, invert, inv_u, inv_v, inv_scale, free,
                       g_decay, yp, gpre, next_u, next_v, queue, capacity, final, self_post,
                       lag, absorb):
    """The op's outputs from the equations in hebb_ops.cc; `queue` the waiting
    segments `(decay, u, v, yp, gpre)`, the earliest in time last; `lag` the
    inputs `(lag_u, lag_v, lag_scale, lagged, lag_gscale)`; `absorb` None or
    `(ab_u, ab_v, ab_scale, ab_gdec, ab_nu, ab_nv)`, the next segment absorbed."""
    lag_u, lag_v, lag_scale, lagged, gscale = lag
    if lagged:  # hebb and g are after the later segment, absorbed by the previous call
        hebb = (hebb - outer(lag_u, lag_v)) * lag_scale
    g = gscale * g
    want_self = (np.einsum("bi,bij->bj", inv_v, g) if self_post and not final
                 else np.zeros_like(yp))
    hp = (hebb - outer(inv_u, inv_v)) * inv_scale if invert else ckpt
    if final:  # only the queue is applied
        g_new, dot, plastic = g, 0.0, np.zeros_like(yp)
    else:
        dot = np.sum(g * hp)
        g_new = g_decay * g + (alpha * outer(yp, gpre) if free else 0.0)
        plastic = np.einsum("bij,bj->bi", w + alpha * hp, gpre) if free else np.zeros_like(yp)
    queue = list(queue)
    if not final and (free or queue):
        queue.append((g_decay, inv_u, inv_v, yp, gpre))
    ga = np.array(galpha, copy=True)
    zero = np.zeros_like(yp)
    absorbed = (0.0, zero, zero, zero, zero)
    if final or len(queue) == capacity:
        ga, queue = apply_queue(ga, hp, queue), []
    elif absorb is not None and queue:  # the absorbed segment's slot: its trace update only
        ab_u, ab_v, _, ab_gdec, _, _ = absorb
        queue.append((ab_gdec, ab_u, ab_v, zero, zero))
    if absorb is not None and not final:
        ab_u, ab_v, ab_scale, ab_gdec, ab_nu, ab_nv = absorb
        h2 = (hp - outer(ab_u, ab_v)) * ab_scale
        if len(queue) == capacity:
            ga, queue = apply_queue(ga, h2, queue), []
        g2 = ab_gdec * g_new
        absorbed = (np.sum(g_new * h2), np.einsum("bi,bij->bj", ab_v, g_new),
                    np.einsum("bi,bij->bj", ab_nu, g2), np.einsum("bij,bj->bi", g2, ab_nv))
    post = np.einsum("bi,bij->bj", next_u, g_new) if not final else np.zeros_like(yp)
    pre = np.einsum("bij,bj->bi", g_new, next_v) if not final else np.zeros_like(yp)
    return (hp, g_new, ga, plastic, post, pre, dot, want_self) + tuple(absorbed[:4]), queue


# The backward op's cases: (invert, free, count, final, self_post, lagged, absorb).
BACKWARD_CASES = [
    (True, True, 0, False, False, False, False), (True, False, 3, False, True, True, False),
    (False, True, 3, False, False, True, False), (False, False, 0, False, True, False, False),
    (False, False, 1, False, False, False, False), (True, True, 2, True, True, False, False),
    (True, True, 3, False, True, False, False),
    (True, True, 0, False, False, True, True),   # absorbed: its slot after this one's
    (True, True, 2, False, False, False, True),  # ... which fills the queue: flushed from H2
    (True, True, 3, False, False, True, True),   # flushed before the absorbed slot
    (False, False, 0, False, False, False, True),  # nothing waits: no slot for either
]


# Each case with a queue of 4 slots, and those with none waiting (count 0) also with
# one slot, fused.py's queue from batch 4 (a free step's own term added in its pass's
# main loop).
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("matrix_alpha", [True, False])
@pytest.mark.parametrize("invert,free,count,final,self_post,lagged,absorb,m", [
    case + (m,) for case in BACKWARD_CASES for m in (4, 1) if case[2] < m])
@pytest.mark.parametrize("b,n", [(2, 29), (4, 130)])  # from batch 4: 4 row blocks per thread
def test_trace_backward_matches_numpy(kernels, dtype, matrix_alpha, invert, free, count, final,
                                      self_post, lagged, absorb, m, b, n):
    rng = np.random.default_rng(1)
    hebb, g, ckpt = (random(rng, dtype, b, n, n) for _ in range(3))
    alpha = random(rng, dtype, n, n) if matrix_alpha else np.asarray(0.7, dtype)
    galpha = random(rng, dtype, n, n) if matrix_alpha else np.asarray(0.3, dtype)
    w = random(rng, dtype, n, n)
    vecs = [random(rng, dtype, b, n) for _ in range(12)]
    pend_dec, pend = random(rng, dtype, m), random(rng, dtype, m, 4, b, n)  # slots >= count unused
    if m > 1:
        pend[1, 3] = 0.0  # a fully clamped segment's slot: no gpre, only its trace update
    queue = [(pend_dec[e], *pend[e]) for e in range(count)]
    inv_scale, g_decay = np.asarray(1.1, dtype), np.asarray(0.95, dtype)
    args = (hebb, g, galpha, alpha, w, ckpt, invert, vecs[0], vecs[1], inv_scale, free, g_decay,
            vecs[2], vecs[3], vecs[4], vecs[5])
    lag = (vecs[6], vecs[7], np.asarray(1.05, dtype), lagged,
           np.asarray(0.9 if lagged else 1.0, dtype))
    ab = (vecs[8], vecs[9], np.asarray(1.2, dtype), np.asarray(0.85, dtype), vecs[10], vecs[11])
    copies = [np.array(a, copy=True) for a in (hebb, g, galpha, ckpt, pend)]
    got = kernels.hebbkeras_trace_backward(*args, False, pend_dec, pend, np.int32(count), final,
                                           self_post, *lag, absorb, *ab)
    want, queue = backward_reference(*args, queue, m, final, self_post, lag,
                                     ab if absorb else None)
    tol = 1e-10 if dtype == "float64" else 2e-4
    names = ["hebb_prev", "ghebb", "galpha", "plastic", "post", "pre", "dot", "post_self",
             "dot2", "post_self2", "post2", "pre2"]
    for name, x, y in zip(names, list(got[:7]) + list(got[10:]), want):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol * max(1.0, np.abs(y).max()),
                                   err_msg=name)
    assert int(got[9]) == len(queue)
    for e, (dec, *entry) in enumerate(queue):
        np.testing.assert_array_equal(got[7][e], dec)
        np.testing.assert_array_equal(got[8][e], np.stack(entry))
    for a, c in zip((hebb, g, galpha, ckpt, pend), copies):
        np.testing.assert_array_equal(a, c)  # inputs still referenced are not overwritten


def test_bad_shapes_say_what_is_expected(kernels):
    hebb, m = np.zeros((2, 5, 5), "float32"), np.zeros((5, 5), "float32")
    vec = np.zeros((2, 5), "float32")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"vectors must be \(batch, N\)"):
        kernels.hebbkeras_trace_update(hebb, m, m, np.float32(1), np.zeros((2, 4), "float32"),
                                       vec, False, True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="alpha must be a scalar or"):
        kernels.hebbkeras_trace_update(hebb, np.zeros((4, 4), "float32"), m, np.float32(1), vec,
                                       vec, False, True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"w must be \(N, N\)"):
        kernels.hebbkeras_trace_update(hebb, m, np.zeros((5, 4), "float32"), np.float32(1), vec,
                                       vec, False, True)


@pytest.fixture
def fresh_load(monkeypatch, tmp_path):
    """`native.load()` as on first use in a fresh process, with the cache in
    `tmp_path / "cache"`; the loaded ops come back after the test."""
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("HEBBKERAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HEBBKERAS_NATIVE", raising=False)
    return tmp_path / "cache"


def fake_compiler(calls):
    """A `_build_command` whose "compiler" writes a stand-in library, counting calls."""
    def command(output):
        calls.append(output)
        return [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write('so')", output]
    return command


def warned(fn):
    """`fn()`'s result and the messages of the hebbkeras warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in caught if "hebbkeras" in str(w.message)]


@pytest.mark.native_cpu
def test_without_a_compiler_the_fused_path_falls_back_and_says_so(fresh_load, monkeypatch):
    monkeypatch.setenv("CXX", str(fresh_load.parent / "no-such-compiler"))
    x = np.random.default_rng(0).normal(0, 0.1, (2, 4, 6)).astype("float32")
    layer = hebbkeras.PlasticRNN(6, input_mode="add", eta=0.3)
    out, messages = warned(lambda: layer(x))
    assert not native.available()
    assert len(messages) == 1 and "no C++ compiler" in messages[0], messages
    reference = hebbkeras.PlasticRNN(6, input_mode="add", eta=0.3, use_fused=False)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    np.testing.assert_allclose(out, reference(x), rtol=1e-5, atol=1e-6)
    assert warned(lambda: layer(x))[1] == []  # once per process


def test_hebbkeras_native_0_turns_the_kernels_off_quietly(fresh_load, monkeypatch):
    monkeypatch.setenv("HEBBKERAS_NATIVE", "0")
    out, messages = warned(lambda: hebbkeras.PlasticRNN(6, input_mode="add")(
        np.ones((2, 4, 6), "float32")))
    assert out.shape == (2, 6) and not native.available() and native.load() is None
    assert messages == []
    assert not fresh_load.exists()  # nothing was built


def read_only_cache(tmp_path, monkeypatch):
    """A cache directory that cannot be written: read-only, or (as root, who may
    write anyway) refused by the file system as a read-only one would be."""
    cache = tmp_path / "cache"
    cache.mkdir()
    if os.geteuid() == 0:
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(cxx.tempfile, "mkstemp", refuse)
    else:
        cache.chmod(0o500)
    return cache


@pytest.mark.parametrize("case", ["read_only", "under_a_file"])
def test_unwritable_cache_is_named_as_the_cause(case, fresh_load, monkeypatch, tmp_path):
    """Was: "Install g++ (or set CXX) to build them" when the compiler was fine."""
    if case == "read_only":
        cache = read_only_cache(tmp_path, monkeypatch)
    else:
        (tmp_path / "a_file").write_text("")
        cache = tmp_path / "a_file" / "cache"
    monkeypatch.setenv("HEBBKERAS_CACHE", str(cache))
    calls = []
    monkeypatch.setattr(native, "_build_command", fake_compiler(calls))
    ops, messages = warned(native._load)
    assert ops is None and len(messages) == 1, messages
    assert f"the cache directory {str(cache)!r} cannot be written" in messages[0]
    assert "set HEBBKERAS_CACHE to a writable directory" in messages[0]
    assert "compiler" not in messages[0] and "g++" not in messages[0]
    assert calls == []


@pytest.mark.parametrize("case", ["missing", "failing"])
def test_compiler_problems_are_named_as_the_cause(case, fresh_load, monkeypatch, tmp_path):
    if case == "missing":
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
        want = f"no C++ compiler {str(tmp_path / 'no-such-compiler')!r} found; install g++"
    else:
        script = tmp_path / "broken-cxx"
        script.write_text("#!/bin/sh\necho 'hebb_ops.cc:1: error: broken' >&2\nexit 3\n")
        script.chmod(0o755)
        monkeypatch.setenv("CXX", str(script))
        want = "failed (" + str(script) + " exit 3"
    ops, messages = warned(native._load)
    assert ops is None and len(messages) == 1, messages
    assert want in messages[0] and "HEBBKERAS_CACHE" not in messages[0]
    assert "set CXX" in messages[0]
    if case == "failing":
        assert messages[0].endswith("hebb_ops.cc:1: error: broken\n")  # the compiler's own words
    assert os.listdir(fresh_load) == []  # no half-written library left


def test_build_caches_by_source_tensorflow_version_and_cpu(fresh_load, monkeypatch, tmp_path):
    """The cache key changes with each of its inputs; a cached library is not rebuilt."""
    calls = []
    monkeypatch.setattr(native, "_build_command", fake_compiler(calls))
    path = native.build()
    assert os.path.dirname(path) == str(fresh_load) and open(path).read() == "so"
    assert len(calls) == 1 and os.path.dirname(calls[0]) == str(fresh_load)  # a temp name
    assert native.build() == path and len(calls) == 1  # no rebuild
    assert os.listdir(fresh_load) == [os.path.basename(path)]  # no leftovers

    source = tmp_path / "hebb_ops.cc"
    source.write_bytes(open(native._SOURCE, "rb").read())
    monkeypatch.setattr(native, "_SOURCE", str(source))
    assert native.library_path() == path  # same bytes, same key
    source.write_bytes(source.read_bytes() + b"// changed\n")
    changed = native.library_path()
    with monkeypatch.context() as m:
        m.setattr(native.tf, "__version__", native.tf.__version__ + ".post1")
        other_tf = native.library_path()
        m.setattr(native, "_cpu", lambda: "another-cpu")
        other_cpu = native.library_path()
    keys = {path, changed, other_tf, other_cpu}
    assert len(keys) == 4 and all(os.path.dirname(k) == str(fresh_load) for k in keys)
    assert native.build() == changed and len(calls) == 2  # a new source is built


def test_build_command_compiles_the_source_against_this_tensorflow(monkeypatch):
    monkeypatch.setenv("CXX", "my-c++")
    command = native._build_command("/out/lib.so")
    assert command[0] == "my-c++" and native._SOURCE in command
    assert command[command.index("-o") + 1] == "/out/lib.so"
    flags = tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
    assert all(f in command for f in flags) and "-shared" in command


def test_build_command_turns_off_avx512_fp16_where_the_cpu_has_it(monkeypatch):
    """TensorFlow 2.21's Eigen headers fail to compile with AVX512-FP16 on (gcc 12)."""
    monkeypatch.setattr(native, "_cpu", lambda: "x86_64flags\t: fpu avx512f avx512_fp16 amx_tile")
    assert "-mno-avx512fp16" in native._build_command("/out/lib.so")
    monkeypatch.setattr(native, "_cpu", lambda: "x86_64flags\t: fpu avx512f avx512_bf16")
    command = native._build_command("/out/lib.so")
    assert "-march=native" in command and "-mno-avx512fp16" not in command


@pytest.mark.slow
def test_a_real_build_from_scratch(tmp_path):
    """The real compiler, into an empty cache: the library loads and is cached.

    In a fresh process: a second library with the same ops loaded into this one
    would register every kernel twice, and later native steps would fail.
    """
    from conftest import run_python

    script = (
        "import os, sys, tensorflow as tf; from hebbkeras import native; "
        "path = native.build(); assert tf.load_op_library(path) is not None; "
        "assert os.path.dirname(path) == sys.argv[1], path; "
        "assert os.listdir(sys.argv[1]) == [os.path.basename(path)]; print('built')"
    )
    result = run_python(["-c", script, str(tmp_path)], env={"HEBBKERAS_CACHE": str(tmp_path)})
    assert result.returncode == 0 and "built" in result.stdout, result.stderr[-3000:]


@pytest.mark.native_cpu
def test_native_cpu_marker_skips_where_a_gpu_is_visible(monkeypatch):
    """The conftest marker's reason, and `available()` agreeing with it."""
    import conftest

    assert conftest.native_cpu_skip_reason() is None  # this machine: no GPU (else skipped)
    real = tf.config.list_logical_devices
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: (
        [tf.config.LogicalDevice("/device:GPU:0", "GPU")] if kind == "GPU" else real(kind)))
    assert "/device:GPU:0" in conftest.native_cpu_skip_reason()
    assert not native.available()


@pytest.mark.native_cpu
def test_disabled_turns_the_kernels_off_in_its_block():
    assert native.available()
    with native.disabled():
        assert not native.available()
    assert native.available()
    assert not native.available("float16")


def test_native_kernels_refuse_ojas_rule():
    """Oja's rule names no native implementation: asking for one is an error
    that names the rule and the kernel, never a silent fallback."""
    from hebbkeras import rules
    from hebbkeras.kernels import fused

    x = np.zeros((1, 3, 4), "float32")
    with pytest.raises(ValueError, match=r"kernel fused \(native\) cannot run plasticity rule "
                                         r"'oja': it has no native implementation"):
        fused.plastic_sequence(x, x[:, 0], np.zeros((1, 4, 4), "float32"),
                               np.zeros((4, 4), "float32"), 1.0, 0.1, rule="oja", native=True)
    with pytest.raises(ValueError, match="cannot run plasticity rule 'oja'.*hebb only"):
        native.implementation(rules.get("oja"))
