"""Train a recurrent agent to find, from reward alone, which cue is rewarded in each episode.

The cue-reward association task of Backpropamine (Miconi et al., ICLR 2019,
section 4.1; `hebbkeras.tasks.cue_reward`): each episode draws 4 random binary
cues of 20 bits and makes one the target; every trial shows 2 of them and asks
"was the target shown?" (+1 right, -1 wrong). The target changes every
episode, so the agent must learn it within the episode from the rewards. An
advantage actor-critic (`hebbkeras.tasks.cue_agent.CueRewardAgent`) trains a
neuromodulated plastic network (`--modulation simple|retroactive`), a plastic
one without modulation (`--modulation none`), or a non-plastic RNN or LSTM.

    python -m trainers.cue_reward                               # retroactive modulation, fast recipe
    python -m trainers.cue_reward --modulation none --run_dir runs/cue_plastic
    python -m trainers.cue_reward --model rnn --modulation none --run_dir runs/cue_rnn
    python -m trainers.cue_reward --compare runs/cue_reward,runs/cue_plastic,runs/cue_rnn
    python -m trainers.cue_reward --recipe paper                # the original code's settings

The defaults are a small, fast recipe: 32 neurons, batch 30, Adam 1e-3 with
the gradient norm clipped at 2, no exploration term, 240,000 episodes (about 4
minutes of training on a quiet 2-core CPU). With them the modulated network
learned the task on every seed run (8.8 to 11.5 reward per episode of about
18.4 possible, leaving chance within 47,000 episodes), while the plastic
network without modulation and the rnn stayed at chance (docs/neuromodulation.md).
The original code's exploration term (`--exploration_weight 0.1`) pulls the
policy towards uniform at every step; with it the small network's hidden state
saturates or falls silent on most seeds (`python -m benchmarks.cue_diagnosis`
tells). `--recipe paper` is the original code's: 200 neurons, batch 30, Adam
1e-4 (epsilon 1e-6), clipping at 2, exploration weight 0.1, 200,000 gradient
steps (6,000,000 episodes: days here).

Outputs (besides the shared loop's, see `trainers.loop`): `learning_curve.png`
(reward per episode, running mean over 1,000 episodes), also in TensorBoard;
`summary.json` holds `reward_last_1000`. The last line prints the mean reward
per episode over the last 1,000 episodes.
"""

import hebbcli

hebbcli.import_tensorflow()  # first: TensorFlow's start-up noise stays hidden

import dataclasses
import os

import keras

from hebbkeras import checks
from hebbkeras.tasks import cue_agent, cue_reward, rl
from trainers import figures, loop, maze_figures, reward_runs
from trainers.config import ModulatedConfig, setting

WINDOW = 1000  # episodes of the final mean and of the learning curve's running mean
ADAM_EPSILON = 1e-6  # the original code's
TITLE = "Cue-reward association: reward per episode during training"


def _non_negative(name, value):
    checks.check_finite(name, value)
    if value < 0:
        raise ValueError(f"{name}={value} must be >= 0.")


@dataclasses.dataclass
class CueRewardConfig(ModulatedConfig):
    """The cue-reward task. Defaults: the fast recipe (32 neurons, batch 30, Adam 1e-3, gradient
    norm clipped at 2, no exploration term, 240,000 episodes); `--recipe paper`: the original
    code's (200 neurons, Adam 1e-4, exploration weight 0.1, 6,000,000 episodes)."""

    model: str = setting(
        "plastic", "plastic: PlasticRNN (dense input, --modulation or --rule, --plasticity, "
        "learned eta). rnn: the same cell without plasticity. lstm: keras.layers.LSTM.",
        choices=rl.NETWORKS)
    modulation: str = setting(
        "retroactive", "Neuromodulation of the plastic network's trace (Backpropamine): "
        "retroactive (through an eligibility trace), simple, or none (the trace follows "
        "--rule). Must be none for --model rnn and lstm.", choices=rl.MODULATIONS)
    units: int = setting(
        32, "Recurrent neurons or LSTM units (200 in the original code).",
        lambda n, v: checks.check_int(n, v, 1))
    eta: float = 0.1
    trainable_eta: bool = True
    CHOICES = {"plasticity": ("per_connection", "shared")}
    cues: int = setting(4, "Cues per episode (a trial shows half of them).",
                        lambda n, v: checks.check_int(n, v, 2))
    cue_bits: int = setting(20, "Bits of a cue (each -1 or +1).",
                            lambda n, v: checks.check_int(n, v, 2))
    episode_length: int = setting(120, "Steps per episode.", lambda n, v: checks.check_int(n, v, 1))
    reward: float = setting(1.0, "Reward of a right answer (a wrong one costs as much).")
    discount: float = setting(0.9, "Discount of the returns, in [0, 1].",
                              lambda n, v: checks.check_between(n, v, 0.0, 1.0, False, False))
    value_weight: float = setting(0.1, "Weight of the value loss.", _non_negative)
    exploration_weight: float = setting(
        0.0, "Weight of the exploration term sum(p^2), the original code's stand-in for entropy "
        "(0.1 there, and in --recipe paper). At every step it pulls the policy towards uniform, "
        "also where the answer earns nothing; with it the small default network stops learning "
        "on most seeds (docs/neuromodulation.md).", _non_negative)
    clip_norm: float = setting(
        2.0, "Clip the gradient's global norm to this (0: no clipping; 2 in the original code).",
        _non_negative)
    learning_rate: float = 1e-3
    batch_size: int = 30
    episodes: int = 240_000
    steps_per_epoch: int = 100
    jit_compile: bool = setting(
        True, "Compile the rollout and its gradient with XLA (far faster on CPU and GPU); off "
        "under --strategy other than default.")
    run_dir: str = "runs/cue_reward"

    RECIPES = {"paper": (
        "the original code's settings (200 neurons, batch 30, Adam 1e-4, gradient norm clipped "
        "at 2, exploration weight 0.1, 200,000 steps of 30 episodes: days on a 2-core CPU).",
        {"units": 200, "learning_rate": 1e-4, "exploration_weight": 0.1, "episodes": 6_000_000,
         "steps_per_epoch": 100})}

    def check(self):
        self.check_modulation(self.model == "plastic")
        if self.strategy != "default" and self.jit_compile:
            raise ValueError(
                f"jit_compile=True fails under strategy={self.strategy!r} (XLA and variables "
                "of other devices): pass --nojit_compile.")
        self.task  # checks cues and cue_bits together

    @property
    def task(self):
        return cue_reward.CueReward(self.cues, self.cue_bits, self.episode_length, self.reward)

    @property
    def label(self):
        """The model, as the figures and tables name it."""
        name = self.model if self.model != "plastic" or self.modulation == "none" else (
            f"plastic, {self.modulation} modulation")
        return f"{name} ({self.units} units)"


def build_agent(config):
    """The uncompiled `CueRewardAgent` of `config`."""
    return cue_agent.CueRewardAgent(
        config.task, network=config.model, units=config.units, plasticity=config.plasticity,
        rule=config.rule, modulation=config.modulation, trace_clip=config.trace_clip,
        modulation_fanout=config.modulation_fanout,
        eta=config.eta, trainable_eta=config.trainable_eta, discount=config.discount,
        value_weight=config.value_weight, exploration_weight=config.exploration_weight)


class CueRewardFigures(keras.callbacks.Callback):
    """At the end of training: learning_curve.png, also in TensorBoard."""

    def __init__(self, config, run_dir):
        super().__init__()
        self.config, self.run_dir = config, run_dir

    def on_train_end(self, logs=None):
        rows = figures.read_csv(os.path.join(self.run_dir, "episodes.csv"))
        rewards = maze_figures.episode_rewards(rows["episode"], rows["reward"])
        curve = maze_figures.reward_curves(
            {self.config.label: [rewards]}, window=WINDOW, title=TITLE,
            baseline=("random answers", 0.0))
        figures.publish({"learning_curve": curve}, self.run_dir, int(rows["episode"][-1]))


class CueRewardTask(loop.Task):
    """Episodes of the task from their seeds; the agent's own A2C train_step (no Keras loss)."""

    log_keys = ("loss", "reward")
    summary_window = WINDOW
    outputs = ("learning_curve.png",)

    def model(self):
        return build_agent(self.config)

    def dataset(self, config, input_context=None, start=0):
        return cue_reward.episode_seeds(config.seed, config.batch_size, start, input_context)

    def optimizer(self):
        return keras.optimizers.Adam(self.config.learning_rate, epsilon=ADAM_EPSILON,
                                     global_clipnorm=self.config.clip_norm or None)

    def callbacks(self, run_dir):
        return [CueRewardFigures(self.config, run_dir)]

    def summary_line(self, summary):
        last = min(self.summary_window, summary["episodes"])
        return (f"mean reward per episode over the last {last} episodes: "
                f"{summary[f'reward_last_{self.summary_window}']:.3f} (random answers: 0)")


def run(config):
    """Trains the cue-reward task as `config` says; returns the loop's summary."""
    return loop.run(CueRewardTask(config))


def compare(run_dirs, figure_path, window=WINDOW):
    """Draws the runs' learning curves, grouped by model, into `figure_path`; returns the table
    (see `trainers.reward_runs.compare`; random answers earn 0)."""
    return reward_runs.compare(
        run_dirs, figure_path,
        read=lambda d: reward_runs.read_run(d, CueRewardConfig, "trainers.cue_reward"),
        label=lambda c: c.label, window=window, title=TITLE, baseline=("random answers", 0.0))


def define_cli_flags():
    reward_runs.define_cli_flags(CueRewardConfig, "cue_reward_curves.png")


def main(argv):
    reward_runs.main(CueRewardConfig, run, compare)


if __name__ == "__main__":
    define_cli_flags()
    hebbcli.run(main, errors=(ValueError,))
