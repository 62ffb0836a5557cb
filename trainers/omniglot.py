"""Train a plastic network to classify characters it has never seen from one example each.

The ICML paper's Omniglot task (Miconi, Clune & Stanley 2018, section 4.3):
5-way 1-shot episodes of 31 x 31 characters, a 4-layer conv embedding (3 x 3,
stride 2, no padding, 64 channels) and a plastic 64 -> 5 softmax readout
(`PlasticDense`, Oja's rule, learned eta) whose output the label drives on the
support steps. Training episodes come from tfds's `train` split (background
alphabets), evaluation episodes from `test` (evaluation alphabets): no
character or alphabet is shared.

The defaults are a recipe that learns in minutes (batch-normalized convs, a
length-normalized embedding, alpha ~ U(0, 1), eta 0.5, cross-entropy, Adam
1e-3 with a cosine decay, batch 32, 160,000 episodes); `--recipe paper` is the
paper's (tanh convs, alpha ~ U(0, 0.01), eta 0.01, binary cross-entropy, Adam
3e-5, batch 1, 5 million episodes), which stays at chance for a long time.

    python -m trainers.omniglot                            # the fast recipe
    python -m trainers.omniglot --recipe paper             # the paper's settings
    python -m trainers.omniglot --model nonplastic         # the baseline without alpha
    python -m trainers.omniglot --data_dir /data/tfds --nodownload
    python -m hebbkeras.tasks.handwriting --data_dir D     # an offline stand-in, then --data_dir D

See docs/omniglot.md for the data, the outputs and the measurements.
"""

import hebbcli

hebbcli.import_tensorflow()  # first: TensorFlow's start-up noise stays hidden

import contextlib
import dataclasses
import math
import os

import keras
import numpy as np
from absl import flags

from hebbkeras import checks
from hebbkeras.layers.plastic_dense import PlasticDense
from hebbkeras.tasks import fewshot, omniglot
from trainers import evaluation, figures, loop, omniglot_figures
from trainers.config import (
    PlasticityConfig,
    define_data_flags,
    define_flags,
    from_flags,
    positive_int,
    setting,
    with_data_flags,
)

EVAL_SEED = 1_000_003  # evaluation episodes use seed + EVAL_SEED: never the training stream
EVAL_KEYS = ("accuracy", "ci_low", "ci_high", "nn_accuracy", "no_trace_accuracy", "loss")
FIGURES = ("episodes.png", "accuracy.png")
Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


@dataclasses.dataclass
class OmniglotConfig(PlasticityConfig):
    """The Omniglot task; the defaults learn fastest here, `--recipe paper` is the paper."""

    ways: int = setting(5, "Classes per episode (N of N-way).", lambda n, v: checks.check_int(n, v, 2))
    shots: int = setting(1, "Support images per class (K of K-shot).", positive_int)
    queries: int = setting(
        1, "Query steps per episode, after the support steps (1 in the paper; with more, each "
        "query's output also enters the trace).", positive_int)
    image_size: int = setting(31, "Side the 105 x 105 images are resized to.", positive_int)
    conv_layers: int = setting(
        4, "3 x 3 stride-2 unpadded conv layers of the embedding (4 take 31 x 31 to 1 x 1).",
        positive_int)
    channels: int = setting(64, "Channels of each conv layer: the embedding width.", positive_int)
    embedding: str = setting(
        "normalized", "normalized: each conv batch-normalized (ReLU between, none after the "
        "last) and the embedding scaled to length sqrt(channels), so the trace's dot products "
        "compare directions. paper: tanh convs, no normalization.",
        choices=("normalized", "paper"))
    model: str = setting(
        "plastic", "plastic: the paper's readout. nonplastic: the same network without alpha "
        "(no trace: it cannot bind a label to an image, the baseline).",
        choices=("plastic", "nonplastic"))
    rule: str = "oja"
    eta: float = 0.5
    trainable_eta: bool = True
    # No plasticity="none": --model names the non-plastic baseline.
    CHOICES = {"plasticity": ("per_connection", "shared"), "rule": ("oja", "hebb")}
    alpha_init: float = setting(
        1.0, "alpha starts uniform in [0, alpha_init] (0.01 in the paper, where the trace's term "
        "in the query's logits starts about 1/500 of the embedding's: see docs/omniglot.md).",
        checks.check_positive)
    loss: str = setting(
        "categorical", "Loss of the query's probabilities: categorical (cross-entropy) or binary "
        "(the paper's binary cross-entropy over the ways).", choices=("categorical", "binary"))
    teacher_scale: float = setting(
        1000.0, "Factor of the label added to the readout's input on support steps.",
        checks.check_positive)
    rotate: bool = setting(
        True, "Turn each class by a random multiple of 90 degrees per training episode (new "
        "classes); evaluation episodes are not rotated.")
    learning_rate: float = 1e-3
    lr_schedule: str = setting(
        "cosine", "cosine: the learning rate falls to 0 over --episodes along a half cosine. "
        "staircase: it is multiplied by --lr_decay every --lr_decay_episodes (the paper).",
        choices=("cosine", "staircase"))
    lr_decay: float = setting(
        0.666, "With --lr_schedule staircase: the learning rate is multiplied by this every "
        "--lr_decay_episodes (1 keeps it).",
        lambda n, v: checks.check_between(n, v, 0.0, 1.0, high_open=False))
    lr_decay_episodes: int = setting(
        1_000_000, "Training episodes between learning-rate decays.", positive_int)
    batch_size: int = 32
    episodes: int = 160_000
    steps_per_epoch: int = 100
    run_dir: str = "runs/omniglot"
    split: str = setting(
        "standard", "standard: train on tfds 'train' (background alphabets), evaluate on 'test' "
        "(evaluation alphabets). pooled: the original code's split, both pooled and the last 100 "
        "characters held out (test alphabets are then partly seen in training).",
        choices=("standard", "pooled"))
    pooled_test_classes: int = setting(
        omniglot.POOLED_TEST_CLASSES, "With --split pooled: the last this many characters are the "
        "test classes (100 in the original code).", positive_int)
    eval_every: int = setting(
        16_000, "Evaluate on held-out classes every this many training episodes (and at the end).",
        positive_int)
    eval_episodes: int = setting(
        1000, "Held-out episodes per evaluation (the same fixed episodes each time).", positive_int)
    figure_episodes: int = setting(4, "Rows (test episodes) of episodes.png.", positive_int)

    RECIPES = {"paper": (
        "the paper's settings (tanh convs, alpha ~ U(0, 0.01), eta 0.01, binary "
        "cross-entropy, Adam 3e-5 times 0.666 every 1,000,000 episodes, batch 1, 5,000,000 "
        "episodes); it stays at chance for a long time: see docs/omniglot.md",
        dict(embedding="paper", alpha_init=0.01, eta=0.01, loss="binary", learning_rate=3e-5,
             lr_schedule="staircase", batch_size=1, episodes=5_000_000, steps_per_epoch=1000,
             eval_every=100_000))}
    HELP = {"jit_compile": "Compile the training step with XLA."}

    def check(self):
        side = self.image_size
        for layer in range(self.conv_layers):
            if side < 3:
                raise ValueError(
                    f"image_size={self.image_size} is too small for conv_layers="
                    f"{self.conv_layers}: layer {layer + 1} gets {side} x {side} pixels, and a "
                    "3 x 3 unpadded conv needs 3. Use fewer conv layers or larger images.")
            side = (side - 3) // 2 + 1

    @property
    def steps(self):
        return self.ways * self.shots + self.queries


def build_model(config):
    """The paper's network: `[images (batch, steps, s, s, 1), labels (batch, steps, ways)]`
    -> the query's probabilities `(batch, ways)` (`(batch, queries, ways)` if queries > 1).

    The embedding layer is named "embedding" (`(batch, steps, channels * side^2)`).
    """
    s = config.image_size
    images = keras.Input((config.steps, s, s, 1), name="images")  # fixed steps: see PlasticDense
    labels = keras.Input((config.steps, config.ways), name="labels")
    x = images
    normalized = config.embedding == "normalized"
    for i in range(config.conv_layers):
        conv = keras.layers.Conv2D(config.channels, 3, strides=2, use_bias=not normalized,
                                   activation=None if normalized else "tanh")
        x = keras.layers.TimeDistributed(conv, name=f"conv{i + 1}")(x)
        if normalized:  # per image, over the batch's images of every step
            x = keras.layers.TimeDistributed(keras.layers.BatchNormalization(),
                                             name=f"norm{i + 1}")(x)
            if i + 1 < config.conv_layers:
                x = keras.layers.Activation("relu", name=f"relu{i + 1}")(x)
    x = keras.layers.TimeDistributed(keras.layers.Flatten(), name="flatten")(x)
    if normalized:  # length sqrt(width): the trace's dot products are scaled cosines
        x = keras.layers.UnitNormalization(name="unit")(x)
        x = keras.layers.Rescaling(float(np.sqrt(x.shape[-1])), name="embedding")(x)
    else:
        x = keras.layers.Identity(name="embedding")(x)
    readout = PlasticDense(
        config.ways, activation="softmax", rule=config.rule, eta=config.eta,
        trainable_eta=config.trainable_eta,
        plasticity="none" if config.model == "nonplastic" else config.plasticity,
        teacher_mode="add", teacher_scale=config.teacher_scale,
        alpha_initializer=keras.initializers.RandomUniform(0.0, config.alpha_init),
        return_sequences=config.queries > 1, name="readout")
    probs = readout([x, labels])
    if config.queries > 1:
        probs = keras.layers.Cropping1D((config.ways * config.shots, 0), name="queries")(probs)
    return keras.Model([images, labels], probs, name="omniglot")


def embedding_model(model):
    """The conv embedding of every step: images -> `(batch, steps, width)`."""
    return keras.Model(model.inputs[0], model.get_layer("embedding").output)


# ------------------------------------------------------------------ measures

def wilson_interval(correct, total, z=Z95):
    """The Wilson score interval `(low, high)` of a proportion `correct / total`.

        p = correct / total,  c = (p + z^2 / 2n) / (1 + z^2 / n),
        h = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n),   (c - h, c + h)

    Unlike the normal approximation it stays inside [0, 1] and is not empty
    at p = 0 or 1 (accuracies near 1 are what this task reaches).
    """
    if total <= 0:
        return math.nan, math.nan
    p, n = correct / total, total
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def nearest_neighbour(embeddings, labels, support):
    """1-NN baseline: each query step's class is that of the nearest support embedding.

    Args:
        embeddings: `(batch, steps, width)`; labels `(batch, steps, ways)` one-hot on
            the first `support` steps; the other steps are queries.

    Returns:
        `(batch, steps - support)` predicted class positions (Euclidean distance;
        ties go to the earlier support step).
    """
    e = np.asarray(embeddings, np.float64)
    d = ((e[:, support:, None, :] - e[:, None, :support, :]) ** 2).sum(-1)
    nearest = d.argmin(-1)  # (batch, queries)
    classes = np.asarray(labels)[:, :support].argmax(-1)  # (batch, support)
    return np.take_along_axis(classes, nearest, axis=1)


@contextlib.contextmanager
def without_trace(model):
    """The model with its readout's `alpha` set to zero, restored on exit.

    The query's output is then `softmax(e_q @ w + b)`: what the network knows
    without the trace written on the support steps (the trace ablation). A
    non-plastic model is left as it is.
    """
    alpha = model.get_layer("readout").alpha
    if alpha is None:
        yield model
        return
    kept = alpha.numpy()
    alpha.assign(np.zeros_like(kept))
    try:
        yield model
    finally:
        alpha.assign(kept)


def query_loss(probs, truth, config):
    """The training loss of each episode, from `probs` `(batch, queries, ways)`."""
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    onehot = np.eye(config.ways)[truth]
    if config.loss == "categorical":
        return -(onehot * np.log(p)).sum(-1).mean(-1)
    return -(onehot * np.log(p) + (1 - onehot) * np.log(1 - p)).mean((1, 2))


def evaluate(model, dataset, count, config, embed=None):
    """Accuracy (with its Wilson 95% interval), loss, the 1-NN baseline and the trace
    ablation over `count` episodes.

    `embed`: `embedding_model(model)`, made once by a caller that evaluates
    often (a new model would trace its predict function again).
    Returns `(means, rows)`; `rows` are `omniglot_figures.fewshot_episodes` rows of the
    first episodes.
    """
    embed = embed or embedding_model(model)
    support = config.ways * config.shots
    correct = nn_correct = ablated_correct = total = 0
    losses, rows = [], []
    for (x, labels), target in dataset:
        probs = np.asarray(model.predict_on_batch([x, labels])).reshape(len(x), -1, config.ways)
        with without_trace(model):
            ablated = np.asarray(model.predict_on_batch([x, labels])).reshape(probs.shape)
        truth = np.asarray(target).reshape(len(x), -1, config.ways).argmax(-1)
        nn = nearest_neighbour(embed.predict_on_batch(x), labels, support)
        take = min(len(x), count - total // config.queries)
        correct += int((probs.argmax(-1) == truth)[:take].sum())
        ablated_correct += int((ablated.argmax(-1) == truth)[:take].sum())
        nn_correct += int((nn == truth)[:take].sum())
        total += take * config.queries
        losses.extend(query_loss(probs[:take], truth[:take], config))
        x, labels = np.asarray(x), np.asarray(labels)
        for b in range(take):
            if len(rows) < config.figure_episodes:
                rows.append((x[b, :support, ..., 0], labels[b, :support].argmax(-1),
                             x[b, support, ..., 0], int(truth[b, 0]), probs[b, 0]))
        if total >= count * config.queries:
            break
    low, high = wilson_interval(correct, total)
    means = {"accuracy": correct / total, "ci_low": low, "ci_high": high,
             "nn_accuracy": nn_correct / total, "no_trace_accuracy": ablated_correct / total,
             "loss": float(np.mean(losses)), "queries_scored": total}
    return means, rows


def classify_requests(images, labels, config, count, batch_size=100):
    """The held-out evaluation episodes as requests of the served `classify` signature.

    Args:
        images: the raw uint8 images `(n, h, w)` or `(n, h, w, c)` of the evaluation
            classes, in the order `OmniglotData` loads them (the same order gives
            the same episodes as `evaluate`).
        labels: their `(n,)` classes.
        count: how many episodes.

    Yields `(request, truth)`: `{support, support_labels, query}` numpy arrays of
    up to `batch_size` episodes (the first query of each), and the query's true class.
    """
    support = config.ways * config.shots
    data = fewshot.episode_dataset(images, labels, config.ways, config.shots, config.queries,
                                   seed=config.seed + EVAL_SEED, batch_size=batch_size)
    done = 0
    for (x, onehot), target in data:
        take = min(batch_size, count - done)
        x = np.asarray(x)[:take].astype(np.uint8)  # the uint8 values, cast to float and back
        onehot = np.asarray(onehot)[:take]
        truth = np.asarray(target).reshape(len(x), -1, config.ways)[:take, 0].argmax(-1)
        yield ({"support": x[:, :support], "support_labels": onehot[:, :support].argmax(-1),
                "query": x[:, support]}, truth)
        done += take
        if done >= count:
            return


# ------------------------------------------------------------------ data

class OmniglotData:
    """The training and evaluation images (`hebbkeras.tasks.omniglot`), loaded once."""

    def __init__(self, config, data_dir=None, download=True, manual_dir=None):
        self.config = config
        self.kwargs = dict(data_dir=data_dir, download=download, manual_dir=manual_dir)
        self._splits = None

    def splits(self):
        """`((train_images, train_labels), (eval_images, eval_labels))`, disjoint classes."""
        if self._splits is None:
            size = self.config.image_size
            train = omniglot.load_omniglot("train", size, **self.kwargs)
            test = omniglot.load_omniglot("test", size, **self.kwargs)
            if self.config.split == "pooled":
                train, test = omniglot.pooled_split(train, test, self.config.pooled_test_classes)
            self._splits = (train, test)
        return self._splits

    def train_dataset(self, config, input_context=None, start=0):
        images, labels = self.splits()[0]
        return fewshot.episode_dataset(
            images, labels, config.ways, config.shots, config.queries, rotate=config.rotate,
            seed=config.seed, batch_size=config.batch_size, input_context=input_context,
            start=start)

    def eval_dataset(self, config, batch_size):
        """The same fixed held-out episodes at every evaluation (never rotated)."""
        images, labels = self.splits()[1]
        return fewshot.episode_dataset(
            images, labels, config.ways, config.shots, config.queries,
            seed=config.seed + EVAL_SEED, batch_size=batch_size)


# ------------------------------------------------------------------ evaluation

def write_figures(config, rows, run_dir, step):
    """episodes.png and accuracy.png (from eval.csv), also logged to TensorBoard."""
    drawn = {"episodes": omniglot_figures.fewshot_episodes(
        rows, title=f"Held-out {config.ways}-way {config.shots}-shot episodes")}
    evals = figures.read_csv(os.path.join(run_dir, "eval.csv"))
    if len(evals.get("accuracy", ())):
        e = evals["episode"]
        network = f"{config.model} network (band: 95% Wilson interval)"
        baselines = {"1-NN on its embeddings": (e, evals["nn_accuracy"])}
        if config.model == "plastic" and "no_trace_accuracy" in evals:
            baselines["trace zeroed (alpha = 0)"] = (e, evals["no_trace_accuracy"])
        baselines["chance"] = (e, np.full(len(e), 1 / config.ways))
        drawn["accuracy"] = figures.learning_curve(
            {network: (e, evals["accuracy"])}, baselines=baselines,
            bands={network: (evals["ci_low"], evals["ci_high"])},
            title=f"Held-out {config.ways}-way {config.shots}-shot accuracy",
            ylabel="query accuracy")
    return figures.publish(drawn, run_dir, step)


class Evaluation(evaluation.PeriodicEvaluation):
    """Accuracy on held-out classes (with its interval and the 1-NN baseline); at the
    end, the figures."""

    def __init__(self, config, data, run_dir):
        super().__init__(config, run_dir, EVAL_KEYS)
        self.data = data
        self.embed = None

    def evaluate(self):
        data = self.data.eval_dataset(self.config, min(self.config.eval_episodes, 100))
        if self.embed is None:
            self.embed = embedding_model(self.model)
        return evaluate(self.model, data, self.config.eval_episodes, self.config, self.embed)

    def finish(self, rows, step):
        write_figures(self.config, rows, self.run_dir, step)

    def describe(self, means):
        return f"held-out classes: {measures_line(means, self.config)}"


def measures_line(means, config):
    return (f"accuracy {means['accuracy']:.4f} (95% Wilson CI {means['ci_low']:.4f}-"
            f"{means['ci_high']:.4f}, {means['queries_scored']} queries); 1-NN on embeddings "
            f"{means['nn_accuracy']:.4f}; trace zeroed (alpha = 0) {means['no_trace_accuracy']:.4f}; "
            f"chance {1 / config.ways:.4f}")


class OmniglotTask(evaluation.EvaluatedTask):
    """Few-shot episodes of the training classes; accuracy on held-out classes."""

    log_keys = ("loss", "accuracy")
    summary_window = 1000
    outputs = evaluation.EvaluatedTask.outputs + FIGURES
    Evaluation = Evaluation

    def model(self):
        return build_model(self.config)

    def dataset(self, config, input_context=None, start=0):
        return self.data.train_dataset(config, input_context, start)

    def optimizer(self):
        c = self.config
        if c.lr_schedule == "cosine":
            schedule = keras.optimizers.schedules.CosineDecay(
                c.learning_rate, decay_steps=max(1, c.episodes // c.batch_size))
        else:
            schedule = keras.optimizers.schedules.ExponentialDecay(
                c.learning_rate, decay_steps=max(1, c.lr_decay_episodes // c.batch_size),
                decay_rate=c.lr_decay, staircase=True)
        return keras.optimizers.Adam(schedule)

    def compile_args(self):
        loss = (keras.losses.CategoricalCrossentropy() if self.config.loss == "categorical"
                else keras.losses.BinaryCrossentropy())
        return {"loss": loss,
                "metrics": [keras.metrics.CategoricalAccuracy(name="accuracy")]}

    def summary_line(self, summary):
        return (f"held-out {self.config.ways}-way {self.config.shots}-shot "
                f"{measures_line(summary['evaluation'], self.config)}")


def train(config, data):
    """Trains with the shared loop; returns its summary, with the final evaluation."""
    config.validate()
    data.splits()  # fail before training if the data is missing
    for what, episodes in (("training", lambda: data.train_dataset(config)),
                           ("held-out", lambda: data.eval_dataset(config, 1))):
        try:  # before the first step: e.g. more ways than held-out classes
            episodes()
        except ValueError as e:
            raise ValueError(f"the {what} classes (--split {config.split}) cannot make "
                             f"{config.ways}-way {config.shots}-shot episodes: {e}") from None
    return loop.run(OmniglotTask(config, data))


FLAGS = flags.FLAGS


def define_cli_flags():
    define_flags(OmniglotConfig)
    define_data_flags(omniglot.OMNIGLOT)


def main(argv):
    config = from_flags(OmniglotConfig)  # train() validates it
    data = OmniglotData(config, FLAGS.data_dir, FLAGS.download, FLAGS.manual_dir)
    try:
        train(config, data)
    except omniglot.DataUnavailableError as e:
        raise with_data_flags(e) from None


if __name__ == "__main__":
    define_cli_flags()
    hebbcli.run(main, errors=(ValueError, FileNotFoundError, omniglot.DataUnavailableError))
