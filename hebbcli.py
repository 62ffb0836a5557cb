"""What every command line of this repository shares (`python -m trainers.*`, `python -m export`).

Quiet TensorFlow start-up, `--help` that exits 0, a user's mistake as one
`error: ...` line (exit 2), Ctrl-C as one line (exit 130). This module imports
nothing of the project and no TensorFlow, so it can run before TensorFlow is
imported (where its settings take effect); the trainers and the exporter both
use it (export never imports trainers).

Example:

    import hebbcli
    hebbcli.import_tensorflow()      # before anything imports TensorFlow
    ...
    if __name__ == "__main__":
        hebbcli.run(main, errors=(ValueError,))
"""

import os
import sys
import tempfile

# Devices through which TensorFlow could reach a GPU (NVIDIA, WSL, ROCm).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")
INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl-C (128 + SIGINT)
USER_ERROR = 2  # as for a command line mistake


def import_tensorflow():
    """Imports TensorFlow without the start-up messages a user cannot act on.

    Unless the user set `TF_CPP_MIN_LOG_LEVEL`, sets it to 3 on a machine
    without a GPU device (TensorFlow's CUDA probe logs "failed call to cuInit"
    as an error there) and to 2 elsewhere (where a failing CUDA is worth
    seeing). What TensorFlow's C++ libraries print while they load (the oneDNN
    notice, "Could not find cuda drivers"), which that level does not reach,
    is held back; of it, the warnings and errors the level asks for are shown
    after the import, all of it if the import fails, and all of it at level 0.

    Returns:
        The `tensorflow` module.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
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
    cannot propagate; `was_interrupted` still tells.
    """
    import logging
    import signal
    import warnings

    previous_hook = sys.unraisablehook

    def unraisable(report):
        if not isinstance(report.exc_value, KeyboardInterrupt):
            previous_hook(report)

    def handler(signum, frame):
        _ctrl_c.append(signum)
        logging.disable(logging.CRITICAL)
        warnings.simplefilter("ignore")
        sys.unraisablehook = unraisable
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)


def was_interrupted():
    """Whether Ctrl-C (SIGINT) was pressed since `run` started."""
    return bool(_ctrl_c)


def _parse_flags(argv):
    from absl import app, flags, logging

    rest = app.parse_flags_with_usage(argv)
    # absl logs INFO once app.run starts (TensorFlow's saver says it renamed
    # resources, wrote a fingerprint); keep that for --verbosity=0 / -v 0.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    return rest


def interrupted(message="interrupted (Ctrl-C)"):
    """Prints `message` to stderr and exits with status 130."""
    print(message, file=sys.stderr)
    sys.exit(INTERRUPTED)


def fail(message):
    """Prints `error: message` to stderr and exits with status 2 (a user's mistake)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR)
