"""Few-shot episodes: classes, labels, rotations, reproducibility, splits; and a short
end-to-end run (conv embedding + PlasticDense) that learns held-out classes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hebbkeras.layers.plastic_dense import PlasticDense
from hebbkeras.tasks import fewshot


def coded_set(num_classes=12, per_class=4, side=5):
    """Images whose pixels say who they are: class c, example e has value 10 c + e + 1 at
    the top-left corner (so rotations move it) and zeros elsewhere. Class c has
    `per_class + c % 3` images (unequal classes), its label is 7 c + 3 (not contiguous)."""
    counts = per_class + np.arange(num_classes) % 3
    assert counts.max() < 10
    cls = np.repeat(np.arange(num_classes), counts)
    example = np.concatenate([np.arange(n) for n in counts])
    images = np.zeros((len(cls), side, side), np.int32)
    images[:, 0, 0] = 10 * cls + example + 1
    order = np.random.default_rng(0).permutation(len(cls))  # classes interleaved
    return images[order], (cls * 7 + 3)[order]


def decode(image):
    """`(class index, example, quarter turns)` of a coded image `(side, side, 1)`."""
    side = image.shape[0]
    corners = {0: (0, 0), 1: (side - 1, 0), 2: (side - 1, side - 1), 3: (0, side - 1)}
    for turns, (r, c) in corners.items():  # rot90 counter-clockwise moves (0,0) here
        if image[r, c, 0]:
            code = int(image[r, c, 0]) - 1
            return code // 10, code % 10, turns
    raise AssertionError("no code pixel")


def batch(**kwargs):
    images, labels = kwargs.pop("data", coded_set())
    (x, lab), target = next(iter(fewshot.episode_dataset(images, labels, **kwargs)))
    return x.numpy(), lab.numpy(), target.numpy()


@pytest.mark.parametrize("ways,shots,queries,rotate", [(3, 1, 1, False), (4, 2, 3, True)])
def test_episode_layout_classes_and_labels(ways, shots, queries, rotate):
    x, lab, target = batch(ways=ways, shots=shots, queries=queries, rotate=rotate, seed=1,
                           batch_size=16, data=coded_set(per_class=shots + queries + 1))
    steps = ways * shots + queries
    assert x.shape == (16, steps, 5, 5, 1) and x.dtype == np.float32
    assert lab.shape == (16, steps, ways)
    assert target.shape == ((16, ways) if queries == 1 else (16, queries, ways))
    target = target.reshape(16, queries, ways)
    turns_seen = set()
    for images, labels, tgt in zip(x, lab, target):
        decoded = [decode(im) for im in images]
        support, query = decoded[: ways * shots], decoded[ways * shots:]
        np.testing.assert_array_equal(labels[ways * shots:], 0)  # no label on queries
        np.testing.assert_array_equal(labels[: ways * shots].sum(-1), 1)  # one-hot
        position = labels[: ways * shots].argmax(-1)
        # The positions are a relabelling of `ways` distinct true classes.
        to_class = {}
        for p, (cls, _, _) in zip(position, support):
            assert to_class.setdefault(p, cls) == cls
        assert sorted(to_class) == list(range(ways)) and len(set(to_class.values())) == ways
        assert sorted(np.bincount(position, minlength=ways)) == [shots] * ways  # k shots each
        # One rotation per class, for support and query alike.
        turn_of = {}
        for cls, _, turns in decoded:
            assert turn_of.setdefault(cls, turns) == turns
        turns_seen |= set(turn_of.values())
        # Each query is an image of its target's class, not one of the support images.
        for (cls, example, _), t in zip(query, tgt):
            assert t.sum() == 1 and to_class[t.argmax()] == cls
        used = [(c, e) for c, e, _ in decoded]
        assert len(set(used)) == len(used)
    assert turns_seen == ({0, 1, 2, 3} if rotate else {0})


def test_support_order_and_queries_vary():
    x, lab, target = batch(ways=3, shots=1, batch_size=32, seed=2)
    orders = {tuple(lab[i, :3].argmax(-1)) for i in range(32)}
    assert len(orders) == 6  # all permutations of 3 positions occur
    assert set(target.argmax(-1)) == {0, 1, 2}


def test_reproducible_and_disjoint_across_pipelines():
    a = batch(ways=3, rotate=True, seed=5, batch_size=4)
    b = batch(ways=3, rotate=True, seed=5, batch_size=4)
    c = batch(ways=3, rotate=True, seed=6, batch_size=4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    parts = [batch(ways=3, rotate=True, seed=5, batch_size=2,
                   input_context=tf.distribute.InputContext(2, i, 2)) for i in range(2)]
    for part, offset in zip(parts, range(2)):  # pipeline i: episodes i, i + 2, ...
        np.testing.assert_array_equal(part[0], a[0][offset::2])
    resumed = batch(ways=3, rotate=True, seed=5, batch_size=2, start=2)
    np.testing.assert_array_equal(resumed[0], a[0][2:])


def test_split_classes_is_disjoint_and_episodes_stay_in_their_split():
    images, labels = coded_set(num_classes=12)
    (tr_x, tr_y), (ev_x, ev_y) = fewshot.split_classes(images, labels, eval_classes=4, seed=3)
    assert len(np.unique(ev_y)) == 4 and len(np.unique(tr_y)) == 8
    assert not set(tr_y) & set(ev_y)
    assert len(tr_y) + len(ev_y) == len(labels)
    assert len(ev_y) == sum(np.count_nonzero(labels == c) for c in np.unique(ev_y))
    np.testing.assert_array_equal((tr_x[:, 0, 0] - 1) // 10 * 7 + 3, tr_y)  # images keep their labels
    x, _, _ = batch(data=(ev_x, ev_y), ways=3, batch_size=16)
    seen = {decode(im)[0] * 7 + 3 for ep in x for im in ep}
    assert seen <= set(ev_y)
    (_, named_y), (_, held_y) = fewshot.split_classes(images, labels, eval_classes=[3, 10])
    assert set(held_y) == {3, 10} and not {3, 10} & set(named_y)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"ways": 1}, "ways=1 must be an integer >= 2"),
        ({"ways": 13}, "ways=13 needs at least 13 classes; the set has 12"),
        ({"shots": 3, "queries": 2}, "has 4 images; an episode needs shots + queries = 5"),
        ({"queries": 0}, "queries=0 must be an integer >= 1"),
        ({"data": (np.zeros((4, 3, 5)), np.arange(4)), "rotate": True, "ways": 2, "shots": 0},
         "shots=0"),
        ({"data": (np.zeros((8, 3, 5)), np.arange(8) % 4), "rotate": True, "ways": 2},
         "needs square images; got 3 x 5"),
        ({"data": (np.zeros((4, 5)), np.arange(4))}, "images must have shape (n, height, width)"),
        ({"data": (np.zeros((4, 5, 5)), np.arange(3))}, "labels must have shape (n,) = (4,)"),
        ({"data": (np.zeros((4, 5, 5)), np.arange(4) * 0.5)}, "labels must be integers"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError) as info:
        batch(**kwargs)
    assert message in str(info.value)


def prototype_set(num_classes, per_class, side, seed):
    """Random +-1 prototypes per class, each example with pixel noise and a few flips."""
    rng = np.random.default_rng(seed)
    prototypes = np.sign(rng.normal(size=(num_classes, side, side)))
    images = np.repeat(prototypes, per_class, axis=0)
    flips = rng.random(images.shape) < 0.1
    images = np.where(flips, -images, images) + rng.normal(0, 0.3, images.shape)
    return images.astype(np.float32), np.repeat(np.arange(num_classes), per_class)


def omniglot_like_model(ways, steps, side, plasticity):
    images = keras.Input((steps, side, side, 1))
    labels = keras.Input((steps, ways))
    x = keras.layers.TimeDistributed(keras.layers.Conv2D(16, 3, strides=2, activation="tanh"))(images)
    x = keras.layers.TimeDistributed(keras.layers.Flatten())(x)
    probs = PlasticDense(ways, activation="softmax", rule="oja", eta=0.1, trainable_eta=True,
                         plasticity=plasticity, teacher_mode="add", teacher_scale=1000.0)([x, labels])
    return keras.Model([images, labels], probs)


@pytest.mark.parametrize("plasticity", ["per_connection", "none"])
def test_short_training_learns_held_out_classes(plasticity):
    """3-way 1-shot on classes never trained on. With the Omniglot code's initial
    weights (alpha ~ U(0, 0.01)) the network starts near chance (1/3); 40 steps of
    training make the plastic readout name held-out classes from one example each,
    while the same network without plasticity stays near chance."""
    keras.utils.set_random_seed(0)
    ways, side = 3, 9
    images, labels = prototype_set(40, 6, side, seed=0)
    train, held_out = fewshot.split_classes(images, labels, eval_classes=10, seed=0)
    model = omniglot_like_model(ways, ways + 1, side, plasticity)
    model.compile(keras.optimizers.Adam(0.01), "categorical_crossentropy", metrics=["accuracy"])
    evaluation = fewshot.episode_dataset(*held_out, ways=ways, rotate=True, batch_size=50, seed=1)

    def accuracy():
        return model.evaluate(evaluation, steps=4, verbose=0, return_dict=True)["accuracy"]

    before = accuracy()
    model.fit(fewshot.episode_dataset(*train, ways=ways, rotate=True, batch_size=16),
              steps_per_epoch=40, epochs=1, verbose=0)
    after = accuracy()
    assert before < 0.6
    if plasticity == "none":
        assert after < 0.5
    else:
        assert after > 0.85
