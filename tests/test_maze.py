"""The maze and its A2C agent, against a pure-Python maze and numpy written here."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from hebbkeras import PlasticRNN
from hebbkeras.tasks import maze as mz
from hebbkeras.tasks import rl

MOVES = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}  # up, down, left, right


def reference_walls(size):
    """The rules, cell by cell: border, interior cells with both coordinates even, centre free."""
    centre = size // 2
    return [[int((r in (0, size - 1) or c in (0, size - 1) or (r % 2 == 0 and c % 2 == 0))
                 and (r, c) != (centre, centre)) for c in range(size)] for r in range(size)]


class ReferenceMaze:
    """One episode of the maze in plain Python, with (row, col) positions.

    Takes the episode's random choices (reward cell, teleport targets) from
    outside, so that it can replay the TensorFlow maze's draws.
    """

    def __init__(self, size, length, reward, penalty, goal, teleports):
        self.size, self.length, self.reward, self.penalty = size, length, reward, penalty
        self.walls = reference_walls(size)
        self.goal, self.teleports = goal, teleports
        self.pos = (size // 2, size // 2)
        self.last_reward, self.last_action, self.t = 0.0, None, 0

    def observe(self):
        r, c = self.pos
        around = [self.walls[r + dr][c + dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
        action = [0.0] * 4
        if self.last_action is not None:
            action[self.last_action] = 1.0
        return around + [1.0, self.t / self.length, self.last_reward] + action

    def step(self, action):
        dr, dc = MOVES[action]
        r, c = self.pos[0] + dr, self.pos[1] + dc
        reward, found = 0.0, False
        if self.walls[r][c]:
            reward -= self.penalty
        else:
            self.pos = (r, c)
        if self.pos == self.goal:
            reward += self.reward
            found = True
            self.pos = self.teleports[self.t]
        self.last_reward, self.last_action, self.t = reward, action, self.t + 1
        return reward, found


def row_col(size, cell):
    return divmod(int(cell), size)


def seeds(seed, indices):
    return tf.constant([[seed, i] for i in indices], tf.int64)


def test_walls_follow_the_rules():
    for size in (5, 8, 9, 11):
        np.testing.assert_array_equal(mz.Maze(size=size).walls, reference_walls(size))
    walls = mz.Maze().walls  # the default, side 9: 8 pillars inside, centre free
    assert walls.shape == (9, 9) and walls[1:-1, 1:-1].sum() == 8 and walls[4, 4] == 0


def test_draws_exclude_the_start_and_the_reward_cell_and_are_uniform():
    maze = mz.Maze(size=5, episode_length=40)
    free = {divmod(int(c), 5) for c in maze.free_cells}
    assert len(free) == 9
    draws = tf.function(maze.draw)(seeds(3, range(400)))  # one graph, not 400 eager draws
    goals = [row_col(5, g) for g in draws["goal"].numpy()]
    # The reward is never at the start (centre) nor on a wall; every other free cell occurs.
    assert set(goals) == free - {(2, 2)}
    counts = np.unique(goals, axis=0, return_counts=True)[1]
    assert counts.min() > 25  # 50 expected per cell
    for goal, lands in zip(goals, draws["teleport"].numpy()):
        landed = {row_col(5, c) for c in lands}
        assert landed <= free - {goal}  # never on a wall, never back on the reward
    assert {row_col(5, c) for c in draws["teleport"].numpy().ravel()} == free
    noise = draws["noise"].numpy()
    assert noise.min() >= 0 and noise.max() < 1 and abs(noise.mean() - 0.5) < 0.01


def test_draws_depend_on_seed_and_index_only():
    maze = mz.Maze(size=7, episode_length=30)
    batch = maze.draw(seeds(5, [10, 11, 12, 13]))
    alone = maze.draw(seeds(5, [12]))
    compiled = tf.function(maze.draw, jit_compile=True)(seeds(5, [10, 11, 12, 13]))
    other = maze.draw(seeds(6, [10, 11, 12, 13]))
    for key in batch:
        np.testing.assert_array_equal(batch[key][2:3], alone[key])
        np.testing.assert_array_equal(batch[key], compiled[key])  # XLA sees the same episodes
    assert not np.array_equal(batch["noise"], other["noise"])


@pytest.mark.parametrize("size", [5, 9])
def test_environment_matches_python_reference(size):
    maze = mz.Maze(size=size, episode_length=120, reward=7.5, wall_penalty=0.3)
    batch = 6
    draws = maze.draw(seeds(1, range(batch)))
    rng = np.random.default_rng(size)
    actions = rng.integers(0, 4, (batch, maze.episode_length))
    refs = [ReferenceMaze(size, maze.episode_length, 7.5, 0.3, row_col(size, draws["goal"][b]),
                          [row_col(size, c) for c in draws["teleport"][b].numpy()])
            for b in range(batch)]
    state = maze.reset(draws)
    bumps = finds = 0
    for t in range(maze.episode_length):
        np.testing.assert_allclose(maze.observe(state, t), [ref.observe() for ref in refs],
                                   rtol=1e-6, err_msg=f"step {t}")
        assert [row_col(size, p) for p in state["position"]] == [ref.pos for ref in refs]
        state, reward, found = maze.step(state, actions[:, t], draws["teleport"][:, t])
        expected = [ref.step(int(a)) for ref, a in zip(refs, actions[:, t])]
        np.testing.assert_allclose(reward, [e[0] for e in expected], rtol=1e-6)
        np.testing.assert_array_equal(found, [e[1] for e in expected])
        bumps += sum(e[0] < 0 for e in expected)
        finds += sum(e[1] for e in expected)
    assert bumps > 10 and finds > 0  # the walk exercised both rules


def a2c_numpy(log_probs, values, rewards, probs, discount, value_weight, exploration_weight):
    batch, steps = rewards.shape
    total = 0.0
    for b in range(batch):
        ret = 0.0
        for t in reversed(range(steps)):
            ret = rewards[b, t] + discount * ret
            advantage = ret - values[b, t]
            total += (-log_probs[b, t] * advantage + value_weight * advantage ** 2
                      + exploration_weight * np.sum(probs[b, t] ** 2))
    return total / (batch * steps)


def test_a2c_loss_and_its_gradients_by_hand():
    # Two episodes of three steps: returns by hand, with discount 0.5.
    rewards = np.array([[0.0, 1.0, 2.0], [-1.0, 0.0, 4.0]], np.float32)
    values = np.array([[0.5, 1.0, 1.0], [0.0, 2.0, 3.0]], np.float32)
    returns = np.array([[0 + 0.5 * (1 + 0.5 * 2), 1 + 0.5 * 2, 2],
                        [-1 + 0.5 * (0 + 0.5 * 4), 0 + 0.5 * 4, 4]], np.float32)
    np.testing.assert_allclose(rl.discounted_returns(tf.constant(rewards), 0.5), returns, rtol=1e-6)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), (2, 3)).astype(np.float32)
    log_probs = np.log(probs[..., 1])
    args = [tf.constant(a) for a in (log_probs, values, rewards, probs)]
    with tf.GradientTape() as tape:
        tape.watch(args)
        loss = rl.a2c_loss(*args, discount=0.5, value_weight=0.03, exploration_weight=0.1)
    expected = a2c_numpy(log_probs, values, rewards, probs, 0.5, 0.03, 0.1)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    d_log_probs, d_values, _, d_probs = tape.gradient(loss, args)
    advantage = returns - values
    # The advantage is a constant for the policy gradient, not differentiated.
    np.testing.assert_allclose(d_log_probs, -advantage / 6, rtol=1e-5)
    np.testing.assert_allclose(d_values, -2 * 0.03 * advantage / 6, rtol=1e-5)
    np.testing.assert_allclose(d_probs, 2 * 0.1 * probs / 6, rtol=1e-5)


@pytest.fixture(scope="module")
def small_agent():
    keras.utils.set_random_seed(0)
    return rl.MazeAgent(mz.Maze(size=7, episode_length=40), network="plastic", units=8)


def test_rollout_replays_in_the_python_maze(small_agent):
    maze = small_agent.maze
    batch_seeds = seeds(2, range(5))
    out = {k: v.numpy() for k, v in small_agent(batch_seeds).items()}
    draws = maze.draw(batch_seeds)
    assert out["rewards"].shape == (5, 40) and out["probs"].shape == (5, 40, 4)
    for b in range(5):
        ref = ReferenceMaze(7, 40, maze.reward, maze.wall_penalty, row_col(7, out["goal"][b]),
                            [row_col(7, c) for c in draws["teleport"][b].numpy()])
        cdf = np.cumsum(out["probs"][b], axis=-1)
        for t in range(40):
            assert row_col(7, out["positions"][b, t]) == ref.pos
            # Inverse-CDF sampling with the episode's noise.
            noise = draws["noise"][b, t].numpy()
            assert out["actions"][b, t] == min(np.searchsorted(cdf[t], noise, side="right"), 3)
            reward, found = ref.step(int(out["actions"][b, t]))
            assert out["rewards"][b, t] == pytest.approx(reward) and out["found"][b, t] == found
        np.testing.assert_allclose(
            out["log_probs"][b], np.log(out["probs"][b, np.arange(40), out["actions"][b]]),
            rtol=1e-5, atol=1e-6)
    again = small_agent(seeds(2, [3]))  # an episode depends on its seed, not on its batch
    np.testing.assert_array_equal(again["actions"][0], out["actions"][3])


@pytest.mark.parametrize("network, compiled, modulation", [
    ("plastic", False, "none"),
    # The modulated rollout steps the cell; its replay runs kernels.modulated_fused
    # (kernels.xla_modfused when compiled).
    ("plastic", False, "retroactive"),
    pytest.param("plastic", False, "simple", marks=pytest.mark.slow),
    pytest.param("plastic", True, "none", marks=pytest.mark.slow),
    pytest.param("lstm", True, "none", marks=pytest.mark.slow),
])
def test_replay_gives_the_gradient_of_autodiff_through_the_rollout(network, compiled, modulation):
    maze = mz.Maze(size=7, episode_length=30)
    keras.utils.set_random_seed(1)
    modulated = {} if modulation == "none" else dict(modulation=modulation, rule="hebb",
                                                     trace_clip=0.05)
    through = rl.MazeAgent(maze, network=network, units=8, **modulated)
    replay = rl.MazeAgent(maze, network=network, units=8, replay=True, **modulated)
    replay.set_weights(through.get_weights())
    batch = seeds(7, range(3))
    with tf.GradientTape() as tape:
        loss, reward = through.loss_and_reward(batch)
    expected = tape.gradient(loss, through.trainable_variables)
    if compiled:  # what train_step does; the XLA compilation takes seconds
        recorded = replay.record(batch)
    else:
        recorded = {k: tf.stop_gradient(v) for k, v in replay(batch).items()}
    with tf.GradientTape() as tape:
        replay_loss, replay_reward = replay.loss_and_reward(batch, recorded)
    got = tape.gradient(replay_loss, replay.trainable_variables)
    np.testing.assert_allclose(replay_loss, loss, rtol=1e-5)
    np.testing.assert_array_equal(replay_reward, reward)
    for g, e, v in zip(got, expected, through.trainable_variables):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6 * np.abs(e).max(), err_msg=v.path)
    if network == "plastic":
        assert replay.rnn.fused_path_allowed()  # the reason for replaying
        if modulation != "none":
            assert replay.rnn.last_path.kernel == "modulated_fused"  # the whole-sequence kernel
            # The clip was reached, so the gradients above went through it.
            layer = PlasticRNN.from_config({**replay.rnn.get_config(), "return_state": True})
            layer.build(recorded["observations"].shape)
            layer.set_weights(replay.rnn.get_weights())
            hebb = layer(recorded["observations"])[2]
            assert np.abs(hebb).max() == pytest.approx(0.05)


def test_replay_trains_under_xla_with_the_xla_kernel(kernel_calls):
    """replay=True inside jit_compile: the replayed sequence runs hebbkeras.kernels.xla_fused,
    and a training step leaves the weights of the step without XLA."""
    maze = mz.Maze(size=5, episode_length=12)
    keras.utils.set_random_seed(3)
    weights, agents = None, []
    for jit in (False, True):
        agent = rl.MazeAgent(maze, network="plastic", units=6, replay=True)
        agent.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=jit)
        agent.build((None, 2))
        if weights is None:
            weights = agent.get_weights()
        agent.set_weights(weights)
        agent.train_on_batch(seeds(9, range(3)))
        agents.append(agent)
    assert agents[1].jit_compile is True
    assert len(kernel_calls["xla"]) == 1 and len(kernel_calls["fused"]) == 1
    for a, b, v in zip(*(x.get_weights() for x in agents), agents[0].weights):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=v.path)
    moved = max(np.abs(a - w).max() for a, w in zip(agents[0].get_weights(), weights))
    assert moved > 1e-3


def test_save_and_load(small_agent, tmp_path):
    path = str(tmp_path / "agent.keras")
    small_agent.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == small_agent.get_config()
    for key, value in small_agent(seeds(4, [0, 1])).items():
        np.testing.assert_array_equal(loaded(seeds(4, [0, 1]))[key], value, err_msg=key)


@pytest.mark.slow
def test_save_and_load_in_a_fresh_process(small_agent, tmp_path):
    path = str(tmp_path / "agent.keras")
    small_agent.save(path)
    expected = small_agent(seeds(4, [0, 1]))
    script = textwrap.dedent(f"""
        import numpy as np, keras, tensorflow as tf
        import hebbkeras.tasks.rl  # registers MazeAgent
        agent = keras.saving.load_model({path!r})
        out = agent(tf.constant([[4, 0], [4, 1]], tf.int64))
        print(type(agent).__name__, agent.network, agent.maze.size, agent.maze.episode_length)
        np.save({str(tmp_path / "values.npy")!r}, out["values"].numpy())
        np.save({str(tmp_path / "actions.npy")!r}, out["actions"].numpy())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-4:] == ["MazeAgent", "plastic", "7", "40"]
    np.testing.assert_array_equal(np.load(tmp_path / "actions.npy"), expected["actions"])
    np.testing.assert_allclose(np.load(tmp_path / "values.npy"), expected["values"], rtol=1e-6)


def test_path_picture(small_agent, tmp_path):
    path = rl.record_path(small_agent, seed=2, index=3)
    assert path["positions"].shape == (40,) and path["goal"].shape == ()
    from trainers import figures

    out = figures.save_png(mz.path_figure(small_agent.maze, path), str(tmp_path / "path.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["path.png"]  # no temporary file left behind


def mean_reward(agent, seed, episodes=128):
    batch = np.array([[seed, i] for i in range(episodes)], np.int64)
    return agent.test_on_batch(batch, return_dict=True)["reward"]  # data (x, None, None)


def train_and_compare(network, steps, units, learning_rate):
    keras.utils.set_random_seed(0)
    maze = mz.Maze(size=7, episode_length=50)
    agent = rl.MazeAgent(maze, network=network, units=units)
    agent.compile(optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=4.0))
    kernel = agent.policy.kernel.numpy()
    agent.policy.kernel.assign(np.zeros_like(kernel))  # bias is zero: a uniform policy
    uniform = mean_reward(agent, seed=1)
    agent.policy.kernel.assign(kernel)
    history = agent.fit(mz.episode_seeds(0, 16), steps_per_epoch=steps, epochs=1, verbose=0,
                        shuffle=False)
    assert set(history.history) == {"loss", "reward"}
    return uniform, mean_reward(agent, seed=1)


def test_training_beats_a_random_policy():
    # On held-out episodes; a short run mostly learns to stop walking into walls.
    uniform, trained = train_and_compare("plastic", steps=120, units=16, learning_rate=3e-3)
    assert trained > uniform + 2.0, (uniform, trained)


@pytest.mark.slow
@pytest.mark.parametrize("network", rl.NETWORKS)
def test_every_network_learns(network):
    uniform, trained = train_and_compare(network, steps=400, units=32, learning_rate=3e-3)
    assert trained > uniform + 4.0, (uniform, trained)


@pytest.mark.parametrize("make, message", [
    (lambda: mz.Maze(size=3), "size=3 must be an integer >= 4"),
    (lambda: mz.Maze(episode_length=0), "episode_length=0"),
    (lambda: mz.Maze(reward=float("nan")), "reward=nan must be a finite number"),
    (lambda: mz.episode_seeds(batch_size=0), "batch_size=0"),
    (lambda: mz.Maze().draw(tf.constant([1, 2], tf.int64)), r"seeds must have shape \(batch, 2\)"),
    (lambda: rl.MazeAgent(network="gru"), "Unknown network='gru'"),
    (lambda: rl.MazeAgent(plasticity="none"), 'plasticity="none".*use network="rnn"'),
    (lambda: rl.MazeAgent(plasticity="full"), "Unknown plasticity='full'"),
    (lambda: rl.MazeAgent(rule="bcm", units=4), "Unknown rule='bcm'"),
    (lambda: rl.MazeAgent(discount=1.5, units=4), "discount=1.5"),
    (lambda: rl.MazeAgent(maze=5, units=4), "maze=5 must be a hebbkeras.tasks.maze.Maze"),
])
def test_bad_settings_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_xla_is_not_turned_off_by_the_sequence_layer():
    # The rollout steps the cell (XLA keeps it); replay, which runs without
    # XLA, runs the sequence layer's fused kernel.
    for replay in (False, True):
        agent = rl.MazeAgent(mz.Maze(size=5, episode_length=5), units=4, replay=replay)
        agent.compile(optimizer="adam", jit_compile=not replay)
        assert agent.jit_compile == (not replay) and agent.rnn.use_fused == replay


MIRRORED = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from hebbkeras.tasks import maze as mz, rl
    maze = mz.Maze(size=7, episode_length=20)
    for replay in (False, True):
        keras.utils.set_random_seed(0)
        single = rl.MazeAgent(maze, units=8, replay=replay)
        start = single.get_weights()
        single.compile(optimizer=keras.optimizers.SGD(0.1))
        single.fit(mz.episode_seeds(0, 4), steps_per_epoch=1, verbose=0, shuffle=False)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            multi = rl.MazeAgent(maze, units=8, replay=replay)
            multi.set_weights(start)
            multi.compile(optimizer=keras.optimizers.SGD(0.1))
        data = strategy.distribute_datasets_from_function(
            lambda ctx: mz.episode_seeds(0, ctx.get_per_replica_batch_size(4), input_context=ctx))
        multi.fit(data, steps_per_epoch=1, verbose=0, shuffle=False)
        moved = max(np.abs(a - b).max() for a, b in zip(single.get_weights(), start))
        diff = max(np.abs(a - b).max() for a, b in zip(single.get_weights(), multi.get_weights()))
        assert moved > 1e-3 and diff < 1e-6 * max(1.0, moved), (replay, moved, diff)
    print("OK")
""")


@pytest.mark.slow
def test_two_replicas_take_the_single_device_step():
    # Each replica runs half the episodes; the summed, scaled gradients must
    # give the update of one device running them all.
    result = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.returncode == 0 and result.stdout.split()[-1:] == ["OK"], result.stderr[-3000:]
