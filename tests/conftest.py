import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# ---------------------------------------------------------------------------
# Subprocess helpers (from the export tests; for every test file that runs a
# fresh Python: command lines, fresh-process round trips).
# ---------------------------------------------------------------------------
import subprocess  # noqa: E402
import sys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def python_env(**overrides):
    """The environment of a child Python that imports this tree.

    `os.environ` with PYTHONPATH=ROOT and TF_CPP_MIN_LOG_LEVEL=3, then
    `overrides`; an override of None removes that variable.
    """
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_python(args, cwd=ROOT, env=None, timeout=600):
    """Runs `python *args` (e.g. `["-m", "export", "--help"]`) in a fresh process.

    `env` holds overrides for `python_env`. Returns the `CompletedProcess`,
    with stdout and stderr as text.
    """
    return subprocess.run(
        [PYTHON, *args], cwd=cwd, env=python_env(**(env or {})),
        capture_output=True, text=True, timeout=timeout,
    )
