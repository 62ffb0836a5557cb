"""The generated Omniglot-like set: how hard it is for pixels, and that a conv net learns it.

    python -m benchmarks.handwriting --data_dir /work/data/omniglot_like     # about 5 minutes

Reads tfds `omniglot` from `--data_dir` (prepared by `python -m
hebbkeras.tasks.handwriting --data_dir DIR`, or real Omniglot), preprocessed
as the trainer does (`hebbkeras.tasks.omniglot.preprocess`, 31 x 31), and prints:

- pixel 1-NN: 5-way 1-shot on the test (held-out) alphabets, each query
  given the class of the support image nearest in Euclidean distance on the
  raw pixels, over `--episodes` episodes, with its 95% Wilson interval;
- a prototypical network (Snell et al. 2017) as a learnability check: the
  trainer's embedding (4 conv layers, 3 x 3, stride 2, 64 channels; here
  with batch normalisation and ReLU), trained for `--train_seconds` on
  `--train_ways`-way 1-shot episodes of the background alphabets (each
  class turned by a random multiple of 90 degrees), with the loss

      p(y = k | q) = softmax_k(-||f(q) - f(s_k)||^2),   loss = -log p(y = true | q),

  then 5-way 1-shot accuracy on the held-out alphabets with the same
  nearest-support rule on the embeddings, over the same episodes.
"""

import time

from absl import app, flags

flags.DEFINE_string("data_dir", None, "TFDS data directory holding omniglot/3.0.0.")
flags.DEFINE_integer("episodes", 2000, "Held-out 5-way 1-shot episodes to score.")
flags.DEFINE_float("train_seconds", 240.0, "Wall time of the prototypical network's training.")
flags.DEFINE_integer("train_ways", 20, "Classes per training episode.")
flags.DEFINE_integer("train_queries", 5, "Queries per class per training episode.")
flags.DEFINE_integer("seed", 0, "Seed of the episodes and the network.")
FLAGS = flags.FLAGS


def episodes(labels, count, ways, seed):
    """`(support (count, ways), query (count,), answer (count,))` indices, 1-shot."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    support = np.empty((count, ways), np.int64)
    query, answer = np.empty(count, np.int64), rng.integers(0, ways, count)
    for e in range(count):
        chosen = rng.choice(classes, ways, replace=False)
        for k, c in enumerate(chosen):
            pair = rng.choice(members[c], 2, replace=False)
            support[e, k] = pair[0]
            if k == answer[e]:
                query[e] = pair[1]
    return support, query, answer


def nearest_support_accuracy(features, support, query, answer):
    """Fraction of queries whose nearest support vector (Euclidean) is of their class."""
    import numpy as np

    distance = ((features[support] - features[query][:, None]) ** 2).sum(-1)
    return float(np.mean(distance.argmin(1) == answer))


def embedding(channels=64, layers=4):
    import keras

    stack = [keras.Input((31, 31, 1))]
    for _ in range(layers):
        stack += [keras.layers.Conv2D(channels, 3, strides=2), keras.layers.BatchNormalization(),
                  keras.layers.ReLU()]
    return keras.Sequential(stack + [keras.layers.Flatten()])


def train_prototypical(images, labels, seconds, ways, queries, seed):
    """Trains `embedding()` on background episodes for `seconds`; returns `(model, steps)`."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = embedding()
    optimizer = keras.optimizers.Adam(1e-3)
    rng = np.random.default_rng(seed + 1)
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}

    @tf.function
    def step(batch):  # batch: (ways, 1 + queries, 31, 31, 1)
        with tf.GradientTape() as tape:
            f = tf.reshape(model(tf.reshape(batch, (-1, 31, 31, 1)), training=True),
                           (ways, 1 + queries, -1))
            protos, q = f[:, 0], tf.reshape(f[:, 1:], (ways * queries, -1))
            logits = -tf.reduce_sum((q[:, None] - protos[None]) ** 2, -1)
            target = tf.repeat(tf.range(ways), queries)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    start, steps = time.time(), 0
    while time.time() - start < seconds:
        elapsed = (time.time() - start) / seconds
        optimizer.learning_rate.assign(1e-3 * 0.1**elapsed)  # 1e-3 -> 1e-4
        chosen = rng.choice(classes, ways, replace=False)
        batch = np.stack([np.rot90(images[rng.choice(members[c], 1 + queries, replace=False)],
                                   rng.integers(4), axes=(1, 2)) for c in chosen])
        loss = step(batch[..., None].astype(np.float32))
        steps += 1
        if steps % 500 == 0:
            print(f"  step {steps}  loss {float(loss):.3f}  {time.time() - start:.0f} s",
                  flush=True)
    return model, steps


def main(argv):
    del argv
    import numpy as np

    from hebbkeras.tasks import omniglot
    from trainers.omniglot import wilson_interval

    train_x, train_y = omniglot.load_omniglot("train", 31, FLAGS.data_dir, download=False)
    test_x, test_y = omniglot.load_omniglot("test", 31, FLAGS.data_dir, download=False)
    support, query, answer = episodes(test_y, FLAGS.episodes, 5, FLAGS.seed)
    n = FLAGS.episodes

    def line(name, accuracy):
        low, high = wilson_interval(round(accuracy * n), n)
        print(f"{name}: held-out 5-way 1-shot accuracy {accuracy:.4f} "
              f"(95% Wilson CI {low:.4f}-{high:.4f}, {n} episodes)", flush=True)

    line("pixel 1-NN", nearest_support_accuracy(test_x.reshape(len(test_x), -1), support,
                                                 query, answer))
    model, steps = train_prototypical(train_x, train_y, FLAGS.train_seconds, FLAGS.train_ways,
                                      FLAGS.train_queries, FLAGS.seed)
    features = model.predict(test_x[..., None], batch_size=1024, verbose=0)
    line(f"prototypical conv net ({steps} steps, {FLAGS.train_seconds:.0f} s)",
         nearest_support_accuracy(features, support, query, answer))


if __name__ == "__main__":
    flags.mark_flag_as_required("data_dir")
    app.run(main)
