"""N-way K-shot episodes from any labelled image set, generated in-graph with tf.data.

An episode picks `ways` distinct classes and gives them the positions
`0 .. ways - 1` in a random order; it shows `shots` images of each class with
its one-hot position (the support steps, in a random order), then `queries`
further images of the episode's classes without a label (the query steps).
The model must name each query's position. With `rotate`, every class of an
episode is turned by its own random multiple of 90 degrees (support and
query alike), which also makes new classes (Omniglot's augmentation).

Layout of one episode (`steps = ways * shots + queries`):

    inputs = (images (steps, height, width, channels) float,
              labels (steps, ways) float: one-hot on support steps, zero on query steps)
    target = (ways,) one-hot position of the query when queries == 1,
             (queries, ways) one row per query step (in order) otherwise

Every random choice is a stateless function of `(seed, episode index)`, so
episodes are reproducible and input pipelines get disjoint ones, as in
`hebbkeras.tasks.episodes`. Each query is a different image from every support
image (and from the other queries); its class is drawn uniformly from the
episode's classes, independently per query. The queries follow one another in
one sequence: in a plastic network (`PlasticDense`) every step's output also
updates the trace, so a later query sees the earlier queries' own
predictions. For independent queries use `queries=1` (the Omniglot setting)
and more episodes; `queries > 1` gives more scored steps per support set.
"""

import numpy as np
import tensorflow as tf

from hebbkeras.checks import check_int
from hebbkeras.tasks import episodes


def _as_arrays(images, labels):
    """`(images (n, h, w, c), labels (n,) int64)` as numpy, checked."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(
            f"images must have shape (n, height, width) or (n, height, width, channels); "
            f"got {images.shape}."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"labels must have shape (n,) = ({images.shape[0]},), one per image; got "
            f"{labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers; got dtype {labels.dtype}.")
    return images, labels.astype(np.int64)


def split_classes(images, labels, eval_classes, seed=0):
    """Splits a labelled set into two with disjoint classes: `(train, eval)`.

    Args:
        images: `(n, height, width)` or `(n, height, width, channels)`.
        labels: `(n,)` integer class of each image.
        eval_classes: how many classes go to the evaluation set (an int), or a
            list of the class labels that do.
        seed: chooses the evaluation classes when `eval_classes` is an int.

    Returns:
        `((train_images, train_labels), (eval_images, eval_labels))`, numpy
        arrays in the original order, with the original labels.
    """
    _as_arrays(images, labels)  # checks only: the split keeps the given form
    images, labels = np.asarray(images), np.asarray(labels)
    classes = np.unique(labels)
    if np.ndim(eval_classes) == 0:
        check_int("eval_classes", eval_classes, 1)
        if eval_classes >= len(classes):
            raise ValueError(
                f"eval_classes={eval_classes} leaves no training class: the set has "
                f"{len(classes)} classes."
            )
        held = np.random.default_rng(seed).choice(classes, int(eval_classes), replace=False)
    else:
        held = np.asarray(eval_classes)
        unknown = np.setdiff1d(held, classes)
        if unknown.size:
            raise ValueError(f"eval_classes {unknown.tolist()} are not labels of the set.")
    in_eval = np.isin(labels, held)
    return (images[~in_eval], labels[~in_eval]), (images[in_eval], labels[in_eval])


def _class_table(labels, needed):
    """`(num_classes, max_count)` image indices per class, -1 padded, and the counts."""
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < needed:
        worst = classes[np.argmin(counts)]
        raise ValueError(
            f"Class {worst} has {counts.min()} images; an episode needs shots + queries "
            f"= {needed} distinct images of a class. Lower shots or queries, or drop "
            "classes this small."
        )
    table = np.full((len(classes), counts.max()), -1, np.int64)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for row, (start, count) in enumerate(zip(starts, counts)):
        table[row, :count] = order[start:start + count]
    return table, counts


def make_episode(images, table, counts, seed, ways, shots, queries, rotate, dtype=tf.float32):
    """`((images, labels), target)` of one episode (layout in the module docstring).

    images `(n, h, w, c)` tensor; table, counts from `_class_table`; seed a
    stateless seed `(2,)`.
    """
    pick, draw, which, order, turn = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    num_classes = tf.shape(table)[0]
    classes = tf.math.top_k(tf.random.stateless_uniform([num_classes], pick), ways).indices
    # A random order of each class's images (padding sorts last): the first
    # `shots` are the support, the next `queries` serve the queries.
    rows = tf.gather(table, classes)
    keys = tf.random.stateless_uniform(tf.shape(rows), draw)
    keys = tf.where(rows >= 0, keys, 2.0)
    drawn = tf.gather(rows, tf.argsort(keys, axis=-1)[:, : shots + queries], batch_dims=1)
    query_pos = tf.random.stateless_uniform([queries], which, maxval=ways, dtype=tf.int32)
    # Every (class, shot) pair once, in a random order.
    shuffle = tf.argsort(tf.random.stateless_uniform([ways * shots], order))
    support_pos = tf.gather(tf.repeat(tf.range(ways), shots), shuffle)
    support_shot = tf.gather(tf.tile(tf.range(shots), [ways]), shuffle)
    positions = tf.concat([support_pos, query_pos], 0)
    columns = tf.concat([support_shot, shots + tf.range(queries)], 0)
    index = tf.gather_nd(drawn, tf.stack([positions, columns], -1))
    x = tf.cast(tf.gather(images, index), dtype)
    if rotate:
        turns = tf.random.stateless_uniform([ways], turn, maxval=4, dtype=tf.int32)
        x = _rotate(x, tf.gather(turns, positions))
    onehot = tf.one_hot(positions, ways, dtype=dtype)
    labels = tf.concat([onehot[: ways * shots], tf.zeros([queries, ways], dtype)], 0)
    target = onehot[ways * shots:]
    return (x, labels), (target[0] if queries == 1 else target)


def _rotate(x, turns):
    """Image i of `x` `(steps, h, w, c)` turned counter-clockwise `turns[i]` times."""
    turned = tf.stack([tf.image.rot90(x, k) for k in range(4)])
    return tf.gather_nd(turned, tf.stack([turns, tf.range(tf.shape(x)[0])], -1))


def episode_dataset(
    images,
    labels,
    ways=5,
    shots=1,
    queries=1,
    rotate=False,
    seed=0,
    batch_size=1,
    input_context=None,
    start=0,
    dtype=tf.float32,
):
    """An endless `tf.data.Dataset` of batched few-shot episodes.

    Args:
        images: `(n, height, width)` or `(n, height, width, channels)`, any
            numeric dtype; cast to `dtype` unchanged (scale them beforehand).
        labels: `(n,)` integer classes (any values; need not be contiguous).
        ways: classes per episode. shots: support images per class.
        queries: query steps per episode (each of a random episode class).
        rotate: turn each class by a random multiple of 90 degrees per
            episode (needs square images).
        seed: episode `i` is a pure function of `(seed, i)`.
        batch_size: episodes per batch.
        input_context, start: as in `hebbkeras.tasks.episodes.binary_dataset`: each
            input pipeline takes every `num_input_pipelines`-th episode, and
            `start` is the index of the first episode (for resuming).

    Returns:
        A dataset of `((images, labels), target)`: `(batch, steps, h, w, c)`,
        `(batch, steps, ways)` and `(batch, ways)` (or `(batch, queries,
        ways)`), `steps = ways * shots + queries`.
    """
    for name, value, minimum in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1),
                                 ("batch_size", batch_size, 1), ("start", start, 0)):
        check_int(name, value, minimum)
    images, labels = _as_arrays(images, labels)
    table, counts = _class_table(labels, shots + queries)
    if len(counts) < ways:
        raise ValueError(f"ways={ways} needs at least {ways} classes; the set has {len(counts)}.")
    if rotate and images.shape[1] != images.shape[2]:
        raise ValueError(
            f"rotate=True turns images by 90 degrees, which needs square images; got "
            f"{images.shape[1]} x {images.shape[2]}. Resize them first or use rotate=False."
        )
    images_t = tf.constant(images)
    table_t = tf.constant(table)

    def episode(index):
        seed_i = tf.stack([tf.cast(seed, tf.int64), index])
        return make_episode(images_t, table_t, counts, seed_i, ways, shots, queries, rotate,
                            dtype)

    return episodes.episode_indices(input_context, start).map(
        episode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
