"""Exports trained plastic networks as versioned SavedModels for TF Serving.

    python -m export --model runs/binary/model.keras --export_dir models/binary

or, from Python, `export.export_model(model_or_path, "models/binary")`. See
docs/serving.md for the signatures and how to serve and query them.
"""

from export.exporter import ExportCheckError, export_model, list_versions, next_version
from export.signatures import ORDER_SEED

__all__ = ["ExportCheckError", "export_model", "list_versions", "next_version", "ORDER_SEED"]
