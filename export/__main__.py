"""`python -m export`: a trained `.keras` model -> `EXPORT_DIR/<version>/` for TF Serving.

    python -m export --model runs/binary/model.keras --export_dir models/binary
    python -m export --model runs/binary/model.keras --export_dir models/binary --version 3 --overwrite

The trained schedule comes from `config.json` beside the model; for a model
without one, give it with the schedule flags (as in `python -m trainers.binary`).
"""

import sys

import tensorflow as tf
from absl import app, flags

from export import exporter
from hebbkeras import episodes

_S = episodes.Schedule()

flags.DEFINE_string("model", None, "The trained model, e.g. runs/binary/model.keras (its config.json beside it gives the schedule).")
flags.DEFINE_string("export_dir", None, "The model's base directory MODELS/NAME (TF Serving's --model_base_path); versions are written to its integer subdirectories.")
flags.DEFINE_integer("version", None, "Version number to write (default: one more than the largest existing version, or 1).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --version (the old one is kept if the new one fails its check).")
flags.DEFINE_integer("max_items", None, "Largest number of patterns k that the complete signature accepts (default: twice the trained number).")
flags.DEFINE_integer("pattern_size", None, "Bits per pattern, only for a model without config.json (default: input width - 1).")
flags.DEFINE_integer("num_patterns", None, f"Patterns per training episode, only for a model without config.json (default {_S.num_items}).")
flags.DEFINE_integer("presentation_steps", None, f"Steps each pattern was shown for, only without config.json (default {_S.presentation_steps}).")
flags.DEFINE_integer("gap_steps", None, f"Zero steps after each presentation, only without config.json (default {_S.gap_steps}).")
flags.DEFINE_integer("presentations", None, f"Times the set was shown, only without config.json (default {_S.presentations}).")
flags.DEFINE_integer("query_steps", None, f"Steps the query was shown for, only without config.json (default {_S.query_steps}).")
flags.mark_flags_as_required(["model", "export_dir"])

FLAGS = flags.FLAGS
_SCHEDULE_FLAGS = {
    "num_patterns": "num_items",
    "presentation_steps": "presentation_steps",
    "gap_steps": "gap_steps",
    "presentations": "presentations",
    "query_steps": "query_steps",
}


def schedule_from_flags():
    """The schedule the flags give, or None if no schedule flag was given."""
    given = {field: FLAGS[name].value for name, field in _SCHEDULE_FLAGS.items()
             if FLAGS[name].value is not None}
    return episodes.Schedule(**given) if given else None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    tf.get_logger().setLevel("ERROR")
    try:
        exporter.export_model(
            FLAGS.model,
            FLAGS.export_dir,
            version=FLAGS.version,
            overwrite=FLAGS.overwrite,
            schedule=schedule_from_flags(),
            pattern_size=FLAGS.pattern_size,
            max_items=FLAGS.max_items,
        )
    except (ValueError, exporter.ExportCheckError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
