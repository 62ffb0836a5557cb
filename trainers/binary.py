"""Train a plastic network to store binary patterns and complete a half-erased one.

The paper's first task (Miconi, Clune & Stanley 2018, section 4.1): 1,000-bit
patterns, 5 per episode, each shown for 10 steps with 3 zero steps after it, the
set shown 3 times; then one pattern with half its bits zeroed. 1,001 neurons.

    python -m trainers.binary                       # the paper's settings
    python -m trainers.binary --pattern_size 50 --episodes 100
"""

import sys

from absl import app, flags

from hebbkeras import ops
from trainers import common

_D = common.Config()
_BINARY_FLAGS = (
    "model", "extra_units", "pattern_size", "erase_fraction", "input_mode", "input_scale",
)


def define_flags():
    flags.DEFINE_enum("model", _D.model, common.MODELS, "plastic: the plastic network (PlasticRNN). rnn: the same cell with plasticity='none', so neurons, clamped inputs, tanh and initialisation match the plastic network and only alpha*hebb is missing (Keras SimpleRNN would add an input kernel and change how inputs reach neurons). lstm: keras.layers.LSTM with a tanh Dense readout of the pattern (its input kernel takes the pattern + bias inputs).")
    flags.DEFINE_integer("extra_units", _D.extra_units, "Neurons (plastic, rnn) or LSTM units beyond the pattern size: 1 is the bias neuron; the paper's baselines use 2000. With clamp or add input, input i drives neuron i and the extra neurons get no input.")
    flags.DEFINE_integer("pattern_size", _D.pattern_size, "Bits per pattern; the network has --extra_units more neurons (default 1, the bias).")
    flags.DEFINE_float("erase_fraction", _D.erase_fraction, "Fraction of the query's bits set to zero.")
    flags.DEFINE_enum("input_mode", _D.input_mode, ops.INPUT_MODES, "clamp: a neuron with non-zero input takes that value (paper); add: input * input_scale is added to the pre-activation (original code); dense: learned input kernel.")
    flags.DEFINE_float("input_scale", _D.input_scale, "Input multiplier of --input_mode=add (20 in the original code).")
    common.define_config_flags(_D, item="pattern", items_flag="num_patterns")
    flags.adopt_module_key_flags(common)  # list the shared flags in --help


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = common.config_from_flags(common.Config, "num_patterns", _BINARY_FLAGS)
        common.check_config(config)
    except ValueError as e:
        sys.exit(f"error: {e}")
    try:
        common.run(config)
    except KeyboardInterrupt:
        sys.exit(130)
    except ValueError as e:  # settings that only the run can check (strategy, backup)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
