"""Compiling a kernel library into the cache on first use, for either backend
(`hebbkeras.kernels.native`: TensorFlow ops; `hebbkeras.kernels.jax_native` and
`xla_native`: XLA FFI handlers, for JAX and for TensorFlow's XLA, which share
`ffi_command` and `load_once`). Imports neither framework.

The library goes to `$HEBBKERAS_CACHE` (default `~/.cache/hebbkeras`) under a
name keyed by what it is built from, written atomically (several processes
may build at once; the last wins). `BuildError` names the cause and its
remedy: a cache directory that cannot be written (set `HEBBKERAS_CACHE`), no
compiler (install g++ or set `CXX`), or a failed compilation (the compiler's
own message).
"""

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import warnings


class BuildError(RuntimeError):
    """The native kernels cannot be built or loaded; the message names the cause
    and what to do about it."""


def cache_dir():
    return os.environ.get("HEBBKERAS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "hebbkeras"
    )


def cpu():
    """The machine and its instruction set: `-march=native` code runs only there."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return os.uname().machine + flags


def arch_flags(cpu_flags):
    """`-march=native`, without AVX512-FP16 where the CPU has it: the Eigen headers
    TensorFlow 2.21 ships do not compile with it on (gcc 12: "expected initializer
    before '<'" in PacketMathFP16.h); the kernels use no half-precision arithmetic."""
    return ["-march=native"] + (["-mno-avx512fp16"] if "avx512_fp16" in cpu_flags.split() else [])


def enabled():
    """False where `HEBBKERAS_NATIVE=0` chooses the plain passes (nothing is built)."""
    return os.environ.get("HEBBKERAS_NATIVE", "1") != "0"


def ffi_command(include, sources, output, *link):
    """The compiler's command line for XLA FFI handlers: `sources` against the FFI
    headers under `include` into the shared library `output`, then `link`'s flags."""
    return [os.environ.get("CXX", "g++"), "-shared", "-fPIC", "-O3", *arch_flags(cpu()),
            "-fopenmp-simd", "-std=c++17", "-w", "-I", include, *sources, "-o", output, *link]


def load_once(state, lock, build, register, unavailable):
    """Whether a library is built and registered, decided once per process.

    Args:
        state: a dict that keeps the answer under "ok" (clear it to decide again).
        lock: held while deciding.
        build: `() -> path` (`BuildError`).
        register: `path -> None`, loads the library (`OSError`, `AttributeError`).
        unavailable: the warning's first sentence, what runs instead.

    False without a warning where `enabled()` is False; False after one warning that
    names the cause where building or loading fails.
    """
    with lock:
        if "ok" not in state:
            state["ok"] = enabled() and _load(build, register, unavailable)
        return state["ok"]


def _load(build, register, unavailable):
    try:
        path = build()
        try:
            register(path)
        except (OSError, AttributeError) as e:
            raise BuildError(f"loading {path} failed ({e}); delete it to rebuild") from None
    except (BuildError, OSError) as e:
        warnings.warn(f"hebbkeras: {unavailable} (same results, slower; HEBBKERAS_NATIVE=0 "
                      f"chooses that without this warning). Cause: {e}", stacklevel=5)
        return False
    return True


def library_path(prefix, files, *versions):
    """`cache_dir()/prefix-KEY.so`, KEY a hash of the files' bytes and `versions`."""
    key = hashlib.sha256()
    for name in files:
        with open(name, "rb") as f:
            key.update(f.read())
    for version in versions:
        key.update(version.encode())
    return os.path.join(cache_dir(), f"{prefix}-{key.hexdigest()[:16]}.so")


def _cache_error(error):
    return BuildError(
        f"the cache directory {cache_dir()!r} cannot be written ({error.strerror or error}); "
        "set HEBBKERAS_CACHE to a writable directory"
    )


def build(path, command_for, source, verbose=False, remedy="check the headers"):
    """Compiles `command_for(output)` into `path` unless it exists; returns `path`.

    Args:
        path: where the library goes (`library_path`).
        command_for: `output -> argv`, the compiler's command line.
        source: the main source, named in a failed compilation's message.
        verbose: print the command to stderr.
        remedy: what to check after a failed compilation, besides the compiler.

    Raises `BuildError` naming the cause.
    """
    if os.path.exists(path):
        return path
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
        os.close(fd)
    except OSError as e:
        raise _cache_error(e) from None
    command = command_for(tmp)
    if verbose:
        print(" ".join(shlex.quote(c) for c in command), file=sys.stderr)
    try:
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise BuildError(
                f"no C++ compiler {command[0]!r} found; install g++, or set CXX to a C++ "
                "compiler"
            ) from None
        except OSError as e:
            raise BuildError(f"the C++ compiler {command[0]!r} cannot be run ({e}); set CXX "
                             "to a working C++ compiler") from None
        if done.returncode != 0:
            raise BuildError(
                f"compiling {source} failed ({command[0]} exit {done.returncode}; set CXX to "
                f"another C++ compiler, or {remedy}):\n" + done.stderr[-4000:]
            )
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _cache_error(e) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
