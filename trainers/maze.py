"""Train a recurrent agent to find and return to a hidden reward in a grid maze.

The ICML 2018 paper's third task (Miconi, Clune & Stanley 2018, section 4.4):
a 9 x 9 maze whose reward sits at a new random cell every episode; reaching it
gives +10 and teleports the agent, so an agent that remembers where it was
collects it again and again in the 250 steps. An advantage actor-critic
(`hebbkeras.tasks.rl.MazeAgent`) trains a plastic recurrent network (Oja's rule,
one alpha per connection, learned eta; or, with `--modulation`, a neuromodulated
Hebbian trace, docs/neuromodulation.md) or a non-plastic RNN or LSTM baseline.

    python -m trainers.maze                                  # the fast recipe (below)
    python -m trainers.maze --model rnn --run_dir runs/maze_rnn   # its non-plastic baseline
    python -m trainers.maze --compare runs/maze,runs/maze_rnn --figure curves.png
    python -m trainers.maze --recipe paper                   # the original code's settings
    python -m trainers.maze --modulation retroactive --rule hebb  # neuromodulated (Backpropamine)

The defaults are the recipe that shows plastic > rnn fastest on a 2-core CPU:
100 neurons, 30 episodes per gradient step, Adam 3e-4 with the gradient norm
clipped at 4 (the later Backpropamine code's batching and clipping), 15,000
episodes (minutes). `--recipe paper` is what the original code ran: 200
neurons, batch 1, Adam 1e-4, no clipping, 1,000,000 episodes (days here).

Outputs (besides the shared loop's, see `trainers.loop`): `learning_curve.png`
(reward per episode, running mean over 1,000 episodes, and a random policy's)
and `path.png` (the trained agent's path in one held-out maze), both also in
TensorBoard. The last line prints the mean reward per episode over the last
1,000 episodes. See docs/maze.md.
"""

import hebbcli

hebbcli.import_tensorflow()  # first: TensorFlow's start-up noise stays hidden

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from hebbkeras import checks
from hebbkeras.tasks import maze, rl
from trainers import figures, loop, maze_figures, reward_runs
from trainers.config import ModulatedConfig, setting

WINDOW = 1000  # episodes of the final mean and of the learning curve's running mean
EVAL_SEED = 1_000_003  # held-out episodes (path picture, random policy) use seed + EVAL_SEED
RANDOM_EPISODES = 1000  # episodes over which the random policy's reward is measured
ADAM_EPSILON = 1e-4  # the original code's
FIGURES = ("learning_curve.png", "path.png")


def _non_negative(name, value):
    checks.check_finite(name, value)
    if value < 0:
        raise ValueError(f"{name}={value} must be >= 0.")


@dataclasses.dataclass
class MazeConfig(ModulatedConfig):
    """The maze task. Defaults: the fast recipe (batch 30, Adam 3e-4, gradient norm clipped at
    4, 100 neurons, 15,000 episodes); `--recipe paper`: the original code's (batch 1, Adam 1e-4,
    no clipping, 200 neurons, 1,000,000 episodes)."""

    model: str = setting(
        "plastic", "plastic: PlasticRNN (dense input, --rule, --plasticity, learned eta). rnn: "
        "the same cell without plasticity. lstm: keras.layers.LSTM.", choices=rl.NETWORKS)
    units: int = setting(
        100, "Recurrent neurons or LSTM units (100 as in the paper's runs; 200 in the original code).",
        lambda n, v: checks.check_int(n, v, 1))
    rule: str = "oja"
    trainable_eta: bool = True
    # No plasticity="none": --model names the non-plastic baseline.
    CHOICES = {"plasticity": ("per_connection", "shared")}
    size: int = setting(9, "Side of the square maze (9 in the original code; the paper's runs used 11).",
                        lambda n, v: checks.check_int(n, v, 4))
    episode_length: int = setting(250, "Steps per episode.", lambda n, v: checks.check_int(n, v, 1))
    reward: float = setting(10.0, "Reward for reaching the reward cell.")
    wall_penalty: float = setting(0.1, "Cost of walking into a wall.", _non_negative)
    discount: float = setting(0.9, "Discount of the returns, in [0, 1].",
                              lambda n, v: checks.check_between(n, v, 0.0, 1.0, False, False))
    value_weight: float = setting(0.03, "Weight of the value loss.", _non_negative)
    exploration_weight: float = setting(
        0.1, "Weight of the exploration term sum(p^2) (the original code's stand-in for entropy).",
        _non_negative)
    clip_norm: float = setting(
        4.0, "Clip the gradient's global norm to this (0: no clipping, as in the original code; "
        "the later Backpropamine code clips at 4 with batch 30).", _non_negative)
    replay: bool = setting(
        False, "Get the gradient by replaying the recorded episodes through the whole-sequence "
        "layer (the plastic network's fused kernel: far less memory) instead of autodiff "
        "through the rollout. See docs/maze.md.")
    learning_rate: float = 3e-4
    batch_size: int = 30
    episodes: int = 15_000
    steps_per_epoch: int = 50
    jit_compile: bool = setting(
        True, "Compile the rollout and its gradient with XLA (far faster on CPU and GPU); off "
        "under --strategy other than default.")
    run_dir: str = "runs/maze"

    RECIPES = {"paper": (
        "the original code's settings (batch 1, Adam 1e-4, no gradient clipping, 200 neurons, "
        "1,000,000 episodes: days on a 2-core CPU).",
        {"units": 200, "batch_size": 1, "learning_rate": 1e-4, "clip_norm": 0.0,
         "episodes": 1_000_000, "steps_per_epoch": 100})}

    def check(self):
        self.check_modulation(self.model == "plastic")
        if self.strategy != "default" and self.jit_compile:
            raise ValueError(
                f"jit_compile=True fails under strategy={self.strategy!r} (XLA and variables "
                "of other devices): pass --nojit_compile.")

    @property
    def maze(self):
        return maze.Maze(self.size, self.episode_length, self.reward, self.wall_penalty)


def build_agent(config):
    """The uncompiled `MazeAgent` of `config`."""
    return rl.MazeAgent(
        config.maze, network=config.model, units=config.units, plasticity=config.plasticity,
        rule=config.rule, eta=config.eta, trainable_eta=config.trainable_eta,
        discount=config.discount, value_weight=config.value_weight,
        exploration_weight=config.exploration_weight, replay=config.replay,
        modulation=config.modulation, trace_clip=config.trace_clip,
        modulation_fanout=config.modulation_fanout)


def run_label(config):
    """The name of a run's network in figures and tables: `plastic (100 units)`,
    `plastic, simple modulation (100 units)`."""
    modulated = f", {config.modulation} modulation" if config.modulation != "none" else ""
    return f"{config.model}{modulated} ({config.units} units)"


def random_policy_reward(the_maze, seed, episodes=RANDOM_EPISODES):
    """Mean total reward per episode of the uniform random policy on episodes `(seed, 0..)`.

    The chance level a trained agent must beat: each step's action is drawn
    uniformly (from the episode's own noise, as an agent with a uniform policy would).
    """
    uniform = tf.fill((episodes, maze.NUM_ACTIONS), 1.0 / maze.NUM_ACTIONS)

    @tf.function
    def total():
        seeds = tf.stack([tf.fill([episodes], tf.constant(seed, tf.int64)),
                          tf.range(episodes, dtype=tf.int64)], axis=1)
        draws = the_maze.draw(seeds)
        state, sum_ = the_maze.reset(draws), tf.zeros([episodes])
        for t in tf.range(the_maze.episode_length):
            action = rl.sample_actions(uniform, draws["noise"][:, t])
            state, reward, _ = the_maze.step(state, action, draws["teleport"][:, t])
            sum_ += reward
        return tf.reduce_mean(sum_)

    return float(total())


class MazeFigures(keras.callbacks.Callback):
    """At the end of training: learning_curve.png and path.png, also in TensorBoard."""

    def __init__(self, task, run_dir):
        super().__init__()
        self.task, self.run_dir = task, run_dir

    def on_train_end(self, logs=None):
        config = self.task.config
        rows = figures.read_csv(os.path.join(self.run_dir, "episodes.csv"))
        rewards = maze_figures.episode_rewards(rows["episode"], rows["reward"])
        chance = self.task.random_reward()
        curve = maze_figures.reward_curves(
            {run_label(config): [rewards]}, window=WINDOW,
            baseline=("random policy", chance))
        path = rl.record_path(self.model, seed=config.seed + EVAL_SEED, index=0)
        drawn = maze.path_figure(self.model.maze, path,
                                 title=f"held-out maze: {int(path['found'].sum())} rewards reached")
        figures.publish({"learning_curve": curve, "path": drawn}, self.run_dir,
                        int(rows["episode"][-1]))


class MazeTask(loop.Task):
    """Episodes of the maze from their seeds; the agent's own A2C train_step (no Keras loss)."""

    log_keys = ("loss", "reward")
    summary_window = WINDOW
    outputs = FIGURES

    def __init__(self, config):
        super().__init__(config)
        self._random = None

    def model(self):
        return build_agent(self.config)

    def dataset(self, config, input_context=None, start=0):
        return maze.episode_seeds(config.seed, config.batch_size, start, input_context)

    def optimizer(self):
        return keras.optimizers.Adam(self.config.learning_rate, epsilon=ADAM_EPSILON,
                                     global_clipnorm=self.config.clip_norm or None)

    def callbacks(self, run_dir):
        return [MazeFigures(self, run_dir)]

    def random_reward(self):
        """The random policy's mean reward on held-out episodes (measured once)."""
        if self._random is None:
            self._random = random_policy_reward(self.config.maze, self.config.seed + EVAL_SEED)
        return self._random

    def extra_summary(self):
        return {"random_policy_reward": self.random_reward()}

    def summary_line(self, summary):
        last = min(self.summary_window, summary["episodes"])
        return (f"mean reward per episode over the last {last} episodes: "
                f"{summary[f'reward_last_{self.summary_window}']:.3f} (random policy: "
                f"{summary['random_policy_reward']:.3f})")


def run(config):
    """Trains the maze task as `config` says; returns the loop's summary."""
    return loop.run(MazeTask(config))


# ------------------------------------------------------------------ comparing runs

def read_run(run_dir):
    """`(config, per-episode rewards, summary or None)` of a maze run directory."""
    return reward_runs.read_run(run_dir, MazeConfig, "trainers.maze", kind="maze ")


def random_policy(runs):
    """The dashed line of `compare`: if all runs share one maze, the random policy's
    reward as the runs measured it (each on the held-out episodes of its own seed,
    in its summary.json), the median of those; else None."""
    chance = [s["random_policy_reward"] for _, s in runs if s and "random_policy_reward" in s]
    if chance and len({c.maze for c, _ in runs}) == 1:
        return ("random policy", float(np.median(chance)))
    return None


def compare(run_dirs, figure_path, window=WINDOW):
    """Draws the runs' learning curves, grouped by model, into `figure_path`; returns the table.

    Runs of the same model, modulation and size (e.g. several seeds) form one curve: their
    mean and a min-max band; the table, the figure and the errors are
    `trainers.reward_runs.compare`'s, with the random policy's reward as the dashed line
    (`random_policy`).
    """
    return reward_runs.compare(run_dirs, figure_path, read=read_run, label=run_label,
                               window=window, title=maze_figures.TITLE, baseline=random_policy)


def define_cli_flags():
    reward_runs.define_cli_flags(MazeConfig, "maze_curves.png")


def main(argv):
    reward_runs.main(MazeConfig, run, compare)


if __name__ == "__main__":
    define_cli_flags()
    hebbcli.run(main, errors=(ValueError,))
