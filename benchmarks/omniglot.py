"""Omniglot task: seconds per training episode, accuracy on a small offline glyph set, and
the accuracy of a trained run's served `classify` signature.

    python -m benchmarks.omniglot                      # both tables (about 2 minutes)
    python -m benchmarks.omniglot --nospeed            # only the accuracy table
    python -m benchmarks.omniglot --served runs/omniglot --data_dir D --nodownload
                                                       # the run's model, exported and served

Served: the run's `model.keras` is exported (`python -m export`'s function)
into a temporary directory, loaded back with `tf.saved_model.load` (no
hebbkeras code runs in the signature), and its `classify` signature answers
the run's held-out evaluation episodes (the same episodes, from the raw uint8
images of the tfds `test` split): accuracy with its 95% Wilson interval.

Speed: the paper's network (5-way 1-shot, 31 x 31, 4 conv layers of 64
channels, plastic 64 -> 5 readout with Oja's rule) trained with the trainer's
loss and optimizer on random episodes of that shape (the time does not depend
on the pixels), at each batch size, on both readout paths ("fused": the
default, hand-written gradient; "keras_ops": autodiff through the unrolled
steps). Median of `--repeats` timed steps after two warm-up steps.

Accuracy: `trainers.omniglot.train` on `hebbkeras.tasks.omniglot.synthetic_glyphs`
(40 training and 20 held-out classes of 9 x 9 random prototypes with 10%
pixel noise, 4 images each), 3-way 1-shot, 2 conv layers of 16 channels, Adam
1e-2, 1,600 episodes in batches of 16 (evaluated every 400): held-out accuracy with its 95% Wilson
interval over 200 episodes, the 1-NN baseline on the learned embedding, and
the non-plastic network. A stand-in for Omniglot where it cannot be downloaded.
"""

import statistics
import tempfile
import time

from absl import app, flags

flags.DEFINE_bool("speed", True, "Time training episodes at the paper's settings.")
flags.DEFINE_bool("accuracy", True, "Train on the synthetic glyph set and report held-out accuracy.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Episodes per batch of the speed table.")
flags.DEFINE_list("paths", ["fused", "keras_ops"], "Readout paths of the speed table.")
flags.DEFINE_integer("repeats", 10, "Timed training steps per row.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds of the accuracy table (one run each).")
flags.DEFINE_string("served", None, "A trainers.omniglot run directory: export its model and "
                    "score the served classify signature on the run's held-out episodes "
                    "(then only this is measured).")
flags.DEFINE_string("data_dir", None, "With --served: the TFDS data directory of the run's data.")
flags.DEFINE_bool("download", True, "With --served: prepare the data if it is missing.")
flags.DEFINE_string("run_dir", None, "Keep the first plastic run of the accuracy table here (its figures: "
                    "docs/omniglot_episodes.png and docs/omniglot_accuracy.png come from one); "
                    "default: a temporary directory.")
FLAGS = flags.FLAGS


def speed_row(batch, path, repeats):
    import numpy as np

    from trainers import omniglot

    config = omniglot.OmniglotConfig.with_recipe("paper", batch_size=batch)
    task = omniglot.OmniglotTask(config, data=None)
    model = task.model()
    model.get_layer("readout").use_fused = path == "fused"
    model.compile(optimizer=task.optimizer(), **task.compile_args())
    rng = np.random.default_rng(0)
    images = rng.random((batch, config.steps, 31, 31, 1), np.float32)
    labels = np.zeros((batch, config.steps, config.ways), np.float32)
    labels[:, np.arange(config.ways), np.arange(config.ways)] = 1
    target = np.eye(config.ways, dtype=np.float32)[rng.integers(0, config.ways, batch)]
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        model.train_on_batch([images, labels], target)
        if i >= 2:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return step, step / batch


def accuracy_row(model, seed, run_dir=None):
    from hebbkeras.tasks import omniglot as data
    from trainers import omniglot

    class GlyphData(omniglot.OmniglotData):
        def splits(self):
            size = self.config.image_size
            train = data.synthetic_glyphs(40, 4, seed=seed)
            test = data.synthetic_glyphs(20, 4, seed=seed + 1000, first_label=40)
            return ((data.preprocess(train[0], size).numpy(), train[1]),
                    (data.preprocess(test[0], size).numpy(), test[1]))

    with tempfile.TemporaryDirectory() as scratch:
        config = omniglot.OmniglotConfig.with_recipe(  # the settings the docs' table ran
            "paper",
            ways=3, image_size=9, conv_layers=2, channels=16, learning_rate=1e-2, episodes=1600,
            batch_size=16, steps_per_epoch=10, eval_every=400, eval_episodes=200, seed=seed,
            model=model, verbose=0, run_dir=run_dir or scratch, overwrite=True)
        start = time.perf_counter()
        summary = omniglot.train(config, GlyphData(config))
        return summary["evaluation"], time.perf_counter() - start


def served_accuracy(run_dir, data_dir=None, download=True):
    """`(accuracy, (low, high), queries)` of the run's exported `classify` on its held-out
    episodes (the run's `eval_episodes`, the evaluation's episode seed)."""
    import os

    import keras
    import numpy as np
    import tensorflow as tf

    import export
    from hebbkeras.tasks import omniglot as data
    from trainers import omniglot

    with open(os.path.join(run_dir, "config.json")) as f:
        config = omniglot.OmniglotConfig.from_json(f.read())
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    if config.split != "standard":
        raise ValueError("--served scores runs of --split standard only.")
    raw = data.tfds_data.load_split(data.OMNIGLOT, "test", data_dir, download)
    images, labels = [], []
    for batch in raw.batch(2048):
        images.append(np.asarray(batch["image"])[..., :1])
        labels.append(np.asarray(batch["label"], np.int64))
    images, labels = np.concatenate(images), np.concatenate(labels)
    with tempfile.TemporaryDirectory() as scratch:
        path = export.export_model(model, scratch, config=config.to_dict(), verbose=False)
        classify = tf.saved_model.load(path).signatures["classify"]
        correct = total = 0
        for request, truth in omniglot.classify_requests(images, labels, config,
                                                         config.eval_episodes):
            probs = classify(**{k: tf.constant(v) for k, v in request.items()})["probabilities"]
            correct += int((np.asarray(probs).argmax(-1) == truth).sum())
            total += len(truth)
    return correct / total, omniglot.wilson_interval(correct, total), total


def main(argv):
    import hebbcli

    hebbcli.import_tensorflow()
    if FLAGS.served:
        accuracy, (low, high), total = served_accuracy(FLAGS.served, FLAGS.data_dir, FLAGS.download)
        print(f"served classify of {FLAGS.served}: held-out accuracy {accuracy:.4f} (95% Wilson CI "
              f"{low:.4f}-{high:.4f}, {total} queries)")
        return
    if FLAGS.speed:
        print("Training time per episode, paper settings (5-way 1-shot, 31 x 31, 64 channels)")
        print(f"{'batch':>5}  {'path':<10} {'s/step':>9} {'ms/episode':>11}")
        for batch in map(int, FLAGS.batch_sizes):
            for path in FLAGS.paths:
                step, episode = speed_row(batch, path, FLAGS.repeats)
                print(f"{batch:>5}  {path:<10} {step:>9.4f} {1000 * episode:>11.2f}", flush=True)
    if FLAGS.accuracy:
        print("\nHeld-out accuracy, synthetic glyphs, 3-way 1-shot, 1,600 episodes (chance 0.333)")
        print(f"{'model':<11} {'seed':>4} {'accuracy':>8}  {'95% Wilson CI':<15} {'1-NN':>6} {'s':>6}")
        for model in ("plastic", "nonplastic"):
            for seed in map(int, FLAGS.seeds):
                keep = FLAGS.run_dir if (model, seed) == ("plastic", int(FLAGS.seeds[0])) else None
                m, wall = accuracy_row(model, seed, keep)
                print(f"{model:<11} {seed:>4} {m['accuracy']:>8.3f}  "
                      f"{m['ci_low']:.3f}-{m['ci_high']:.3f}     {m['nn_accuracy']:>6.3f} "
                      f"{wall:>6.1f}", flush=True)


if __name__ == "__main__":
    app.run(main)
