"""`python -m trainers.cifar` on natural photographs served as CIFAR-10 (offline).

CIFAR-10 cannot be downloaded on some machines. This runs the CIFAR trainer,
with any of its flags, on 32 x 32 tiles of JPEG photographs instead, fed
through `tfds.load("cifar10")` by `tfds.testing.mock_data`: `train` holds the
tiles of the first photograph (in name order), `test` those of the others,
so evaluation is on a photograph never trained on.

    python -m benchmarks.cifar_photos --photos DIR --episodes 1000 --run_dir runs/photos

`DIR` holds the photographs (for example the two that scikit-learn ships,
`sklearn/datasets/images/china.jpg` and `flower.jpg`, 427 x 640 each: 260
tiles each). Measurements: docs/cifar.md.
"""

import hebbcli

hebbcli.import_tensorflow()

import glob
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from PIL import Image

from trainers import cifar

TILE = 32

flags.DEFINE_string("photos", None, "Directory of .jpg/.png photographs: the first (by name) "
                    "gives the train split's tiles, the others the test split's.")
flags.DEFINE_integer("train_stride", TILE, "Step between the train split's tiles (32: no "
                     "overlap; smaller: more, overlapping tiles).")


def tiles(path, stride=TILE):
    """The `(n, 32, 32, 3)` uint8 tiles of one photograph, row by row, `stride` apart."""
    image = np.asarray(Image.open(path).convert("RGB"))
    rows = range(0, image.shape[0] - TILE + 1, stride)
    cols = range(0, image.shape[1] - TILE + 1, stride)
    return np.stack([image[r:r + TILE, c:c + TILE] for r in rows for c in cols])


def photo_splits(directory, train_stride=TILE):
    """`{"train": tiles of the first photograph, "test": tiles of the rest}`."""
    paths = sorted(p for p in glob.glob(os.path.join(directory, "*"))
                   if p.lower().endswith((".jpg", ".jpeg", ".png")))
    if len(paths) < 2:
        raise ValueError(f"--photos {directory} holds {len(paths)} photographs: give a directory "
                         "with at least two (.jpg, .jpeg or .png).")
    return {"train": tiles(paths[0], train_stride),
            "test": np.concatenate([tiles(p) for p in paths[1:]])}


def serve(splits):
    """A `tfds.testing.mock_data` context in which cifar10's splits are `splits`."""

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        raw = splits[str(split).split("[")[0]]
        return tf.data.Dataset.from_tensor_slices({
            "id": tf.constant([str(i) for i in range(len(raw))]), "image": tf.constant(raw),
            "label": tf.zeros([len(raw)], tf.int64)})

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def main(argv):
    if not flags.FLAGS.photos:
        raise ValueError("--photos is empty: give a directory of photographs.")
    splits = photo_splits(flags.FLAGS.photos, flags.FLAGS.train_stride)
    print(f"photographs: {len(splits['train'])} train tiles, {len(splits['test'])} test tiles")
    flags.FLAGS.download = False
    with serve(splits):
        cifar.main(argv)


if __name__ == "__main__":
    cifar.define_cli_flags()
    hebbcli.run(main, errors=(ValueError, FileNotFoundError))
