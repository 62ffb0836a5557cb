"""CPU kernels for the fused path's trace passes of the rules they implement
(`IMPLEMENTATIONS`, named by `rule.native`: the Hebbian rule), built on first use.

`hebb_ops.cc` holds two TensorFlow ops that do one step's work on the
`(batch, N, N)` trace in a single pass over each matrix, where plain
TensorFlow makes one pass per elementwise op (see `hebbkeras/kernels/fused.py`). The
first `load()` compiles them with the C++ compiler that building TensorFlow
extensions needs (`g++`, or `$CXX`) against the installed TensorFlow's
headers, into a cache keyed by the source and the TensorFlow version
(`$HEBBKERAS_CACHE`, default `~/.cache/hebbkeras`; about 10 seconds, once).
Where they cannot be had, the fused path runs the same math with plain
TensorFlow ops (slower), after one warning that names the cause and its
remedy (`BuildError`): a cache directory that cannot be written (set
`HEBBKERAS_CACHE`), no compiler (install g++ or set `CXX`), a failed
compilation (the compiler's message), or a library that does not load.
`HEBBKERAS_NATIVE=0` chooses the plain ops without the warning.

The ops run on CPU only, are never needed for inference, and are never
written into an export: `disabled()` turns them off while `export/` traces
its signatures, so a SavedModel runs on a stock TensorFlow Serving.
"""

import contextlib
import os
import threading
import warnings

import tensorflow as tf

from hebbkeras.kernels import cxx
from hebbkeras.kernels.cxx import BuildError, cache_dir  # noqa: F401 (this module's API)

_SOURCE = os.path.join(os.path.dirname(__file__), "hebb_ops.cc")
# Compiled into the same library: the neuromodulated rules' passes (modulated_fused.py).
_MODULATED_SOURCE = os.path.join(os.path.dirname(__file__), "modulated_ops.cc")
# Included: the row blocks over TensorFlow's worker threads (both), and the passes of
# modulated_ops.cc (shared with the JAX handlers, `hebbkeras.kernels.jax_native`).
_HEADERS = [os.path.join(os.path.dirname(__file__), name)
            for name in ("blocks.h", "rows.h", "modulated_kernels.h")]
_state = threading.local()
_loaded = {}
_lock = threading.Lock()  # replicas of a tf.distribute strategy trace in threads
_cpu = cxx.cpu


def _build_command(output):
    cxx_name = os.environ.get("CXX", "g++")
    flags = tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
    return ([cxx_name, "-shared", "-fPIC", "-O3", *cxx.arch_flags(_cpu()), "-fopenmp-simd",
             "-w", _SOURCE, _MODULATED_SOURCE, "-o", output] + flags)


def library_path():
    """Where the compiled library for this source and TensorFlow lives."""
    return cxx.library_path("hebb_ops", (_SOURCE, _MODULATED_SOURCE, *_HEADERS),
                            tf.__version__, _cpu())


def build(verbose=False):
    """Compiles the ops into the cache (atomically); returns the library's path.

    Raises `BuildError` naming the cause: an unwritable cache directory, no
    compiler, or a failed compilation (with the compiler's message).
    """
    return cxx.build(library_path(), _build_command, _SOURCE, verbose,
                     remedy="check TensorFlow's headers")


# Called while TensorFlow traces functions: plain Python, not for AutoGraph.
@tf.autograph.experimental.do_not_convert
def load():
    """The op module, building it on first use; None if it cannot be had (warns once)."""
    with _lock:
        if "ops" not in _loaded:
            _loaded["ops"] = _load()
        return _loaded["ops"]


def _load():
    ops = None
    if cxx.enabled():
        try:
            path = build()
            try:
                ops = tf.load_op_library(path)
            except (OSError, tf.errors.OpError) as e:
                raise BuildError(f"loading {path} failed ({e}); delete it to rebuild") from None
        except (BuildError, OSError) as e:
            warnings.warn(
                "hebbkeras: the native trace kernels are unavailable, so the fused path "
                "uses plain TensorFlow ops instead (same results, slower; "
                f"HEBBKERAS_NATIVE=0 chooses them without this warning). Cause: {e}",
                stacklevel=3,
            )
    return ops


# The rules `hebb_ops.cc` implements, by the name a rule gives (`rule.native`)
# (`modulated_ops.cc`'s, for the neuromodulated rules, are `modulated()`).
IMPLEMENTATIONS = ("hebb",)


def implementation(rule):
    """The op module implementing `rule` (a `hebbkeras.rules` rule), built on first use.

    Raises a ValueError naming the rule where `hebb_ops.cc` does not implement
    it, and a `BuildError` where the ops cannot be had (`available()` says so first).
    """
    if rule.native not in IMPLEMENTATIONS:
        raise ValueError(f"kernel fused (native) cannot run plasticity rule {rule.name!r}: "
                         f"hebb_ops.cc implements {', '.join(IMPLEMENTATIONS)} only.")
    ops = load()
    if ops is None:
        raise BuildError("the native kernels are unavailable (see the warning above)")
    return ops


@contextlib.contextmanager
def disabled():
    """Within this block, `available()` is False (used while exporting)."""
    before = getattr(_state, "off", False)
    _state.off = True
    try:
        yield
    finally:
        _state.off = before


@tf.autograph.experimental.do_not_convert
def available(dtype=None):
    """Whether the fused path should use the native ops now: CPU only, float32/64."""
    if getattr(_state, "off", False):
        return False
    if dtype is not None and tf.as_dtype(dtype) not in (tf.float32, tf.float64):
        return False
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return False
    return load() is not None

