"""hebbkeras: differentiable plasticity (Miconi, Clune & Stanley, 2018) for Keras 3.

The public API:

    PlasticRNNCell, PlasticRNN, PlasticDense    the layers (hebbkeras.layers)
    ops                                         the plasticity rules as pure functions
    metrics, BitErrorRate, summed_squared_error the paper's measures
    checks                                      argument checks with clear errors

They are written in `keras.ops` and import on every Keras backend. Two
subpackages hold TensorFlow code, imported on first use (and saying so when
TensorFlow is missing): `hebbkeras.kernels` (the fused whole-sequence kernels the
layers dispatch to) and `hebbkeras.tasks` (the papers' episode data and
environments). On the TensorFlow backend `tasks.images` and `tasks.rl` are
imported at once, so that `.keras` models compiled with the image task's losses,
and saved maze agents (`MazeAgent`), load after a plain `import hebbkeras`; on
another backend, import them (needs TensorFlow) before loading such a model, or
load it with `compile=False`.

The flat module names of hebbkeras 0.1 (`hebbkeras.episodes`, `hebbkeras.fused`,
`hebbkeras.cell`, ...) still work and warn (DeprecationWarning) with their new home.
"""

import keras

from hebbkeras import _lazy, checks, metrics, ops
from hebbkeras.layers import PlasticDense, PlasticRNN, PlasticRNNCell
from hebbkeras.metrics import BitErrorRate, summed_squared_error

__all__ = [
    "PlasticDense",
    "PlasticRNN",
    "PlasticRNNCell",
    "BitErrorRate",
    "summed_squared_error",
    "checks",
    "kernels",
    "layers",
    "metrics",
    "ops",
    "tasks",
]
__version__ = "0.2.0"

# Every module that imports TensorFlow at its top, by its path below hebbkeras.
_TENSORFLOW_MODULES = tuple(
    [f"tasks.{m}" for m in ("episodes", "images", "fewshot", "omniglot", "maze", "rl",
                            "tfds_data")]
    + [f"kernels.{m}" for m in ("fused", "native", "xla_fused", "dense_fused", "tf_remat")])


def require_tensorflow(what):
    """Imports TensorFlow, or raises an ImportError saying that `what` needs it."""
    return _lazy.require("tensorflow", what)


def __getattr__(name):
    if name in ("tasks", "kernels"):
        import importlib

        return importlib.import_module(f"hebbkeras.{name}")
    if name in _lazy.MOVED:
        return _lazy.deprecated(name)
    raise AttributeError(f"module 'hebbkeras' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"tasks", "kernels"})


_lazy.install_aliases()

if keras.backend.backend() == "tensorflow":
    # Registers the image task's losses and MazeAgent for `keras.saving.load_model`;
    # TensorFlow is already imported by Keras here.
    from hebbkeras.tasks import images, rl  # noqa: E402,F401
