"""Run configs: one definition per setting, flags generated from it, JSON, validation."""

import dataclasses

import pytest
from absl import flags

from hebbkeras.tasks import episodes
from trainers import binary, cifar, compare, maze, omniglot
from trainers.config import PlasticityConfig, RunConfig, define_flags, from_flags

TASKS = (binary.BinaryConfig, cifar.CifarConfig, compare.CompareConfig)


def parse(cls, *args):
    values = flags.FlagValues()
    define_flags(cls, values)
    values(["prog", *args])
    return from_flags(cls, values), values


@pytest.mark.parametrize("cls", TASKS)
def test_flags_default_to_the_task_config_and_every_flag_has_help(cls):
    config, values = parse(cls)
    assert config == cls()
    for name, flag in values._flags().items():
        assert flag.help and len(flag.help) > 15, name
    # A setting a task only re-defaults keeps the help of its one definition.
    assert values["seed"].help == parse(RunConfig)[1]["seed"].help


def test_flags_set_nested_schedule_fields_under_the_task_names():
    config, _ = parse(binary.BinaryConfig, "--num_patterns=3", "--gap_steps=0", "--eta=0.5",
                      "--devices=/cpu:0,/cpu:1")
    assert config.schedule == episodes.Schedule(num_items=3, gap_steps=0)
    assert config.eta == 0.5 and config.devices == ("/cpu:0", "/cpu:1")
    images, _ = parse(cifar.CifarConfig, "--num_images=2")
    assert images.schedule.num_items == 2 and images.schedule.presentation_steps == 20


@pytest.mark.parametrize("args,message", [
    (["--num_patterns=0"], "num_patterns=0 must be an integer >= 1"),
    (["--presentation_steps=0"], "presentation_steps=0 must be an integer >= 1"),
    (["--erase_fraction=nan"], "erase_fraction=nan must be a finite number"),
    (["--input_scale=nan"], "input_scale=nan must be a finite number"),
    (["--learning_rate=inf"], "learning_rate=inf must be a finite number"),
    (["--eta=2"], "eta=2.0 must lie in (0, 1]"),
    (["--pattern_size=1"], "pattern_size=1 must be an integer >= 2"),
    (["--erase_fraction=0.001", "--pattern_size=10"], "erases no bit"),
    (["--extra_units=0"], "extra_units=0 must be an integer >= 1"),
    (["--episodes=0"], "episodes=0 must be an integer >= 1"),
    (["--run_dir="], "run_dir is empty"),
])
def test_bad_settings_name_the_flag(args, message):
    with pytest.raises(ValueError) as error:
        parse(binary.BinaryConfig, *args)[0].validate()
    assert message in str(error.value)


def test_an_unknown_choice_is_refused_by_the_flag_parser():
    with pytest.raises(flags.IllegalFlagValueError, match="input_mode"):
        parse(binary.BinaryConfig, "--input_mode=sum")


# Each trainer's plasticity flags as --help showed them before the settings were
# declared once (trainers.config.PlasticityConfig): (parser, default, choices).
COMPLETION_FLAGS = {  # binary, cifar and compare (CompletionConfig)
    "eta": ("FloatParser", 0.01, None),
    "trainable_eta": ("BooleanParser", False, None),
    "plasticity": ("EnumParser", "per_connection", ("per_connection", "shared", "none")),
    "rule": ("EnumParser", "hebb", ("hebb", "oja")),
}
PLASTICITY_FLAGS = {
    "binary": COMPLETION_FLAGS,
    "cifar": COMPLETION_FLAGS,
    "compare": {**COMPLETION_FLAGS, "eta": ("FloatParser", 0.05, None)},
    "maze": {"eta": ("FloatParser", 0.01, None),
             "trainable_eta": ("BooleanParser", True, None),
             "plasticity": ("EnumParser", "per_connection", ("per_connection", "shared")),
             "rule": ("EnumParser", "oja", ("hebb", "oja"))},
    "omniglot": {"eta": ("FloatParser", 0.5, None),  # the fast recipe's (paper: 0.01)
                 "trainable_eta": ("BooleanParser", True, None),
                 "plasticity": ("EnumParser", "per_connection", ("per_connection", "shared")),
                 "rule": ("EnumParser", "oja", ("oja", "hebb"))},
}
TRAINER_CONFIGS = {"binary": binary.BinaryConfig, "cifar": cifar.CifarConfig,
                   "compare": compare.CompareConfig, "maze": maze.MazeConfig,
                   "omniglot": omniglot.OmniglotConfig}


@pytest.mark.parametrize("task", sorted(PLASTICITY_FLAGS))
def test_plasticity_flags_are_declared_once_with_each_task_s_defaults(task):
    cls = TRAINER_CONFIGS[task]
    _, values = parse(cls)
    shared = {f.name: f.metadata["help"] for f in dataclasses.fields(PlasticityConfig)}
    for name, (parser, default, choices) in PLASTICITY_FLAGS[task].items():
        flag = values[name]
        assert (type(flag.parser).__name__, flag.default) == (parser, default), name
        assert tuple(getattr(flag.parser, "enum_values", None) or ()) == (choices or ()), name
        assert flag.help.endswith(shared[name]), name  # one definition, one help text
    # A narrowed choice is refused by validate too (a config built in Python).
    refused = [c for c in ("none", "hebb", "oja") if c not in PLASTICITY_FLAGS[task]["plasticity"][2]]
    for value in refused:
        with pytest.raises(ValueError, match="plasticity"):
            cls(plasticity=value).validate()


@pytest.mark.parametrize("cls", TASKS)
def test_json_round_trip_and_unknown_keys(cls):
    config = cls(seed=4, devices=("/cpu:0",), schedule=episodes.Schedule(2, 2, 1, 1, 3))
    assert cls.from_json(config.to_json()) == config
    # config.json of a task with more settings (and of older versions) still loads.
    text = config.to_json().replace('"seed": 4', '"seed": 4, "some_future_setting": 1')
    assert cls.from_json(text) == config


def test_differences_name_each_setting_and_ignore_spelling_and_display():
    a = binary.BinaryConfig(run_dir="runs/x")
    b = dataclasses.replace(a, run_dir="runs/x/", verbose=0, overwrite=True)
    assert a.differences(b) == []
    c = dataclasses.replace(a, eta=0.5, batch_size=4)
    assert a.differences(c) == ["batch_size=1 (was 4)", "eta=0.01 (was 0.5)"]


def test_compare_derives_each_model_from_the_binary_settings():
    config = compare.CompareConfig(run_dir="r", seed=2, plastic_episodes=30, baseline_episodes=40)
    plastic, lstm = config.model_config("plastic"), config.model_config("lstm")
    assert isinstance(plastic, binary.BinaryConfig) and type(plastic) is binary.BinaryConfig
    assert (plastic.pattern_size, plastic.units, plastic.eta, plastic.episodes) == (50, 51, 0.05, 30)
    assert plastic.learning_rate == 3e-4 and plastic.schedule.steps == 11
    assert (lstm.units, lstm.episodes, lstm.learning_rate, lstm.seed) == (2050, 40, 3e-5, 2)
    assert lstm.run_dir == "r/lstm"
    fields = {f.name for f in dataclasses.fields(binary.BinaryConfig)}
    assert fields <= {f.name for f in dataclasses.fields(compare.CompareConfig)}


def test_compare_checks_every_model_before_training_any(tmp_path, capsys):
    config = compare.CompareConfig(run_dir=str(tmp_path), plastic_episodes=0)
    with pytest.raises(ValueError, match="plastic_episodes=0 must be an integer >= 1"):
        compare.compare(config)
    with pytest.raises(ValueError, match="Unknown model='gru'"):
        compare.compare(compare.CompareConfig(run_dir=str(tmp_path), models=("plastic", "gru")))
    assert capsys.readouterr().out == ""
    assert not list(tmp_path.iterdir())


def test_the_summary_line_names_the_task_measure():
    summary = {"bit_error_last_10": 0.0123, "loss_last_10": 1.0}
    assert "mean bit error over the last 10 episodes: 0.0123" in binary.BinaryTask(None).summary_line(summary)
    task = cifar.CifarTask(cifar.CifarConfig(), data=None)
    line = task.summary_line({"evaluation": {"erased_mse": 0.07, "zero_fill_mse": 0.13,
                                             "mean_fill_mse": 0.09, "loss": 3.0}})
    assert "erased-half MSE 0.0700" in line and "zero fill 0.1300" in line and "nan" not in line


@dataclasses.dataclass
class RecipeConfig(RunConfig):
    """A config with a second recipe, as a task declares one."""

    RECIPES = {"paper": ("the paper's settings.", {"learning_rate": 3e-5, "batch_size": 1,
                                                   "episodes": 5000})}
    batch_size: int = 32
    learning_rate: float = 1e-3


def test_a_recipe_sets_what_the_command_line_leaves_alone():
    fast, values = parse(RecipeConfig)
    assert (fast.recipe, fast.batch_size, fast.learning_rate) == ("fast", 32, 1e-3)
    assert "paper: the paper's settings." in values["recipe"].help
    paper, _ = parse(RecipeConfig, "--recipe=paper")
    assert (paper.batch_size, paper.learning_rate, paper.episodes) == (1, 3e-5, 5000)
    mixed, _ = parse(RecipeConfig, "--recipe=paper", "--batch_size=8")
    assert (mixed.batch_size, mixed.learning_rate) == (8, 3e-5)
    assert RecipeConfig.with_recipe("paper", batch_size=8) == mixed
    assert RecipeConfig.with_recipe() == fast
    with pytest.raises(ValueError, match="recipe"):
        RecipeConfig(recipe="papr").validate()
    assert RecipeConfig.from_json(paper.to_json()) == paper
