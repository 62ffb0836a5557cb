"""The `classify` serving signature of a few-shot (Omniglot) network.

    classify  support [batch, ways*shots, height, width(, 1|3)] uint8,
              support_labels [batch, ways*shots] int64 in [0, ways),
              query [batch, height', width'(, 1|3)] uint8     -> probabilities [batch, ways] float32

One request is one episode per batch row: the support images with their class
positions (each class exactly `shots` times, in any order), and one query
image; the answer is the network's probability of each class for the query.
Images may have any size and be grayscale or RGB (support and query need not
match): the graph does the training preprocessing, `hebbkeras.tasks.omniglot.preprocess`
(channel mean, area resize to `image_size`, / 255: strokes 0, background 1).

Every input is checked in the graph before it is used (TF Serving does not
compare requests with the signature): a wrong rank, size, class index or
label count is refused with a message that names the expected shape.

The SavedModel holds stock TensorFlow ops only and no XLA function: the
plastic readout is traced on its `keras.ops` path (`use_fused=False`, the
fixed number of steps unrolled), which computes the same function as the
fused training kernel without its custom gradient, and the model is saved
with `experimental_custom_gradients=False`.

    module, signatures = classify.build(model, {"ways": 5, "shots": 1, "image_size": 31})
    tf.saved_model.save(module, path, signatures=signatures, options=classify.SAVE_OPTIONS)
    classify.check(path, model, config)
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from hebbkeras.layers.plastic_dense import PlasticDense
from hebbkeras.tasks import omniglot

SAVE_OPTIONS = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
TOL = dict(rtol=1e-5, atol=1e-5)


def settings(config_dict):
    try:
        return int(config_dict["ways"]), int(config_dict["shots"]), int(config_dict["image_size"])
    except KeyError as e:
        raise ValueError(f"The run's config has no {e.args[0]!r}: classify needs ways, shots and "
                         "image_size (the config.json of a trainers.omniglot run).") from None


def one_query_model(model, ways, shots, size):
    """The trained layers on episodes of `ways * shots` support steps and one query:
    `[images (batch, n + 1, size, size, 1), labels (batch, n + 1, ways)]` -> `(batch, ways)`."""
    steps = ways * shots + 1
    images = keras.Input((steps, size, size, 1), name="images")
    labels = keras.Input((steps, ways), name="labels")
    out = keras.models.clone_model(model, input_tensors=[images, labels],
                                   clone_function=lambda layer: layer).outputs[0]
    if len(out.shape) == 3:  # a model trained with several queries: the one query step
        out = out[:, -1]
    return keras.Model([images, labels], out)


@contextlib.contextmanager
def _keras_ops_path(model):
    """Plastic readouts on their `keras.ops` path while the signature is traced."""
    readouts = [l for l in model.layers if isinstance(l, PlasticDense)]
    saved = [l.use_fused for l in readouts]
    for layer in readouts:
        layer.use_fused = False
    try:
        yield
    finally:
        for layer, value in zip(readouts, saved):
            layer.use_fused = value


def _images(x, name, lead, lead_text, size):
    """`x` uint8 `[*lead, h, w(, c)]` checked and preprocessed: float32 `[*lead, size, size]`.

    `lead` holds None for a free dimension, an int for a fixed one.
    """
    k = len(lead)
    expected = f"[{lead_text}, height, width] or [{lead_text}, height, width, 1 or 3]"
    shape = tf.raw_ops.Shape(input=x)  # not tf.shape: nothing here may fold away
    rank = tf.size(shape)
    padded = tf.concat([shape, tf.fill([k + 4], -1)], axis=0)
    channels_ok = tf.logical_or(tf.equal(padded[k + 2], 1), tf.equal(padded[k + 2], 3))
    ok = tf.logical_or(tf.equal(rank, k + 2),
                       tf.logical_and(tf.equal(rank, k + 3), channels_ok))
    ok = tf.logical_and(ok, tf.logical_and(padded[k] >= 1, padded[k + 1] >= 1))
    for i, d in enumerate(lead):
        if d is not None:
            ok = tf.logical_and(ok, tf.equal(padded[i], d))
    check = tf.debugging.Assert(
        ok, [f"{name} must be uint8 {expected} (any height and width >= 1); got shape", shape],
        summarize=k + 4)
    with tf.control_dependencies([check]):
        # tf.stack of scalars keeps the ranks static for the ops below.
        full = tf.reshape(x, tf.stack([padded[i] for i in range(k + 2)] + [-1]))  # channel axis
        flat = tf.reshape(full, tf.stack([-1, padded[k], padded[k + 1], tf.shape(full)[-1]]))
        small = omniglot.preprocess(flat, size)
        # The fixed dims as Python ints: the time axis must be static for TimeDistributed.
        lead_dims = [padded[i] if d is None else d for i, d in enumerate(lead)]
        return tf.reshape(small, tf.stack(lead_dims + [size, size])), shape


def build(model, config_dict):
    """`(module, signatures)`: a `tf.Module` holding the variables, and `{"classify": fn}`.

    Args:
        model: a trained `trainers.omniglot` Keras model.
        config_dict: its run's settings; `ways`, `shots` and `image_size` are read.
    """
    ways, shots, size = settings(config_dict)
    n = ways * shots
    net = one_query_model(model, ways, shots, size)

    @tf.function(
        input_signature=[
            tf.TensorSpec(None, tf.uint8, name="support"),
            # Declared of any shape, as the images: a declared [None, n] lets the shape
            # check below fold away, and labels of another rank then fail deep inside.
            tf.TensorSpec(None, tf.int64, name="support_labels"),
            tf.TensorSpec(None, tf.uint8, name="query"),
        ],
        jit_compile=False,
        autograph=False,
    )
    def classify(support, support_labels, query):
        support_x, s_shape = _images(support, "support", (None, n), f"batch, {n}", size)
        query_x, q_shape = _images(query, "query", (None,), "batch", size)
        l_shape = tf.raw_ops.Shape(input=support_labels)
        l_padded = tf.concat([l_shape, [-1, -1, -1]], 0)
        labels_shape_ok = tf.debugging.Assert(
            tf.logical_and(tf.equal(tf.size(l_shape), 2), tf.equal(l_padded[1], n)),
            [f"support_labels must be int64 [batch, {n}] (ways * shots = {ways} * {shots}); "
             "got shape", l_shape], summarize=4)
        same_batch = tf.debugging.Assert(
            tf.logical_and(tf.equal(s_shape[0], l_padded[0]), tf.equal(s_shape[0], q_shape[0])),
            ["support, support_labels and query must have the same batch size; got shapes",
             s_shape, l_shape, q_shape], summarize=6)
        with tf.control_dependencies([labels_shape_ok, same_batch]):
            # Of rank 2 from here on: nothing below sees labels of another rank.
            support_labels = tf.reshape(support_labels, [-1, n])
            in_range = tf.debugging.Assert(
                tf.reduce_all(tf.logical_and(support_labels >= 0, support_labels < ways)),
                [f"support_labels must be class indices in [0, {ways}); got", support_labels],
                summarize=2 * n)
            onehot = tf.one_hot(support_labels, ways)
            counts = tf.reduce_sum(onehot, axis=1)
        with tf.control_dependencies([in_range]):
            balanced = tf.debugging.Assert(
                tf.reduce_all(tf.equal(counts, shots)),
                [f"support_labels must name each class 0..{ways - 1} exactly {shots} time(s) "
                 "per episode (the model was trained so); got", support_labels],
                summarize=2 * n)
        with tf.control_dependencies([balanced]):
            images = tf.concat([support_x, query_x[:, None]], axis=1)[..., None]
            batch = tf.shape(onehot)[0]
            labels = tf.concat([onehot, tf.zeros([batch, 1, ways])], axis=1)
            probs = net([images, labels], training=False)
        return {"probabilities": tf.cast(probs, tf.float32)}

    with _keras_ops_path(model):
        signatures = {"classify": classify.get_concrete_function()}
    module = tf.Module()
    module.classify = signatures["classify"]
    # The tf.Variables the function reads, so that TF Serving's TF1 loader restores them.
    module.served_variables = list(signatures["classify"].variables)
    return module, signatures


def request(config_dict, batch=3, seed=0, sizes=((60, 50, 3), (45, 45, None))):
    """A random `classify` request `{support, support_labels, query}` (numpy), for checks:
    support images of shape `sizes[0]`, the query of `sizes[1]` (None: no channel axis)."""
    ways, shots, _ = settings(config_dict)
    rng = np.random.default_rng(seed)

    def images(lead, shape):
        shape = tuple(d for d in shape if d is not None)
        return rng.integers(0, 256, lead + shape, dtype=np.uint8)

    labels = np.stack([rng.permutation(np.repeat(np.arange(ways), shots)) for _ in range(batch)])
    return {"support": images((batch, ways * shots), sizes[0]),
            "support_labels": labels.astype(np.int64),
            "query": images((batch,), sizes[1])}


def keras_probabilities(model, config_dict, req):
    """What the Keras model gives for a `classify` request: the reference of `check`."""
    ways, shots, size = settings(config_dict)
    support, labels, query = req["support"], req["support_labels"], req["query"]
    b, n = labels.shape
    s = omniglot.preprocess(support.reshape((b * n,) + support.shape[2:]), size).numpy()
    q = omniglot.preprocess(query, size).numpy()
    images = np.concatenate([s.reshape(b, n, size, size), q[:, None]], 1)[..., None]
    onehot = np.concatenate([np.eye(ways, dtype=np.float32)[labels],
                             np.zeros((b, 1, ways), np.float32)], 1)
    return np.asarray(one_query_model(model, ways, shots, size)([images, onehot], training=False))


def check(path, model, config_dict, batch=3, seed=0, error=ValueError):
    """Compares the SavedModel's `classify` at `path` with `model`; returns the largest
    absolute difference, or raises `error` (the exporter passes its ExportCheckError).

    The request has RGB support images and a grayscale query of other sizes
    than the model's, so the in-graph preprocessing is compared too.
    """
    req = request(config_dict, batch, seed)
    loaded = tf.saved_model.load(path)
    got = loaded.signatures["classify"](**{k: tf.constant(v) for k, v in req.items()})
    got = got["probabilities"].numpy()
    want = keras_probabilities(model, config_dict, req)
    if got.shape != want.shape or not np.allclose(got, want, **TOL):
        diff = np.max(np.abs(got - want)) if got.shape == want.shape else "shape"
        raise error(
            f"Signature 'classify' of the SavedModel differs from the Keras model (max abs "
            f"difference {diff}; shapes {got.shape} and {want.shape}).")
    return float(np.max(np.abs(got - want)))
