"""hebbkeras: differentiable plasticity (Miconi, Clune & Stanley, 2018) for Keras 3.

The public API:

    PlasticRNNCell, PlasticRNN, PlasticDense    the layers (hebbkeras.layers)
    ops                                         eqs. (1)-(2) as pure functions
    rules                                       each plasticity rule, defined once (register your own)
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

Nothing else is exported: `dir(hebbkeras)` lists `__all__`. The flat module
names of hebbkeras 0.1 (`hebbkeras.episodes`, `hebbkeras.fused`, `hebbkeras.cell`,
...) and its helper `hebbkeras.require_tensorflow` still work and warn
(DeprecationWarning) with their new home.
"""

import importlib as _importlib

import keras as _keras

from hebbkeras import _lazy, checks, metrics, ops, rules
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
    "rules",
    "tasks",
]
__version__ = "0.2.0"

# Every module that imports TensorFlow at its top, by its path below hebbkeras.
_TENSORFLOW_MODULES = tuple(
    [f"tasks.{m}" for m in ("episodes", "images", "fewshot", "omniglot", "maze", "rl",
                            "tfds_data", "cue_reward", "cue_agent")]
    + [f"kernels.{m}" for m in ("fused", "native", "xla_fused", "dense_fused", "tf_remat",
                                "modulated_fused", "xla_modfused", "xla_native")])


def __getattr__(name):
    if name in ("tasks", "kernels"):
        return _importlib.import_module(f"hebbkeras.{name}")
    if name in _lazy.MOVED:
        return _lazy.deprecated(name)
    if name in _lazy.MOVED_NAMES:
        return _lazy.deprecated_name(name)
    raise AttributeError(f"module 'hebbkeras' has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__")})


_lazy.install_aliases()

if _keras.backend.backend() == "tensorflow":
    # Registers the image task's losses and MazeAgent for `keras.saving.load_model`;
    # TensorFlow is already imported by Keras here. (Imported by path: the names
    # `images` and `rl` here are the deprecated aliases of 0.1.)
    _importlib.import_module("hebbkeras.tasks.images")
    _importlib.import_module("hebbkeras.tasks.rl")
