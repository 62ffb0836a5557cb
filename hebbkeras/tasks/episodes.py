"""Episodes of the pattern-completion tasks, generated in-graph with tf.data.

An episode shows `num_items` items (binary patterns, images) several times in
a new random order each time, then a degraded copy of one of them (the query);
the target is the intact item. One schedule serves every task; tasks differ only
in where items come from and how the query is degraded. Every random choice
is a stateless function of `(seed, episode index)`, so episodes are reproducible
and replicas can be given disjoint ones.
"""

import dataclasses

import tensorflow as tf

from hebbkeras.checks import check_between, check_int


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When each item is shown.

    Each presentation shows one item for `presentation_steps` steps followed by
    `gap_steps` zero steps; all `num_items` items are presented, in a new random
    order, `presentations` times; then the query is shown for `query_steps`.
    Defaults are the paper's binary task (201 steps).
    """

    num_items: int = 5
    presentation_steps: int = 10
    gap_steps: int = 3
    presentations: int = 3
    query_steps: int = 6

    def __post_init__(self):
        check_int("num_items", self.num_items, 1)
        check_int("presentation_steps", self.presentation_steps, 1)
        check_int("gap_steps", self.gap_steps, 0)
        check_int("presentations", self.presentations, 1)
        check_int("query_steps", self.query_steps, 1)

    @property
    def steps(self):
        """Length of an episode."""
        block = self.presentation_steps + self.gap_steps
        return self.presentations * self.num_items * block + self.query_steps


def schedule_inputs(items, query, schedule, seed, bias=True):
    """The input sequence of one episode: `(schedule.steps, width + bias)`.

    items: `(num_items, width)`; query: `(width,)`; seed: a stateless seed
    `(2,)` that fixes the presentation orders. With `bias`, one more unit,
    the last, is 1 at every step (the paper's bias neuron).
    """
    k, block = schedule.num_items, schedule.presentation_steps + schedule.gap_steps
    orders = tf.argsort(
        tf.random.stateless_uniform((schedule.presentations, k), seed), axis=-1
    )
    blocks = schedule.presentations * k
    step = tf.range(blocks * block)
    shown = step % block < schedule.presentation_steps
    # Row k of `rows` is the zero input of the gap steps.
    item_at = tf.where(shown, tf.gather(tf.reshape(orders, [-1]), step // block), k)
    rows = tf.concat([items, tf.zeros_like(items[:1])], axis=0)
    inputs = tf.concat(
        [tf.gather(rows, item_at), tf.tile(query[None], [schedule.query_steps, 1])],
        axis=0,
    )
    if bias:
        inputs = tf.concat([inputs, tf.ones_like(inputs[:, :1])], axis=1)
    return inputs


def erase_random_bits(fraction=0.5):
    """A degradation that zeroes `floor(fraction * width)` randomly chosen entries."""
    check_between("erase_fraction", fraction, 0.0, 1.0)

    def erase(target, seed):
        width = target.shape[-1]
        count = int(fraction * width)
        order = tf.argsort(tf.random.stateless_uniform((width,), seed))
        erased = tf.scatter_nd(order[:count, None], tf.ones([count], target.dtype), [width])
        return target * (1 - erased)

    return erase


def make_episode(items, seed, schedule, erase, bias=True):
    """`(inputs, target)` of one episode: the query is a degraded random item."""
    choose, degrade, order = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    target = items[tf.random.stateless_uniform((), choose, maxval=schedule.num_items, dtype=tf.int32)]
    inputs = schedule_inputs(items, erase(target, degrade), schedule, order, bias)
    return inputs, target


def binary_patterns(seed, num_items, pattern_size):
    """`num_items` random patterns of +1/-1 bits, `(num_items, pattern_size)`."""
    bits = tf.random.stateless_uniform(
        (num_items, pattern_size), seed, maxval=2, dtype=tf.int32
    )
    return tf.cast(2 * bits - 1, tf.float32)


def check_pattern_size(pattern_size, erase_fraction):
    check_int("pattern_size", pattern_size, 2)
    check_between("erase_fraction", erase_fraction, 0.0, 1.0)
    if int(erase_fraction * pattern_size) < 1:
        raise ValueError(
            f"erase_fraction={erase_fraction} of pattern_size={pattern_size} erases "
            "no bit, so the query would be the stored pattern itself."
        )


def binary_dataset(
    pattern_size=1000,
    schedule=Schedule(),
    erase_fraction=0.5,
    seed=0,
    batch_size=1,
    bias=True,
    input_context=None,
    start=0,
):
    """An endless `tf.data.Dataset` of batched binary-pattern episodes.

    Yields `(inputs, target)`: `(batch, schedule.steps, pattern_size + bias)` and
    `(batch, pattern_size)`. Episode `i` is a pure function of `(seed, i)`.
    With a `tf.distribute.InputContext`, each input pipeline takes every
    `num_input_pipelines`-th episode, so replicas never see the same episode.
    `start` is the index of the first episode (of all pipelines together), so
    a resumed run continues with the episodes it has not trained on yet.
    """
    check_pattern_size(pattern_size, erase_fraction)
    check_int("batch_size", batch_size, 1)
    erase = erase_random_bits(erase_fraction)

    def episode(index):
        seed_i = tf.stack([tf.cast(seed, tf.int64), index])
        items_seed, episode_seed = tf.unstack(tf.random.experimental.stateless_split(seed_i, 2))
        items = binary_patterns(items_seed, schedule.num_items, pattern_size)
        return make_episode(items, episode_seed, schedule, erase, bias)

    check_int("start", start, 0)
    return episode_indices(input_context, start).map(
        episode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def episode_indices(input_context=None, start=0):
    """Episode indices `start, start + 1, ...` as an endless dataset.

    With a `tf.distribute.InputContext`, input pipeline `p` of `P` takes
    `start + p, start + p + P, ...`: replicas never share an episode, and a
    resumed run restarts every pipeline at the first episode not trained on.
    """
    if input_context is None:
        return tf.data.Dataset.counter(start=start, dtype=tf.int64)
    return tf.data.Dataset.counter(
        start=start + input_context.input_pipeline_id,
        step=input_context.num_input_pipelines,
        dtype=tf.int64,
    )
