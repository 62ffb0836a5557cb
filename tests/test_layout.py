"""The package layout: the public API only at the top, the 0.1 names still resolve (with a
warning), 0.1 files load; the docs index lists every page."""

import os
import warnings

import keras
import numpy as np
import pytest

import hebbkeras
from hebbkeras import _lazy

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize("old", sorted(_lazy.MOVED))
def test_old_module_names_resolve_to_the_new_modules_with_a_warning(old):
    import importlib

    new = importlib.import_module(f"hebbkeras.{_lazy.MOVED[old]}")
    vars(hebbkeras).pop(old, None)  # a fresh lookup, as in a new process
    with pytest.warns(DeprecationWarning, match=f"hebbkeras.{_lazy.MOVED[old]}"):
        assert getattr(hebbkeras, old) is new
    vars(hebbkeras).pop(old, None)
    import sys

    sys.modules.pop(f"hebbkeras.{old}", None)
    with pytest.warns(DeprecationWarning):
        assert importlib.import_module(f"hebbkeras.{old}") is new
    assert new.__name__ == f"hebbkeras.{_lazy.MOVED[old]}"  # the real module is untouched
    assert new.__spec__.name == new.__name__


def test_the_public_api_imports_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from hebbkeras import PlasticDense, PlasticRNN, PlasticRNNCell, ops  # noqa: F401
        from hebbkeras.kernels import fused  # noqa: F401
        from hebbkeras.tasks import episodes  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        hebbkeras.nonsense


PUBLIC = {"PlasticDense", "PlasticRNN", "PlasticRNNCell", "BitErrorRate", "summed_squared_error",
          "checks", "kernels", "layers", "metrics", "ops", "rules", "tasks"}


def test_hebbkeras_exports_the_public_api_only():
    """A fresh `import hebbkeras` binds no public name outside `__all__`, on the
    TensorFlow backend too (where it imports the image task and the maze agent)."""
    from conftest import run_python

    code = ("import hebbkeras, keras; print(keras.backend.backend()); "
            "print(sorted(n for n in vars(hebbkeras) if not n.startswith('_')))")
    done = run_python(["-c", code])
    assert done.returncode == 0, done.stderr
    backend, names = done.stdout.split("\n")[:2]
    assert backend == "tensorflow"
    assert set(eval(names)) <= PUBLIC, set(eval(names)) - PUBLIC
    assert set(hebbkeras.__all__) == PUBLIC
    assert {n for n in dir(hebbkeras) if not n.startswith("__")} == PUBLIC
    for name in hebbkeras.__all__:
        assert getattr(hebbkeras, name) is not None


def test_require_tensorflow_of_0_1_still_works_with_a_warning():
    import tensorflow as tf

    with pytest.warns(DeprecationWarning, match="require_tensorflow is deprecated"):
        require = hebbkeras.require_tensorflow
    assert require("this test") is tf
    assert "require_tensorflow" not in dir(hebbkeras)


def test_a_model_saved_by_hebbkeras_0_1_loads_and_predicts_the_same():
    """Saved with the flat layout of 0.1 (tests/data, made by the commit before the move)."""
    model = keras.saving.load_model(os.path.join(DATA, "hebbkeras_0_1_model.keras"),
                                    compile=False)  # saved untrained: no optimizer state
    saved = np.load(os.path.join(DATA, "hebbkeras_0_1_model.npz"))
    y, probs = model.predict([saved["inputs"], saved["labels"]], verbose=0)
    np.testing.assert_allclose(y, saved["y"], atol=1e-6)
    np.testing.assert_allclose(probs, saved["probs"], atol=1e-6)


def test_the_docs_index_lists_every_page_once():
    """docs/README.md has one row per page in docs/, and links nothing that is missing."""
    import re

    docs = os.path.join(os.path.dirname(os.path.dirname(DATA)), "docs")
    pages = {f for f in os.listdir(docs) if f.endswith(".md") and f != "README.md"}
    with open(os.path.join(docs, "README.md")) as f:
        rows = re.findall(r"^\| \[([^\]]+)\]\(([^)]+)\) \| (.+) \|$", f.read(), re.MULTILINE)
    linked = [target for _, target, _ in rows]
    assert sorted(linked) == sorted(pages), set(linked) ^ pages
    assert all(name == target and len(text) > 20 for name, target, text in rows), rows
