"""python -m trainers.maze: it learns beyond a random policy, writes its run directory,
resumes after SIGKILL, and draws runs side by side.

The random policy's reward is measured here by a plain-Python random walk in
a maze built from the rules (not from hebbkeras.tasks.maze).
"""

import dataclasses
import json
import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import column, model_weights, read_csv, run_python, stop_at
from PIL import Image

from trainers import loop, maze_figures
from trainers import maze as trainer
from trainers.config import define_flags, from_flags

# A small maze that a short run learns: 5 x 5 (9 free cells), 30 steps. Without
# XLA: at this size compiling costs more than it saves (the same episodes and
# rewards either way); the slow resume test runs the default, XLA.
SMALL = dict(size=5, episode_length=30, units=16, batch_size=32, learning_rate=1e-2,
             clip_norm=4.0, steps_per_epoch=10, seed=4, verbose=1, jit_compile=False)


def python_random_policy(size, length, episodes, rng, reward=10.0, penalty=0.1):
    """Mean total reward per episode of uniformly random moves, simulated cell by cell."""
    centre = size // 2
    walls = {(r, c) for r in range(size) for c in range(size)
             if (r in (0, size - 1) or c in (0, size - 1) or (r % 2 == 0 and c % 2 == 0))
             and (r, c) != (centre, centre)}
    free = [(r, c) for r in range(size) for c in range(size) if (r, c) not in walls]
    moves = ((-1, 0), (1, 0), (0, -1), (0, 1))
    totals = []
    for _ in range(episodes):
        goals = [cell for cell in free if cell != (centre, centre)]
        goal = goals[rng.integers(len(goals))]
        pos, total = (centre, centre), 0.0
        for _ in range(length):
            dr, dc = moves[rng.integers(4)]
            target = (pos[0] + dr, pos[1] + dc)
            if target in walls:
                total -= penalty
            else:
                pos = target
            if pos == goal:
                total += reward
                landing = [cell for cell in free if cell != goal]
                pos = landing[rng.integers(len(landing))]
        totals.append(total)
    return float(np.mean(totals))


def per_episode(path):
    """Per-episode rewards of an episodes.csv (each row is the mean of its batch)."""
    return np.repeat(column(path, "reward"), np.diff([0] + column(path, "episode", int)))


def test_short_run_beats_a_random_policy_and_fills_its_run_dir(tmp_path, capsys):
    config = trainer.MazeConfig(**SMALL, episodes=960, run_dir=str(tmp_path))
    summary = trainer.run(config)
    out = capsys.readouterr().out

    chance = python_random_policy(5, 30, 2000, np.random.default_rng(0))
    # The trainer's own chance level agrees (1,000 episodes each side: about 0.3 standard error).
    assert summary["random_policy_reward"] == pytest.approx(chance, abs=1.5)
    rows = read_csv(tmp_path / "episodes.csv")
    assert list(rows[0]) == ["episode", "loss", "reward"]
    assert column(tmp_path / "episodes.csv", "episode", int) == list(range(32, 961, 32))
    rewards = per_episode(tmp_path / "episodes.csv")
    assert rewards[:160].mean() < chance + 5 < rewards[-160:].mean(), (chance, rewards[-160:].mean())
    assert np.isfinite(column(tmp_path / "episodes.csv", "loss")).all()

    # The final line: the mean reward per episode over all 960 (fewer than 1,000) episodes.
    assert summary["reward_last_1000"] == pytest.approx(rewards.mean(), rel=1e-6)
    line = [x for x in out.splitlines() if x.startswith("Episodes: 960")][-1]
    assert f"mean reward per episode over the last 960 episodes: {rewards.mean():.3f}" in line
    assert f"(random policy: {summary['random_policy_reward']:.3f})" in line
    assert json.loads((tmp_path / "summary.json").read_text())["reward_last_1000"] == \
        summary["reward_last_1000"]

    assert {"learning_curve.png", "path.png", "model.keras", "history.csv", "config.json",
            "tensorboard"} <= set(os.listdir(tmp_path))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary files
    curve = np.asarray(Image.open(tmp_path / "learning_curve.png").convert("RGB"))
    path = np.asarray(Image.open(tmp_path / "path.png").convert("RGB"))
    assert curve.shape[0] > 100 and path.shape[0] > 100 and curve.std() > 0 and path.std() > 0
    # TensorBoard holds the same pictures, at the last episode.
    images = {}
    event_dir = tmp_path / "tensorboard" / "figures"
    for name in os.listdir(event_dir):
        for event in tf.compat.v1.train.summary_iterator(str(event_dir / name)):
            for value in event.summary.value:
                images[value.tag] = (event.step, tf.io.decode_png(
                    tf.make_ndarray(value.tensor)[2]).numpy())
    assert images["learning_curve"][0] == images["path"][0] == 960
    np.testing.assert_array_equal(images["learning_curve"][1], curve)
    np.testing.assert_array_equal(images["path"][1], path)
    assert trainer.MazeConfig.from_json((tmp_path / "config.json").read_text()) == config


KILLER = textwrap.dedent("""
    import os, signal, sys
    import keras
    from absl import flags
    from trainers import loop, maze
    from trainers.config import define_flags, from_flags

    class Kill(keras.callbacks.Callback):  # SIGKILL after training step `step`
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == int(sys.argv[1]):
                os.kill(os.getpid(), signal.SIGKILL)

    class Task(maze.MazeTask):
        def callbacks(self, run_dir):
            return [Kill()]

    define_flags(maze.MazeConfig)
    flags.FLAGS(["trainers.maze", *sys.argv[2:]])
    loop.run(Task(from_flags(maze.MazeConfig)))
""")

TINY = ["--size=5", "--episode_length=12", "--units=8", "--batch_size=4", "--episodes=48",
        "--steps_per_epoch=3", "--learning_rate=0.01", "--seed=2", "--verbose=1"]


@pytest.mark.slow
def test_killed_run_resumes_and_trains_every_episode_once(tmp_path):
    """SIGKILL in epoch 3; the same command finishes; the result is the uninterrupted run's."""
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    killed = run_python(["-c", KILLER, "7", *TINY, f"--run_dir={killed_dir}"])
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert len(read_csv(killed_dir / "history.csv")) == 2

    resumed = run_python(["-m", "trainers.maze", *TINY, f"--run_dir={killed_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 epochs (24 episodes) done" in resumed.stdout
    straight = run_python(["-m", "trainers.maze", *TINY, f"--run_dir={straight_dir}"])
    assert straight.returncode == 0, straight.stderr[-3000:]

    episodes = column(killed_dir / "episodes.csv", "episode", int)
    assert episodes == list(range(4, 49, 4))  # every episode once, in order
    for key in ("loss", "reward"):
        np.testing.assert_allclose(column(killed_dir / "episodes.csv", key),
                                   column(straight_dir / "episodes.csv", key), rtol=1e-5)
    for a, b in zip(model_weights(killed_dir / "model.keras"),
                    model_weights(straight_dir / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The final line averages all 48 episodes, those before the kill too.
    final = [x for x in resumed.stdout.splitlines() if x.startswith("Episodes: 48")][-1]
    expected = per_episode(straight_dir / "episodes.csv").mean()
    assert f"over the last 48 episodes: {expected:.3f}" in final
    assert f"over the last 48 episodes: {expected:.3f}" in straight.stdout


def fake_run(run_dir, model, rewards, batch=2, seconds=10.0, finished=True, chance=1.5,
             modulation="none"):
    """A run directory as the trainer leaves it, with `rewards` per batch row."""
    os.makedirs(run_dir)
    config = trainer.MazeConfig(model=model, units=8, batch_size=batch, run_dir=str(run_dir),
                                modulation=modulation)
    (run_dir / "config.json").write_text(config.to_json())
    lines = ["episode,loss,reward"] + [f"{batch * (i + 1)},0.5,{r}" for i, r in enumerate(rewards)]
    (run_dir / "episodes.csv").write_text("\n".join(lines) + "\n")
    if finished:
        episodes = batch * len(rewards)
        (run_dir / "summary.json").write_text(json.dumps(
            {"episodes": episodes, "wall_seconds": seconds, "random_policy_reward": chance}))


def test_compare_draws_one_band_per_model_and_tabulates_the_last_episodes(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    runs = {("plastic", 0): rng.random(30) + 5, ("plastic", 1): rng.random(30) + 6,
            ("rnn", 0): rng.random(30), ("simple", 0): rng.random(30) + 9}
    for (model, seed), rewards in runs.items():
        modulation = "simple" if model == "simple" else "none"
        fake_run(tmp_path / f"{model}-{seed}", "plastic" if modulation != "none" else model,
                 rewards, finished=seed == 0, chance=float(seed + 1), modulation=modulation)
    dirs = [str(tmp_path / f"{m}-{s}") for m, s in runs]
    drawn, draw = {}, maze_figures.reward_curves

    def spy(groups, window, baseline, **kwargs):
        drawn.update(groups=groups, window=window, baseline=baseline)
        return draw(groups, window=window, baseline=baseline, **kwargs)

    monkeypatch.setattr(maze_figures, "reward_curves", spy)
    table = trainer.compare(dirs, str(tmp_path / "curves.png"), window=10)
    # A modulated network is its own group.
    assert list(drawn["groups"]) == ["plastic (8 units)", "rnn (8 units)",
                                     "plastic, simple modulation (8 units)"]
    np.testing.assert_array_equal(drawn["groups"]["plastic (8 units)"][1],
                                  np.repeat(runs["plastic", 1], 2))  # per episode, batch 2
    assert drawn["window"] == 10 and drawn["baseline"] == ("random policy", 1.0)  # finished runs

    lines = table.splitlines()
    assert lines[0].startswith("| model | runs | episodes | batch | reward/episode, last 10")
    # Each run's last 10 episodes are its last 5 rows of batch 2.
    finals = [runs["plastic", 0][-5:].mean(), runs["plastic", 1][-5:].mean()]
    assert lines[2] == (f"| plastic (8 units) | 2 | 60 | 2 | {np.mean(finals):.2f} | "
                        f"{min(finals):.2f} to {max(finals):.2f} | 6.0 |")  # 60 episodes in 10 s
    assert lines[3].startswith(f"| rnn (8 units) | 1 | 60 | 2 | {runs['rnn', 0][-5:].mean():.2f} |")
    assert lines[4].startswith(f"| plastic, simple modulation (8 units) | 1 | 60 | 2 | "
                               f"{runs['simple', 0][-5:].mean():.2f} |")
    assert (tmp_path / "curves.md").read_text() == table
    assert np.asarray(Image.open(tmp_path / "curves.png")).shape[0] > 100

    with pytest.raises(ValueError, match="holds no maze run"):
        trainer.compare([str(tmp_path)], str(tmp_path / "x.png"))


def test_command_line_compare_error_is_one_line(tmp_path):
    bad = run_python(["-m", "trainers.maze", f"--compare={tmp_path / 'none'}"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith(f"error: {tmp_path / 'none'} holds no maze run")


@pytest.mark.slow
def test_command_line_compare_prints_the_table_and_writes_the_figure(tmp_path):
    fake_run(tmp_path / "a", "lstm", [1.0, 2.0, 3.0])
    ok = run_python(["-m", "trainers.maze", f"--compare={tmp_path / 'a'}",
                     f"--figure={tmp_path / 'c.png'}"])
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "| lstm (8 units) | 1 | 6 | 2 | 2.00 | 2.00 to 2.00 | 0.6 |" in ok.stdout
    assert (tmp_path / "c.png").exists() and (tmp_path / "c.md").exists()


@pytest.mark.parametrize("changes, message", [
    (dict(strategy="mirrored"), "jit_compile=True fails under strategy='mirrored'"),
    (dict(model="gru"), "model"),
    (dict(discount=1.5), "discount=1.5"),
    (dict(clip_norm=-1.0), "clip_norm=-1.0 must be >= 0"),
    (dict(size=3), "size=3 must be an integer >= 4"),
    (dict(modulation="simple"), "--modulation simple replaces the trace rule.*add --rule hebb"),
    (dict(modulation="retroactive", rule="hebb", model="rnn"),
     "--model rnn has none: pass --model plastic or --modulation none"),
    (dict(modulation_fanout=True), "--modulation_fanout .* needs --modulation simple or retroactive"),
    (dict(modulation="simple", rule="hebb", trace_clip=0.0), "trace_clip=0.0"),
    (dict(modulation="dopamine"), "modulation"),
])
def test_bad_settings_are_one_clear_error(changes, message):
    with pytest.raises(ValueError, match=message):
        trainer.MazeConfig(**changes).validate()


def parse(*args):
    """The MazeConfig of the command line `args` (flags as `python -m trainers.maze` defines them)."""
    values = flags.FlagValues()
    define_flags(trainer.MazeConfig, values)
    values(["trainers.maze", *args])
    return from_flags(trainer.MazeConfig, values)


def test_defaults_are_the_fast_recipe_and_paper_is_the_original_codes():
    # The fast recipe (docs/maze.md: batch 30, clip 4, Adam 3e-4, 100 units) is the default.
    config = parse()
    assert config == trainer.MazeConfig() and config.recipe == "fast"
    assert (config.size, config.episode_length, config.reward, config.wall_penalty) == (9, 250, 10.0, 0.1)
    assert (config.model, config.units, config.rule, config.plasticity) == ("plastic", 100, "oja", "per_connection")
    assert (config.discount, config.value_weight, config.exploration_weight) == (0.9, 0.03, 0.1)
    assert (config.learning_rate, config.batch_size, config.clip_norm, config.episodes,
            config.jit_compile) == (3e-4, 30, 4.0, 15_000, True)
    # --recipe paper: the original code's training settings; the task itself is unchanged.
    paper = parse("--recipe=paper")
    assert (paper.units, paper.learning_rate, paper.batch_size, paper.clip_norm, paper.episodes) == \
        (200, 1e-4, 1, 0.0, 1_000_000)
    assert dataclasses.replace(paper, recipe="fast", units=100, learning_rate=3e-4, batch_size=30,
                               clip_norm=4.0, episodes=15_000, steps_per_epoch=50) == config
    assert trainer.MazeConfig.with_recipe("paper") == paper
    assert parse("--recipe=paper", "--model=rnn", "--units=100").units == 100  # flags win
    assert trainer.MazeTask(paper).optimizer().global_clipnorm is None
    assert trainer.MazeTask(config).optimizer().global_clipnorm == 4.0


def test_modulation_flags_reach_the_config_json_and_the_agent(tmp_path):
    """--modulation, --trace_clip, --modulation_fanout: flags -> config -> config.json ->
    config, and into the agent's layer; a config.json from before these settings
    reads as unmodulated (old runs resume)."""
    config = parse("--modulation=retroactive", "--rule=hebb", "--trace_clip=0.5",
                   "--modulation_fanout", "--units=6", "--size=5").validate()
    assert (config.modulation, config.trace_clip, config.modulation_fanout) == ("retroactive", 0.5, True)
    assert trainer.MazeConfig.from_json(config.to_json()) == config
    assert parse().modulation == "none" and parse().trace_clip == 1.0
    old = json.loads(trainer.MazeConfig().to_json())
    for key in ("modulation", "trace_clip", "modulation_fanout"):
        del old[key]
    assert trainer.MazeConfig.from_json(json.dumps(old)) == trainer.MazeConfig()
    layer = trainer.build_agent(config).rnn
    assert (layer.modulation, layer.trace_clip, layer.cell.modulation_fanout) == ("retroactive", 0.5, True)
    assert layer.state_names == ("y", "hebb", "E") and layer.cell.trainable_eta
    simple = trainer.build_agent(dataclasses.replace(config, modulation="simple")).rnn
    assert not simple.cell.trainable_eta  # "simple" does not use eta
    assert trainer.run_label(config) == "plastic, retroactive modulation (6 units)"


def test_a_modulated_run_trains_through_the_trainer(tmp_path):
    """A tiny retroactive run through the trainer: the modulator's weights and eta
    learn, and the saved agent is modulated as configured."""
    config = trainer.MazeConfig(**{**SMALL, "units": 6, "batch_size": 4, "steps_per_epoch": 2},
                                episodes=16, modulation="retroactive", rule="hebb",
                                trace_clip=0.5, run_dir=str(tmp_path))
    summary = trainer.run(config)
    assert summary["episodes"] == 16 and np.isfinite(summary["reward_last_1000"])
    assert len(read_csv(tmp_path / "episodes.csv")) == 4
    agent = keras.saving.load_model(tmp_path / "model.keras")
    assert (agent.modulation, agent.rnn.modulation, agent.rnn.trace_clip) == ("retroactive",) * 2 + (0.5,)
    keras.utils.set_random_seed(config.seed)  # as trainers.loop.run: the initial weights
    init = trainer.build_agent(config)
    moved = {v.path: float(np.abs(v.numpy() - w.numpy()).max())
             for v, w in zip(agent.weights, init.weights)}
    for name in ("modulator_kernel", "modulator_bias", "eta"):  # all learn through M_t
        assert moved[f"plastic_rnn/plastic_rnn_cell/{name}"] > 1e-5, moved
    assert trainer.MazeConfig.from_json((tmp_path / "config.json").read_text()) == config


def test_settings_reach_the_agent_and_optimizer():
    task = trainer.MazeTask(trainer.MazeConfig(model="lstm", units=8, size=7, clip_norm=4.0,
                                               learning_rate=3e-4))
    agent, optimizer = task.model(), task.optimizer()
    assert agent.network == "lstm" and agent.units == 8 and agent.maze.size == 7
    assert isinstance(agent.rnn, keras.layers.LSTM)
    assert (optimizer.learning_rate.numpy(), optimizer.epsilon, optimizer.global_clipnorm) == \
        (pytest.approx(3e-4), 1e-4, 4.0)
    assert trainer.MazeTask(trainer.MazeConfig(clip_norm=0.0)).optimizer().global_clipnorm is None


def test_a_resumed_runs_summary_averages_the_episodes_before_the_restart(tiny_binary):
    """The shared loop (trainers.loop.EpisodeLog): what the final line averages after a resume.

    Binary task, 12 episodes in batches of 2, interrupted in epoch 2 (after the
    backup of epoch 1): the summary's mean over the last 10 episodes must
    include the 2 trained before the interruption, as in episodes.csv.
    """
    from trainers import binary

    class Stopping(binary.BinaryTask):
        def callbacks(self, run_dir):
            return [stop_at(3)]

    config = tiny_binary("run")
    with pytest.raises(KeyboardInterrupt):
        loop.run(Stopping(config))
    summary = binary.run(config)
    losses = column(os.path.join(config.run_dir, "episodes.csv"), "loss")
    assert len(losses) == 6  # one row per step of 2 episodes
    assert summary["loss_last_10"] == pytest.approx(np.mean(losses[-5:]), rel=1e-6)
