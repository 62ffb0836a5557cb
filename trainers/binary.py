"""Train a plastic network to store binary patterns and complete a half-erased one.

The paper's first task (Miconi, Clune & Stanley 2018, section 4.1): 1,000-bit
patterns, 5 per episode, each shown for 10 steps with 3 zero steps after it, the
set shown 3 times; then one pattern with half its bits zeroed. 1,001 neurons.

    python -m trainers.binary                       # the paper's settings
    python -m trainers.binary --pattern_size 50 --episodes 100
"""

import hebbcli

hebbcli.import_tensorflow()  # first: TensorFlow's start-up noise stays hidden

import dataclasses

import hebbkeras
from hebbkeras import checks
from hebbkeras.tasks import episodes
from trainers import completion, loop
from trainers.config import define_flags, from_flags, setting


@dataclasses.dataclass
class BinaryConfig(completion.CompletionConfig):
    """The binary task; every default is the paper's."""

    erase_fraction: float = setting(
        0.5, "Fraction of the query's bits set to zero.",
        lambda n, v: checks.check_between(n, v, 0.0, 1.0))
    # An epoch (the unit of progress lines, history.csv and backups) of 50 steps, not 10:
    # a backup (24 MB of weights and Adam state) costs about one step, so every 10 steps
    # it added 10-15% to the step's time (benchmarks.trainer_overhead); every 50, 2-3%.
    steps_per_epoch: int = 50
    run_dir: str = "runs/binary"

    ITEM = "pattern"
    FLAG_NAMES = {"num_items": "num_patterns"}

    def check(self):
        episodes.check_pattern_size(self.pattern_size, self.erase_fraction)


class BinaryTask(loop.Task):
    """Random +1/-1 patterns; summed squared error; the bit error rate."""

    log_keys = ("loss", "bit_error")

    def model(self):
        return completion.build_model(self.config)

    def dataset(self, config, input_context=None, start=0):
        return episodes.binary_dataset(
            pattern_size=config.pattern_size, schedule=config.schedule,
            erase_fraction=config.erase_fraction, seed=config.seed,
            batch_size=config.batch_size, input_context=input_context, start=start)

    def compile_args(self):
        return {"loss": hebbkeras.summed_squared_error, "metrics": [hebbkeras.BitErrorRate()]}

    def summary_line(self, summary):
        return (f"mean bit error over the last {self.summary_window} episodes: "
                f"{summary[f'bit_error_last_{self.summary_window}']:.4f}")


def run(config):
    """Trains the binary task as `config` says; returns the loop's summary."""
    return loop.run(BinaryTask(config))


def main(argv):
    run(from_flags(BinaryConfig))


if __name__ == "__main__":
    define_flags(BinaryConfig)
    hebbcli.run(main)
