"""Exports trained plastic networks as versioned SavedModels for TF Serving.

    python -m export --model runs/binary/model.keras --export_dir models/binary

or, from Python, `export.export_model(model_or_path, "models/binary")`. See
docs/serving.md for the signatures and how to serve and query them.

The names below are imported on first use, so that `python -m export` can
check its arguments (and answer --help) before TensorFlow is imported.
"""

import importlib

_PUBLIC = {
    "ExportCheckError": "export.exporter",
    "export_model": "export.exporter",
    "list_versions": "export.versions",
    "next_version": "export.versions",
    "ORDER_SEED": "export.signatures",
}
__all__ = list(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
