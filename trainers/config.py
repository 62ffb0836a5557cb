"""What a run is: its settings as dataclasses, their JSON form, validation and flags.

Every setting is written once, as a dataclass field with its default, help
text and check (`setting`). A task's config subclasses one of these and only
changes defaults, in plain `name: type = value` lines: the help and the check
are inherited. Flags are generated from the fields (`define_flags`) and read
back (`from_flags`), so a trainer's entry point holds no list of settings.

    @dataclasses.dataclass
    class CifarConfig(CompletionConfig):
        learning_rate: float = 1e-4     # help and check come from RunConfig
"""

import dataclasses
import json
import os
import sys

from absl import flags

from hebbkeras import checks, ops

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def setting(default, help, check=None, choices=None, flag=True):
    """A config field: `default`, `help` (the flag's help), and its validation.

    check: `check(name, value)` raising a ValueError (see `hebbkeras.checks`);
        floats are always checked to be finite.
    choices: the allowed values (an enum flag).
    flag: False for a setting that has no flag of its own.
    """
    return dataclasses.field(
        default=default,
        metadata={"help": help, "check": check, "choices": choices, "flag": flag},
    )


def positive_int(name, value):
    checks.check_int(name, value, 1)


def non_negative_int(name, value):
    checks.check_int(name, value, 0)


def _meta(cls, name):
    """The metadata of field `name`, from the class that defined it with `setting`;
    its choices narrowed by the class's `CHOICES` where it names the field."""
    for klass in cls.__mro__:
        field = getattr(klass, "__dataclass_fields__", {}).get(name)
        if field is not None and "help" in field.metadata:
            choices = getattr(cls, "CHOICES", {}).get(name)
            return field.metadata if choices is None else {**field.metadata, "choices": choices}
    return {}


@dataclasses.dataclass
class RunConfig:
    """How a run trains: the settings of the shared loop (`trainers.loop.run`).

    Subclasses add the task's settings and validate them in `check`.
    """

    episodes: int = setting(300, "Training episodes (rounded up to whole epochs).", positive_int)
    batch_size: int = setting(
        1, "Episodes per gradient step; the global batch under --strategy.",
        positive_int)
    learning_rate: float = setting(
        1e-3, "Adam learning rate.",
        checks.check_positive)
    steps_per_epoch: int = setting(
        10, "Gradient steps per Keras epoch: the unit of logs, progress and resumption.",
        positive_int)
    seed: int = setting(0, "Seed of the weights and of the episodes.", non_negative_int)
    jit_compile: bool = setting(
        False, "Compile the training step with XLA. Applies to --model rnn and lstm; a plastic "
        "network keeps its fused kernel, which XLA cannot compile, and trains without XLA "
        "(Keras warns). Measurements: BENCHMARKS.md.")
    run_dir: str = setting(
        "runs/run", "Directory for logs, backups, figures and the trained model.keras.")
    verbose: int = setting(
        1, "Progress display: 0 silent, 1 progress bar, 2 one line per epoch.",
        choices=(0, 1, 2))
    overwrite: bool = setting(
        False, "Train again from scratch in a run_dir that holds a finished or interrupted run "
        "(its files are deleted).")
    strategy: str = setting(
        "default",
        "default: one device. mirrored: tf.distribute.MirroredStrategy over all local GPUs "
        "(or --devices; the CPU where there is no GPU). multi_worker: "
        "MultiWorkerMirroredStrategy over the machines in the TF_CONFIG environment variable "
        "(each runs the same command). tpu: TPUStrategy (--devices names the TPU, empty for "
        "the local one). --batch_size is the global batch, split evenly across replicas.",
        choices=STRATEGIES)
    devices: tuple = setting(
        (), "Comma-separated devices of --strategy=mirrored (e.g. /gpu:0,/gpu:1; default: all "
        "local GPUs), or the TPU name or address of --strategy=tpu.")
    recipe: str = setting(
        "fast", "A named set of defaults: fast (the defaults: the recipe that reaches the task's "
        "result fastest on a 2-core CPU), or one of the task's other recipes (e.g. paper: the "
        "paper's or original code's settings). Flags given on the command line override it.")

    # Settings that do not change what a run computes: a resumed run may differ in them.
    NOT_COMPARED = ("verbose", "overwrite")
    # Named recipes besides "fast" (the field defaults): {name: (help, {field: value})}.
    # `--recipe NAME` (or `with_recipe`) applies its values to every field the command
    # line does not set; e.g. RECIPES = {"paper": ("the paper's settings", {"batch_size": 1})}.
    RECIPES = {}
    # A task's class may rename flags (FLAG_NAMES = {"num_items": "num_patterns"}), name
    # the items of its schedule's help (ITEM = "pattern"), leave settings without
    # a flag (NO_FLAGS = ("pattern_size",): the default is then the only value), narrow
    # a setting's choices (CHOICES = {"plasticity": ("per_connection", "shared")}) and
    # give an inherited setting its own help (HELP = {"jit_compile": "..."}).

    def check(self):
        """The task's own checks of several settings together; runs after `validate`'s."""

    def validate(self):
        """Raises a ValueError naming the first bad setting; returns the config."""
        if not str(self.run_dir).strip():
            raise ValueError("run_dir is empty: give the directory the run writes to.")
        for field in dataclasses.fields(self):
            meta, value = _meta(type(self), field.name), getattr(self, field.name)
            if isinstance(value, str) and not value.strip():
                raise ValueError(f"{field.name} is empty: give a value (see --help).")
            if isinstance(value, float):
                checks.check_finite(field.name, value)
            if meta.get("choices") is not None:
                checks.check_option(field.name, value, meta["choices"])
            if meta.get("check") is not None:
                meta["check"](field.name, value)
        checks.check_option("recipe", self.recipe, recipe_names(type(self)))
        self.check()
        return self

    @classmethod
    def with_recipe(cls, recipe="fast", **changes):
        """The config of recipe `recipe`, then `changes` (which win over the recipe)."""
        checks.check_option("recipe", recipe, recipe_names(cls))
        values = dict(cls.RECIPES[recipe][1]) if recipe != "fast" else {}
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"recipe {recipe!r} of {cls.__name__} sets unknown fields {unknown}")
        values.update(changes)
        return cls(recipe=recipe, **values)

    # ---------------------------------------------------------------- JSON
    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        """The config of `to_json`'s text; keys this class does not have are ignored."""
        values = json.loads(text)
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name not in values:
                continue
            value, default = values[field.name], getattr(cls, field.name, None)
            if dataclasses.is_dataclass(default):
                value = type(default)(**value)
            elif isinstance(default, tuple):
                value = tuple(value)
            kwargs[field.name] = value
        return cls(**kwargs)

    def differences(self, other):
        """`["name=value (was other's)", ...]` for the settings that differ, run_dir normalised."""
        mine, theirs = self.to_dict(), other.to_dict()
        for values in (mine, theirs):
            values["run_dir"] = os.path.abspath(values["run_dir"])
        return [f"{k}={mine[k]!r} (was {theirs.get(k)!r})"
                for k in mine if k not in self.NOT_COMPARED and mine[k] != theirs.get(k)]


def _unit_interval(name, value):
    checks.check_between(name, value, 0.0, 1.0, high_open=False)


@dataclasses.dataclass
class PlasticityConfig(RunConfig):
    """A run of a plastic network: the plasticity settings, declared here once.

    The arguments of the same names of `hebbkeras.PlasticRNN` and `PlasticDense`.
    A task changes their defaults in plain lines (`rule: str = "oja"`) and may
    narrow their choices (`CHOICES`); help and checks stay these.
    """

    eta: float = setting(
        0.01, "Plasticity rate eta in (0, 1] (0.01 in the paper); the initial value when "
        "--trainable_eta.", _unit_interval)
    trainable_eta: bool = setting(
        False, "Learn eta by gradient descent (the paper's binary task keeps it fixed; the "
        "original code, and the paper's Omniglot and maze tasks, learn it).")
    plasticity: str = setting(
        "per_connection", "alpha, the plasticity coefficients: per_connection (one per "
        "connection, the paper's), shared (one for all connections) or none (no plasticity: a "
        "plain RNN; a task with a non-plastic --model offers it there).", choices=ops.PLASTICITY)
    rule: str = setting(
        "hebb", "Trace update: hebb (decaying Hebbian trace, eq. 2) or oja (Oja's rule, the "
        "paper's Omniglot and maze tasks).", choices=ops.RULES)


@dataclasses.dataclass
class ModulatedConfig(PlasticityConfig):
    """A run of a plastic network that may be neuromodulated (Backpropamine): the
    arguments of the same names of `hebbkeras.PlasticRNN`, declared here once.

    A task's `check` calls `check_modulation` with whether its model is plastic.
    """

    modulation: str = setting(
        "none", "Neuromodulated plasticity (Backpropamine, docs/neuromodulation.md): none (the "
        "--rule trace), simple or retroactive (the network gates its trace, clipped to "
        "--trace_clip, with a learned signal; with --rule hebb, plastic model only).",
        choices=("none", "simple", "retroactive"))
    trace_clip: float = setting(
        1.0, "Bound c of the modulated trace, clipped to [-c, c] (1 in the original code).",
        checks.check_positive)
    modulation_fanout: bool = setting(
        False, "With --modulation: spread the modulation over the neurons by a learned vector "
        "(the original code's maze does so in simple mode).")

    def check_modulation(self, plastic):
        """Raises a ValueError naming the flags for a modulation the run cannot have."""
        if self.modulation != "none" and not plastic:
            raise ValueError(f"--modulation {self.modulation} gates the trace of the plastic "
                             f"network; --model {getattr(self, 'model', '?')} has none: pass "
                             "--model plastic or --modulation none.")
        if self.modulation != "none" and self.rule != "hebb":
            raise ValueError(f"--modulation {self.modulation} replaces the trace rule (a clipped "
                             f"Hebbian accumulation), so it needs --rule hebb; got --rule "
                             f"{self.rule}: add --rule hebb.")
        if self.modulation_fanout and self.modulation == "none":
            raise ValueError("--modulation_fanout spreads the modulation over the neurons: it "
                             "needs --modulation simple or retroactive.")


def recipe_names(cls):
    """The recipes a config class has: "fast" (its defaults) and those of `RECIPES`."""
    return ("fast",) + tuple(cls.RECIPES)


def recipe_help(cls):
    """The help of `--recipe` for `cls`: each recipe and what it is."""
    lines = ["Named set of defaults; flags given on the command line override it. fast: the "
             "defaults, the recipe that reaches this task's result fastest on a 2-core CPU."]
    lines += [f"{name}: {text}" for name, (text, _) in cls.RECIPES.items()]
    return " ".join(lines)


# -------------------------------------------------------------------- flags
# A nested dataclass field (the episode schedule) gets one flag per inner
# field; a task names them in FLAG_NAMES (`{"num_items": "num_patterns"}`).
SCHEDULE_HELP = {
    "num_items": "{item}s stored per episode.",
    "presentation_steps": "Steps each {item} is shown for.",
    "gap_steps": "Zero-input steps after each presentation.",
    "presentations": "Times the whole set is shown, each time in a new random order.",
    "query_steps": "Steps the degraded query is shown for at the end.",
}


def _flag_fields(cls):
    """`[(flag name, field name, inner field name or None, default, help, choices)]`."""
    names = getattr(cls, "FLAG_NAMES", {})
    hidden = getattr(cls, "NO_FLAGS", ())
    item = getattr(cls, "ITEM", "item")
    out = []
    for field in dataclasses.fields(cls):
        meta = _meta(cls, field.name)
        if not meta or not meta.get("flag", True) or field.name in hidden:
            continue
        default = getattr(cls, field.name)
        if dataclasses.is_dataclass(default):
            for inner in dataclasses.fields(default):
                text = SCHEDULE_HELP.get(inner.name, meta["help"]).format(item=item.capitalize())
                out.append((names.get(inner.name, inner.name), field.name, inner.name,
                            getattr(default, inner.name), text, None))
            continue
        text, choices = getattr(cls, "HELP", {}).get(field.name, meta["help"]), meta.get("choices")
        if field.name == "recipe":
            text, choices = recipe_help(cls), recipe_names(cls)
        out.append((names.get(field.name, field.name), field.name, None, default, text, choices))
    return out


def _caller():
    """The module that called the caller, named as absl names it (the main module by its path)."""
    name = sys._getframe(2).f_globals.get("__name__")
    return sys.argv[0] if name == "__main__" else name


def define_flags(cls, flag_values=flags.FLAGS):
    """Defines a flag for every setting of `cls` (a config class), with its defaults.

    Call it from the entry point (`if __name__ == "__main__"`), not at import,
    so that trainers can be imported together. The flags count as the caller's
    own, so its `--help` lists them.
    """
    kwargs = {"flag_values": flag_values, "module_name": _caller()}
    for flag, _, _, default, text, choices in _flag_fields(cls):
        if choices is not None and all(isinstance(c, str) for c in choices):
            flags.DEFINE_enum(flag, default, choices, text, **kwargs)
        elif isinstance(default, bool):
            flags.DEFINE_bool(flag, default, text, **kwargs)
        elif isinstance(default, int):
            flags.DEFINE_integer(flag, default, text, **kwargs)
        elif isinstance(default, float):
            flags.DEFINE_float(flag, default, text, **kwargs)
        elif isinstance(default, tuple):
            flags.DEFINE_list(flag, list(default), text, **kwargs)
        else:
            flags.DEFINE_string(flag, default, text, **kwargs)


def from_flags(cls, flag_values=flags.FLAGS):
    """A `cls` from the flags of `define_flags(cls)`; raises a ValueError naming the flag."""
    values, nested = {}, {}
    for flag, name, inner, default, _, _ in _flag_fields(cls):
        value = flag_values[flag].value
        if isinstance(default, tuple):
            value = tuple(value)
        if inner is None:
            values[name] = value
        else:
            nested.setdefault(name, {})[inner] = (flag, value)
    recipe = values.get("recipe", "fast")
    if recipe != "fast":  # the recipe's values, where the command line gave none
        given = {name for flag, name, inner, *_ in _flag_fields(cls)
                 if inner is None and flag_values[flag].present}
        for name, value in cls.RECIPES[recipe][1].items():
            if name not in given:
                values[name] = value
    for name, inner_values in nested.items():
        kind = type(getattr(cls, name))
        try:
            values[name] = kind(**{k: v for k, (_, v) in inner_values.items()})
        except ValueError as e:  # name the flag, not the inner field
            text = str(e)
            for inner, (flag, _) in inner_values.items():
                if text.startswith(f"{inner}="):
                    text = flag + text[len(inner):]
            raise ValueError(text) from None
    return cls(**values)


def define_data_flags(source, flag_values=flags.FLAGS):
    """`--data_dir`, `--manual_dir` and `--download` of a task whose data comes from tfds.

    source: the dataset's `hebbkeras.tasks.tfds_data.Source` (its name, version and the
    files a manual directory must hold).
    """
    files = ", ".join(source.manual_files)
    kwargs = {"flag_values": flag_values, "module_name": _caller()}
    flags.DEFINE_string(
        "data_dir", None, f"TFDS data directory holding (or to receive) {source.name}/"
        f"{source.version}. Default: $TFDS_DATA_DIR, else ~/tensorflow_datasets.", **kwargs)
    flags.DEFINE_string(
        "manual_dir", None, f"Directory holding {files}, downloaded elsewhere: tfds prepares "
        "the data from it without a network.", **kwargs)
    flags.DEFINE_bool(
        "download", True, f"Download and prepare {source.title} if it is not in --data_dir. With "
        "--nodownload a missing dataset stops the run at once.", **kwargs)


def with_data_flags(error):
    """`error` (a `DataUnavailableError`) with the names of the flags its advice means."""
    return type(error)(
        f"{error}\n(data_dir and manual_dir are the flags --data_dir and --manual_dir; "
        "--nodownload disables downloading.)")
