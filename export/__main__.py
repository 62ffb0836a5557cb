"""`python -m export`: a trained `.keras` model -> `EXPORT_DIR/<version>/` for TF Serving.

    python -m export --model runs/binary/model.keras --export_dir models/binary
    python -m export --model runs/binary/model.keras --export_dir models/binary --version 3 --overwrite

The trained schedule comes from `config.json` beside the model; for a model
without one, give it with the schedule flags (as in `python -m trainers.binary`);
fields not given take the defaults of `hebbkeras.tasks.episodes.Schedule`.
"""

import hebbcli  # first: Ctrl-C is one line from here on

from absl import app, flags

from export import versions

flags.DEFINE_string("model", None, "The trained model, e.g. runs/binary/model.keras (its config.json beside it gives the schedule).")
flags.DEFINE_string("export_dir", None, "The model's base directory MODELS/NAME (TF Serving's --model_base_path); versions are written to its integer subdirectories.")
flags.DEFINE_integer("version", None, "Version number to write (default: one more than the largest existing version, or 1).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --version (the old one is kept if the new one fails its check).")
flags.DEFINE_integer("max_items", None, "Largest number of patterns k that the complete signature accepts (default: twice the trained number).")
flags.DEFINE_integer("pattern_size", None, "Bits per pattern, only for a model without config.json (default: input width - 1).")
# The defaults are not spelled out: reading them from hebbkeras would import
# TensorFlow before --help or a path error could be answered.
flags.DEFINE_integer("num_patterns", None, "Patterns per training episode, only for a model without config.json (default: hebbkeras.tasks.episodes.Schedule's).")
flags.DEFINE_integer("presentation_steps", None, "Steps each pattern was shown for, only without config.json (default: hebbkeras.tasks.episodes.Schedule's).")
flags.DEFINE_integer("gap_steps", None, "Zero steps after each presentation, only without config.json (default: hebbkeras.tasks.episodes.Schedule's).")
flags.DEFINE_integer("presentations", None, "Times the set was shown, only without config.json (default: hebbkeras.tasks.episodes.Schedule's).")
flags.DEFINE_integer("query_steps", None, "Steps the query was shown for, only without config.json (default: hebbkeras.tasks.episodes.Schedule's).")
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
    """The schedule fields the flags give (a dict, maybe empty)."""
    return {field: FLAGS[name].value for name, field in _SCHEDULE_FLAGS.items()
            if FLAGS[name].value is not None}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        export()
    except KeyboardInterrupt:
        interrupted()
    except Exception as e:
        if hebbcli.was_interrupted():  # Ctrl-C that Keras or TensorFlow turned into another error
            interrupted()
        if isinstance(e, (ValueError, OSError)):
            hebbcli.fail(e)
        raise


def interrupted():
    left = versions.list_versions(FLAGS.export_dir)
    hebbcli.interrupted(
        f"interrupted: the export was stopped; {FLAGS.export_dir} holds only complete "
        f"versions ({', '.join(map(str, left)) or 'none'})."
    )


def export():
    # The paths first: a mistake there is reported before the slow import.
    versions.check_model_path(FLAGS.model)
    versions.check_export_dir(FLAGS.export_dir)
    hebbcli.import_tensorflow().get_logger().setLevel("ERROR")
    from export import exporter

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
    except exporter.ExportCheckError as e:
        hebbcli.fail(e)


if __name__ == "__main__":
    hebbcli.run(main)
