"""Train a plastic network to store natural images and complete a half-erased one.

The paper's second task (Miconi, Clune & Stanley 2018, section 4.2): 3 grayscale
CIFAR-10 images (32 x 32 = 1,024 pixels) per episode, each shown 3 times in a
random order for 20 steps with 3 zero steps after it; then one of them with its
top or bottom half zeroed, for 3 steps. 1,025 neurons (the pixels and a bias
neuron), clamp input mode. Training episodes come from CIFAR-10's `train`
split, evaluation episodes only from `test`.

The defaults train fast: 1,000 episodes of batch 1, Adam with a learning rate
of 3e-4 decayed to 0 along half a cosine (minutes on a 2-core CPU; on
photographs its held-out erased-half error is 0.47x that of the better fill
baseline; the paper's constant 1e-4 gives 0.53x in the same time: docs/cifar.md).
`--recipe paper` trains as the paper did: Adam 1e-4, constant, 20,000 episodes.

    python -m trainers.cifar                               # the fast recipe
    python -m trainers.cifar --recipe paper                # the paper's settings
    python -m trainers.cifar --data_dir /data/tfds --nodownload
    python -m trainers.cifar --eval_only --model runs/cifar/model.keras

See docs/cifar.md for data without internet access, the outputs and figures.
"""

import hebbcli

hebbcli.import_tensorflow()  # first: TensorFlow's start-up noise stays hidden

import dataclasses
import json
import math
import os

import keras
import numpy as np
import tensorflow as tf
from absl import flags

import hebbkeras
from hebbkeras.tasks import episodes, images
from trainers import cifar_figures, completion, evaluation, figures, files, loop
from trainers.config import (
    define_data_flags,
    define_flags,
    from_flags,
    positive_int,
    setting,
    with_data_flags,
)

LOG_KEYS = ("loss", "erased_mse", "zero_fill_mse", "mean_fill_mse")
EVAL_KEYS = ("loss",) + LOG_KEYS[1:]
EVAL_SEED = 1_000_003  # evaluation episodes use seed + EVAL_SEED: never the training stream
FIGURES = ("episodes.png", "weights.png", "learning_curve.png")
SPLITS = ("train", "test")  # of tfds's cifar10


@dataclasses.dataclass
class CifarConfig(completion.CompletionConfig):
    """The image task: the paper's network and episodes; the defaults train with the fast
    recipe (Adam 3e-4 decayed to 0 along a cosine over 1,000 episodes), `--recipe paper` with
    the paper's (Adam 1e-4, 20,000 episodes). The normalization is the original code's."""

    pattern_size: int = images.PIXELS
    schedule: episodes.Schedule = episodes.Schedule(
        num_items=3, presentation_steps=20, gap_steps=3, presentations=3, query_steps=3)
    learning_rate: float = 3e-4
    episodes: int = 1000
    run_dir: str = "runs/cifar"
    normalization: str = setting(
        "centered",
        "centered (original code): each grayscale image minus its mean, divided by its largest "
        "absolute value, in [-1, 1]. unit (paper): plain grayscale in [0, 1]. Centred suits clamp "
        "mode, where a zero pixel is not clamped and reads as unknown like the erased half: in "
        "[0, 1] form every black pixel would be unknown too.", choices=images.NORMALIZATIONS)
    train_split: str = setting("train", "tfds split that training episodes draw images from.")
    eval_split: str = setting(
        "test", "tfds split that evaluation episodes draw images from (never seen in training by "
        "default).")
    eval_every: int = setting(
        1000, "Evaluate on --eval_split every this many training episodes (and at the end).",
        positive_int)
    eval_episodes: int = setting(
        50, "Episodes per evaluation (the same fixed episodes each time).", positive_int)
    figure_episodes: int = setting(6, "Rows (test episodes) of the episodes.png figure.", positive_int)
    learning_rate_decay: str = setting(
        "cosine", "none: a constant learning rate (the paper). cosine: from --learning_rate down to "
        "0 along half a cosine over the run's gradient steps.", choices=("none", "cosine"))

    RECIPES = {"paper": (
        "the paper's settings (Adam 1e-4, batch 1, 20,000 episodes: hours on a 2-core CPU).",
        {"learning_rate": 1e-4, "batch_size": 1, "episodes": 20000, "learning_rate_decay": "none"})}
    ITEM = "image"
    FLAG_NAMES = {"num_items": "num_images"}
    NO_FLAGS = ("pattern_size", "model")  # --model is the saved model of --eval_only

    def check(self):
        if self.pattern_size != images.PIXELS:
            raise ValueError(
                f"pattern_size={self.pattern_size}: CIFAR images have {images.PIXELS} pixels.")
        for name in ("train_split", "eval_split"):  # tfds's own error names no flag
            value = getattr(self, name)
            for part in value.split("+"):
                if part.split("[")[0].strip() not in SPLITS:
                    raise ValueError(
                        f"{name}={value!r}: CIFAR-10 has the splits {' and '.join(SPLITS)} "
                        "(a slice such as test[:1000] or a sum such as train+test works too).")


class CifarData:
    """Loads each split once (`images.load_cifar10`) and makes episode datasets."""

    def __init__(self, config, data_dir=None, download=True, manual_dir=None):
        self.config = config
        self.kwargs = dict(data_dir=data_dir, download=download, manual_dir=manual_dir)
        self._cache = {}

    def images(self, split):
        if split not in self._cache:
            self._cache[split] = images.load_cifar10(
                split, self.config.normalization, **self.kwargs)
        return self._cache[split]

    def train_dataset(self, config, input_context=None, start=0):
        """Episodes of the training split only."""
        return images.image_dataset(
            self.images(config.train_split), config.schedule, seed=config.seed,
            batch_size=config.batch_size, input_context=input_context, start=start)

    def eval_dataset(self, config, batch_size):
        """The same fixed episodes of the evaluation split at every evaluation."""
        return images.image_dataset(
            self.images(config.eval_split), config.schedule,
            seed=config.seed + EVAL_SEED, batch_size=batch_size)


def evaluate(model, dataset, count, schedule):
    """Means of the loss and error measures over `count` episodes of `dataset`.

    Returns `(means, rows)`: `rows` are `(stored, query, reconstruction, target)`
    of each episode for `cifar_figures.episode_grid`; the stored images are read off
    the first presentation of each item.
    """
    values = {k: [] for k in EVAL_KEYS}
    rows = []
    block = schedule.presentation_steps + schedule.gap_steps
    for x, y in dataset:
        pred = model.predict_on_batch(x)
        for key, fn in zip(EVAL_KEYS, (images.image_summed_squared_error,) + images.IMAGE_METRICS):
            values[key].append(np.asarray(fn(y, tf.convert_to_tensor(pred))))
        x, y, pred = np.asarray(x), np.asarray(y), np.asarray(pred)
        p = y.shape[-1] // 3
        for b in range(len(x)):
            stored = x[b, [j * block for j in range(schedule.num_items)], :p]
            rows.append((stored, x[b, -1, :p], pred[b, :p], y[b, :p]))
        if len(rows) >= count:
            break
    means = {k: float(np.mean(np.concatenate(v)[:count])) for k, v in values.items()}
    return means, rows[:count]


def plastic_weights(model):
    """`{"w": ..., "alpha": ...}` of the model's PlasticRNN (alpha only if it is a matrix)."""
    for layer in model.layers:
        if isinstance(layer, hebbkeras.PlasticRNN):
            out = {"w": np.asarray(layer.w)}
            if layer.alpha is not None and len(layer.alpha.shape) == 2:
                out["alpha"] = np.asarray(layer.alpha)
            return out
    return {}


def write_figures(model, config, rows, run_dir, step, logs_dir=None):
    """Writes episodes.png, weights.png and learning_curve.png; logs them to TensorBoard.

    The learning curve is drawn from the CSV logs in `logs_dir` (default
    `run_dir`) and left out if there are none.
    """
    low = -1.0 if config.normalization == "centered" else 0.0
    drawn = {"episodes": cifar_figures.episode_grid(
        rows[: config.figure_episodes], low=low, high=1.0,
        title=f"Episodes of the {config.eval_split} split")}
    weights = plastic_weights(model)
    if weights:
        drawn["weights"] = cifar_figures.weight_matrices(weights)
    curve = cifar_figures.cifar_learning_curve(logs_dir or run_dir)
    if curve is not None:
        drawn["learning_curve"] = curve
    return figures.publish(drawn, run_dir, step)


class Evaluation(evaluation.PeriodicEvaluation):
    """Erased-half MSE and its baselines on the evaluation split (the same fixed episodes
    each time); at the end, the figures."""

    def __init__(self, config, data, run_dir):
        super().__init__(config, run_dir, EVAL_KEYS)
        self.data = data

    def evaluate(self):
        data = self.data.eval_dataset(self.config, min(self.config.eval_episodes, 10))
        return evaluate(self.model, data, self.config.eval_episodes, self.config.schedule)

    def finish(self, rows, step):
        write_figures(self.model, self.config, rows, self.run_dir, step)

    def describe(self, means):
        return f"{self.config.eval_split}, {self.config.eval_episodes} episodes: {measures_line(means)}"


def measures_line(means):
    return (f"erased-half MSE {means['erased_mse']:.4f}; baselines: zero fill "
            f"{means['zero_fill_mse']:.4f}, mean fill {means['mean_fill_mse']:.4f}")


def json_dump(values):
    return json.dumps(values, indent=2, sort_keys=True) + "\n"


class CifarTask(evaluation.EvaluatedTask):
    """Image episodes of the training split; erased-half MSE against two baselines."""

    log_keys = LOG_KEYS
    outputs = evaluation.EvaluatedTask.outputs + FIGURES
    Evaluation = Evaluation

    def model(self):
        return completion.build_model(self.config)

    def dataset(self, config, input_context=None, start=0):
        return self.data.train_dataset(config, input_context, start)

    def optimizer(self):
        """Adam at `learning_rate`, decayed as `learning_rate_decay` says."""
        rate, config = self.config.learning_rate, self.config
        if config.learning_rate_decay == "cosine":
            steps = math.ceil(config.episodes / config.batch_size)
            rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=steps)
        return keras.optimizers.Adam(rate)

    def compile_args(self):
        return {"loss": images.image_summed_squared_error, "metrics": list(images.IMAGE_METRICS)}

    def summary_line(self, summary):
        return (f"{self.config.eval_split} ({self.config.eval_episodes} episodes): "
                f"{measures_line(summary['evaluation'])}")


def train(config, data):
    """Trains with the shared loop; returns its summary, with the final evaluation."""
    config.validate()
    data.images(config.eval_split)  # fail before training if any split is missing
    data.images(config.train_split)
    return loop.run(CifarTask(config, data))


def eval_only(model_path, config, data, out_dir):
    """Evaluates a saved model on `config.eval_split` and writes the figures to `out_dir`."""
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"No model file at {model_path}; pass --model PATH/model.keras.")
    model = keras.models.load_model(model_path, compile=False)
    batch = min(config.eval_episodes, 10)
    means, rows = evaluate(model, data.eval_dataset(config, batch), config.eval_episodes, config.schedule)
    os.makedirs(out_dir, exist_ok=True)
    files.write_text(os.path.join(out_dir, "evaluation.json"), json_dump({"model": model_path, **means}))
    paths = write_figures(model, config, rows, out_dir, 0, logs_dir=os.path.dirname(model_path))
    return means, paths


def _eval_only_config(model_path):
    """The saved run's config (schedule, normalization), with this command's data and eval flags."""
    saved = os.path.join(os.path.dirname(model_path), "config.json")
    config = from_flags(CifarConfig)
    if os.path.exists(saved):
        with open(saved) as f:
            previous = CifarConfig.from_json(f.read())
        keep = ("eval_split", "eval_episodes", "figure_episodes", "verbose")
        config = dataclasses.replace(previous, **{k: getattr(config, k) for k in keep})
    return config.validate()


FLAGS = flags.FLAGS


def define_cli_flags():
    define_flags(CifarConfig)
    define_data_flags(images.CIFAR10)
    flags.DEFINE_bool("eval_only", False, "Do not train: evaluate --model on --eval_split and write its figures.")
    flags.DEFINE_string("model", None, "With --eval_only: the saved model.keras. Its run's config.json, if next to it, sets the schedule and normalization.")
    FLAGS["run_dir"].help = "Directory for logs, figures, backups and the trained model.keras. With --eval_only: where figures go (default: the model's directory)."


def main(argv):
    if FLAGS.eval_only:
        if not FLAGS.model:
            raise ValueError("--eval_only needs --model PATH (a saved model.keras).")
        config = _eval_only_config(FLAGS.model)
    else:
        config = from_flags(CifarConfig)  # train() validates it
    data = CifarData(config, FLAGS.data_dir, FLAGS.download, FLAGS.manual_dir)
    try:
        if FLAGS.eval_only:
            out = FLAGS.run_dir if FLAGS["run_dir"].present else os.path.dirname(FLAGS.model)
            means, paths = eval_only(FLAGS.model, config, data, out)
            print(json_dump(means) + "Figures: " + ", ".join(paths))
            return
        train(config, data)
    except images.DataUnavailableError as e:
        raise with_data_flags(e) from None


if __name__ == "__main__":
    define_cli_flags()
    hebbcli.run(main, errors=(ValueError, FileNotFoundError, images.DataUnavailableError))
