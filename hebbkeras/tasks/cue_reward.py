"""The cue-reward association task of Backpropamine, batched and in-graph, in TensorFlow ops.

Miconi et al., ICLR 2019, section 4.1; the facts below are the original code's
(uber-research/backpropamine, `sr/srbatch.py` and its README; docs/neuromodulation.md).
Each episode draws `cues` (4) different random binary cues of `cue_bits` (20)
bits, each bit -1 or +1, and makes one of them the episode's target. The
episode is a run of trials, each of `length = cues // 2 + 3 + k` steps
(`k` uniform in `0 .. cues - 1`: 5 to 8 steps):

    step 0                     no input
    steps 1 .. length - 3      `cues // 2` (2) different cues, drawn from the
                               episode's, each shown once at a random step;
                               the other steps show nothing
    step length - 2            the response cue ("go"): the agent answers
    step length - 1            no input

At the response step the agent answers 1 ("the target was in this trial")
or 0; a right answer gives `+reward`, a wrong one `-reward`, seen in the next
step's input; no other step is rewarded. Trials follow each other until the
episode's `episode_length` (120) steps are done (the last may be cut). The
target changes every episode and a pair never holds all cues, so the agent
must find it from the rewards of several trials and use it within the
episode; a random answer earns 0 on average.

The observation of a step, `observation_size = cue_bits + 4 + NUM_ACTIONS`
numbers (26), is

    [0:cue_bits]      the cue shown (its bits, -1/+1), or zeros
    [cue_bits]        1 at the response step
    [cue_bits + 1]    bias, 1
    [cue_bits + 2]    step number t / episode_length
    [cue_bits + 3]    the previous step's reward (0 at t = 0)
    [cue_bits + 4:]   the previous action, one-hot (all zero at t = 0)

(the original code also feeds one always-zero input, left out here).

Every random choice of an episode is drawn up front by `CueReward.draw` from
the stateless seed `[seed, episode index]`, as in `hebbkeras.tasks.maze`: the
trial schedule does not depend on the answers, so an episode is a pure
function of `(seed, index)` and of the agent's weights.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from hebbkeras.checks import check_int
from hebbkeras.tasks.maze import episode_seeds  # noqa: F401 (the same seed stream)

NUM_ACTIONS = 2  # 0: "the target was not shown", 1: "it was"
BLANK = -1  # `shown` of a step without a cue; `cues` marks the response step
_ALG = "philox"  # named, so that XLA draws the same episodes (see hebbkeras.tasks.maze)


def _uniform_ints(shape, seed):
    """int32 uniform in `[0, 2**24)`: integers, as XLA draws other floats from the same seed."""
    return tf.random.stateless_uniform(shape, seed, 0, 2**24, tf.int32, alg=_ALG)


def _distinct(seed, count, high):
    """`count` different int32 draws uniform in `[0, high)` (all ordered tuples equally likely).

    Draw `i` is uniform over the `high - i` values not yet taken: drawn in
    `[0, high - i)`, then moved up past each earlier draw it reaches, in
    increasing order of those.
    """
    keys = tf.random.experimental.stateless_split(seed, count, alg=_ALG)
    taken = []
    for i in range(count):
        value = tf.random.stateless_uniform((), keys[i], 0, high - i, tf.int32, alg=_ALG)
        for earlier in tf.unstack(tf.sort(tf.stack(taken))) if taken else []:
            value += tf.cast(value >= earlier, tf.int32)
        taken.append(value)
    return tf.stack(taken)


@dataclasses.dataclass(frozen=True)
class CueReward:
    """The task's rules and its batched, in-graph TensorFlow dynamics.

    Args:
        cues: cues per episode, >= 2 (4); a trial shows `cues // 2` of them.
        cue_bits: bits of a cue, 2 to 30 (20), with `2**cue_bits >= cues`.
        episode_length: steps per episode (120).
        reward: the reward of a right answer and the cost of a wrong one (1).

    Example:

    >>> task = CueReward(episode_length=20)
    >>> draws = task.draw(tf.constant([[0, 0], [0, 1]], tf.int64))
    >>> state = task.reset(draws)
    >>> obs = task.observe(draws, state, 0)            # (2, 26)
    >>> state, reward = task.step(draws, state, tf.constant([0, 1]), 0)
    """

    cues: int = 4
    cue_bits: int = 20
    episode_length: int = 120
    reward: float = 1.0

    def __post_init__(self):
        check_int("cues", self.cues, 2)
        check_int("cue_bits", self.cue_bits, 2)
        check_int("episode_length", self.episode_length, 1)
        if self.cue_bits > 30 or 2**self.cue_bits < self.cues:
            raise ValueError(f"cue_bits={self.cue_bits} must lie in 2..30 and give at least "
                             f"cues={self.cues} different cues (2**cue_bits >= cues).")
        if not np.isfinite(self.reward):
            raise ValueError(f"reward={self.reward!r} must be a finite number.")

    @property
    def shown_per_trial(self):
        """Cues shown in one trial: `cues // 2`."""
        return self.cues // 2

    @property
    def trial_lengths(self):
        """`(shortest, longest)` trial, in steps."""
        return self.shown_per_trial + 3, self.shown_per_trial + 2 + self.cues

    @property
    def max_trials(self):
        """Trials an episode can hold at most (all of the shortest length)."""
        return -(-self.episode_length // self.trial_lengths[0])

    @property
    def observation_size(self):
        return self.cue_bits + 4 + NUM_ACTIONS

    def to_dict(self):
        return dataclasses.asdict(self)

    # -- randomness ------------------------------------------------------

    def draw(self, seeds):
        """Every random choice of a batch of episodes, from their seeds.

        Args:
            seeds: `(batch, 2)` int64, one stateless seed per episode
                (`[seed, episode index]`, see `episode_seeds`).

        Returns a dict of tensors:
            `patterns`: `(batch, cues, cue_bits)` float32, the cues (-1/+1),
                all different.
            `target`: `(batch,)` int32, the rewarded cue.
            `shown`: `(batch, episode_length)` int32, what each step shows:
                a cue's index, `BLANK` (-1) or `cues` (the response cue).
            `has_target`: `(batch, episode_length)` bool, the step's trial
                shows the target (the right answer is 1).
            `noise`: `(batch, episode_length)` float32 in [0, 1), the uniform
                number that an agent's sampler turns into its action.

        Episode `b`'s draws depend on `seeds[b]` alone, not on the batch.
        """
        cues, shown_count, steps = self.cues, self.shown_per_trial, self.episode_length
        trials, longest = self.max_trials, self.trial_lengths[1]
        middle = longest - 3  # the most steps between a trial's first step and its response

        def one(seed):
            keys = tf.unstack(tf.random.experimental.stateless_split(seed, 6, alg=_ALG))
            codes = _distinct(keys[0], cues, 2**self.cue_bits)
            bits = tf.bitwise.bitwise_and(
                tf.bitwise.right_shift(codes[:, None], tf.range(self.cue_bits)), 1)
            patterns = tf.cast(2 * bits - 1, tf.float32)
            target = tf.random.stateless_uniform((), keys[1], 0, cues, tf.int32, alg=_ALG)
            length = shown_count + 3 + tf.random.stateless_uniform(
                (trials,), keys[2], 0, cues, tf.int32, alg=_ALG)
            # Each trial's cues: the first of a random order of all cues.
            pair = tf.argsort(_uniform_ints((trials, cues), keys[3]), axis=1)[:, :shown_count]
            # Their steps: the first of a random order of the trial's middle steps.
            order = _uniform_ints((trials, middle), keys[4])
            order = tf.where(tf.range(middle)[None, :] < length[:, None] - 3, order, 2**24)
            slot = tf.argsort(order, axis=1)[:, :shown_count]  # (trials, shown) in 0..middle-1
            # Lay the trials out over the episode's steps.
            start = tf.cumsum(length, exclusive=True)
            t = tf.range(steps)
            trial = tf.searchsorted(start, t, side="right") - 1
            offset = t - tf.gather(start, trial)
            trial_length = tf.gather(length, trial)
            hit = tf.gather(slot, trial) == (offset - 1)[:, None]  # (steps, shown)
            cue_here = tf.reduce_sum(tf.where(hit, tf.gather(pair, trial), 0), axis=1)
            shown = tf.where(tf.reduce_any(hit, axis=1), cue_here, BLANK)
            shown = tf.where(offset == trial_length - 2, cues, shown)
            has_target = tf.reduce_any(tf.gather(pair, trial) == target, axis=1)
            noise = tf.cast(_uniform_ints((steps,), keys[5]), tf.float32) / 2**24
            return patterns, target, tf.cast(shown, tf.int32), has_target, noise

        seeds = tf.convert_to_tensor(seeds, tf.int64)
        if seeds.shape.rank != 2 or seeds.shape[-1] not in (2, None):
            raise ValueError(
                f"seeds must have shape (batch, 2) ([seed, episode index] per episode); got "
                f"shape {seeds.shape}.")
        patterns, target, shown, has_target, noise = tf.map_fn(
            one, seeds,
            fn_output_signature=(tf.TensorSpec((cues, self.cue_bits), tf.float32), tf.int32,
                                 tf.TensorSpec((steps,), tf.int32),
                                 tf.TensorSpec((steps,), tf.bool),
                                 tf.TensorSpec((steps,), tf.float32)))
        return {"patterns": patterns, "target": target, "shown": shown,
                "has_target": has_target, "noise": noise}

    # -- dynamics (TensorFlow, batched) ----------------------------------

    def reset(self, draws):
        """The state at step 0: `last_reward` (float32, 0) and `last_action` (int32, -1: none),
        each `(batch,)`."""
        batch = tf.shape(draws["target"])
        return {"last_reward": tf.zeros(batch, tf.float32), "last_action": tf.fill(batch, -1)}

    def observe(self, draws, state, step):
        """The `(batch, observation_size)` float32 observation at step `step`."""
        shown = draws["shown"][:, step]
        is_cue = (shown >= 0) & (shown < self.cues)
        bits = tf.gather(draws["patterns"], tf.clip_by_value(shown, 0, self.cues - 1),
                         batch_dims=1)
        ones = tf.ones_like(state["last_reward"])[:, None]
        return tf.concat(
            [tf.where(is_cue[:, None], bits, 0.0),
             tf.cast(shown == self.cues, tf.float32)[:, None], ones,
             ones * (tf.cast(step, tf.float32) / self.episode_length),
             state["last_reward"][:, None],
             tf.one_hot(state["last_action"], NUM_ACTIONS)],  # -1 -> all zero
            axis=1)

    def step(self, draws, state, action, step):
        """Applies `action` `(batch,)` int32 at step `step`; returns `(new_state, reward)`.

        `reward` `(batch,)` float32: at a response step `+reward` for the
        right answer (1 where the trial showed the target, else 0) and
        `-reward` for the wrong one; 0 at every other step.
        """
        action = tf.convert_to_tensor(action, tf.int32)
        respond = draws["shown"][:, step] == self.cues
        right = (action == 1) == draws["has_target"][:, step]
        reward = tf.where(respond, tf.where(right, self.reward, -self.reward), 0.0)
        return {"last_reward": reward, "last_action": action}, reward
