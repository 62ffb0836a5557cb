"""Omniglot task: seconds per training episode, and accuracy on a small offline glyph set.

    python -m benchmarks.omniglot                      # both tables (about 2 minutes)
    python -m benchmarks.omniglot --nospeed            # only the accuracy table

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
flags.DEFINE_string("run_dir", None, "Keep the first plastic run of the accuracy table here (its figures: "
                    "docs/omniglot_episodes.png and docs/omniglot_accuracy.png come from one); "
                    "default: a temporary directory.")
FLAGS = flags.FLAGS


def speed_row(batch, path, repeats):
    import numpy as np

    from trainers import omniglot

    config = omniglot.OmniglotConfig(batch_size=batch)
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
        config = omniglot.OmniglotConfig(
            ways=3, image_size=9, conv_layers=2, channels=16, learning_rate=1e-2, episodes=1600,
            batch_size=16, steps_per_epoch=10, eval_every=400, eval_episodes=200, seed=seed,
            model=model, verbose=0, run_dir=run_dir or scratch, overwrite=True)
        start = time.perf_counter()
        summary = omniglot.train(config, GlyphData(config))
        return summary["evaluation"], time.perf_counter() - start


def main(argv):
    import hebbcli

    hebbcli.import_tensorflow()
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
