"""What every command line of this repository shares (`python -m trainers.*`, `python -m export`).

Quiet TensorFlow start-up, `--help` that exits 0, a user's mistake as one
`error: ...` line (exit 2, flag parsing errors included), Ctrl-C as one line
(exit 130) from the first moment: imported by a command's main module (its
first statement), it installs a SIGINT handler before TensorFlow is imported.
This module imports nothing of the project and no TensorFlow, so it can run
before TensorFlow is imported (where its settings take effect); the trainers
and the exporter both use it (export never imports trainers).

Example:

    import hebbcli
    hebbcli.import_tensorflow()      # before anything imports TensorFlow
    ...
    if __name__ == "__main__":
        hebbcli.run(main, errors=(ValueError,))
"""

import os
import signal
import sys
import tempfile

# Devices through which TensorFlow could reach a GPU (NVIDIA, WSL, ROCm).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")
INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl-C (128 + SIGINT)
USER_ERROR = 2  # as for a command line mistake
# The packages whose modules are commands (`python -m trainers.binary`, `python -m export`).
COMMAND_PACKAGES = ("trainers", "export", "benchmarks")
_stderr_fd = [2]  # where a Ctrl-C during the import writes its line (fd 2 is held meanwhile)


def _early_ctrl_c(signum, frame):
    """Ctrl-C before `run` took over (TensorFlow still importing): one line, exit 130.

    No unwinding: a KeyboardInterrupt raised in the middle of importing
    TensorFlow would end in a traceback of the import machinery.
    """
    os.write(_stderr_fd[0], b"interrupted (Ctrl-C)\n")
    os._exit(INTERRUPTED)


def _started_as_command():
    """Whether the running program is one of this repository's commands (`python -m ...`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name.split(".")[0] in COMMAND_PACKAGES


def _install_early_handler():
    # Only for a command: a test or a notebook that imports a trainer keeps Python's
    # KeyboardInterrupt; a SIGINT that the shell ignores (a background job) stays ignored.
    if _started_as_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _early_ctrl_c)


_install_early_handler()


def import_tensorflow():
    """Imports TensorFlow without the start-up messages a user cannot act on.

    Unless the user set `TF_CPP_MIN_LOG_LEVEL`, sets it to 3 on a machine
    without a GPU device (TensorFlow's CUDA probe logs "failed call to cuInit"
    as an error there) and to 2 elsewhere (where a failing CUDA is worth
    seeing). What TensorFlow's C++ libraries print while they load (the oneDNN
    notice, "Could not find cuda drivers"), which that level does not reach,
    is held back; of it, the warnings and errors the level asks for are shown
    after the import, all of it if the import fails, and all of it at level 0.

    A command that imports TensorFlow after `run` started (the exporter checks
    its paths first) gets the early Ctrl-C handler back for the import: a
    KeyboardInterrupt raised in the middle of importing TensorFlow printed its
    start-up noise and could end the process by SIGINT instead of status 130.

    Returns:
        The `tensorflow` module.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    import threading

    previous = signal.getsignal(signal.SIGINT)
    early = (_started_as_command() and callable(previous) and previous is not _early_ctrl_c
             and previous is not signal.default_int_handler
             and threading.current_thread() is threading.main_thread())
    if early:
        signal.signal(signal.SIGINT, _early_ctrl_c)
    try:
        return _import_tensorflow_quietly()
    finally:
        if early:
            signal.signal(signal.SIGINT, previous)


def _import_tensorflow_quietly():
    """`import tensorflow`, its start-up messages held back (see `import_tensorflow`)."""
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        gpu = any(os.path.exists(p) for p in GPU_DEVICE_FILES)
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if gpu else "3"
    level = os.environ["TF_CPP_MIN_LOG_LEVEL"].strip()
    if level in ("", "0"):
        import tensorflow

        return tensorflow
    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to redirect
            import tensorflow

            return tensorflow
        _stderr_fd[0] = saved
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            _stderr_fd[0] = 2
            os.close(saved)
        held.seek(0)
        shown = "IWEF"[min(int(level), 3):] if level.isdigit() else "IWEF"
        for line in held.read().decode(errors="replace").splitlines(keepends=True):
            if line[:1] in shown and line[1:5].isdigit():  # glog's "E0000 ..." lines
                sys.stderr.write(line)
    return tensorflow


def run(main, argv=None, errors=(ValueError,)):
    """`absl.app.run(main)`, except that --help exits 0, Ctrl-C ends quietly,
    exceptions of the types in `errors` end in one `error: ...` line (exit 2),
    and absl's INFO log is off unless --verbosity is given.

    absl exits with status 1 after printing the help. Ctrl-C (KeyboardInterrupt)
    prints one line instead of a traceback and exits with status 130, as a
    shell reports a command stopped by Ctrl-C; `main` may catch it first to
    say what was left behind.
    """
    from absl import app

    def guarded(args):
        if len(args) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(args[1:])}")
        try:
            return main(args)
        except tuple(errors) as e:
            if was_interrupted():  # a Ctrl-C that a library turned into another error
                raise KeyboardInterrupt from e
            fail(e)

    _watch_ctrl_c()
    argv = list(sys.argv if argv is None else argv)
    args = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    asked = [a for a in args if a in HELP_FLAGS]
    if asked:
        app.usage(shorthelp=asked[0] != "--helpfull", writeto_stdout=True, exitcode=0)
    try:
        app.run(guarded, argv, flags_parser=_parse_flags)
    except KeyboardInterrupt:
        interrupted()
    except Exception:
        if was_interrupted():
            interrupted()
        raise


_ctrl_c = []


def _watch_ctrl_c():
    """Remembers a Ctrl-C before raising KeyboardInterrupt as Python does.

    Code that catches the KeyboardInterrupt and raises another error instead
    (Keras and TensorFlow do, while a layer is traced) would otherwise end the
    command in a traceback; `was_interrupted` tells it was Ctrl-C. From the
    Ctrl-C on, Python warnings and log records are dropped: what the unwinding
    leaves behind (TensorFlow's "Object was never used" for a half-built
    graph, Keras's warnings about a half-traced call) would bury the one line.
    So is the "Exception ignored in ..." report of a KeyboardInterrupt raised
    inside a garbage-collection callback (JAX registers one), which Python
    cannot propagate, and the traceback that C code prints with `PyErr_Print`
    when the KeyboardInterrupt lands in a call it made back into Python
    (TensorFlow's nest flattening importing a module: a `SystemError` caused
    by the KeyboardInterrupt); `was_interrupted` still tells.
    """
    import logging
    import warnings

    previous_hook, previous_excepthook = sys.unraisablehook, sys.excepthook

    def unraisable(report):
        if not isinstance(report.exc_value, KeyboardInterrupt):
            previous_hook(report)

    def excepthook(kind, value, traceback):
        if not _caused_by_ctrl_c(value):
            previous_excepthook(kind, value, traceback)

    def handler(signum, frame):
        _ctrl_c.append(signum)
        logging.disable(logging.CRITICAL)
        warnings.simplefilter("ignore")
        sys.unraisablehook, sys.excepthook = unraisable, excepthook
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _early_ctrl_c):
        signal.signal(signal.SIGINT, handler)


def _caused_by_ctrl_c(error):
    """Whether `error` is a KeyboardInterrupt or was raised while one was on its way."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def was_interrupted():
    """Whether Ctrl-C (SIGINT) was pressed since `run` started."""
    return bool(_ctrl_c)


def _parse_flags(argv):
    """absl's flag parsing, a bad value ending in one `error:` line (exit 2), not absl's
    `FATAL Flags parsing error` (exit 1)."""
    from absl import flags, logging

    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e} (see --help).")
    # absl logs INFO once app.run starts (TensorFlow's saver says it renamed
    # resources, wrote a fingerprint; tfds where it read its dataset_info);
    # keep that for --verbosity=0 / -v 0.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        logging.get_absl_logger().addFilter(_library_notices)
    return rest


def _library_notices(record):
    """False for tfds's log records below ERROR (where it read its dataset_info, a
    variant folder without one): not the user's to act on."""
    return record.levelno >= 40 or "tensorflow_datasets" not in (record.pathname or "")


def interrupted(message="interrupted (Ctrl-C)"):
    """Prints `message` to stderr and exits with status 130."""
    print(message, file=sys.stderr)
    sys.exit(INTERRUPTED)


KILL_IN = "HEBBKERAS_TEST_KILL_IN"  # the test hook of `kill_point`
_kill_counts = {}


def kill_point(name, partial=None):
    """Test hook: SIGKILLs this process in the middle of a write, where a test asks.

    With `HEBBKERAS_TEST_KILL_IN=PATTERN[@N]` in the environment, the N-th call
    (default 1) whose `name` (a file's base name) matches the fnmatch PATTERN
    first calls `partial()` (which leaves the write half done, as a kill in its
    middle would) and then kills the process with SIGKILL: nothing runs after
    it, no handler, no `finally`. Without the variable it does nothing. Every
    write of a run directory and of an export calls it (`trainers.files`,
    `export.versions`), so tests reach the worst moments deterministically.
    """
    spec = os.environ.get(KILL_IN)
    if not spec:
        return
    import fnmatch

    pattern, _, nth = spec.partition("@")
    if not fnmatch.fnmatchcase(os.path.basename(name), pattern):
        return
    _kill_counts[pattern] = count = _kill_counts.get(pattern, 0) + 1
    if count != int(nth or 1):
        return
    if partial is not None:
        partial()
    os.kill(os.getpid(), signal.SIGKILL)


def fail(message):
    """Prints `error: message` to stderr and exits with status 2 (a user's mistake)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR)
