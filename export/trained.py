"""What a model was trained with: the pattern size and episode schedule its signatures need.

They come from the training run's `config.json` beside the model (a JSON dict
of the run's settings; the exporter reads `pattern_size` and `schedule`, a dict
of `hebbkeras.tasks.episodes.Schedule`'s fields, and keeps the rest as it is), from
the export's arguments, or, for a model with neither, from `Schedule`'s
defaults and the model's input width (`pattern_size + 1`). Which one it was is
recorded, so that an export never presents defaults as the run's settings.
"""

import dataclasses
import json
import os
from typing import Optional

from hebbkeras.tasks import episodes

SCHEDULE_FIELDS = tuple(f.name for f in dataclasses.fields(episodes.Schedule))
SCHEDULE_FLAGS = "--num_patterns, --presentation_steps, --gap_steps, --presentations, --query_steps"


@dataclasses.dataclass(frozen=True)
class Trained:
    """The settings the signatures are built from, and where they came from.

    `schedule_from` is "run_config" (the run's settings), "arguments" (the
    export's flags or arguments; fields not given are `Schedule`'s defaults)
    or "defaults" (no run config, nothing given). `run_config` is the run's
    settings (None if there were none) and `run_config_source` the file they
    were read from, or "export_model(config=...)".
    """

    pattern_size: int
    schedule: episodes.Schedule
    schedule_from: str
    run_config: Optional[dict] = None
    run_config_source: Optional[str] = None


def read_run_config(model_path):
    """`(settings, path)` of the `config.json` beside `model_path`, or `(None, None)`."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path) as f:
            settings = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"Cannot read the run's settings from {path} ({e}). Fix or move that file; "
            f"without it, give the schedule the model was trained with ({SCHEDULE_FLAGS})."
        ) from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} holds a {type(settings).__name__}, not the run's settings (a JSON object).")
    return settings, path


def as_settings(config):
    """A run config given to `export_model` as a dict: a mapping, an object with
    `to_json()` (the trainers' configs) or a dataclass."""
    if isinstance(config, dict):
        return json.loads(json.dumps(config))  # a copy, and proof that it is JSON
    if hasattr(config, "to_json"):
        return json.loads(config.to_json())
    if dataclasses.is_dataclass(config):
        return json.loads(json.dumps(dataclasses.asdict(config)))
    raise ValueError(
        f"config={config!r}: pass the run's settings as a dict (its config.json), "
        "or an object with to_json()."
    )


def resolve(model, run_config=None, source=None, schedule=None, pattern_size=None):
    """The `Trained` settings for `model`, checked against its input shape.

    Args:
        model: the Keras model; its one input is `(batch, steps, pattern_size + 1)`.
        run_config: the run's settings (a dict) or None.
        source: where `run_config` came from (a path), for messages.
        schedule: a `Schedule`, or a dict of some of its fields, given to the
            export; with a run config each given field must agree with it.
        pattern_size: given to the export; with a run config it must agree.
    """
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 3:
        raise ValueError(
            f"The model takes inputs of shapes {[tuple(i.shape) for i in model.inputs]}; "
            "the exporter needs one episode input (batch, steps, pattern_size + 1)."
        )
    _, steps, width = model.inputs[0].shape
    given = _schedule_fields(schedule)
    if run_config is not None:
        source = source or "export_model(config=...)"
        trained = Trained(
            _run_pattern_size(run_config, source),
            _run_schedule(run_config, source),
            "run_config",
            run_config,
            source,
        )
        for name, value in given.items():
            if value != getattr(trained.schedule, name):
                raise ValueError(
                    f"schedule field {name}={value} disagrees with the run's settings in {source} "
                    f"({name}={getattr(trained.schedule, name)}); leave it out to use the run's."
                )
        if pattern_size is not None and pattern_size != trained.pattern_size:
            raise ValueError(
                f"pattern_size={pattern_size} disagrees with the run's settings in {source} "
                f"(pattern_size={trained.pattern_size}); leave it out to use the run's."
            )
    else:
        try:
            built = episodes.Schedule(**given)
        except (TypeError, ValueError) as e:
            raise ValueError(f"schedule={schedule}: {e}") from None
        trained = Trained(
            width - 1 if pattern_size is None else pattern_size,
            built,
            "arguments" if given else "defaults",
        )
    if trained.pattern_size + 1 != width:
        raise ValueError(
            f"pattern_size={trained.pattern_size} needs an input width of "
            f"{trained.pattern_size + 1} (the pattern, then the bias input), but the "
            f"model's input is (batch, {steps}, {width})."
        )
    if steps is not None and trained.schedule.steps != steps:
        origin = {
            "run_config": f"The run's settings in {source} give",
            "arguments": "The schedule given gives",
            "defaults": "No run config (config.json) was given or found beside the model, and the default schedule gives",
        }[trained.schedule_from]
        raise ValueError(
            f"{origin} {trained.schedule}, episodes of {trained.schedule.steps} steps, but the "
            f"model was built for {steps}. Give the schedule it was trained with ({SCHEDULE_FLAGS})."
        )
    return trained


def _schedule_fields(schedule):
    if schedule is None:
        return {}
    if isinstance(schedule, episodes.Schedule):
        return dataclasses.asdict(schedule)
    unknown = sorted(set(schedule) - set(SCHEDULE_FIELDS))
    if unknown:
        raise ValueError(f"schedule fields {unknown} do not exist; the fields are {list(SCHEDULE_FIELDS)}.")
    return {k: v for k, v in schedule.items() if v is not None}


def _run_pattern_size(settings, source):
    size = settings.get("pattern_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(
            f"The run's settings in {source} have pattern_size={size!r}; the exporter needs "
            "a positive integer there (the binary task's pattern size)."
        )
    return size


def _run_schedule(settings, source):
    fields = settings.get("schedule")
    if not isinstance(fields, dict) or set(fields) != set(SCHEDULE_FIELDS):
        raise ValueError(
            f"The run's settings in {source} have schedule={fields!r}; the exporter needs "
            f"a dict with the fields {list(SCHEDULE_FIELDS)}."
        )
    try:
        return episodes.Schedule(**fields)
    except ValueError as e:
        raise ValueError(f"The run's settings in {source}: {e}") from None
