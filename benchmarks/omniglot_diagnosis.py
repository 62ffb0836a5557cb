"""Why the paper's Omniglot settings stay at chance: the trace's share of the query's logits.

    python -m benchmarks.omniglot_diagnosis --data_dir DIR   # DIR: a prepared tfds omniglot

For each recipe (the paper's settings and the trainer's defaults), on 256
held-out 5-way 1-shot episodes of the untrained network, it prints:

- the spread of the query's logits that comes from the embedding through `w`
  (`e_q @ w + b`: the readout with `alpha = 0`), and the spread the trace adds
  (`e_q @ (alpha * hebb)`), both as the standard deviation over the ways of the
  log-probabilities (a softmax's log-probabilities differ between classes
  exactly as its logits do);
- the gradient norms of the loss with respect to `w`, `alpha`, `eta` and the
  conv kernels;
- how many Adam steps it takes at the least, at the recipe's learning rate, to
  grow `alpha` by 1 (Adam moves each weight by about the learning rate per step
  at the most, and less when the gradient's sign is noisy).

The trace's term is what classifies a query; the embedding's term cannot (the
classes' positions are drawn anew every episode).
"""

import numpy as np
from absl import app, flags

flags.DEFINE_string("data_dir", None, "A TFDS data directory holding a prepared omniglot/3.0.0.")
flags.DEFINE_integer("episodes", 256, "Held-out episodes measured.")
FLAGS = flags.FLAGS


def spreads(model, x, labels):
    """`(embedding term, trace term)`: mean over episodes of the std over ways of each
    term's contribution to the query's logits."""
    from trainers.omniglot import without_trace

    log_full = np.log(np.clip(np.asarray(model.predict_on_batch([x, labels])), 1e-30, 1))
    with without_trace(model):
        log_w = np.log(np.clip(np.asarray(model.predict_on_batch([x, labels])), 1e-30, 1))
    return float(log_w.std(-1).mean()), float((log_full - log_w).std(-1).mean())


def gradient_norms(model, loss, x, labels, target):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value = loss(target, model([x, labels], training=True))
    names = [v.path for v in model.trainable_variables]
    grads = tape.gradient(value, model.trainable_variables)
    norms = {}
    for name, g in zip(names, grads):
        key = name.split("/")[-1] if "readout" in name else "conv kernels"
        if g is not None and (key != "conv kernels" or "kernel" in name):
            norms[key] = float(np.sqrt(norms.get(key, 0.0) ** 2 + float(tf.reduce_sum(g * g))))
    return norms


def main(argv):
    import hebbcli

    hebbcli.import_tensorflow()
    import keras

    from trainers import omniglot

    print(f"{'recipe':<7} {'alpha0':>7} {'eta0':>5} {'lr':>7} | {'embedding term':>14} "
          f"{'trace term':>10} {'ratio':>8} | {'|dL/dw|':>8} {'|dL/dalpha|':>11} "
          f"{'|dL/deta|':>9} {'|dL/dconv|':>10} | {'steps to grow alpha by 1':>24}")
    for recipe in ("paper", "fast"):
        config = omniglot.OmniglotConfig.with_recipe(recipe)
        data = omniglot.OmniglotData(config, FLAGS.data_dir, download=False)
        (x, labels), target = next(iter(data.eval_dataset(config, FLAGS.episodes)))
        keras.utils.set_random_seed(0)
        task = omniglot.OmniglotTask(config, data)
        model = task.model()
        embedding, trace = spreads(model, x, labels)
        norms = gradient_norms(model, task.compile_args()["loss"], x, labels, target)
        steps = 1 / config.learning_rate
        print(f"{recipe:<7} {config.alpha_init:>7g} {config.eta:>5g} {config.learning_rate:>7g} | "
              f"{embedding:>14.3g} {trace:>10.3g} {trace / embedding:>8.2g} | "
              f"{norms.get('w', 0):>8.2g} {norms.get('alpha', 0):>11.2g} "
              f"{norms.get('eta', 0):>9.2g} {norms.get('conv kernels', 0):>10.2g} | "
              f"{steps:>24,.0f}", flush=True)


if __name__ == "__main__":
    app.run(main)
