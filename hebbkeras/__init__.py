"""hebbkeras: differentiable plasticity (Miconi, Clune & Stanley, 2018) for Keras 3.

The layers (`PlasticRNNCell`, `PlasticRNN`), `ops` and `metrics` are written in
`keras.ops` and import on every Keras backend. The task-data and kernel modules
`episodes`, `images` and `native` (and `fused`) are TensorFlow code: they are
imported on first use (`hebbkeras.episodes` or `from hebbkeras import episodes`),
and say so when TensorFlow is missing. On the TensorFlow backend `images` is
imported at once, so that `.keras` models compiled with its losses (the CIFAR
task) load after a plain `import hebbkeras`; on another backend, import
`hebbkeras.images` (needs TensorFlow) before loading one, or load it with
`compile=False`.
"""

import importlib

import keras

from hebbkeras import metrics, ops
from hebbkeras.cell import PlasticRNNCell
from hebbkeras.layer import PlasticRNN
from hebbkeras.metrics import BitErrorRate, summed_squared_error

# TensorFlow-only submodules, imported on first attribute access (PEP 562).
_TENSORFLOW_MODULES = ("episodes", "images", "native", "fused")

__all__ = [
    "PlasticRNN",
    "PlasticRNNCell",
    "BitErrorRate",
    "summed_squared_error",
    "episodes",
    "images",
    "metrics",
    "native",
    "ops",
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
    # Registers the image task's losses for `keras.saving.load_model`; TensorFlow
    # is already imported by Keras here.
    from hebbkeras import images  # noqa: E402,F401
