"""Seconds per training step of PlasticDense, side by side with the same layer in plain PyTorch.

    python -m benchmarks.dense_speed                        # dense and readout, batch 1, 3 rounds
    python -m benchmarks.dense_speed --paths fused,keras_ops --rounds 5
    python -m benchmarks.dense_speed --before 5f01d50       # also hebbkeras/ at that commit

Tasks (`--tasks`):
    dense    a layer users would write: `PlasticDense(256, activation="tanh")`
             (Hebb's rule, eta 0.01 fixed) over 100 steps of 256 inputs, the mean
             squared error of the last step's output.
    readout  the Omniglot trainer's readout (`trainers.omniglot`, its default
             recipe): 64 -> 5 softmax, Oja's rule, learned eta 0.5, alpha ~ U(0, 1),
             the label added x1000 on the 5 support steps, cross-entropy of the
             query's (6th step's) probabilities. The fused row also times the whole
             Omniglot training step (conv embedding + this readout) at the same
             batch, so the plasticity's share of it shows.

The fused row also times the same model with `plasticity="none"` (no trace:
what Keras's `train_on_batch`, the loss and Adam cost at this size: the
"non-plastic" column); "plasticity's share" is (ours - that) / the Omniglot step.

Each side is one training step as a user runs it: ours is `model.train_on_batch`
of a Keras model `Input -> PlasticDense` (Adam); the reference
(`benchmarks.reference_torch_dense`) is forward, autograd through the episode
and Adam in PyTorch (`--reference_threads` threads). Every variant runs in its
own process; the variants run in `--rounds` rounds, each round every variant
once (reference first), so reference and ours alternate and share the machine's
mood. A round's ratio is its reference time over ours (above 1: ours is faster);
each time is the median of the steps timed for about `--seconds` in that process.
Paths: "fused" is the layer's default (`hebbkeras.kernels.dense_fused` on
TensorFlow), "keras_ops" autodiff through `ops.dense_step` (`use_fused=False`);
with `--before COMMIT`, "before" is the fused path of `hebbkeras/` at that commit
(`git archive`), in the same rounds.
"""

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks.reference_torch_dense import timed

flags.DEFINE_list("tasks", ["dense", "readout"],
                  "dense (256 -> 256, T = 100, tanh, Hebb) and/or readout (the Omniglot "
                  "trainer's 64 -> 5 Oja readout).")
flags.DEFINE_list("paths", ["fused"],
                  "Our paths: fused (the default) and/or keras_ops (use_fused=False).")
flags.DEFINE_integer("batch", 1, "Episodes per training step.")
flags.DEFINE_integer("rounds", 3, "Rounds: each runs every variant once, reference first.")
flags.DEFINE_float("seconds", 1.0, "Seconds of timed steps per variant and round (at least 3 "
                   "steps, after 2 warm-up steps).")
flags.DEFINE_integer("reference_threads", 2, "torch.set_num_threads of the reference.")
flags.DEFINE_bool("omniglot_step", True,
                  "With the readout: also time the whole Omniglot training step (ours).")
flags.DEFINE_string("before", None, "A commit whose hebbkeras/ also runs (git archive), its fused "
                    "path as path 'before', so before and after alternate in one run.")
flags.DEFINE_string("variant", None, "Internal: run one variant (JSON) and print its timings.")
FLAGS = flags.FLAGS


def task_settings(task):
    """The layer's settings of a task: widths, steps and what both sides need to build it."""
    if task == "dense":
        return dict(width=256, units=256, steps=100, activation="tanh", rule="hebb",
                    eta=0.01, trainable_eta=False, alpha_max=0.01, teacher=False, loss="mse")
    if task != "readout":
        raise ValueError(f"unknown task {task!r}; choose from dense, readout")
    from trainers import omniglot  # the trainer's defaults, not a copy of them

    config = omniglot.OmniglotConfig()
    return dict(width=config.channels, units=config.ways, steps=config.steps,
                activation="softmax", rule=config.rule, eta=config.eta,
                trainable_eta=config.trainable_eta, alpha_max=config.alpha_init,
                teacher=True, loss=config.loss)


def make_data(task, batch, path):
    """Random episodes of the task, saved as an .npz of `x`, `target` (and `teacher`)."""
    import numpy as np

    s = task_settings(task)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, s["steps"], s["width"])).astype(np.float32)
    arrays = {}
    if s["teacher"]:  # unit-length embeddings x sqrt(width), one-hot labels on the support
        x *= np.sqrt(s["width"]) / np.linalg.norm(x, axis=-1, keepdims=True)
        teacher = np.zeros((batch, s["steps"], s["units"]), np.float32)
        support = s["steps"] - 1
        teacher[:, np.arange(support), np.arange(support) % s["units"]] = 1.0
        arrays["teacher"] = teacher
        arrays["target"] = np.eye(s["units"], dtype=np.float32)[rng.integers(0, s["units"], batch)]
    else:
        arrays["target"] = rng.uniform(-0.5, 0.5, (batch, s["units"])).astype(np.float32)
    np.savez(path, x=x, **arrays)


def ours_model(task, fused, s, plasticity=None):
    """`Input(s) -> PlasticDense` as the task configures it, compiled with Adam
    (`plasticity="none"`: the same layer without a trace, Keras's own cost)."""
    import keras

    from hebbkeras.layers.plastic_dense import PlasticDense

    x = keras.Input((s["steps"], s["width"]))
    if task == "readout":  # the trainer's own layer, through its config
        from trainers import omniglot

        built = omniglot.build_model(omniglot.OmniglotConfig()).get_layer("readout")
        config = dict(built.get_config(), use_fused=fused)
        plasticity = plasticity or config["plasticity"]
        layer = PlasticDense.from_config(dict(config, plasticity=plasticity))
        labels = keras.Input((s["steps"], s["units"]))
        model = keras.Model([x, labels], layer([x, labels]))
        loss = keras.losses.CategoricalCrossentropy()
    else:
        layer = PlasticDense(s["units"], activation=s["activation"], rule=s["rule"],
                             eta=s["eta"], trainable_eta=s["trainable_eta"],
                             plasticity=plasticity or "per_connection", use_fused=fused)
        model = keras.Model(x, layer(x))
        loss = "mse"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    return model


def run_variant(spec):
    """In a child process: the variant's median training step (and the Omniglot step's)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if spec.get("tree"):  # hebbkeras from that commit
        sys.path.insert(0, spec["tree"])
        import hebbkeras

        if not hebbkeras.__file__.startswith(spec["tree"]):
            raise RuntimeError(f"hebbkeras came from {hebbkeras.__file__}, not {spec['tree']}")
    s = task_settings(spec["task"])
    if spec["path"] == "reference":  # no TensorFlow in this process
        from benchmarks import reference_torch_dense

        return reference_torch_dense.run(dict(spec, **s))
    import numpy as np

    with np.load(spec["data"]) as data:
        x, target = data["x"], data["target"]
        inputs = [x, data["teacher"]] if "teacher" in data else x
    fused = spec["path"] in ("fused", "before")
    model = ours_model(spec["task"], fused, s)
    result = {"train": timed(lambda: model.train_on_batch(inputs, target), spec["seconds"])}
    if spec["path"] == "fused":
        plain = ours_model(spec["task"], fused, s, plasticity="none")
        result["nonplastic"] = timed(lambda: plain.train_on_batch(inputs, target),
                                     spec["seconds"] / 2)
    if spec.get("omniglot_step"):
        result["omniglot_step"] = omniglot_step(len(x), fused, spec["seconds"])
    return result


def omniglot_step(batch, fused, seconds):
    """The median seconds of the Omniglot trainer's training step (its default recipe) at
    `batch`, on random episodes (the time does not depend on the pixels)."""
    import numpy as np

    from trainers import omniglot

    config = omniglot.OmniglotConfig(batch_size=batch)
    task = omniglot.OmniglotTask(config, data=None)
    model = task.model()
    model.get_layer("readout").use_fused = fused
    model.compile(optimizer=task.optimizer(), **task.compile_args())
    rng = np.random.default_rng(0)
    s = config.image_size
    images = rng.random((batch, config.steps, s, s, 1), np.float32)
    labels = np.zeros((batch, config.steps, config.ways), np.float32)
    labels[:, np.arange(config.ways), np.arange(config.ways)] = 1
    target = np.eye(config.ways, dtype=np.float32)[rng.integers(0, config.ways, batch)]
    return timed(lambda: model.train_on_batch([images, labels], target), seconds)


def measure(spec):
    """Runs a variant in a fresh process; its result dict (`error` if it failed)."""
    cmd = [sys.executable, "-m", "benchmarks.dense_speed", "--variant", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return {"error": (lines or ["failed"])[-1][:200]}


def before_tree(commit, scratch):
    """A directory holding `hebbkeras/` of `commit` (`git archive`), or exit with an error."""
    tree = os.path.join(scratch, "before")
    os.makedirs(tree)
    archive = subprocess.run(["git", "archive", commit, "hebbkeras"], capture_output=True)
    if archive.returncode:
        sys.exit(f"error: git archive {commit} failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
    return tree


def load():
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv):
    if FLAGS.variant:
        print("RESULT " + json.dumps(run_variant(json.loads(FLAGS.variant))), flush=True)
        return
    for task in FLAGS.tasks:
        if task not in ("dense", "readout"):
            sys.exit(f"error: unknown task {task!r}; choose from dense, readout")
    for path in FLAGS.paths:
        if path not in ("fused", "keras_ops"):
            sys.exit(f"error: unknown path {path!r}; choose from fused, keras_ops")
    if FLAGS.rounds < 1 or FLAGS.batch < 1 or FLAGS.seconds <= 0:
        sys.exit("error: --rounds and --batch must be at least 1, --seconds above 0")
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average {load()} (1, 5, 15 min) on "
          f"{os.cpu_count()} cores; batch {FLAGS.batch}; reference threads "
          f"{FLAGS.reference_threads}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hebbkeras_dense_") as scratch:
        tree = FLAGS.before and before_tree(FLAGS.before, scratch)
        for task in FLAGS.tasks:
            data = os.path.join(scratch, f"{task}.npz")
            make_data(task, FLAGS.batch, data)
            paths = ["reference"] + (["before"] if tree else []) + FLAGS.paths
            runs = {p: [] for p in paths}
            for round_ in range(FLAGS.rounds):
                for path in runs:
                    spec = dict(task=task, path=path, data=data, seconds=FLAGS.seconds,
                                threads=FLAGS.reference_threads,
                                tree=tree if path == "before" else None,
                                omniglot_step=task == "readout" and FLAGS.omniglot_step)
                    result = measure(spec)
                    runs[path].append(result)
                    line = json.dumps({k: round(v, 6) if isinstance(v, float) else v
                                       for k, v in result.items()})
                    ref = runs["reference"][-1]
                    if path != "reference" and "train" in result and "train" in ref:
                        line += f"  ratio {ref['train'] / result['train']:.2f}"
                    print(f"  round {round_ + 1}: {task} {path}: {line}  (load {load()})",
                          flush=True)
            rows += summary_rows(task, runs)
    print("\n| task | in -> units | T | B | path | reference s/step | ours s/step | ratio "
          "(median) | ratio per round | x before per round | non-plastic s/step | "
          "Omniglot step s | plasticity's share |")
    print("|" + "---|" * 13)
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average at end {load()}")


def summary_rows(task, runs):
    """The table's rows of a task: per path, the medians and each round's ratios."""
    s = task_settings(task)
    ref = [r.get("train") for r in runs["reference"]]
    rows = []
    for path, results in runs.items():
        if path == "reference":
            continue
        errors = [r["error"] for r in results + runs["reference"] if "error" in r]
        head = [task, f"{s['width']} -> {s['units']}", str(s["steps"]), str(FLAGS.batch), path]
        if errors:
            rows.append(head + [errors[0]] + [""] * 7)
            continue
        ours = [r["train"] for r in results]
        per_round = [a / b for a, b in zip(ref, ours)]
        step = [r["omniglot_step"] for r in results if "omniglot_step" in r]
        plain = [r["nonplastic"] for r in results if "nonplastic" in r]
        base = [r.get("train", math.nan) for r in runs.get("before", [])]
        rows.append(head + [
            f"{statistics.median(ref):.5f}", f"{statistics.median(ours):.5f}",
            f"{statistics.median(per_round):.2f}", " ".join(f"{v:.2f}" for v in per_round),
            " ".join(f"{b / o:.2f}" for b, o in zip(base, ours))
            if base and path != "before" else "-",
            f"{statistics.median(plain):.5f}" if plain else "-",
            f"{statistics.median(step):.4f}" if step else "-",
            f"{statistics.median((o - p) / t for o, p, t in zip(ours, plain, step)):.1%}"
            if step and plain else "-"])
    return rows


if __name__ == "__main__":
    app.run(main)
