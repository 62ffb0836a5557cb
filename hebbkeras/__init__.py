"""hebbkeras: differentiable plasticity (Miconi, Clune & Stanley, 2018) for Keras 3.

The layers (`PlasticRNNCell`, `PlasticRNN`, `PlasticDense`), `ops`, `metrics` and
`checks` are written in `keras.ops` and import on every Keras backend. The task-data,
environment and kernel modules (`episodes`, `images`, `fewshot`, `omniglot`, `maze`, `rl`,
`tfds_data`, `native`, `fused`, `dense_fused`, `xla_fused`) are TensorFlow code: they are imported on first use
(`hebbkeras.episodes` or `from hebbkeras import episodes`), and say so when TensorFlow
is missing. On the TensorFlow backend `images` and `rl` are imported at once, so that
`.keras` models compiled with the image task's losses, and saved maze agents
(`MazeAgent`), load after a plain `import hebbkeras`; on another backend, import them
(needs TensorFlow) before loading such a model, or load it with `compile=False`.
"""

import importlib

import keras

from hebbkeras import checks, metrics, ops
from hebbkeras.cell import PlasticRNNCell
from hebbkeras.dense import PlasticDense
from hebbkeras.layer import PlasticRNN
from hebbkeras.metrics import BitErrorRate, summed_squared_error

# TensorFlow-only submodules, imported on first attribute access (PEP 562).
_TENSORFLOW_MODULES = ("episodes", "images", "fewshot", "omniglot", "maze", "rl", "tfds_data",
                       "native", "fused", "dense_fused", "xla_fused")

__all__ = [
    "PlasticDense",
    "PlasticRNN",
    "PlasticRNNCell",
    "BitErrorRate",
    "summed_squared_error",
    "checks",
    "episodes",
    "fewshot",
    "images",
    "maze",
    "metrics",
    "native",
    "ops",
    "rl",
]
__version__ = "0.1.0"


def require_tensorflow(what):
    """Imports TensorFlow, or raises an ImportError saying that `what` needs it."""
    try:
        return importlib.import_module("tensorflow")
    except ImportError as error:
        raise ImportError(
            f"{what} needs TensorFlow, which is not installed (Keras backend: "
            f"{keras.backend.backend()!r}). Install it with `pip install tensorflow` "
            "(see requirements.txt for the tested version); the layers, ops and "
            "metrics of hebbkeras work without it."
        ) from error


def __getattr__(name):
    if name not in _TENSORFLOW_MODULES:
        raise AttributeError(f"module 'hebbkeras' has no attribute {name!r}")
    require_tensorflow(f"hebbkeras.{name}")
    return importlib.import_module(f"hebbkeras.{name}")


def __dir__():
    return sorted(set(globals()) | set(_TENSORFLOW_MODULES))


if keras.backend.backend() == "tensorflow":
    # Registers the image task's losses and MazeAgent for `keras.saving.load_model`;
    # TensorFlow is already imported by Keras here.
    from hebbkeras import images, rl  # noqa: E402,F401
