"""The cue-reward task (Backpropamine, ICLR 2019): environment, agent and trainer.

The environment is held to a small independent implementation written here
from the original code's description (sr/srbatch.py): a plain-Python episode
generator (numpy's generator, not TensorFlow's) whose statistics the
TensorFlow draws must match, a parser of the trial structure, and a
plain-Python step (observations and rewards) run on the same draws.
"""

import dataclasses
import itertools
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import column, model_weights, run_python, stop_at

from hebbkeras.tasks import cue_agent, cue_reward
from trainers import cue_reward as trainer
from trainers import loop, maze_figures
from trainers.config import define_flags, from_flags

TASK = cue_reward.CueReward()


# ---------------------------------------------------------------- a Python version

def python_episode(rng, cues=4, bits=20, length=120):
    """One episode drawn as the original code draws it: `(patterns, target, shown, has_target)`."""
    patterns = []
    while len(patterns) < cues:
        candidate = list(rng.integers(0, 2, bits) * 2 - 1)
        if candidate not in patterns:
            patterns.append(candidate)
    target = int(rng.integers(cues))
    shown, has_target = [], []
    while len(shown) < length:
        trial_length = cues // 2 + 3 + int(rng.integers(cues))
        pair = list(rng.permutation(cues)[:cues // 2])
        middle = pair + [-1] * (trial_length - 3 - len(pair))
        middle = [middle[i] for i in rng.permutation(len(middle))]
        steps = [-1] + middle + [cues, -1]
        shown += steps
        has_target += [target in pair] * len(steps)
    return np.array(patterns), target, shown[:length], has_target[:length]


def parse_trials(shown, cues=4):
    """The trials of a `shown` row: `[(length, cues shown in order)]`; the last may be cut.

    Asserts the structure of a trial: no input, the middle steps, the response
    cue, no input.
    """
    trials, t = [], 0
    while t < len(shown):
        assert shown[t] == -1, (t, shown)
        end = t + 1
        while end < len(shown) and shown[end] != cues:
            end += 1
        middle = shown[t + 1:end]
        shown_cues = [c for c in middle if c != -1]
        if end < len(shown):  # a whole trial
            assert end + 1 >= len(shown) or shown[end + 1] == -1
            assert len(shown_cues) == cues // 2 and len(set(shown_cues)) == cues // 2
            trials.append((end + 2 - t, shown_cues))
        assert len(middle) <= cues // 2 + cues - 1  # the longest trial's `length - 3`
        t = end + 2
    return trials


def python_run(patterns, shown, has_target, actions, cues=4, length=120, reward=1.0):
    """Observations `(T, bits + 6)` and rewards `(T,)` of an episode for the given actions."""
    bits = patterns.shape[1]
    observations, rewards = [], []
    last_reward, last_action = 0.0, None
    for t in range(len(shown)):
        o = np.zeros(bits + 6)
        if 0 <= shown[t] < cues:
            o[:bits] = patterns[shown[t]]
        o[bits] = float(shown[t] == cues)
        o[bits + 1], o[bits + 2], o[bits + 3] = 1.0, t / length, last_reward
        if last_action is not None:
            o[bits + 4 + last_action] = 1.0
        r = 0.0
        if shown[t] == cues:
            r = reward if (actions[t] == 1) == has_target[t] else -reward
        observations.append(o)
        rewards.append(r)
        last_reward, last_action = r, actions[t]
    return np.array(observations), np.array(rewards)


def tf_draws(count, seed=0, task=TASK):
    """`task.draw` of episodes `(seed, 0..count-1)`, as numpy; compiled by XLA (the same
    draws as eagerly: test_draws_are_the_same_under_xla_and_independent_of_the_batch)."""
    seeds = tf.constant([[seed, i] for i in range(count)], tf.int64)
    return {k: v.numpy() for k, v in tf.function(task.draw, jit_compile=True)(seeds).items()}


# ---------------------------------------------------------------- the environment

def test_every_episode_is_a_run_of_well_formed_trials():
    draws = tf_draws(200)
    assert draws["patterns"].shape == (200, 4, 20) and draws["shown"].shape == (200, 120)
    assert set(np.unique(draws["patterns"])) == {-1.0, 1.0}
    for b in range(200):
        assert len({tuple(p) for p in draws["patterns"][b]}) == 4  # all different
        trials = parse_trials(list(draws["shown"][b]))
        assert {length for length, _ in trials} <= {5, 6, 7, 8}
        t = 0
        for length, shown_cues in trials:  # has_target: the trial shows the target
            assert set(draws["has_target"][b, t:t + length]) == {draws["target"][b] in shown_cues}
            t += length


def test_the_draws_have_the_original_codes_statistics():
    """2,000 episodes of each version: trial lengths, pairs, where the cues stand, targets."""
    rng = np.random.default_rng(0)
    python = [python_episode(rng) for _ in range(2000)]
    draws = tf_draws(2000, seed=5)

    def statistics(episodes):
        lengths, pairs, positions, targets, responses = [], [], [], [], []
        for shown, target in episodes:
            trials = parse_trials(list(shown))
            lengths += [n for n, _ in trials]
            pairs += [tuple(sorted(c)) for _, c in trials]
            responses.append(sum(s == 4 for s in shown))
            targets.append(target)
            t = 0
            for n, _ in trials:  # the step of the first cue within a trial of each length
                first = next(i for i in range(1, n) if shown[t + i] >= 0)
                positions.append((n, first))
                t += n
        counts = lambda xs, keys: np.array([xs.count(k) for k in keys]) / len(xs)  # noqa: E731
        combos = list(itertools.combinations(range(4), 2))
        spots = [(n, i) for n in range(5, 9) for i in range(1, n - 3)]
        return (counts(lengths, range(5, 9)), counts(pairs, combos), counts(positions, spots),
                counts(targets, range(4)), np.mean(responses))

    ours = statistics([(draws["shown"][b], draws["target"][b]) for b in range(2000)])
    theirs = statistics([(shown, target) for _, target, shown, _ in python])
    for a, b in zip(ours[:4], theirs[:4]):
        np.testing.assert_allclose(a, b, atol=0.035)
    assert ours[4] == pytest.approx(theirs[4], abs=0.15)  # about 18.4 responses per episode
    np.testing.assert_allclose(ours[0], 0.25, atol=0.02)  # lengths 5..8 equally often


def test_observations_and_rewards_match_the_python_step():
    draws = tf_draws(4, seed=2)
    rng = np.random.default_rng(3)
    actions = rng.integers(0, 2, (4, 120))
    state = TASK.reset(draws)
    observations, rewards = [], []
    for t in range(120):
        observations.append(TASK.observe(draws, state, t).numpy())
        state, reward = TASK.step(draws, state, tf.constant(actions[:, t], tf.int32), t)
        rewards.append(reward.numpy())
    for b in range(4):
        want_o, want_r = python_run(draws["patterns"][b], list(draws["shown"][b]),
                                    list(draws["has_target"][b]), actions[b])
        np.testing.assert_allclose(np.array(observations)[:, b], want_o, atol=1e-6)
        np.testing.assert_array_equal(np.array(rewards)[:, b], want_r)
    # A random answer earns 0 on average; answering right at each response earns the count.
    assert set(np.unique(rewards)) == {-1.0, 0.0, 1.0}


def test_draws_are_the_same_under_xla_and_independent_of_the_batch():
    seeds = tf.constant([[7, i] for i in range(6)], tf.int64)
    eager = TASK.draw(seeds)
    compiled = tf.function(TASK.draw, jit_compile=True)(seeds)
    alone = TASK.draw(seeds[3:4])
    for k in eager:
        np.testing.assert_array_equal(eager[k].numpy(), compiled[k].numpy())
        np.testing.assert_array_equal(eager[k].numpy()[3:4], alone[k].numpy())


@pytest.mark.parametrize("changes, message", [
    (dict(cues=1), "cues=1"), (dict(cue_bits=31), "cue_bits=31"),
    (dict(cues=5, cue_bits=2), "2\\*\\*cue_bits >= cues"), (dict(reward=float("nan")), "reward"),
])
def test_bad_task_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        cue_reward.CueReward(**changes)


# ---------------------------------------------------------------- the agent

@pytest.mark.parametrize("network, modulation, fanout", [
    ("plastic", "retroactive", False), ("plastic", "simple", False),
    ("plastic", "retroactive", True), ("plastic", "none", False), ("rnn", "none", False),
    ("lstm", "none", False)])
def test_the_rollout_is_the_layer_run_on_the_episodes_observations(network, modulation, fanout):
    """The agent's in-graph rollout equals its recurrent layer run whole on the observations
    that the Python step rebuilds from the agent's own answers; `modulation` is the scalar
    `M_t`, before a fan-out."""
    task = cue_reward.CueReward(episode_length=25)
    agent = cue_agent.CueRewardAgent(task, network=network, units=6, modulation=modulation,
                                     modulation_fanout=fanout)
    if fanout:  # not the initial ones, so that a fan-out left out or applied twice shows
        agent.cell.modulator_fanout.assign(np.linspace(-1.5, 2.0, 6).astype(np.float32))
    seeds = tf.constant([[1, 0], [1, 1], [1, 2]], tf.int64)
    out = {k: v.numpy() for k, v in agent(seeds).items()}
    draws = {k: v.numpy() for k, v in task.draw(seeds).items()}
    observations = []
    for b in range(3):
        o, r = python_run(draws["patterns"][b], list(draws["shown"][b]),
                          list(draws["has_target"][b]), out["actions"][b], length=25)
        np.testing.assert_array_equal(out["rewards"][b], r)
        observations.append(o)
    h = agent.rnn(np.array(observations, np.float32))
    logits = agent.policy(h).numpy()
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    taken = np.take_along_axis(log_probs, out["actions"][..., None], -1)[..., 0]
    np.testing.assert_allclose(out["log_probs"], taken, atol=1e-5)
    np.testing.assert_allclose(out["values"], agent.value(h).numpy()[..., 0], atol=1e-5)
    np.testing.assert_allclose(out["hidden"], h.numpy(), atol=1e-5)
    if modulation == "none":
        assert not out["modulation"].any()
    else:
        cell = agent.cell
        m = np.tanh(h.numpy() @ cell.modulator_kernel.numpy() + cell.modulator_bias.numpy())
        np.testing.assert_allclose(out["modulation"], m[..., 0], atol=1e-5)
        assert agent.rnn.cell.state_names[1:] == (("hebb", "E") if modulation == "retroactive"
                                                  else ("hebb",))


def test_modulation_needs_a_plastic_network():
    with pytest.raises(ValueError, match="pass modulation='none'"):
        cue_agent.CueRewardAgent(network="rnn", modulation="simple")


# ---------------------------------------------------------------- the trainer

TINY = dict(episode_length=16, units=6, batch_size=4, episodes=24, steps_per_epoch=2,
            learning_rate=0.01, seed=1, verbose=0, jit_compile=False)


def test_a_short_run_fills_its_run_dir(tmp_path):
    config = trainer.CueRewardConfig(**TINY, run_dir=str(tmp_path))
    summary = trainer.run(config)
    rewards = np.repeat(column(tmp_path / "episodes.csv", "reward"), 4)
    assert column(tmp_path / "episodes.csv", "episode", int) == list(range(4, 25, 4))
    assert summary["reward_last_1000"] == pytest.approx(rewards.mean(), rel=1e-6)
    assert json.loads((tmp_path / "summary.json").read_text())["reward_last_1000"] == \
        summary["reward_last_1000"]
    assert {"learning_curve.png", "model.keras", "history.csv", "config.json",
            "tensorboard"} <= set(os.listdir(tmp_path))
    assert trainer.CueRewardConfig.from_json((tmp_path / "config.json").read_text()) == config
    # The saved agent is the trained one, and keeps its modulation.
    import keras
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.modulation == "retroactive" and loaded.task == config.task
    for a, b in zip(loaded.get_weights(), model_weights(tmp_path / "model.keras")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # the shared loop's resumption: tests/test_interruptions.py
def test_an_interrupted_run_resumes_to_the_uninterrupted_one(tmp_path):
    class Stopping(trainer.CueRewardTask):
        def callbacks(self, run_dir):
            return [stop_at(3)]  # in the second epoch, after the first backup

    config = trainer.CueRewardConfig(**TINY, modulation="simple", run_dir=str(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        loop.run(Stopping(config))
    trainer.run(config)
    straight = trainer.CueRewardConfig(**TINY, modulation="simple", run_dir=str(tmp_path / "b"))
    trainer.run(straight)
    for key in ("episode", "loss", "reward"):
        np.testing.assert_allclose(column(tmp_path / "a" / "episodes.csv", key),
                                   column(tmp_path / "b" / "episodes.csv", key), rtol=1e-5)
    for a, b in zip(model_weights(tmp_path / "a" / "model.keras"),
                    model_weights(tmp_path / "b" / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def fake_run(run_dir, model, modulation, rewards, batch=2, seconds=10.0):
    os.makedirs(run_dir)
    config = trainer.CueRewardConfig(model=model, modulation=modulation, units=8,
                                     batch_size=batch, run_dir=str(run_dir))
    (run_dir / "config.json").write_text(config.to_json())
    lines = ["episode,loss,reward"] + [f"{batch * (i + 1)},0.5,{r}" for i, r in enumerate(rewards)]
    (run_dir / "episodes.csv").write_text("\n".join(lines) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(
        {"episodes": batch * len(rewards), "wall_seconds": seconds}))


def test_compare_groups_the_three_models(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    runs = {("plastic", "retroactive", 0): rng.random(30) + 8,
            ("plastic", "retroactive", 1): rng.random(30) + 9,
            ("plastic", "none", 0): rng.random(30) + 2, ("rnn", "none", 0): rng.random(30)}
    for (model, modulation, seed), rewards in runs.items():
        fake_run(tmp_path / f"{model}-{modulation}-{seed}", model, modulation, rewards)
    drawn, draw = {}, maze_figures.reward_curves

    def spy(groups, window, baseline, title):
        drawn.update(groups=groups, baseline=baseline)
        return draw(groups, window=window, baseline=baseline, title=title)

    monkeypatch.setattr(maze_figures, "reward_curves", spy)
    table = trainer.compare([str(tmp_path / "-".join(map(str, k))) for k in runs],
                            str(tmp_path / "curves.png"), window=10)
    names = ["plastic, retroactive modulation (8 units)", "plastic (8 units)", "rnn (8 units)"]
    assert list(drawn["groups"]) == names and drawn["baseline"] == ("random answers", 0.0)
    finals = [runs["plastic", "retroactive", s][-5:].mean() for s in (0, 1)]
    assert table.splitlines()[2] == (
        f"| {names[0]} | 2 | 60 | 2 | {np.mean(finals):.2f} | {min(finals):.2f} to "
        f"{max(finals):.2f} | 6.0 |")
    assert (tmp_path / "curves.md").read_text() == table and (tmp_path / "curves.png").exists()
    with pytest.raises(ValueError, match="holds no run"):
        trainer.compare([str(tmp_path)], str(tmp_path / "x.png"))


def parse(*args):
    values = flags.FlagValues()
    define_flags(trainer.CueRewardConfig, values)
    values(["trainers.cue_reward", *args])
    return from_flags(trainer.CueRewardConfig, values)


def test_defaults_are_the_fast_recipe_and_paper_is_the_original_codes():
    config = parse()
    assert config == trainer.CueRewardConfig() and config.recipe == "fast"
    assert config.task == cue_reward.CueReward(4, 20, 120, 1.0)
    assert (config.model, config.modulation, config.trace_clip, config.eta,
            config.trainable_eta) == ("plastic", "retroactive", 1.0, 0.1, True)
    assert (config.discount, config.value_weight, config.exploration_weight) == (0.9, 0.1, 0.0)
    assert (config.units, config.learning_rate, config.episodes) == (32, 1e-3, 240_000)
    assert (config.batch_size, config.clip_norm, config.jit_compile) == (30, 2.0, True)
    paper = parse("--recipe=paper")
    assert (paper.units, paper.learning_rate, paper.batch_size, paper.clip_norm,
            paper.exploration_weight, paper.episodes) == (200, 1e-4, 30, 2.0, 0.1, 6_000_000)
    assert dataclasses.replace(paper, recipe="fast", units=config.units,
                               learning_rate=config.learning_rate, episodes=config.episodes,
                               exploration_weight=config.exploration_weight,
                               steps_per_epoch=config.steps_per_epoch) == config
    optimizer = trainer.CueRewardTask(paper).optimizer()
    assert (optimizer.epsilon, optimizer.global_clipnorm) == (1e-6, 2.0)


@pytest.mark.parametrize("changes, message", [
    (dict(model="rnn"), "pass --model plastic or --modulation none"),
    (dict(modulation="none", modulation_fanout=True), "needs --modulation simple or retroactive"),
    (dict(modulation="oja"), "modulation"),
    (dict(strategy="mirrored"), "jit_compile=True fails"),
    (dict(cues=5, cue_bits=2), "2\\*\\*cue_bits >= cues"),
    (dict(trace_clip=0.0), "trace_clip"),
])
def test_bad_settings_are_one_clear_error(changes, message):
    with pytest.raises(ValueError, match=message):
        trainer.CueRewardConfig(**changes).validate()


def test_the_command_line_says_one_error_line(tmp_path):
    bad = run_python(["-m", "trainers.cue_reward", "--model=lstm", f"--run_dir={tmp_path}"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert bad.stderr.startswith("error: --modulation retroactive gates the trace of the plastic "
                                 "network; --model lstm has none")
    assert len(bad.stderr.strip().splitlines()) == 1


class FixedTarget(cue_reward.CueReward):
    """The task with the target's pattern the same in every episode (the other cues' too):
    no within-episode learning needed, so any recurrent agent can learn it."""

    def draw(self, seeds):
        draws = super().draw(seeds)
        fixed = super().draw(tf.zeros_like(seeds))["patterns"]  # the same for every episode
        index = (tf.range(self.cues)[None, :] - draws["target"][:, None]) % self.cues
        return {**draws, "patterns": tf.gather(fixed, index, batch_dims=1)}


@pytest.mark.slow
def test_the_agent_learns_a_target_that_never_changes():
    """The environment, the agent and the A2C loss learn together: with the target fixed
    across episodes, a small rnn answers nearly every trial right within 300 steps (random
    answers: 0; every answer right: about 18.4 per episode)."""
    import keras

    keras.utils.set_random_seed(0)
    agent = cue_agent.CueRewardAgent(FixedTarget(), network="rnn", units=16, modulation="none")
    agent.compile(optimizer=keras.optimizers.Adam(3e-3, epsilon=1e-6, global_clipnorm=2.0),
                  jit_compile=True)
    agent.fit(cue_reward.episode_seeds(0, 30), steps_per_epoch=100, epochs=3, verbose=0)
    reward = agent.evaluate(cue_reward.episode_seeds(1, 30).take(5), verbose=0,
                            return_dict=True)["reward"]
    assert reward > 15.0, reward


@pytest.mark.slow  # a benchmark's diagnostic tool; 10-35 s
def test_the_diagnosis_tells_a_dead_modulator_from_a_live_one():
    """benchmarks.cue_diagnosis: M's statistics against the agent's own rollout, by outcome."""
    from benchmarks import cue_diagnosis

    task = cue_reward.CueReward(episode_length=30)
    agent = cue_agent.CueRewardAgent(task, units=6, modulation="retroactive")
    agent.cell.modulator_bias.assign([50.0])  # tanh saturated: +1 at every step
    dead = cue_diagnosis.diagnose(agent, 40, seed=3)
    assert dead["M mean"] == pytest.approx(1.0) and dead["M std"] < 1e-6
    assert dead["M after +1"] == pytest.approx(1.0) and dead["M after -1"] == pytest.approx(1.0)
    agent.cell.modulator_bias.assign([0.3])
    live = cue_diagnosis.diagnose(agent, 40, seed=3)
    seeds = np.stack([np.full(40, 3), np.arange(40)], 1).astype(np.int64)
    out = {k: np.asarray(v) for k, v in agent(seeds).items()}
    m = np.tanh(out["hidden"] @ agent.cell.modulator_kernel.numpy() + 0.3)[..., 0]
    seen = np.pad(out["rewards"][:, :-1], ((0, 0), (1, 0)))
    assert live["M std"] == pytest.approx(m.std(), abs=1e-5)
    assert live["M after -1"] == pytest.approx(m[seen < 0].mean(), abs=1e-5)
    assert live["reward/episode"] == pytest.approx(out["rewards"].sum(1).mean())
    assert 0.0 <= live["probe"] <= 1.0 and 0.0 <= live["policy"] <= 1.0
    h, respond = out["hidden"], out["shown"] == task.cues
    assert live["|h|"] == pytest.approx(np.abs(h).mean(), abs=1e-6)
    assert live["h saturated"] == pytest.approx((np.abs(h) > 0.95).mean())
    sure = np.abs(out["probs"][..., 1] - out["probs"][..., 0])
    assert live["certainty"] == pytest.approx(sure[respond].mean(), abs=1e-6)
    assert live["elsewhere"] == pytest.approx(sure[~respond].mean(), abs=1e-6)
    agent.cell.bias.assign(np.full(6, 30.0, np.float32))  # every neuron driven to +1
    assert cue_diagnosis.diagnose(agent, 40, seed=3)["h saturated"] == 1.0


@pytest.mark.slow  # about 2 minutes on 2 cores
def test_the_default_recipe_leaves_chance_within_60000_episodes(tmp_path):
    """The defaults learn to learn: seed 0, whose network stayed at chance for 500,000 episodes
    with the original code's exploration term (docs/neuromodulation.md), earns well above
    random answers (0 per episode) after 60,000 episodes of the default recipe."""
    config = trainer.CueRewardConfig(episodes=60_000, seed=0, run_dir=str(tmp_path), verbose=0)
    summary = trainer.run(config)
    assert summary["episodes"] == 60_000
    assert summary["reward_last_1000"] > 2.0, summary
