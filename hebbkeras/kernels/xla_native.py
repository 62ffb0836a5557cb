"""The neuromodulated rules' per-step passes inside TensorFlow's XLA on CPU: the XLA
FFI handlers of `native/modulated_ffi.cc` (the JAX ones, `jax_native`: the passes
of `native/modulated_kernels.h`) registered with the XLA in TensorFlow's own
libraries, and called from `xla_modfused` as StableHLO custom calls in
`XlaCallModule` ops, which TensorFlow inlines into the XLA cluster.

XLA on CPU runs each elementwise pass or reduction over a `(batch, N, N)` array
as its own loop over memory; these calls do one step's work on the traces in a
single pass over each matrix, on XLA's intra-op threads. The first `load()`
compiles `modulated_ffi.cc` with `native/modulated_tfxla.cc` (which registers the
handlers for the "Host" platform through `XLA_FFI_GetApi`, exported by
`libtensorflow_framework.so.2`) with `g++` (or `$CXX`) against the FFI headers
TensorFlow ships (`tf.sysconfig.get_include()`) into `$HEBBKERAS_CACHE`, keyed by
the sources, the TensorFlow version and the CPU (`hebbkeras.kernels.cxx`; about
10 seconds, once). Where that fails, `xla_modfused` runs the same math in plain
XLA after one warning naming the cause; `HEBBKERAS_NATIVE=0` chooses the plain
path without it, and so does `hebbkeras.kernels.native.disabled()` (export).

    python -m hebbkeras.kernels.xla_native   # build now, print the library's path
"""

import ctypes
import os
import threading

import tensorflow as tf
from tensorflow.compiler.tf2xla.ops import gen_xla_ops  # XlaCallModule: not in tf.raw_ops

from hebbkeras.kernels import cxx
from hebbkeras.kernels import native as tf_native

_DIR = os.path.join(os.path.dirname(__file__), "native")
_SOURCES = [os.path.join(_DIR, name) for name in ("modulated_ffi.cc", "modulated_tfxla.cc")]
_HEADERS = [os.path.join(_DIR, name) for name in ("rows.h", "modulated_kernels.h")]
_TYPES = {tf.float32: "f32", tf.float64: "f64", tf.int32: "i32"}
_loaded = {}
_lock = threading.Lock()


def _build_command(output):
    return cxx.ffi_command(tf.sysconfig.get_include(), _SOURCES, output, "-L",
                           tf.sysconfig.get_lib(), "-l:libtensorflow_framework.so.2")


def library_path():
    """Where the compiled handlers for these sources, this TensorFlow and CPU live."""
    return cxx.library_path("modulated_tfxla", (*_SOURCES, *_HEADERS), tf.__version__,
                            cxx.cpu())


def build(verbose=False):
    """Compiles the handlers into the cache; returns the path (`cxx.BuildError`)."""
    return cxx.build(library_path(), _build_command, _SOURCES[0], verbose,
                     remedy="check TensorFlow's XLA FFI headers")


@tf.autograph.experimental.do_not_convert
def load():
    """Whether the handlers are registered, building them on first use (warns once)."""
    return cxx.load_once(_loaded, _lock, build, _register,
                         "the native trace kernels for XLA are unavailable, so xla_modfused "
                         "runs its passes in plain XLA instead")


def _register(path):
    """Loads the library, whose static initialisers register the handlers."""
    _loaded["library"] = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def available(dtype):
    """Whether `xla_modfused` should call the handlers: CPU, float32/64, not exporting, built."""
    if not cxx.enabled() or getattr(tf_native._state, "off", False):
        return False
    if tf.as_dtype(dtype) not in (tf.float32, tf.float64):
        return False
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return False
    return load()


def _type(shape, dtype):
    return "tensor<" + "".join(f"{d}x" for d in shape) + _TYPES[tf.as_dtype(dtype)] + ">"


def _attr(value):
    return ("true" if value else "false") if isinstance(value, bool) else f"{int(value)} : i64"


def _call(name, results, args, aliases=(), **attrs):
    """The custom call `name` on `args` (tensors of static shapes) in an
    `XlaCallModule`; `results`: `(shape, dtype)` pairs; `aliases`: `(result,
    operand)` pairs that share a buffer; `attrs`: the handler's attributes."""
    args = [tf.convert_to_tensor(a) for a in args]
    ins = [_type(a.shape.as_list(), a.dtype) for a in args]
    outs = [_type(s, d) for s, d in results]
    params = ", ".join(f"%arg{i}: {t}" for i, t in enumerate(ins))
    operands = ", ".join(f"%arg{i}" for i in range(len(args)))
    config = ", ".join(f"{key} = {_attr(value)}" for key, value in attrs.items())
    alias = ", ".join(
        f"#stablehlo.output_operand_alias<output_tuple_indices = [{r}], operand_index = {o}, "
        "operand_tuple_indices = []>" for r, o in aliases)
    n = len(outs)
    module = (
        "module @hebbkeras attributes {mhlo.num_partitions = 1 : i32, "
        "mhlo.num_replicas = 1 : i32} {\n"
        f"  func.func public @main({params}) -> ({', '.join(outs)}) {{\n"
        f"    %0:{n} = stablehlo.custom_call @{name}({operands}) {{api_version = 4 : i32, "
        f"backend_config = {{{config}}}, output_operand_aliases = [{alias}]}} : "
        f"({', '.join(ins)}) -> ({', '.join(outs)})\n"
        f"    return {', '.join(f'%0#{i}' for i in range(n))} : {', '.join(outs)}\n"
        "  }\n}\n")
    return gen_xla_ops.xla_call_module(
        args, version=9, module=module, Sout=[tf.TensorShape(s) for s, _ in results],
        Tout=[d for _, d in results], platforms=["CPU"], dim_args_spec=[], disabled_checks=[],
        function_list=[], has_token_input_output=False)


def _like(t):
    return (t.shape.as_list(), t.dtype)


def update(hebb, e, alpha, u, y, m, eta, clip, retroactive, with_q=True):
    """`(hebb_{t+1}, E_{t+1}, q)` (`modulated_ops.cc`'s header; `e` a placeholder for
    "simple", passed through; `m` `(batch, N)`)."""
    return _call("hebbkeras_modulated_update", [_like(hebb), _like(e), _like(u)],
                 [hebb, e, alpha, u, y, m, eta, clip], aliases=((0, 0), (1, 1)),
                 retroactive=retroactive, with_q=with_q)


def backward(hs, anchors, us, ys, ms, index, d, ge, galpha, alpha, u, y, m, g, eta, eta_e,
             clip, retroactive, stride=1, tail=False):
    """`(d', ge', galpha', plastic, red1, red2, red3, dot)` of a chunk's step `index`,
    its traces rebuilt from `chunk`'s every `stride`-th through the chunk's steps
    `(us, ys, ms)`, as `jax_native.backward` (`modulated_ffi.cc`'s header)."""
    vec = _like(u)
    return _call("hebbkeras_modulated_backward",
                 [_like(d), _like(ge), _like(galpha), vec, vec, vec, vec, ([], d.dtype)],
                 [hs, anchors, us, ys, ms, tf.cast(index, tf.int32), d, ge, galpha, alpha, u,
                  y, m, g, eta, eta_e, clip], aliases=((0, 6), (1, 7), (2, 8)),
                 retroactive=retroactive, tail=tail, stride=stride)


def chunk(hebb, e, us, ys, ms, eta, clip, retroactive, bufs, stride=1):
    """`(hebbs, anchors)`: the traces `hebb` and ("retroactive") `E` before every
    `stride`-th of a chunk's `K` steps, `(ceil(K / stride), batch, N, N)` each,
    written into `bufs` (`buffers`), which XLA then reuses in place (a loop that
    carries them), as `jax_native.chunk`."""
    return _call("hebbkeras_modulated_chunk", [_like(b) for b in bufs],
                 [hebb, e, us, ys, ms, eta, clip, *bufs], aliases=((0, 7), (1, 8)),
                 retroactive=retroactive, stride=stride)


def buffers(hebb, k, retroactive, stride=1):
    """`chunk`'s buffers for `k` steps (the second a placeholder for "simple")."""
    shape = [-(-k // stride)] + hebb.shape.as_list()
    return (tf.zeros(shape, hebb.dtype),
            tf.zeros(shape if retroactive else [1], hebb.dtype))


if __name__ == "__main__":
    import sys

    try:
        print(build(verbose=True))
    except cxx.BuildError as e:
        sys.exit(f"error: {e}")
