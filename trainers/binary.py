"""Train a plastic network to store binary patterns and complete a half-erased one.

The paper's first task (Miconi, Clune & Stanley 2018, section 4.1): 1,000-bit
patterns, 5 per episode, each shown for 10 steps with 3 zero steps after it, the
set shown 3 times; then one pattern with half its bits zeroed. 1,001 neurons.

    python -m trainers.binary                       # the paper's settings
    python -m trainers.binary --pattern_size 50 --episodes 100
"""

import sys

from absl import app, flags

from hebbkeras import episodes, ops
from trainers import common

_D = common.Config()
_S = _D.schedule

flags.DEFINE_enum("model", _D.model, common.MODELS, "plastic: the plastic network (PlasticRNN). rnn: the same cell with plasticity='none', so neurons, clamped inputs, tanh and initialisation match the plastic network and only alpha*hebb is missing (Keras SimpleRNN would add an input kernel and change how inputs reach neurons). lstm: keras.layers.LSTM with a tanh Dense readout of the pattern (its input kernel takes the pattern + bias inputs).")
flags.DEFINE_integer("extra_units", _D.extra_units, "Neurons (plastic, rnn) or LSTM units beyond the pattern size: 1 is the bias neuron; the paper's baselines use 2000. With clamp or add input, input i drives neuron i and the extra neurons get no input.")
flags.DEFINE_integer("pattern_size", _D.pattern_size, "Bits per pattern; the network has --extra_units more neurons (default 1, the bias).")
flags.DEFINE_integer("num_patterns", _S.num_items, "Patterns stored per episode.")
flags.DEFINE_integer("presentation_steps", _S.presentation_steps, "Steps each pattern is shown for.")
flags.DEFINE_integer("gap_steps", _S.gap_steps, "Zero-input steps after each presentation.")
flags.DEFINE_integer("presentations", _S.presentations, "Times the whole set is shown, each time in a new random order.")
flags.DEFINE_integer("query_steps", _S.query_steps, "Steps the half-erased query is shown for at the end.")
flags.DEFINE_float("erase_fraction", _D.erase_fraction, "Fraction of the query's bits set to zero.")
flags.DEFINE_enum("input_mode", _D.input_mode, ops.INPUT_MODES, "clamp: a neuron with non-zero input takes that value (paper); add: input * input_scale is added to the pre-activation (original code); dense: learned input kernel.")
flags.DEFINE_float("input_scale", _D.input_scale, "Input multiplier of --input_mode=add (20 in the original code).")
flags.DEFINE_float("eta", _D.eta, "Plasticity rate in (0, 1] (0.01 in the paper).")
flags.DEFINE_bool("trainable_eta", _D.trainable_eta, "Learn eta by gradient descent (the paper keeps it fixed).")
flags.DEFINE_enum("plasticity", _D.plasticity, ops.PLASTICITY, "One alpha per connection, one shared alpha, or none (a plain RNN).")
flags.DEFINE_enum("rule", _D.rule, ops.RULES, "Trace update: hebb (decaying Hebbian trace, eq. 2) or oja (Oja's rule).")
flags.DEFINE_integer("episodes", _D.episodes, "Training episodes (rounded up to whole epochs).")
flags.DEFINE_integer("batch_size", _D.batch_size, "Episodes per gradient step (1 in the paper).")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Adam learning rate (0.001 in the paper).")
flags.DEFINE_integer("steps_per_epoch", _D.steps_per_epoch, "Gradient steps per Keras epoch: the unit of logs, progress and resumption.")
flags.DEFINE_integer("seed", _D.seed, "Seed of the weights and of the episodes.")
flags.DEFINE_bool("jit_compile", _D.jit_compile, "Compile the training step with XLA. Off by default: XLA cannot compile the fused plastic kernel, so the layer then runs its slower, memory-hungry cell loop (measured in BENCHMARKS.md).")
flags.DEFINE_string("run_dir", _D.run_dir, "Directory for logs, backups and the trained model.keras.")
flags.DEFINE_integer("verbose", _D.verbose, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")
common.define_strategy_flags()

FLAGS = flags.FLAGS


def config_from_flags():
    schedule = episodes.Schedule(
        num_items=FLAGS.num_patterns,
        presentation_steps=FLAGS.presentation_steps,
        gap_steps=FLAGS.gap_steps,
        presentations=FLAGS.presentations,
        query_steps=FLAGS.query_steps,
    )
    names = [
        "model", "extra_units", "pattern_size", "erase_fraction", "input_mode", "input_scale", "eta",
        "trainable_eta", "plasticity", "rule", "episodes", "batch_size",
        "learning_rate", "steps_per_epoch", "seed", "jit_compile", "run_dir", "verbose",
    ]
    return common.Config(schedule=schedule, **{n: FLAGS[n].value for n in names},
                         **common.strategy_flags())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags()
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
    app.run(main)
