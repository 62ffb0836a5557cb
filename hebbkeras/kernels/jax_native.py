"""The neuromodulated rules' per-step passes on JAX's CPU backend as XLA FFI
custom calls (`native/modulated_ffi.cc`: the passes of `native/modulated_kernels.h`,
the math of the TensorFlow ops in `native/modulated_ops.cc`), built on first use.

XLA on CPU runs each elementwise pass or reduction over a `(batch, N, N)` array
as its own loop over memory; these calls do one step's work on the traces in a
single pass over each matrix, on XLA's intra-op threads (`jax_modfused` uses
them on CPU). The first `load()` compiles `modulated_ffi.cc` with `g++` (or
`$CXX`) against the FFI headers jaxlib ships (`jax.ffi.include_dir()`) into
`$HEBBKERAS_CACHE`, keyed by the sources, the jaxlib version and the CPU (a few
seconds, once; `hebbkeras.kernels.cxx`). Where that fails, `jax_modfused` runs
the same math in plain XLA after one warning naming the cause;
`HEBBKERAS_NATIVE=0` chooses the plain path without it. Imports no TensorFlow.

    python -m hebbkeras.kernels.jax_native   # build now, print the library's path
"""

import ctypes
import os
import threading

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from hebbkeras.kernels import cxx

_DIR = os.path.join(os.path.dirname(__file__), "native")
_SOURCE = os.path.join(_DIR, "modulated_ffi.cc")
_HEADERS = [os.path.join(_DIR, name) for name in ("rows.h", "modulated_kernels.h")]
# FFI target name: the handler's symbol in the library.
TARGETS = {"hebbkeras_modulated_update": "HebbkerasModulatedUpdate",
           "hebbkeras_modulated_backward": "HebbkerasModulatedBackward",
           "hebbkeras_modulated_chunk": "HebbkerasModulatedChunk"}
_loaded = {}
_registered = set()  # XLA keeps a target for the life of the process
_lock = threading.Lock()


def _build_command(output):
    return cxx.ffi_command(jax.ffi.include_dir(), [_SOURCE], output)


def library_path():
    """Where the compiled handlers for these sources, this jaxlib and CPU live."""
    return cxx.library_path("modulated_ffi", (_SOURCE, *_HEADERS), jaxlib.__version__,
                            cxx.cpu())


def build(verbose=False):
    """Compiles the handlers into the cache; returns the path (`cxx.BuildError`)."""
    return cxx.build(library_path(), _build_command, _SOURCE, verbose,
                     remedy="check jaxlib's FFI headers")


def load():
    """Whether the handlers are registered, building them on first use (warns once)."""
    return cxx.load_once(_loaded, _lock, build, _register,
                         "the native trace kernels for JAX are unavailable, so jax_modfused "
                         "runs its passes in plain XLA instead")


def _register(path):
    library = ctypes.cdll.LoadLibrary(path)
    for name, symbol in TARGETS.items():
        if name not in _registered:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                        platform="cpu")
            _registered.add(name)


def available(dtype):
    """Whether `jax_modfused` should run the passes here: JAX on CPU, float32/64, built."""
    if not cxx.enabled():
        return False
    if jnp.dtype(dtype) not in (jnp.float32, jnp.float64) or jax.default_backend() != "cpu":
        return False
    return load()


def _call(name, results, *args, aliases=None, **attrs):
    return jax.ffi.ffi_call(name, results, input_output_aliases=aliases,
                            vmap_method="sequential")(*args, **attrs)


def update(hebb, e, alpha, u, y, m, eta, clip, retroactive, with_q=True):
    """`(hebb_{t+1}, E_{t+1}, q)` (`modulated_ops.cc`'s header; `e` a placeholder for
    "simple", passed through)."""
    like = jax.ShapeDtypeStruct
    return _call("hebbkeras_modulated_update",
                 (like(hebb.shape, hebb.dtype), like(e.shape, e.dtype), like(u.shape, u.dtype)),
                 hebb, e, alpha, u, y, m, eta, clip, aliases={0: 0, 1: 1},
                 retroactive=retroactive, with_q=with_q)


def backward(hs, anchors, us, ys, ms, index, d, ge, galpha, alpha, u, y, m, g, eta, eta_e,
             clip, retroactive, stride=1, tail=False):
    """`(d', ge', galpha', plastic, red1, red2, red3, dot)` of a chunk's step `index`:
    its trace `hebb` (and "retroactive" its `E`) rebuilt from `chunk`'s `hs` (and
    `anchors`), the traces at every `stride`-th step, through the chunk's steps
    `(us, ys, ms)` at rate `eta_e` (`anchors`, `ge`: placeholders for "simple"; the
    tail reads `hebb = hs[index]`, and `us`, `ys`, `ms` are placeholders there)."""
    like = jax.ShapeDtypeStruct
    vec = like(u.shape, u.dtype)
    return _call("hebbkeras_modulated_backward",
                 (like(d.shape, d.dtype), like(ge.shape, ge.dtype),
                  like(galpha.shape, galpha.dtype), vec, vec, vec, vec, like((), d.dtype)),
                 hs, anchors, us, ys, ms, jnp.asarray(index, jnp.int32), d, ge, galpha, alpha,
                 u, y, m, g, eta, eta_e, clip, aliases={6: 0, 7: 1, 8: 2},
                 retroactive=retroactive, tail=tail, stride=np.int64(stride))


def chunk(hebb, e, us, ys, ms, eta, clip, retroactive, bufs, stride=1):
    """`(hebbs, anchors)`: the traces `hebb` and ("retroactive") `E` before every
    `stride`-th of a chunk's steps, `(ceil(K / stride), batch, N, N)` each, written
    into `bufs` (those shapes; the second any placeholder for "simple"), which XLA
    then reuses in place: new buffers would be fresh pages at every call."""
    like = jax.ShapeDtypeStruct
    return _call("hebbkeras_modulated_chunk", tuple(like(b.shape, b.dtype) for b in bufs),
                 hebb, e, us, ys, ms, eta, clip, *bufs, aliases={7: 0, 8: 1},
                 retroactive=retroactive, stride=np.int64(stride))


if __name__ == "__main__":
    import sys

    try:
        print(build(verbose=True))
    except cxx.BuildError as e:
        sys.exit(f"error: {e}")
