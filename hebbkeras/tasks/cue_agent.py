"""The cue-reward agent: a recurrent actor-critic trained by A2C inside `fit`.

As `hebbkeras.tasks.rl.MazeAgent` for the maze: calling the agent on episode
seeds runs whole batched episodes of `hebbkeras.tasks.cue_reward.CueReward`
in one TensorFlow graph (a `tf.while_loop` over the steps), and `train_step`
applies the advantage actor-critic update (`hebbkeras.tasks.rl.a2c_loss`).
The recurrent layer may be neuromodulated (Backpropamine). TensorFlow only.
"""

import keras
import tensorflow as tf

from hebbkeras.layers.plastic_rnn_cell import PACKAGE
from hebbkeras.tasks.cue_reward import NUM_ACTIONS, CueReward
from hebbkeras.tasks.rl import (A2CAgent, _batch_major, a2c_loss, check_agent_settings,
                                recurrent_layer, sample_actions)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CueRewardAgent(A2CAgent):
    """A recurrent actor-critic agent for the cue-reward task.

    Each step: observation `o_t` -> recurrent layer -> `h_t` -> policy
    `pi_t = softmax(h_t @ W_pi + b_pi)` over the 2 answers and value
    `V_t = h_t @ W_v + b_v` (the original code's network). The recurrent
    layer (`agent.rnn`; the rollout steps its cell) is

        plastic: PlasticRNN(units, input_mode="dense", plasticity, eta,
                 trainable_eta, and `rule` or `modulation`):
                 `h_t = tanh(o_t @ K + b + h_{t-1} @ (w + alpha * hebb_t))`,
                 `hebb` (and `E`) starting at zero each episode; with
                 `modulation="simple"` or `"retroactive"` the network gates
                 its trace by `M_t = tanh(h_t @ modulator_kernel + modulator_bias)`;
        rnn:     the same without plasticity;
        lstm:    keras.layers.LSTM(units).

    Calling the agent on `(batch, 2)` int64 episode seeds runs those episodes
    (answers sampled from `pi_t` with the episode's stateless noise) and returns
    a dict of `(batch, T)` tensors: `actions`, `rewards`, `log_probs`,
    `values`, `modulation` (`M_t`, zero without modulation), plus `probs`
    `(batch, T, 2)`, `hidden` (`h_t`, `(batch, T, units)`), `shown` and
    `target` (from `CueReward.draw`).
    `train_step` runs the episodes and one gradient step on `a2c_loss`;
    `test_step` only the episodes. Both log `loss` and `reward` (the mean
    total reward of an episode), as running means over the epoch.

    Args:
        task: a `CueReward` or its dict (default `CueReward()`).
        network: `"plastic"`, `"rnn"` or `"lstm"`.
        units: neurons of the recurrent layer (200 in the original code).
        plasticity: `"per_connection"` or `"shared"` (plastic network only).
        rule: the unmodulated trace's rule, `"hebb"` or `"oja"`.
        modulation: `"none"`, `"simple"` or `"retroactive"` (plastic network only).
        trace_clip: the modulated trace's bound `c` (1 in the original code).
        modulation_fanout: spread `M_t` over the receiving neurons by a learned
            vector (`PlasticRNN`'s option of the same name).
        eta: initial plasticity rate (the eligibility trace's with "retroactive").
        trainable_eta: learn `eta` (the original code does).
        discount, value_weight, exploration_weight: of `a2c_loss` (0.9, 0.1,
            0.1 in the original code).
        **kwargs: for `keras.Model`.

    Example:

    >>> from hebbkeras.tasks import cue_agent, cue_reward
    >>> agent = cue_agent.CueRewardAgent(cue_reward.CueReward(episode_length=30), units=16,
    ...                                  modulation="retroactive")
    >>> agent.compile(optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=2.0))
    >>> agent.fit(cue_reward.episode_seeds(seed=0, batch_size=8), steps_per_epoch=5)
    """

    def __init__(self, task=None, network="plastic", units=200, plasticity="per_connection",
                 rule="hebb", modulation="retroactive", trace_clip=1.0, modulation_fanout=False,
                 eta=0.1, trainable_eta=True, discount=0.9, value_weight=0.1,
                 exploration_weight=0.1, **kwargs):
        super().__init__(**kwargs)
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "CueRewardAgent runs the task in TensorFlow ops and needs the TensorFlow "
                f"backend; KERAS_BACKEND is {keras.backend.backend()!r}. Set "
                "KERAS_BACKEND=tensorflow.")
        self.task = CueReward(**task) if isinstance(task, dict) else (task or CueReward())
        if not isinstance(self.task, CueReward):
            raise ValueError(f"task={task!r} must be a hebbkeras.tasks.cue_reward.CueReward "
                             "or its dict.")
        check_agent_settings(network, modulation, discount, value_weight, exploration_weight,
                             modulation_fanout)
        self.network, self.units, self.plasticity, self.rule = network, units, plasticity, rule
        self.modulation, self.trace_clip = modulation, float(trace_clip)
        self.modulation_fanout = bool(modulation_fanout)
        self.eta, self.trainable_eta = eta, trainable_eta
        self.discount = float(discount)
        self.value_weight = float(value_weight)
        self.exploration_weight = float(exploration_weight)
        self.rnn = recurrent_layer(network, units, plasticity, rule, eta, trainable_eta,
                                   modulation, trace_clip, self.modulation_fanout)
        self.policy = keras.layers.Dense(NUM_ACTIONS, name="policy")
        self.value = keras.layers.Dense(1, name="value")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reward_tracker = keras.metrics.Mean(name="reward")
        self.rnn.build((None, None, self.task.observation_size))
        self.policy.build((None, units))
        self.value.build((None, units))
        self.built = True

    def _modulation(self, h):
        """`M_t` `(batch,)` of the step's `h` (zeros without modulation; before the fan-out)."""
        if self.modulation == "none":
            return tf.zeros_like(h[:, 0])
        rule = self.cell.plasticity_rule
        return rule.modulation(h, *self.cell.modulator[:2])[:, 0]

    def call(self, seeds, training=False):
        task, steps = self.task, self.task.episode_length
        draws = task.draw(seeds)
        batch = tf.shape(draws["target"])[0]
        noise = tf.transpose(draws["noise"])
        spec = {"actions": tf.int32, "rewards": tf.float32, "log_probs": tf.float32,
                "values": tf.float32, "probs": tf.float32, "modulation": tf.float32,
                "hidden": tf.float32}
        arrays = {k: tf.TensorArray(dtype, size=steps) for k, dtype in spec.items()}

        def one_step(t, env, cell_state, arrays):
            h, cell_state = self.cell(task.observe(draws, env, t), cell_state, training=training)
            logits = self.policy(h)
            probs = tf.nn.softmax(logits)
            action = sample_actions(tf.stop_gradient(probs), noise[t])
            env, reward = task.step(draws, env, action, t)
            out = {"actions": action, "rewards": reward,
                   "log_probs": tf.gather(tf.nn.log_softmax(logits), action, batch_dims=1),
                   "values": self.value(h)[:, 0], "probs": probs,
                   "modulation": tf.stop_gradient(self._modulation(h)),
                   "hidden": tf.stop_gradient(h)}
            return t + 1, env, list(cell_state), {k: arrays[k].write(t, out[k]) for k in arrays}

        _, _, _, arrays = tf.while_loop(
            lambda t, *_: t < steps, one_step,
            (tf.constant(0), task.reset(draws),
             list(self.cell.get_initial_state(batch_size=batch)), arrays),
            maximum_iterations=steps)
        result = {k: _batch_major(a.stack()) for k, a in arrays.items()}
        result.update(shown=draws["shown"], target=draws["target"])
        return result

    def loss_and_reward(self, seeds, training=True):
        """The A2C loss of the episodes of `seeds` and each episode's total reward."""
        episodes = self(seeds, training=training)
        loss = a2c_loss(episodes["log_probs"], episodes["values"], episodes["rewards"],
                        episodes["probs"], self.discount, self.value_weight,
                        self.exploration_weight)
        return loss, tf.reduce_sum(episodes["rewards"], axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            task=self.task.to_dict(), network=self.network, units=self.units,
            plasticity=self.plasticity, rule=self.rule, modulation=self.modulation,
            trace_clip=self.trace_clip, modulation_fanout=self.modulation_fanout, eta=self.eta,
            trainable_eta=self.trainable_eta,
            discount=self.discount, value_weight=self.value_weight,
            exploration_weight=self.exploration_weight)
        return config

