"""Omniglot (Lake et al. 2015) for few-shot episodes: loading through tfds and preprocessing.

tfds's `omniglot` (version 3.0.0) holds 105 x 105 black-on-white PNGs of
1,623 handwritten characters, 20 drawers each, with a `label` (the
character, 0 .. 1622, unique across splits) and its `alphabet`:

    train  the 30 background alphabets: 964 characters (labels 0 .. 963)
    test   the 20 evaluation alphabets: 659 characters (labels 964 .. 1622)

The standard few-shot protocol trains on `train` and tests on `test`: no
alphabet is shared. The original plastic-network code (Miconi et al. 2018)
instead pools both and holds out the last 100 characters; `pooled_split` makes
that split, for comparison with its number.

Preprocessing (`preprocess`), the same in training and in a served model:

    gray  = mean over the colour channels of the uint8 image      (0 .. 255)
    small = area-average resize of gray to size x size            (anti-aliased)
    x     = small / 255                                           strokes 0, background 1

as in the original code, where strokes are 0 and the background 1.

Example:

    images, labels = load_omniglot("train", size=31)           # (19280, 31, 31), (19280,)
    data = fewshot.episode_dataset(images, labels, ways=5, shots=1, rotate=True)
"""

import numpy as np
import tensorflow as tf

from hebbkeras.checks import check_int
from hebbkeras.tasks import tfds_data

SIDE = 105  # the size of the original images
_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
_ZIPS = ("images_background.zip", "images_evaluation.zip", "images_background_small1.zip",
         "images_background_small2.zip")
OMNIGLOT = tfds_data.Source(
    name="omniglot", version="3.0.0", title="Omniglot",
    urls=tuple(_URL + z for z in _ZIPS), manual_files=_ZIPS,
    stand_in="An offline stand-in (drawn characters, not Omniglot): python -m "
             "hebbkeras.tasks.handwriting --data_dir DIR, then --data_dir DIR --nodownload.",
)
DataUnavailableError = tfds_data.DataUnavailableError
POOLED_TEST_CLASSES = 100  # the original code's held-out characters


def preprocess(images, size=31):
    """uint8 images `(n, h, w)` or `(n, h, w, c)` -> float32 `(n, size, size)` in [0, 1].

    The channel mean (any number of channels; Omniglot's three are equal),
    an area-average resize to `size` x `size` and a division by 255: strokes
    (black) are 0 and the background (white) 1. Runs in a graph with unknown
    `n`, `h`, `w`, so a served model does exactly this.

    Args:
        images: a uint8 (or any numeric) tensor or array of rank 3 or 4.
        size: the side of the output images.
    """
    check_int("size", size, 1)
    images = tf.convert_to_tensor(images)
    if images.shape.rank == 3:
        images = images[..., None]
    if images.shape.rank != 4:
        raise ValueError(
            f"images must have shape (n, height, width) or (n, height, width, channels); "
            f"got {images.shape}.")
    gray = tf.reduce_mean(tf.cast(images, tf.float32), axis=-1, keepdims=True)
    small = tf.image.resize(gray, (size, size), method="area")
    return small[..., 0] / 255.0


def load_omniglot(split, size=31, data_dir=None, download=True, manual_dir=None):
    """A split of tfds's `omniglot` as `(images (n, size, size) float32, labels (n,) int64)`.

    Args:
        split: a tfds split: "train" (background alphabets), "test"
            (evaluation alphabets), "small1", "small2", or a slice of one.
        size: the side images are resized to (`preprocess`); 105 keeps them.
        data_dir: a TFDS data directory (default: `TFDS_DATA_DIR` or
            `~/tensorflow_datasets`).
        download: prepare the data (download and convert) if it is missing.
        manual_dir: a directory holding the four zip files of `OMNIGLOT`,
            used instead of the network.

    Raises:
        DataUnavailableError: the data is missing and cannot be prepared; the
            message lists the ways to provide it.
    """
    ds = tfds_data.load_split(OMNIGLOT, split, data_dir, download, manual_dir)
    images, labels = [], []
    for batch in ds.batch(2048):
        images.append(preprocess(batch["image"], size).numpy())
        labels.append(np.asarray(batch["label"], np.int64))
    if not images:
        raise DataUnavailableError(f"The Omniglot split {split!r} holds no images.")
    return np.concatenate(images), np.concatenate(labels)


def pooled_split(train, test, held_out=POOLED_TEST_CLASSES):
    """The original code's split: both sets pooled, the last `held_out` characters held out.

    Args:
        train, test: `(images, labels)` of the `train` and `test` splits.
        held_out: how many characters (the highest labels: the last ones of
            the evaluation alphabets) form the test classes.

    Returns:
        `((train_images, train_labels), (test_images, test_labels))` with
        disjoint characters; most test alphabets' characters are in training.
    """
    images = np.concatenate([train[0], test[0]])
    labels = np.concatenate([train[1], test[1]])
    classes = np.unique(labels)
    check_int("held_out", held_out, 1)
    if held_out >= len(classes):
        raise ValueError(f"held_out={held_out} leaves no training class: there are "
                         f"{len(classes)} characters.")
    held = np.isin(labels, classes[-held_out:])
    return (images[~held], labels[~held]), (images[held], labels[held])


def synthetic_glyphs(classes, per_class, seed=0, first_label=0, side=9, scale=3, noise=0.1):
    """A small Omniglot-like set made on the spot (offline tests, demos, benchmarks).

    Each class is a random binary prototype of `side` x `side` pixels (35%
    strokes); each image flips a random `noise` fraction of its pixels. Images
    are black strokes (0) on white (255), uint8 `(n, side * scale, side *
    scale, 3)` like tfds's Omniglot: each pixel a `scale` x `scale` block, so
    `preprocess(images, side)` gives back the pixels exactly.

    Returns:
        `(images, labels)`, labels `first_label .. first_label + classes - 1`.
    """
    rng = np.random.default_rng(seed)
    protos = rng.random((classes, side, side)) < 0.35
    flips = rng.random((classes, per_class, side, side)) < noise
    strokes = protos[:, None] ^ flips
    images = np.where(strokes, 0, 255).astype(np.uint8).reshape(-1, side, side)
    images = np.kron(images, np.ones((1, scale, scale), np.uint8))
    labels = np.repeat(np.arange(classes, dtype=np.int64) + first_label, per_class)
    return np.repeat(images[..., None], 3, axis=-1), labels
