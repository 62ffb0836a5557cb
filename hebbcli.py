"""What every command line of this repository shares (`python -m trainers.*`, `python -m export`).

- `quiet_tensorflow()`: TensorFlow's start-up logs that a user cannot act on
  (CUDA probes on a machine without a GPU, oneDNN notes) are not shown. Set
  `TF_CPP_MIN_LOG_LEVEL` (e.g. to 0) to see TensorFlow's C++ logs again.
- `run(main, errors)`: absl's `app.run`, with a user's mistake ending in one
  `error: ...` line (exit 2), Ctrl-C in exit 130 without a traceback, and
  `--help` in exit 0.

This module imports nothing heavy: it must run before TensorFlow is imported.
"""

import os
import sys
import tempfile

# Lines TensorFlow writes to stderr while it is imported, before its log level applies.
_IMPORT_NOISE = ("WARNING: All log messages before absl::InitializeLog()",
                 "I0000 ", "W0000 ")
_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def quiet_tensorflow():
    """Imports TensorFlow with its start-up noise hidden, unless the user set a log level."""
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # C++ errors such as 'failed call to cuInit'
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith(_IMPORT_NOISE):
                    sys.stderr.write(line)


def run(main, errors=(ValueError,)):
    """`absl.app.run(main)`; exceptions of the types in `errors` end in `error: <message>`."""
    from absl import app

    def guarded(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        try:
            return main(argv)
        except KeyboardInterrupt:
            sys.exit(130)
        except errors as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    try:
        app.run(guarded)
    except SystemExit as e:
        # absl exits with 1 after printing the help a user asked for.
        if e.code == 1 and any(arg.split("=")[0] in _HELP for arg in sys.argv[1:]):
            sys.exit(0)
        raise
