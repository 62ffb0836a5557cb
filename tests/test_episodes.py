"""Binary-pattern episodes: the schedule, the query, reproducibility, bad settings."""

import numpy as np
import pytest
import tensorflow as tf

from hebbkeras.tasks import episodes

SMALL = episodes.Schedule(num_items=3, presentation_steps=4, gap_steps=2, presentations=2, query_steps=3)


def first_batch(**kwargs):
    x, y = next(iter(episodes.binary_dataset(**kwargs)))
    return x.numpy(), y.numpy()


def test_paper_defaults_make_201_steps_of_1001_units():
    assert episodes.Schedule().steps == 3 * 5 * (10 + 3) + 6 == 201
    x, y = first_batch()
    assert x.shape == (1, 201, 1001) and y.shape == (1, 1000)
    assert x.dtype == np.float32


def test_schedule_structure():
    x, y = first_batch(pattern_size=12, schedule=SMALL, seed=3, batch_size=4)
    assert x.shape == (4, SMALL.steps, 13) and SMALL.steps == 2 * 3 * 6 + 3
    for inputs, target in zip(x, y):
        np.testing.assert_array_equal(inputs[:, -1], 1.0)  # the bias neuron
        body = inputs[: -SMALL.query_steps, :-1].reshape(SMALL.presentations, SMALL.num_items, 6, 12)
        np.testing.assert_array_equal(body[:, :, 4:], 0.0)  # gaps
        shown = body[:, :, :4]
        np.testing.assert_array_equal(shown, np.repeat(shown[:, :, :1], 4, axis=2))  # held
        patterns = shown[0, :, 0]
        assert set(np.unique(patterns)) <= {-1.0, 1.0}
        for cycle in shown[:, :, 0]:  # every pattern once per cycle, in some order
            assert sorted(map(tuple, cycle)) == sorted(map(tuple, patterns))
        query = inputs[-SMALL.query_steps:, :-1]
        np.testing.assert_array_equal(query, np.repeat(query[:1], SMALL.query_steps, 0))
        assert any(np.array_equal(target, p) for p in patterns)  # target is a stored pattern
        erased = query[0] == 0
        assert erased.sum() == 6  # exactly half of 12 bits
        np.testing.assert_array_equal(query[0][~erased], target[~erased])


def test_orders_vary_across_cycles_and_episodes():
    x, _ = first_batch(pattern_size=16, schedule=episodes.Schedule(num_items=5, presentations=3), batch_size=8)
    orders = set()
    for inputs in x:
        body = inputs[:195, :-1].reshape(3, 5, 13, 16)[:, :, 0]
        orders.add(tuple(map(tuple, body.reshape(15, 16).tolist())))
    assert len(orders) == 8


def test_reproducible_from_seed_and_disjoint_across_pipelines():
    a = first_batch(pattern_size=10, schedule=SMALL, seed=5, batch_size=2)
    b = first_batch(pattern_size=10, schedule=SMALL, seed=5, batch_size=2)
    c = first_batch(pattern_size=10, schedule=SMALL, seed=6, batch_size=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])

    whole = first_batch(pattern_size=10, schedule=SMALL, seed=5, batch_size=4)[1]
    parts = [
        first_batch(pattern_size=10, schedule=SMALL, seed=5, batch_size=2,
                    input_context=tf.distribute.InputContext(2, i, 2))[1]
        for i in range(2)
    ]
    # Pipeline i takes episodes i, i + 2, ...: together they are the single stream.
    np.testing.assert_array_equal(parts[0], whole[0::2])
    np.testing.assert_array_equal(parts[1], whole[1::2])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"pattern_size": 1}, "pattern_size=1 must be an integer >= 2"),
        ({"pattern_size": 10, "erase_fraction": 0.05}, "erase_fraction=0.05 of pattern_size=10 erases no bit"),
        ({"erase_fraction": 1.0}, "erase_fraction=1.0 must lie in (0, 1)"),
        ({"batch_size": 0}, "batch_size=0 must be an integer >= 1"),
    ],
)
def test_bad_dataset_settings(kwargs, message):
    with pytest.raises(ValueError) as info:
        episodes.binary_dataset(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_items": 0}, "num_items=0 must be an integer >= 1"),
        ({"presentation_steps": 0}, "presentation_steps=0 must be an integer >= 1"),
        ({"gap_steps": -1}, "gap_steps=-1 must be an integer >= 0"),
        ({"presentations": 0}, "presentations=0"),
        ({"query_steps": 0}, "query_steps=0"),
        ({"presentation_steps": 2.5}, "presentation_steps=2.5 must be an integer"),
    ],
)
def test_bad_schedules(kwargs, message):
    with pytest.raises(ValueError) as info:
        episodes.Schedule(**kwargs)
    assert message in str(info.value)
