"""The grid maze of the ICML 2018 paper, batched and in-graph, in TensorFlow ops.

The maze is a square grid of side `size` (9 by default; the paper's runs used
11). Walls (1) fill the border and every interior cell whose row and column
are both even; the centre is free. Each episode:

- the agent starts at the centre;
- the reward sits at a random free cell other than the centre, fixed for the
  episode (the original code excludes the start cell too, so that no reward is
  collected before the first move);
- each step the agent moves up, down, left or right (actions 0, 1, 2, 3);
  walking into a wall costs `wall_penalty` and the agent stays put; reaching
  the reward cell gives `reward` and teleports the agent to a random free cell
  other than the reward cell.

Positions are flat cell indices, `row * size + col`. The observation of a
step, `OBSERVATION_SIZE = 16` numbers, is

    [0:9]   the 3 x 3 neighbourhood of the agent, row-major, 1 = wall
    [9]     bias, 1
    [10]    step number t / episode_length, in [0, 1)
    [11]    the previous step's reward (0 at t = 0)
    [12:16] the previous action, one-hot (all zero at t = 0)

(the original code feeds the same values, plus an always-zero input, and a
one-hot "action 0" at t = 0 rather than none).

Every random choice of an episode is drawn up front by `Maze.draw` from the
stateless seed `[seed, episode index]`: the reward cell, one teleport target
per step (used on the steps where the reward is reached) and one uniform
number per step that an agent turns into its action. An episode is therefore
a pure function of `(seed, index)` and of the agent's weights.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from hebbkeras.checks import check_int
from hebbkeras.tasks import episodes

NUM_ACTIONS = 4  # up, down, left, right
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (row, col) step of each action
OBSERVATION_SIZE = 9 + 3 + NUM_ACTIONS
# Named, not "auto_select": XLA would otherwise pick another generator, and a
# jit-compiled run would see other episodes than a plain one (see also `draw`).
_ALG = "philox"


def layout(size):
    """The walls of a maze of side `size`: `(size, size)` int32 numpy, 1 = wall."""
    walls = np.ones((size, size), np.int32)
    walls[1:-1, 1:-1] = 0
    walls[2:-1:2, 2:-1:2] = 1  # interior cells with both coordinates even
    walls[size // 2, size // 2] = 0
    return walls


@dataclasses.dataclass(frozen=True)
class Maze:
    """The maze's rules and its batched, in-graph TensorFlow dynamics.

    Args:
        size: side of the square grid, >= 4 (9 in the original code, 11 in
            the paper's runs).
        episode_length: steps per episode (250).
        reward: reward for reaching the reward cell (+10).
        wall_penalty: cost of walking into a wall (0.1, given as -0.1).

    Example:

    >>> maze = Maze(size=7, episode_length=20)
    >>> draws = maze.draw(tf.constant([[0, 0], [0, 1]], tf.int64))
    >>> state = maze.reset(draws)
    >>> obs = maze.observe(state, 0)                  # (2, 16)
    >>> state, reward, found = maze.step(state, tf.constant([0, 3]), draws["teleport"][:, 0])
    """

    size: int = 9
    episode_length: int = 250
    reward: float = 10.0
    wall_penalty: float = 0.1

    def __post_init__(self):
        check_int("size", self.size, 4)
        check_int("episode_length", self.episode_length, 1)
        for name in ("reward", "wall_penalty"):
            value = getattr(self, name)
            if not np.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number.")

    # -- static structure (numpy) ----------------------------------------

    @property
    def walls(self):
        """`(size, size)` int32 numpy array, 1 = wall."""
        return layout(self.size)

    @property
    def centre(self):
        """Flat index of the start cell."""
        return (self.size // 2) * (self.size + 1)

    @property
    def free_cells(self):
        """Flat indices of the free cells, increasing."""
        return np.flatnonzero(self.walls.reshape(-1) == 0).astype(np.int32)

    def to_dict(self):
        return dataclasses.asdict(self)

    # -- randomness ------------------------------------------------------

    def draw(self, seeds):
        """Every random choice of a batch of episodes, from their seeds.

        Args:
            seeds: `(batch, 2)` int64, one stateless seed per episode
                (`[seed, episode index]`, see `episode_seeds`).

        Returns a dict of tensors:
            `goal`: `(batch,)` int32, the reward cell: uniform over the free
                cells other than the centre.
            `teleport`: `(batch, episode_length)` int32, where the agent lands
                if it reaches the reward at that step: uniform over the free
                cells other than the reward cell.
            `noise`: `(batch, episode_length)` float32 in [0, 1), the
                uniform number that an agent's sampler turns into its action.

        Episode `b`'s draws depend on `seeds[b]` alone, not on the batch.
        """
        free = tf.constant(self.free_cells)
        count = len(self.free_cells)
        centre_at = int(np.searchsorted(self.free_cells, self.centre))
        steps = self.episode_length

        def one(seed):
            goal_seed, teleport_seed, noise_seed = tf.unstack(
                tf.random.experimental.stateless_split(seed, 3, alg=_ALG))
            # A uniform index among count - 1 cells, shifted past the excluded one.
            goal_at = tf.random.stateless_uniform((), goal_seed, 0, count - 1, tf.int32, alg=_ALG)
            goal_at += tf.cast(goal_at >= centre_at, tf.int32)
            land_at = tf.random.stateless_uniform(
                (steps,), teleport_seed, 0, count - 1, tf.int32, alg=_ALG)
            land_at += tf.cast(land_at >= goal_at, tf.int32)
            # Integers, then scaled: XLA draws other floats from the same seed.
            noise = tf.random.stateless_uniform(
                (steps,), noise_seed, 0, 2**24, tf.int32, alg=_ALG)
            noise = tf.cast(noise, tf.float32) / 2**24
            return tf.gather(free, goal_at), tf.gather(free, land_at), noise

        seeds = tf.convert_to_tensor(seeds, tf.int64)
        if seeds.shape.rank != 2 or seeds.shape[-1] not in (2, None):
            raise ValueError(
                f"seeds must have shape (batch, 2) ([seed, episode index] per "
                f"episode); got shape {seeds.shape}.")
        goal, teleport, noise = tf.map_fn(
            one, seeds,
            fn_output_signature=(tf.int32, tf.TensorSpec((steps,), tf.int32),
                                 tf.TensorSpec((steps,), tf.float32)))
        return {"goal": goal, "teleport": teleport, "noise": noise}

    # -- dynamics (TensorFlow, batched) ----------------------------------

    def reset(self, draws):
        """The state at step 0: a dict of `(batch,)` tensors.

        `position` (int32, the centre), `goal` (int32), `last_reward`
        (float32, 0) and `last_action` (int32, -1: none).
        """
        goal = tf.convert_to_tensor(draws["goal"], tf.int32)
        return {
            "position": tf.fill(tf.shape(goal), self.centre),
            "goal": goal,
            "last_reward": tf.zeros(tf.shape(goal), tf.float32),
            "last_action": tf.fill(tf.shape(goal), -1),
        }

    def observe(self, state, step):
        """The `(batch, OBSERVATION_SIZE)` float32 observation at step `step`."""
        size = self.size
        offsets = tf.constant([dr * size + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1)])
        walls = tf.constant(self.walls.reshape(-1), tf.float32)
        around = tf.gather(walls, state["position"][:, None] + offsets)
        ones = tf.ones_like(state["last_reward"])[:, None]
        time = tf.cast(step, tf.float32) / self.episode_length
        return tf.concat(
            [around, ones, ones * time, state["last_reward"][:, None],
             tf.one_hot(state["last_action"], NUM_ACTIONS)],  # -1 -> all zero
            axis=1)

    def step(self, state, action, teleport):
        """Applies `action` `(batch,)` int32; returns `(new_state, reward, found)`.

        `reward` `(batch,)` float32 is the step's reward; `found` `(batch,)`
        bool says that the move reached the reward cell (and teleported).
        `teleport` `(batch,)` int32 is where an agent that reaches the reward
        lands (a column of `draw`'s `teleport`).
        """
        action = tf.convert_to_tensor(action, tf.int32)
        moves = tf.constant([dr * self.size + dc for dr, dc in MOVES])
        walls = tf.constant(self.walls.reshape(-1))
        position = state["position"]
        target = position + tf.gather(moves, action)  # the border keeps it inside
        blocked = tf.gather(walls, target) == 1
        position = tf.where(blocked, position, target)
        found = position == state["goal"]
        reward = (tf.where(blocked, -self.wall_penalty, 0.0)
                  + tf.where(found, self.reward, 0.0))
        new_state = {
            "position": tf.where(found, tf.cast(teleport, tf.int32), position),
            "goal": state["goal"],
            "last_reward": reward,
            "last_action": action,
        }
        return new_state, reward, found


def episode_seeds(seed=0, batch_size=1, start=0, input_context=None):
    """An endless `tf.data.Dataset` of batched episode seeds, the maze's data.

    Yields `(batch_size, 2)` int64 tensors whose rows are `[seed, index]` for
    consecutive episode indices from `start` (so a resumed run continues with
    the episodes it has not trained on). With a `tf.distribute.InputContext`,
    each input pipeline takes every `num_input_pipelines`-th index, so
    replicas never share an episode.
    """
    check_int("batch_size", batch_size, 1)
    check_int("start", start, 0)
    check_int("seed", seed, 0)
    seed = tf.constant(seed, tf.int64)
    indices = episodes.episode_indices(input_context, start)
    return (indices.map(lambda i: tf.stack([seed, i]))
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def to_row_col(maze, cells):
    """Flat cell indices -> `(..., 2)` numpy array of (row, col)."""
    cells = np.asarray(cells)
    return np.stack([cells // maze.size, cells % maze.size], axis=-1)


def path_figure(maze, path, title=None):
    """One episode's path on the maze, as a matplotlib Figure (`fig.savefig("path.png")`).

    Args:
        maze: the `Maze`.
        path: a dict with `positions` `(steps,)` flat cells (the cell the
            agent occupies at the start of each step), `goal` (flat cell) and
            optionally `found` `(steps,)` bool (the step's move reached the
            reward) and `rewards` `(steps,)`, as `hebbkeras.tasks.rl.record_path`
            returns.
        title: figure title (default: the rewards collected, if known).

    The path goes from light (early) to dark (late). A move that reaches the
    reward ends at the reward cell; the teleport that follows is not drawn.
    """
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    rc = to_row_col(maze, path["positions"])
    goal = to_row_col(maze, path["goal"])
    found = path.get("found")
    if found is None:  # guess: a jump of more than one cell is a teleport
        found = np.append(np.abs(np.diff(rc, axis=0)).sum(axis=1) > 1, False)
    found = np.asarray(found, bool)
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.imshow(maze.walls, cmap="Greys", vmin=0, vmax=1.5)
    colours = matplotlib.colormaps["viridis"](np.linspace(0.15, 1.0, max(len(rc), 2)))
    for t in range(len(rc)):
        end = goal if found[t] else (rc[t + 1] if t + 1 < len(rc) else None)
        if end is not None:
            ax.plot([rc[t, 1], end[1]], [rc[t, 0], end[0]], color=colours[t], lw=2, alpha=0.6)
    ax.plot(*rc[0][::-1], "o", color="tab:blue", ms=9, label="start")
    ax.plot(*goal[::-1], "*", color="tab:red", ms=16, label="reward")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is None and "rewards" in path:
        title = f"{int(found.sum())} rewards reached, total {float(np.sum(path['rewards'])):.1f}"
    if title:
        ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    fig.set_layout_engine("tight")
    return fig
