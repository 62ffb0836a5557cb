"""Reinforcement learning in the maze: the agent, its rollout and the A2C update.

`MazeAgent` is a `keras.Model` whose call runs whole batched episodes of
`hebbkeras.tasks.maze.Maze` inside one TensorFlow graph (a `tf.scan` over the
steps: no Python per step), and whose `train_step` applies the advantage
actor-critic (A2C) update of the ICML 2018 paper's maze experiment. So
`fit` drives training from a dataset of episode seeds
(`hebbkeras.tasks.maze.episode_seeds`), with its progress bar, callbacks and
backups. TensorFlow backend only (the maze is written in TensorFlow ops).
"""

import keras
import numpy as np
import tensorflow as tf

from hebbkeras import ops
from hebbkeras.layers.plastic_rnn import PlasticRNN
from hebbkeras.layers.plastic_rnn_cell import PACKAGE
from hebbkeras.tasks.maze import NUM_ACTIONS, OBSERVATION_SIZE, Maze

NETWORKS = ("plastic", "rnn", "lstm")
MODULATIONS = ("none", "simple", "retroactive")


def check_agent_settings(network, modulation, discount, value_weight, exploration_weight,
                         modulation_fanout=False):
    """The checks of the settings every A2C agent shares (`MazeAgent`, `CueRewardAgent`);
    raises a ValueError that says what to pass."""
    ops.check_option("network", network, NETWORKS)
    ops.check_option("modulation", modulation, MODULATIONS)
    if network != "plastic" and (modulation != "none" or modulation_fanout):
        raise ValueError(
            f"modulation={modulation!r} gates the trace of the plastic network; "
            f"network={network!r} has none: use network='plastic', or pass modulation='none'.")
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount={discount} must lie in [0, 1] (0.9 in the paper).")
    for name, value in (("value_weight", value_weight),
                        ("exploration_weight", exploration_weight)):
        if not value >= 0:
            raise ValueError(f"{name}={value} must be >= 0.")


def discounted_returns(rewards, discount):
    """`R_t = r_t + discount * R_{t+1}`, `R_T = 0`, over the last axis of `(batch, T)`.

    One matmul with the upper-triangular matrix `G[s, t] = discount^(s - t)`
    (`s >= t`) instead of a backwards loop over the steps.
    """
    steps = rewards.shape[-1] or tf.shape(rewards)[-1]
    lag = tf.range(steps)[:, None] - tf.range(steps)[None, :]  # s - t
    powers = tf.pow(tf.cast(discount, rewards.dtype), tf.cast(tf.maximum(lag, 0), rewards.dtype))
    return tf.matmul(rewards, tf.where(lag >= 0, powers, 0.0))


def a2c_loss(log_probs, values, rewards, probs, discount=0.9, value_weight=0.03,
             exploration_weight=0.1):
    """The advantage actor-critic loss of a batch of episodes, as in the paper's code.

    With returns `R_t = sum_{s >= t} discount^(s - t) r_s` (no bootstrap after
    the last step) and advantages `A_t = R_t - V_t`:

        loss = mean over episodes b and steps t of
               - log pi(a_t | h_t) * stop_gradient(A_t)       (policy gradient)
               + value_weight * A_t^2                          (value regression)
               + exploration_weight * sum_a pi(a | h_t)^2      (spreads the policy)

    The last term is the original code's stand-in for an entropy bonus: the
    sum of squared probabilities is smallest for a uniform policy.

    Args:
        log_probs: `(batch, T)` log-probabilities of the actions taken.
        values: `(batch, T)` value estimates `V_t`.
        rewards: `(batch, T)` rewards of the steps.
        probs: `(batch, T, actions)` the policy's probabilities.
        discount, value_weight, exploration_weight: as in the formula
            (0.9, 0.03, 0.1 in the paper's code).

    Returns the scalar loss.
    """
    advantage = discounted_returns(rewards, discount) - values
    per_step = (-log_probs * tf.stop_gradient(advantage)
                + value_weight * tf.square(advantage)
                + exploration_weight * tf.reduce_sum(tf.square(probs), axis=-1))
    return tf.reduce_mean(per_step)


def sample_actions(probs, noise):
    """Inverse-CDF sampling: action `a` when `cdf[a-1] <= noise < cdf[a]`.

    probs `(batch, actions)`, noise `(batch,)` uniform in [0, 1): a stateless
    draw, so the action is a function of the episode's seed.
    """
    below = tf.math.cumsum(probs, axis=-1)[:, :-1] <= noise[:, None]
    return tf.reduce_sum(tf.cast(below, tf.int32), axis=-1)


def recurrent_layer(network, units, plasticity, rule, eta, trainable_eta, modulation,
                    trace_clip, modulation_fanout=False, use_fused=False):
    """The agents' recurrent sequence layer: `keras.layers.LSTM` for "lstm", else
    `PlasticRNN` (dense inputs; `plasticity="none"` for "rnn"). "simple" modulation
    does not use eta, so it is not trained there (it would get no gradient)."""
    if network == "lstm":
        return keras.layers.LSTM(units, return_sequences=True, name="lstm")
    return PlasticRNN(
        units, input_mode="dense", eta=eta, trainable_eta=trainable_eta and modulation != "simple",
        plasticity=plasticity if network == "plastic" else "none", rule=rule,
        modulation=modulation, trace_clip=trace_clip, modulation_fanout=modulation_fanout,
        return_sequences=True, name="plastic_rnn" if network == "plastic" else "rnn",
        use_fused=use_fused)


class A2CAgent(keras.Model):
    """What the recurrent actor-critic agents share (`MazeAgent`, `CueRewardAgent`):
    the A2C gradient step inside `fit` on `loss_and_reward(seeds)`, evaluation
    without learning, and the two metrics `loss` and `reward` (total reward per
    episode). Subclasses set `self.rnn`, `self.loss_tracker`, `self.reward_tracker`
    and define `loss_and_reward(seeds, ..., training=True)`.
    """

    @property
    def cell(self):
        """The recurrent cell that the rollout steps."""
        return self.rnn.cell

    @property
    def metrics(self):
        return [self.loss_tracker, self.reward_tracker]

    def _train_inputs(self, seeds):
        """Keyword arguments of `loss_and_reward` that a training step computes first."""
        return {}

    def train_step(self, data):
        seeds, _, _ = keras.utils.unpack_x_y_sample_weight(data)  # train_on_batch: (x, None, None)
        extra = self._train_inputs(seeds)
        with tf.GradientTape() as tape:
            loss, total_reward = self.loss_and_reward(seeds, **extra)
            # Replica gradients are summed under tf.distribute: scale like Keras.
            scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._log(loss, total_reward)

    def test_step(self, data):
        seeds, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._log(*self.loss_and_reward(seeds, training=False))

    def _log(self, loss, total_reward):
        self.loss_tracker.update_state(loss, sample_weight=tf.size(total_reward))
        self.reward_tracker.update_state(total_reward)
        return {"loss": self.loss_tracker.result(), "reward": self.reward_tracker.result()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MazeAgent(A2CAgent):
    """A recurrent actor-critic agent for the maze, trained by A2C inside `fit`.

    Each step: observation `o_t` (`hebbkeras.tasks.maze`) -> recurrent cell ->
    `h_t` -> policy `pi_t = softmax(h_t @ W_pi + b_pi)` over the 4 moves and
    value `V_t = h_t @ W_v + b_v`. The recurrent layer (`agent.rnn`; the
    rollout steps its cell, `agent.cell`) is

        plastic: PlasticRNN(units, input_mode="dense", rule, plasticity, eta,
                 trainable_eta, modulation, trace_clip, modulation_fanout):
                 `h_t = tanh(o_t @ K + b + h_{t-1} @ (w + alpha * hebb_t))`,
                 `hebb` (and `E`) starting at zero each episode;
        rnn:     the same with `plasticity="none"` (no `alpha * hebb`);
        lstm:    keras.layers.LSTM(units).

    Calling the agent on `(batch, 2)` int64 episode seeds runs those episodes
    (actions sampled from `pi_t` with the episode's stateless noise, see
    `Maze.draw`) and returns a dict of `(batch, T)` tensors: `positions`
    (flat cell at the start of each step), `actions`, `found` (the move
    reached the reward), `rewards`, `log_probs`, `values`, plus `probs`
    `(batch, T, 4)`, `observations` `(batch, T, 16)` and `goal` `(batch,)`.
    `train_step` runs the episodes and one gradient step on `a2c_loss`;
    `test_step` (`evaluate`) only the episodes. Both log `loss` and `reward` (the mean total reward of an
    episode), as running means over the epoch.

    Args:
        maze: a `hebbkeras.tasks.maze.Maze` or its dict (default: `Maze()`, side 9,
            250 steps).
        network: `"plastic"`, `"rnn"` or `"lstm"`.
        units: neurons of the recurrent layer (200 in the original code; 100
            in the paper's runs).
        plasticity: `"per_connection"` or `"shared"` (plastic network only).
        rule: `"oja"` (the paper's maze) or `"hebb"` (plastic network only).
        modulation: `"none"`, or `"simple"` / `"retroactive"` (Backpropamine:
            the network gates its clipped trace with a learned signal; see
            `PlasticRNNCell`; needs `rule="hebb"`, plastic network only).
        trace_clip: `c`, the bound of the modulated trace (1 in the original code).
        modulation_fanout: spread the modulation over the neurons (see
            `PlasticRNNCell`; the original code's maze does this in simple mode).
        eta: initial plasticity rate, in (0, 1].
        trainable_eta: learn `eta` (the original code does; not with `modulation="simple"`,
            which does not use it).
        discount, value_weight, exploration_weight: of `a2c_loss`.
        replay: how `train_step` gets the gradient. False: autodiff back
            through the rollout, which stores every step's state (for the
            plastic network a `(batch, units, units)` trace per step: about
            3 to 4 times `4 * T * batch * units^2` bytes); compile with
            `jit_compile=True` for speed. True: run the episodes without
            gradient (`record`, compiled by XLA), then run the recorded
            observations again through the recurrent layer as one sequence
            and differentiate that (the same gradient; for the plastic
            network `PlasticRNN`'s fused kernel, O(batch * units^2) memory;
            under `jit_compile=True` the kernel of `hebbkeras.kernels.xla_fused`, else
            that of `hebbkeras.kernels.fused`; with a `modulation`,
            `hebbkeras.kernels.xla_modfused`, else `modulated_fused`). See `loss_and_reward` and
            benchmarks/maze.py.
        **kwargs: for `keras.Model` (`name`, ...).

    Example:

    >>> from hebbkeras.tasks import maze, rl
    >>> agent = rl.MazeAgent(maze.Maze(size=7, episode_length=50), units=32)
    >>> agent.compile(optimizer=keras.optimizers.Adam(1e-4, global_clipnorm=4.0),
    ...               jit_compile=True)
    >>> agent.fit(maze.episode_seeds(seed=0, batch_size=8), steps_per_epoch=10)
    >>> agent(tf.constant([[0, 123]], tf.int64))["rewards"].shape
    TensorShape([1, 50])
    """

    def __init__(self, maze=None, network="plastic", units=200, plasticity="per_connection",
                 rule="oja", eta=0.01, trainable_eta=True, discount=0.9, value_weight=0.03,
                 exploration_weight=0.1, replay=False, modulation="none", trace_clip=1.0,
                 modulation_fanout=False, **kwargs):
        super().__init__(**kwargs)
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"MazeAgent runs the maze in TensorFlow ops and needs the TensorFlow "
                f"backend; KERAS_BACKEND is {keras.backend.backend()!r}. Set "
                "KERAS_BACKEND=tensorflow.")
        self.maze = Maze(**maze) if isinstance(maze, dict) else (maze or Maze())
        if not isinstance(self.maze, Maze):
            raise ValueError(f"maze={maze!r} must be a hebbkeras.tasks.maze.Maze or its dict.")
        check_agent_settings(network, modulation, discount, value_weight, exploration_weight,
                             modulation_fanout)
        if network == "plastic" and plasticity == "none":
            raise ValueError(
                'plasticity="none" makes the plastic network a plain RNN: use '
                'network="rnn" for that baseline, or plasticity="per_connection" or "shared".')
        ops.check_option("plasticity", plasticity, ("per_connection", "shared"))
        self.network = network
        self.units = units
        self.plasticity = plasticity
        self.rule = rule
        self.eta = eta
        self.trainable_eta = trainable_eta
        self.discount = float(discount)
        self.value_weight = float(value_weight)
        self.exploration_weight = float(exploration_weight)
        self.replay = bool(replay)
        self.modulation = modulation
        self.trace_clip = float(trace_clip)
        self.modulation_fanout = bool(modulation_fanout)
        # A sequence layer, so that `replay` can run recorded episodes through it
        # whole (on the fused kernel); the rollout steps its cell.
        self.rnn = recurrent_layer(network, units, plasticity, rule, eta, trainable_eta,
                                   modulation, trace_clip, modulation_fanout,
                                   use_fused=self.replay)
        self.policy = keras.layers.Dense(NUM_ACTIONS, name="policy")
        self.value = keras.layers.Dense(1, name="value")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reward_tracker = keras.metrics.Mean(name="reward")
        # The weights exist from construction, so a fresh agent can be saved,
        # counted or loaded into before it has run an episode.
        self.rnn.build((None, None, OBSERVATION_SIZE))
        self.policy.build((None, units))
        self.value.build((None, units))
        self.built = True
        self._compiled_record = None

    def call(self, seeds, training=False):
        maze, steps = self.maze, self.maze.episode_length
        draws = maze.draw(seeds)
        batch = tf.shape(draws["goal"])[0]
        noise, teleport = tf.transpose(draws["noise"]), tf.transpose(draws["teleport"])
        # One TensorArray per output; tf.scan would also stack the carried
        # state (the (batch, units, units) trace) at every step.
        spec = {"observations": tf.float32, "positions": tf.int32, "actions": tf.int32,
                "found": tf.bool, "rewards": tf.float32, "log_probs": tf.float32,
                "values": tf.float32, "probs": tf.float32}
        arrays = {k: tf.TensorArray(dtype, size=steps, element_shape=None)
                  for k, dtype in spec.items()}

        def one_step(t, env, cell_state, arrays):
            observation = maze.observe(env, t)
            h, cell_state = self.cell(observation, cell_state, training=training)
            logits = self.policy(h)
            probs = tf.nn.softmax(logits)
            action = sample_actions(tf.stop_gradient(probs), noise[t])
            new_env, reward, found = maze.step(env, action, teleport[t])
            out = {"observations": observation, "positions": env["position"],
                   "actions": action, "found": found,
                   "rewards": reward,
                   "log_probs": tf.gather(tf.nn.log_softmax(logits), action, batch_dims=1),
                   "values": self.value(h)[:, 0], "probs": probs}
            arrays = {k: arrays[k].write(t, out[k]) for k in arrays}
            return t + 1, new_env, list(cell_state), arrays

        _, _, _, arrays = tf.while_loop(
            lambda t, *_: t < steps, one_step,
            (tf.constant(0), maze.reset(draws), list(self.cell.get_initial_state(batch_size=batch)),
             arrays),
            maximum_iterations=steps)
        result = {k: _batch_major(a.stack()) for k, a in arrays.items()}
        result["goal"] = draws["goal"]
        return result

    def record(self, seeds):
        """Runs the episodes of `seeds` without gradient, compiled with XLA.

        Returns `call`'s dict. The rollout of `replay` training.
        """
        if self._compiled_record is None:
            self._compiled_record = tf.function(
                lambda s: self(s, training=False), jit_compile=True, reduce_retracing=True)
        return {k: tf.stop_gradient(v) for k, v in self._compiled_record(seeds).items()}

    def loss_and_reward(self, seeds, recorded=None, training=True):
        """The A2C loss of the episodes of `seeds` and each episode's total reward.

        Differentiate the loss under a `tf.GradientTape`. Without `recorded`,
        the gradient runs back through the rollout (`call`). With `recorded`
        (`record(seeds)`, called outside the tape), the recorded observations
        are run again through the recurrent layer as one sequence, and the
        gradient runs back through that: the same gradient, since no gradient
        passes through the sampled actions or the maze, but the plastic
        network's whole-sequence `PlasticRNN` runs its fused kernel, whose
        gradient keeps O(batch * units^2) memory instead of one trace per step.
        """
        if recorded is None:
            episodes = self(seeds, training=training)
            log_probs, values, probs = (episodes[k] for k in ("log_probs", "values", "probs"))
        else:
            episodes = recorded
            h = self.rnn(episodes["observations"], training=training)
            logits = self.policy(h)
            probs = tf.nn.softmax(logits)
            log_probs = tf.gather(tf.nn.log_softmax(logits), episodes["actions"], batch_dims=2)
            values = self.value(h)[..., 0]
        loss = a2c_loss(log_probs, values, episodes["rewards"], probs, self.discount,
                        self.value_weight, self.exploration_weight)
        return loss, tf.reduce_sum(episodes["rewards"], axis=1)

    def _train_inputs(self, seeds):
        return {"recorded": self.record(seeds)} if self.replay else {}

    def get_config(self):
        config = super().get_config()
        config.update({
            "maze": self.maze.to_dict(),
            "network": self.network,
            "units": self.units,
            "plasticity": self.plasticity,
            "rule": self.rule,
            "eta": self.eta,
            "trainable_eta": self.trainable_eta,
            "discount": self.discount,
            "value_weight": self.value_weight,
            "exploration_weight": self.exploration_weight,
            "replay": self.replay,
            "modulation": self.modulation,
            "trace_clip": self.trace_clip,
            "modulation_fanout": self.modulation_fanout,
        })
        return config


def _batch_major(x):
    """`(T, batch, ...)` -> `(batch, T, ...)`."""
    return tf.transpose(x, [1, 0] + list(range(2, x.shape.rank)))


def record_path(agent, seed=0, index=0):
    """Runs episode `(seed, index)` with `agent`; returns it as numpy arrays.

    The dict has `positions`, `actions`, `found`, `rewards`, `values`
    (each `(T,)`), `probs` `(T, 4)` and `goal` (a flat cell), ready for
    `hebbkeras.tasks.maze.path_figure(agent.maze, path).savefig("path.png")`. Runs through
    `predict_on_batch`, so it is compiled like the agent (`jit_compile`).
    """
    episode = agent.predict_on_batch(np.array([[seed, index]], np.int64))
    return {k: np.asarray(v)[0] for k, v in episode.items() if k != "log_probs"}
