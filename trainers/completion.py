"""The pattern-completion network the binary, CIFAR and 50-bit tasks share.

An episode `(batch, steps, pattern_size + 1)` (the items, then a bias input
that is 1 at every step) runs through a recurrent network whose output at the
last step is read as the completed item: the plastic network of the paper, or
one of its baselines. The tasks differ only in their data, defaults, measures.
"""

import dataclasses

import keras

import hebbkeras
from hebbkeras import checks, ops
from hebbkeras.tasks import episodes
from trainers.config import PlasticityConfig, setting

MODELS = ("plastic", "rnn", "lstm")


def _extra_units(name, value):
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(
            f"{name}={value} must be an integer >= 1: the network needs at least the pattern "
            "neurons plus the bias neuron (the paper's baselines use 2000).")


@dataclasses.dataclass
class CompletionConfig(PlasticityConfig):
    """A pattern-completion run: the network and the episode schedule."""

    pattern_size: int = setting(
        1000, "Units per item (bits of a pattern, pixels of an image); the network has "
        "--extra_units more neurons (default 1, the bias).",
        lambda n, v: checks.check_int(n, v, 2))
    schedule: episodes.Schedule = setting(
        episodes.Schedule(), "The episode schedule (one flag per field).")
    model: str = setting(
        "plastic",
        "plastic: the plastic network (PlasticRNN). rnn: the same cell with plasticity='none', "
        "so neurons, clamped inputs, tanh and initialisation match the plastic network and only "
        "alpha*hebb is missing. lstm: keras.layers.LSTM with a tanh Dense readout of the item "
        "(its input kernel takes the item + bias inputs).", choices=MODELS)
    extra_units: int = setting(
        1, "Neurons (plastic, rnn) or LSTM units beyond the item size: 1 is the bias neuron; the "
        "paper's baselines use 2000. With clamp or add input, input i drives neuron i and the "
        "extra neurons get no input.", _extra_units)
    input_mode: str = setting(
        "clamp", "clamp: a neuron with non-zero input takes that value (paper); add: input * "
        "input_scale is added to the pre-activation (original code); dense: learned input kernel.",
        choices=ops.INPUT_MODES)
    input_scale: float = setting(20.0, "Input multiplier of --input_mode=add (20 in the original code).")

    ITEM = "item"

    @property
    def units(self):
        """Neurons (plastic, rnn) or LSTM units: the item, then `extra_units`."""
        return self.pattern_size + self.extra_units

    @property
    def input_width(self):
        return self.pattern_size + 1  # the item, then the bias input


def build_model(config):
    """The network of `config.model` (uncompiled); its output is read at the last step.

    plastic: `Input(steps, pattern + 1) -> PlasticRNN(pattern + extra_units)`.
    rnn:     the same with `plasticity="none"`: the plastic cell without
             `alpha * hebb`, so the only difference to the plastic network is
             the plasticity (neurons, clamped inputs, tanh, initialisation agree).
    lstm:    `keras.layers.LSTM(pattern + extra_units) -> Dense(pattern, tanh)`;
             the LSTM's input kernel takes the `pattern + 1` inputs.
    With more neurons than inputs in "clamp" or "add" input mode, input `i`
    still drives neuron `i` and the extra neurons get no input (the inputs are
    zero-padded): they are reached only through the recurrent weights.
    """
    inputs = keras.Input((config.schedule.steps, config.input_width), name="episode")
    if config.model == "lstm":
        x = keras.layers.LSTM(config.units, name="lstm")(inputs)
        outputs = keras.layers.Dense(config.pattern_size, activation="tanh", name="readout")(x)
    else:
        x = inputs
        extra = config.units - config.input_width
        if extra and config.input_mode != "dense":
            # (batch, time, width) -> (batch, time, units): zeros for the extra neurons.
            x = keras.layers.Permute((2, 1), name="to_features_first")(x)
            x = keras.layers.ZeroPadding1D((0, extra), name="pad_extra_neurons")(x)
            x = keras.layers.Permute((2, 1), name="to_time_first")(x)
        outputs = hebbkeras.PlasticRNN(
            config.units,
            input_mode=config.input_mode,
            input_scale=config.input_scale,
            eta=config.eta,
            trainable_eta=config.trainable_eta,
            plasticity=config.plasticity if config.model == "plastic" else "none",
            rule=config.rule,
            name="plastic_rnn" if config.model == "plastic" else "rnn",
        )(x)
    return keras.Model(inputs, outputs, name=f"{config.model}_network")
