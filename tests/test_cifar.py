"""Image episodes, the CIFAR trainer and its figures, offline with tfds mock data.

CIFAR-10 itself is never downloaded: `tfds.testing.mock_data` stands in for
it (random images, or per-split images given here). Runs are kept short: tiny
schedules (3-4 steps per image, one presentation), few episodes, small batches.
"""

import contextlib
import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from conftest import run_python, stop_at

from hebbkeras.tasks import episodes, images, tfds_data
from trainers import cifar, figures, loop
from trainers.config import define_flags, from_flags

TINY = episodes.Schedule(num_items=3, presentation_steps=3, gap_steps=0, presentations=1, query_steps=2)


def reference_gray(raw, normalization="centered"):
    """The original code's preprocessing, in numpy: channel sum, centred, max-abs scaled."""
    raw = np.asarray(raw, np.float64)
    flat = raw.transpose(0, 3, 1, 2).reshape(len(raw), 3, 1024).sum(1)
    if normalization == "unit":
        return flat / (3 * 255)
    flat = flat - flat.mean(1, keepdims=True)
    return flat / (1e-8 + np.abs(flat).max(1, keepdims=True))


def random_raw(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@contextlib.contextmanager
def split_images(splits, requested=None):
    """Mocks tfds so that each split yields the given `(n, 32, 32, 3)` uint8 images."""

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        name = str(split).split("[")[0]
        if requested is not None:
            requested.append(name)
        raw = splits[name]
        return tf.data.Dataset.from_tensor_slices({
            "id": tf.constant([f"{name}_{i}" for i in range(len(raw))]),
            "image": tf.constant(raw),
            "label": tf.zeros([len(raw)], tf.int64),
        })

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        yield


def test_defaults_are_the_fast_recipe_and_paper_is_the_papers():
    values = flags.FlagValues()
    define_flags(cifar.CifarConfig, values)
    values(["trainers.cifar"])
    fast = from_flags(cifar.CifarConfig, values)
    assert fast == cifar.CifarConfig() and fast.recipe == "fast"
    assert fast.schedule.steps == 210  # 3 images x 3 x (20 + 3) + 3: the paper's task in both
    assert fast.units == 1025 and (fast.eta, fast.trainable_eta, fast.input_mode) == (0.01, False, "clamp")
    assert (fast.learning_rate, fast.learning_rate_decay, fast.batch_size, fast.episodes) == \
        (3e-4, "cosine", 1, 1000)
    values(["trainers.cifar", "--recipe=paper"])
    paper = from_flags(cifar.CifarConfig, values)
    assert (paper.learning_rate, paper.learning_rate_decay, paper.batch_size, paper.episodes) == \
        (1e-4, "none", 1, 20000)
    assert dataclasses.replace(paper, recipe="fast", learning_rate=3e-4, learning_rate_decay="cosine",
                               episodes=1000) == fast
    assert float(cifar.CifarTask(paper, None).optimizer().learning_rate) == pytest.approx(1e-4)


def test_cosine_decay_follows_half_a_cosine_over_the_runs_steps():
    config = cifar.CifarConfig(learning_rate=3e-4, episodes=40, batch_size=4)  # 10 steps
    optimizer = cifar.CifarTask(config, None).optimizer()
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    for step in range(11):
        want = 3e-4 * 0.5 * (1 + np.cos(np.pi * min(step, 10) / 10))
        assert float(optimizer.learning_rate) == pytest.approx(want, rel=1e-5, abs=1e-10), step
        model.train_on_batch(np.ones((4, 1)), np.ones((4, 1)))
    with pytest.raises(ValueError, match="normalization"):
        cifar.CifarConfig(normalization="z").validate()


def test_grayscale_matches_the_original_preprocessing():
    raw = random_raw(5, 0)
    raw[1] = 7  # a flat image: all zero after centring, no division by zero
    for normalization in images.NORMALIZATIONS:
        got = images.grayscale(raw, normalization).numpy()
        np.testing.assert_allclose(got, reference_gray(raw, normalization), atol=1e-5)
    got = images.grayscale(raw).numpy()
    assert got.shape == (5, 1024)
    np.testing.assert_allclose(got.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(np.abs(got[[0, 2, 3, 4]]).max(1), 1, atol=1e-5)
    assert not np.any(got[1])
    with pytest.raises(ValueError, match="normalization"):
        images.grayscale(raw, "z-score")
    with pytest.raises(ValueError, match="32, 32, 3"):
        images.grayscale(raw[:, :16])


def test_load_cifar10_reads_the_requested_split_through_tfds():
    raw = {"train": random_raw(6, 1), "test": random_raw(4, 2)}
    requested = []
    with split_images(raw, requested):
        got = images.load_cifar10("test", data_dir="/nonexistent", download=False).numpy()
    assert requested == ["test"]
    np.testing.assert_allclose(got, reference_gray(raw["test"]), atol=1e-5)


def test_photographs_are_served_as_cifar10_tiles(tmp_path):
    """benchmarks.cifar_photos: the first photograph's 32 x 32 tiles are train, the rest test."""
    from PIL import Image

    from benchmarks import cifar_photos

    rng = np.random.default_rng(5)
    photos = [rng.integers(0, 256, (70, 100, 3), dtype=np.uint8) for _ in range(3)]
    for name, photo in zip("abc", photos):
        Image.fromarray(photo).save(tmp_path / f"{name}.png")
    (tmp_path / "notes.txt").write_text("not a photograph")

    def reference(photo, stride):
        return np.stack([photo[r:r + 32, c:c + 32] for r in range(0, 70 - 31, stride)
                         for c in range(0, 100 - 31, stride)])

    splits = cifar_photos.photo_splits(str(tmp_path), train_stride=16)
    np.testing.assert_array_equal(splits["train"], reference(photos[0], 16))  # 3 x 5 tiles
    np.testing.assert_array_equal(splits["test"], np.concatenate([reference(p, 32) for p in photos[1:]]))
    assert splits["train"].shape == (15, 32, 32, 3) and splits["test"].shape == (12, 32, 32, 3)
    with cifar_photos.serve(splits):
        got = images.load_cifar10("test", data_dir="/nonexistent", download=False).numpy()
    np.testing.assert_allclose(got, reference_gray(splits["test"]), atol=1e-5)
    (tmp_path / "b.png").unlink(), (tmp_path / "c.png").unlink()
    with pytest.raises(ValueError, match="holds 1 photographs"):
        cifar_photos.photo_splits(str(tmp_path))


def test_episodes_store_distinct_images_and_erase_exactly_one_half():
    pool = reference_gray(random_raw(12, 3)).astype(np.float32)
    schedule = episodes.Schedule(num_items=3, presentation_steps=4, gap_steps=2, presentations=2, query_steps=3)
    ds = images.image_dataset(pool, schedule, seed=5, batch_size=4)
    halves = set()
    for x, y in ds.take(6):
        x, y = x.numpy(), y.numpy()
        assert x.shape == (4, schedule.steps, 1025) and y.shape == (4, 3 * 1024)
        np.testing.assert_array_equal(x[:, :, -1], 1)  # the bias neuron
        for b in range(4):
            target, mask, mean_fill = np.split(y[b], 3)
            shown = {tuple(r) for r in x[b, : -schedule.query_steps, :1024] if r.any()}
            stored = np.array(sorted(shown))
            # Three distinct images of the pool, each shown presentations * steps times.
            assert len(stored) == 3
            for s in stored:
                assert np.min(np.abs(pool - s).max(1)) == 0
                assert (x[b, :, :1024] == s).all(1).sum() == schedule.presentations * schedule.presentation_steps
            assert any((target == s).all() for s in stored)
            np.testing.assert_allclose(mean_fill, stored.mean(0), atol=1e-6)
            query = x[b, -schedule.query_steps:, :1024]
            np.testing.assert_array_equal(query, np.broadcast_to(query[0], query.shape))
            top = not query[0, :512].any()
            halves.add(top)
            erased = slice(0, 512) if top else slice(512, 1024)
            kept = slice(512, 1024) if top else slice(0, 512)
            assert not query[0, erased].any()
            np.testing.assert_array_equal(query[0, kept], target[kept])
            expected_mask = np.zeros(1024)
            expected_mask[erased] = 1
            np.testing.assert_array_equal(mask, expected_mask)
    assert halves == {True, False}  # both halves get erased


def test_episodes_are_a_function_of_seed_and_index():
    pool = reference_gray(random_raw(10, 4)).astype(np.float32)
    a = [x.numpy() for x, _ in images.image_dataset(pool, TINY, seed=1).take(3)]
    b = [x.numpy() for x, _ in images.image_dataset(pool, TINY, seed=1, start=1).take(2)]
    c = [x.numpy() for x, _ in images.image_dataset(pool, TINY, seed=2).take(1)]
    np.testing.assert_array_equal(a[1:], b)
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="at least num_items=3"):
        images.image_dataset(pool[:2], TINY)


def test_loss_and_metrics_against_numpy():
    rng = np.random.default_rng(0)
    target = rng.uniform(-1, 1, (5, 1024))
    mask = np.zeros((5, 1024))
    mask[:3, :512] = 1
    mask[3:, 512:] = 1
    mean_fill = rng.uniform(-1, 1, (5, 1024))
    y_true = np.concatenate([target, mask, mean_fill], 1).astype(np.float32)
    y_pred = rng.uniform(-1, 1, (5, 1025)).astype(np.float32)

    def mse(fill):
        return (mask * (fill - target) ** 2).sum(1) / 512

    checks = {
        images.image_summed_squared_error: ((y_pred[:, :1024] - target) ** 2).sum(1),
        images.erased_mse: mse(y_pred[:, :1024]),
        images.zero_fill_mse: mse(0 * target),
        images.mean_fill_mse: mse(mean_fill),
    }
    for fn, expected in checks.items():
        np.testing.assert_allclose(np.asarray(fn(y_true, y_pred)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="3 \\* pixels"):
        images.erased_mse(y_true[:, :1000], y_pred)


def test_training_and_evaluation_splits_are_separate():
    raw = {"train": random_raw(8, 5), "test": random_raw(8, 6)}
    pools = {k: reference_gray(v) for k, v in raw.items()}
    config = cifar.CifarConfig(schedule=TINY)
    requested = []
    with split_images(raw, requested):
        data = cifar.CifarData(config, data_dir="/nonexistent", download=False)
        train = [x.numpy() for x, _ in data.train_dataset(config).take(8)]
        test = [x.numpy() for x, _ in data.eval_dataset(config, 4).take(2)]
    assert sorted(requested) == ["test", "train"]

    def sources(batches):
        found = set()
        for x in batches:
            for row in x.reshape(-1, 1025)[:, :1024]:
                if row.any():
                    found |= {k for k, p in pools.items() if np.abs(p - row).max(1).min() < 1e-5}
        return found

    # Queries are half zero, so only full images are matched: the stored ones.
    assert sources(train) == {"train"}
    assert sources(test) == {"test"}


def test_missing_data_stops_with_instructions(tmp_path, monkeypatch):
    empty = str(tmp_path / "tfds")
    with pytest.raises(images.DataUnavailableError) as err:
        images.load_cifar10("train", data_dir=empty, download=False)
    text = str(err.value)
    for hint in (empty, "cifar10/3.0.2", "data_dir", "TFDS_DATA_DIR", "manual_dir",
                 "cifar-10-binary.tar.gz", "downloading is disabled"):
        assert hint in text
    assert "--" not in text  # the library names its arguments, not a trainer's flags
    with pytest.raises(images.DataUnavailableError, match="does not hold cifar-10-binary.tar.gz"):
        images.load_cifar10("train", data_dir=empty, manual_dir=str(tmp_path))
    # Downloading enabled but no network: stops at once, before tfds retries.
    monkeypatch.setattr(tfds_data, "reachable", lambda url, timeout=5.0: False)
    with pytest.raises(images.DataUnavailableError, match="cannot be reached"):
        images.load_cifar10("train", data_dir=empty, download=True)
    assert not os.path.exists(os.path.join(empty, "cifar10", "3.0.2", "dataset_info.json"))


def test_trainer_command_exits_with_the_instructions_not_a_traceback(tmp_path):
    result = run_python(["-m", "trainers.cifar", f"--data_dir={tmp_path}", "--nodownload",
                         f"--run_dir={tmp_path / 'run'}"])
    assert result.returncode == 2
    assert "error: CIFAR-10" in result.stderr and "--manual_dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "run" / "model.keras")


def _decode(path):
    return tf.image.decode_png(tf.io.read_file(path)).numpy()


def _tensorboard_tags(logdir):
    tags = set()
    for root, _, names in os.walk(logdir):
        for name in names:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                tags |= {v.tag for v in event.summary.value}
    return tags


def numpy_measures(y, pred):
    """Per-episode loss and erased-half MSEs (network, zero fill, mean fill), in numpy."""
    target, mask, mean_fill = np.split(np.asarray(y, np.float64), 3, axis=-1)
    pred = np.asarray(pred, np.float64)[:, : target.shape[-1]]

    def mse(fill):
        return (mask * (fill - target) ** 2).sum(-1) / mask.sum(-1)

    return {"loss": ((pred - target) ** 2).sum(-1), "erased_mse": mse(pred),
            "zero_fill_mse": mse(0 * target), "mean_fill_mse": mse(mean_fill)}


class StoppingCifarTask(cifar.CifarTask):
    def callbacks(self, run_dir):
        return super().callbacks(run_dir) + [stop_at(28)]  # after the evaluation at 48 episodes


def test_short_run_learns_resumes_evaluates_and_draws(tmp_path):
    config = cifar.CifarConfig(
        schedule=TINY, eta=0.1, learning_rate=1e-3, learning_rate_decay="none", episodes=128,
        batch_size=2, steps_per_epoch=16, eval_every=48, eval_episodes=13, figure_episodes=3,
        run_dir=str(tmp_path / "run"), verbose=0,
    )
    # Held-out test images; enough training images that w cannot store them all.
    raw = {"train": random_raw(600, 7), "test": random_raw(100, 8)}
    with split_images(raw):
        data = cifar.CifarData(config, data_dir="/nonexistent", download=False)
        with pytest.raises(KeyboardInterrupt):  # the backup is of 32 episodes: 48 is done again
            loop.run(StoppingCifarTask(config, data))
        summary = cifar.train(config, data)
        # The evaluation recomputed in numpy: 13 episodes, batches of 10 (the last one cut).
        model = keras.models.load_model(os.path.join(config.run_dir, "model.keras"), compile=False)
        batches = list(data.eval_dataset(config, 10).take(2))
        expected = {k: [] for k in cifar.EVAL_KEYS}
        for x, y in batches:
            for k, v in numpy_measures(y, model(x).numpy()).items():  # eager: no predict trace
                expected[k].append(v)
        means, paths = cifar.eval_only(
            os.path.join(config.run_dir, "model.keras"), config, data, str(tmp_path / "eval"))
    log = figures.read_csv(os.path.join(config.run_dir, "episodes.csv"))
    np.testing.assert_array_equal(log["episode"], np.arange(2, 129, 2))
    assert log["loss"][-16:].mean() < 0.9 * log["loss"][:16].mean()
    evals = figures.read_csv(os.path.join(config.run_dir, "eval.csv"))
    np.testing.assert_array_equal(evals["episode"], [48, 96, 128])  # once each, across the resume
    with open(os.path.join(config.run_dir, "evaluation.json")) as f:
        final = json.load(f)
    assert final["episodes"] == 128
    for key in cifar.EVAL_KEYS:
        want = np.concatenate(expected[key])[:13].mean()
        assert final[key] == pytest.approx(want, rel=1e-4), key
        assert means[key] == pytest.approx(want, rel=1e-4), key
        assert summary["evaluation"][key] == final[key]
        assert evals[key][-1] == pytest.approx(want, rel=1e-4)
    # Already better than leaving the erased half empty (the full claim is the slow test).
    assert final["erased_mse"] < final["zero_fill_mse"]
    line = cifar.CifarTask(config, data).summary_line(summary)
    assert "erased-half MSE" in line and "nan" not in line
    for out in (config.run_dir, str(tmp_path / "eval")):
        for name in cifar.FIGURES:
            image = _decode(os.path.join(out, name))
            assert image.shape[0] > 200 and image.shape[1] > 200 and image.shape[2] in (3, 4)
    assert {"episodes", "weights", "learning_curve"} <= _tensorboard_tags(
        os.path.join(config.run_dir, "tensorboard", "figures"))
    assert "erased_mse" in _tensorboard_tags(os.path.join(config.run_dir, "tensorboard", "eval"))


@pytest.mark.slow
def test_trained_network_completes_held_out_episodes_better_than_both_baselines(tmp_path):
    """Memorization itself: random images have no structure that w could learn.

    Any gain over the mean of the stored images must come from the Hebbian
    trace of this episode. 1 to 2.5 minutes on 2 shared CPU cores.
    """
    schedule = episodes.Schedule(num_items=3, presentation_steps=3, gap_steps=0, presentations=1, query_steps=3)
    config = cifar.CifarConfig(
        schedule=schedule, eta=0.1, learning_rate=1e-3, learning_rate_decay="none", episodes=480,
        batch_size=4, steps_per_epoch=30, eval_every=480, eval_episodes=40, run_dir=str(tmp_path), verbose=0,
    )
    raw = {"train": random_raw(1000, 9), "test": random_raw(200, 10)}
    with split_images(raw):
        summary = cifar.train(config, cifar.CifarData(config, download=False))
    result = summary["evaluation"]
    print(result)
    assert result["erased_mse"] < 0.95 * result["mean_fill_mse"]
    assert result["mean_fill_mse"] < result["zero_fill_mse"]
