"""Lazy submodules and the deprecated module names of the flat layout (0.1).

`lazy_modules` gives a package a PEP 562 `__getattr__` that imports its
TensorFlow-only (or JAX-only) submodules on first use and, when their framework
is missing, raises one ImportError that says what to install.

`install_aliases` keeps the old paths (`hebbkeras.fused`, `from hebbkeras import
episodes`, `import hebbkeras.cell`, ...) working for one release: each resolves
to the module's new home with a DeprecationWarning naming it. `deprecated_name`
does the same for the top-level names of 0.1 that are no longer exported
(`MOVED_NAMES`).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old name -> new module (hebbkeras 0.1 kept every module in one flat folder)
MOVED = {
    "cell": "layers.plastic_rnn_cell", "layer": "layers.plastic_rnn",
    "dense": "layers.plastic_dense",
    "fused": "kernels.fused", "xla_fused": "kernels.xla_fused", "jax_fused": "kernels.jax_fused",
    "dense_fused": "kernels.dense_fused", "schedule": "kernels.schedule",
    "native": "kernels.native",
    "episodes": "tasks.episodes", "images": "tasks.images", "fewshot": "tasks.fewshot",
    "omniglot": "tasks.omniglot", "maze": "tasks.maze", "rl": "tasks.rl",
    "tfds_data": "tasks.tfds_data",
}


# top-level name of 0.1 -> (its value now, what to use instead)
MOVED_NAMES = {
    "require_tensorflow": ("hebbkeras._lazy.require_tensorflow",
                           "import tensorflow directly: hebbkeras.kernels and hebbkeras.tasks "
                           "raise this error themselves"),
}


def require(framework, what):
    """Imports `framework`, or raises an ImportError saying that `what` needs it."""
    try:
        return importlib.import_module(framework)
    except ImportError as error:
        import keras

        pretty = {"tensorflow": "TensorFlow", "jax": "JAX"}.get(framework, framework)
        raise ImportError(
            f"{what} needs {pretty}, which is not installed (Keras backend: "
            f"{keras.backend.backend()!r}). Install it with `pip install {framework}` "
            "(see requirements.txt for the tested version); the layers, ops and "
            "metrics of hebbkeras work without it."
        ) from error


def require_tensorflow(what):
    """Imports TensorFlow, or raises an ImportError saying that `what` needs it."""
    return require("tensorflow", what)


def lazy_modules(package, modules):
    """`(__getattr__, __dir__)` for `package` whose submodules `modules`
    (`{name: framework}`) are imported on first attribute access."""

    def __getattr__(name):
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        require(modules[name], f"{package}.{name}")
        return importlib.import_module(f"{package}.{name}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(modules))

    return __getattr__, __dir__


def deprecated(old):
    """The module `hebbkeras.<old>` now lives at: its new module, with a warning."""
    new = f"hebbkeras.{MOVED[old]}"
    warnings.warn(f"hebbkeras.{old} is deprecated and will be removed; use {new}.",
                  DeprecationWarning, stacklevel=3)
    module = importlib.import_module(new)
    setattr(sys.modules["hebbkeras"], old, module)  # warn once, not at every access
    return module


def deprecated_name(old):
    """`hebbkeras.<old>`, a name 0.1 exported and 0.2 does not: its value, with a warning."""
    where, advice = MOVED_NAMES[old]
    warnings.warn(f"hebbkeras.{old} is deprecated and will be removed; {advice}.",
                  DeprecationWarning, stacklevel=3)
    module, _, name = where.rpartition(".")
    return getattr(importlib.import_module(module), name)


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import hebbkeras.<old>` for the names of `MOVED`: the new module, with a warning."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, old = fullname.partition(".")
        if head == "hebbkeras" and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a placeholder: exec_module puts the real module in its place

    def exec_module(self, module):
        # importlib returns what sys.modules holds after this, and the real
        # module keeps its own __name__ and __spec__.
        sys.modules[module.__name__] = deprecated(module.__name__.partition(".")[2])


def install_aliases():
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
