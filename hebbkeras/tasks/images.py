"""Natural-image episodes (the paper's second task) and their error measures.

Each episode stores `schedule.num_items` grayscale CIFAR-10 images (32 x 32,
flattened to 1,024 pixels) and asks for one of them back from a copy whose top
or bottom half is zeroed. The episodes use the schedule of every task
(`episodes.make_episode`); only the item source (images instead of random
bits) and the degradation (a half instead of random bits) differ.

Targets are packed: `(batch, 3 * pixels)` holds the intact image, the mask of
the erased half and the mean of the stored images (the "mean fill" baseline),
so that the loss and metrics here can score the erased half and the baselines
of the very same episodes. `image_summed_squared_error` (the paper's loss)
reads only the first third.
"""

import keras
import tensorflow as tf
from keras import ops

from hebbkeras.layers.plastic_rnn_cell import PACKAGE
from hebbkeras.tasks import episodes, tfds_data

SIDE = 32
PIXELS = SIDE * SIDE
NORMALIZATIONS = ("centered", "unit")
CIFAR10 = tfds_data.Source(
    name="cifar10", version="3.0.2", title="CIFAR-10",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    manual_files=("cifar-10-binary.tar.gz",),
)
DataUnavailableError = tfds_data.DataUnavailableError


def grayscale(images, normalization="centered"):
    """`(n, 32, 32, 3)` uint8 images -> `(n, 1024)` float32 grayscale, row-major.

    "centered" (the original code): the sum of the colour channels, minus its
    mean, divided by its largest absolute value, so each image lies in [-1, 1]
    with mean 0. "unit": the channel mean divided by 255, the paper's plain
    [0, 1] grayscale. In clamp input mode a zero pixel is not clamped (it reads
    as "unknown", like the erased half); centred images are zero almost nowhere,
    while in [0, 1] form every black pixel would be left free.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalization={normalization!r}. Expected one of "
            f"{', '.join(map(repr, NORMALIZATIONS))}."
        )
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or tuple(images.shape[1:]) != (SIDE, SIDE, 3):
        raise ValueError(f"Expected (n, 32, 32, 3) colour images; got shape {images.shape}.")
    gray = tf.reshape(tf.reduce_sum(tf.cast(images, tf.float32), axis=-1), [-1, PIXELS])
    if normalization == "unit":
        return gray / (3 * 255.0)
    gray -= tf.reduce_mean(gray, axis=-1, keepdims=True)
    return gray / (1e-8 + tf.reduce_max(tf.abs(gray), axis=-1, keepdims=True))


def load_cifar10(split, normalization="centered", data_dir=None, download=True, manual_dir=None):
    """A split of CIFAR-10 (`tfds.load("cifar10")`) as `(n, 1024)` grayscale images.

    Args:
        split: a tfds split, e.g. "train", "test" or "train[:45000]".
        normalization: see `grayscale`.
        data_dir: a TFDS data directory (default: `TFDS_DATA_DIR` or
            `~/tensorflow_datasets`).
        download: prepare the data (download and convert) if it is missing.
        manual_dir: a directory holding `cifar-10-binary.tar.gz`, used instead
            of the network.

    Raises:
        DataUnavailableError: the data is missing and cannot be prepared; the
            message lists the ways to provide it.
    """
    ds = tfds_data.load_split(CIFAR10, split, data_dir, download, manual_dir)
    batches = [grayscale(b["image"], normalization) for b in ds.batch(4096)]
    if not batches:
        raise DataUnavailableError(f"The CIFAR-10 split {split!r} holds no images.")
    return tf.concat(batches, axis=0)


def erase_half(target, seed):
    """Zeroes the top or the bottom half (chosen by `seed`) of a flattened image."""
    half = target.shape[-1] // 2
    top = tf.random.stateless_uniform((), seed) < 0.5
    keep = tf.concat([tf.zeros([half]), tf.ones([target.shape[-1] - half])], axis=0)
    return target * tf.where(top, keep, 1 - keep)


def erased_mask(query):
    """1 on the half that `erase_half` zeroed in `query`, 0 on the other.

    The erased half is the one that is all zero; should both be (an image
    that is itself zero on the kept half), the top half is reported.
    """
    width = query.shape[-1]
    half = width // 2
    top = tf.reduce_all(tf.equal(query[..., :half], 0), axis=-1, keepdims=True)
    first = tf.cast(tf.range(width) < half, query.dtype)
    return tf.where(top, first, 1 - first)


def image_episode(images, seed, schedule, bias=True):
    """`(inputs, packed_target)` of one episode drawn from `images` `(n, pixels)`.

    The `schedule.num_items` stored images are distinct; the query is one of
    them with a random half erased (`erase_half`).
    """
    pick, episode_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    count = tf.shape(images)[0]
    chosen = tf.math.top_k(tf.random.stateless_uniform([count], pick), schedule.num_items).indices
    items = tf.gather(images, chosen)
    inputs, target = episodes.make_episode(items, episode_seed, schedule, erase_half, bias)
    query = inputs[-1, : images.shape[-1]]  # the query is shown last
    mean_fill = tf.reduce_mean(items, axis=0)
    return inputs, tf.concat([target, erased_mask(query), mean_fill], axis=-1)


def image_dataset(
    images, schedule, seed=0, batch_size=1, bias=True, input_context=None, start=0
):
    """An endless `tf.data.Dataset` of batched image episodes from `images`.

    Yields `(inputs, packed_target)`: `(batch, schedule.steps, pixels + bias)`
    and `(batch, 3 * pixels)` (see `unpack_target`). Episode `i` is a pure
    function of `(seed, i)`; input pipelines and `start` work as in
    `episodes.binary_dataset`.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape.rank != 2 or images.shape[0] < schedule.num_items:
        raise ValueError(
            f"Need at least num_items={schedule.num_items} images of shape (n, pixels); "
            f"got {images.shape}."
        )
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be a positive integer.")

    def episode(index):
        return image_episode(
            images, tf.stack([tf.cast(seed, tf.int64), index]), schedule, bias
        )

    return episodes.episode_indices(input_context, start).map(
        episode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def unpack_target(y_true):
    """`(target, erased_mask, mean_fill)`, each `(batch, pixels)`."""
    width = y_true.shape[-1]
    if width is None or width % 3:
        raise ValueError(
            f"A packed image target has 3 * pixels entries (target, erased mask, mean "
            f"fill); got width {width}. Use the targets of hebbkeras.tasks.images.image_dataset."
        )
    p = width // 3
    return y_true[..., :p], y_true[..., p : 2 * p], y_true[..., 2 * p :]


def _erased_mse(y_true, fill):
    target, mask, _ = unpack_target(ops.cast(y_true, fill.dtype))
    return ops.sum(mask * ops.square(fill - target), axis=-1) / ops.sum(mask, axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
def image_summed_squared_error(y_true, y_pred):
    """The paper's loss: squared error summed over all pixels of the final output."""
    target, _, _ = unpack_target(y_true)
    target = ops.cast(target, y_pred.dtype)
    return ops.sum(ops.square(y_pred[..., : target.shape[-1]] - target), axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
def erased_mse(y_true, y_pred):
    """Mean squared error of the network's output on the erased half."""
    return _erased_mse(y_true, y_pred[..., : y_true.shape[-1] // 3])


@keras.saving.register_keras_serializable(package=PACKAGE)
def zero_fill_mse(y_true, y_pred):
    """Baseline: the erased half filled with zeros (the query as it is)."""
    return _erased_mse(y_true, ops.zeros_like(y_pred[..., : y_true.shape[-1] // 3]))


@keras.saving.register_keras_serializable(package=PACKAGE)
def mean_fill_mse(y_true, y_pred):
    """Baseline: the erased half filled with the mean of the stored images."""
    _, _, mean_fill = unpack_target(ops.cast(y_true, y_pred.dtype))
    return _erased_mse(y_true, mean_fill)


# The error measures of the image task, for `compile(metrics=...)`.
IMAGE_METRICS = (erased_mse, zero_fill_mse, mean_fill_mse)
