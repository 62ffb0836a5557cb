"""Seconds per step of `python -m trainers.binary` against its kernel, and where the rest goes.

    python -m benchmarks.trainer_overhead                # the default binary task (about a minute)
    python -m benchmarks.trainer_overhead --episodes 300 --kernel_steps 40

One process, the trainer's default settings throughout (1,001 neurons, 201 steps,
batch 1, clamped inputs, Adam):

- kernel: the trainer's network (`trainers.completion.build_model`), compiled as
  `trainers.binary` compiles it, trained by `train_on_batch` on the trainer's first
  episode: `--kernel_steps` timed steps after one warm-up step, half of them before
  the trainer's run and half after, so a change of the machine's load reaches both.
  Each is followed by a step of the train function `fit` runs (on the trainer's next
  episode, from its tf.data pipeline), so that these two are compared side by side.
- trainer: `trainers.binary.run` for `--episodes` episodes (its other settings its
  defaults: epochs of 50 steps) in a temporary run directory; its s/step is the
  run's own (`step_seconds` of its summary: the time from the end of the first step,
  which traces and compiles, to the end of the last epoch, over the steps after the
  first; every epoch's logs and backup included).
- RATIO = trainer / kernel (means). On a loaded machine the two see different
  loads; the product of two ratios measured side by side estimates it as well: fit's
  train function / kernel (the median over the alternating pairs of steps) and
  trainer / its own train function (means, within its run).
- where the difference goes: timers around the train function and each callback's
  hooks (installed here, on `keras.callbacks.CallbackList`, only for this run),
  over the steps after the first; "fit loop" is what remains (Keras's epoch loop,
  metric resets, progress); and the episode pipeline alone, episodes per second
  with nothing else running (inside `fit` it runs ahead of the step, on tf.data's
  threads, so it costs the step only the cores it takes).
"""

import collections
import contextlib
import io
import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("episodes", 100, "Episodes of the trainer's run (rounded up to whole epochs).")
flags.DEFINE_integer("kernel_steps", 40, "Timed train_on_batch steps of the kernel (each followed by one of fit's train function), half before and half after the trainer's run.")
flags.DEFINE_integer("data_episodes", 100, "Episodes drawn from the pipeline alone.")
flags.DEFINE_integer("steps_per_epoch", None, "The trainer's --steps_per_epoch (default: its own).")
flags.DEFINE_integer("verbose", 1, "The trainer's --verbose (its default: 1, a progress bar); its output is hidden.")

FLAGS = flags.FLAGS
HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_epoch_begin", "on_epoch_end")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class FitTimers:
    """Accumulates, after the first step, the time of the train function and of each hook.

    Patches `keras.callbacks.CallbackList` while `installed`: the train function's
    time is the gap between the list's `on_train_batch_begin` returning and its
    `on_train_batch_end` being called; each callback's own hooks are wrapped too.
    """

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.step_seconds = []  # of the train function, each step after the first
        self.first_step = None  # from the end of on_train_begin to the end of the first step
        self.train_begin = self.train_end = None  # seconds of the callbacks' on_train_begin, _end
        self._counting = False
        self._begin_done = self._start = self._end = self._train_begun = None

    def timed(self, name, fn):
        def hook(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._end = time.perf_counter()
                if self._counting:
                    self.seconds[name] += self._end - started
        return hook

    @contextlib.contextmanager
    def installed(self):
        import keras

        cls, base = keras.callbacks.CallbackList, keras.callbacks.Callback
        saved = {name: getattr(cls, name)
                 for name in ("__init__", "on_train_begin", "on_train_end", *HOOKS)}

        def init(callback_list, *args, **kwargs):
            saved["__init__"](callback_list, *args, **kwargs)
            for callback in callback_list.callbacks:
                for hook in HOOKS:
                    if getattr(type(callback), hook) is not getattr(base, hook):
                        setattr(callback, hook, self.timed(
                            f"{type(callback).__name__}.{hook}", getattr(callback, hook)))

        list_hooks = {name: self.timed("callback lists", saved[name]) for name in HOOKS}

        def train_begin(callback_list, *args, **kwargs):
            started = time.perf_counter()
            saved["on_train_begin"](callback_list, *args, **kwargs)
            self._train_begun = time.perf_counter()
            self.train_begin = self._train_begun - started

        def train_end(callback_list, *args, **kwargs):
            started = time.perf_counter()
            saved["on_train_end"](callback_list, *args, **kwargs)
            self.train_end = time.perf_counter() - started

        def batch_begin(callback_list, *args, **kwargs):
            list_hooks["on_train_batch_begin"](callback_list, *args, **kwargs)
            self._begin_done = time.perf_counter()

        def batch_end(callback_list, *args, **kwargs):
            if self._counting:
                self.step_seconds.append(time.perf_counter() - self._begin_done)
                self.seconds["train function"] += self.step_seconds[-1]
            list_hooks["on_train_batch_end"](callback_list, *args, **kwargs)
            if self._start is None:  # the first step (tracing, compiling) ends: count from here
                self._start, self._counting = self._end, True
                self.first_step = self._end - self._train_begun

        patches = dict(list_hooks, __init__=init, on_train_begin=train_begin,
                       on_train_end=train_end, on_train_batch_begin=batch_begin,
                       on_train_batch_end=batch_end)
        for name, fn in patches.items():
            setattr(cls, name, fn)
        try:
            yield self
        finally:
            for name, fn in saved.items():
                setattr(cls, name, fn)

    def total(self):
        """Seconds from the end of the first step to the end of the last hook."""
        return self._end - self._start


def kernel_seconds(model, x, y, iterator, steps):
    """Seconds of `steps` `train_on_batch(x, y)` calls, each followed by a call of the
    train function that `fit` runs, on the next episode of `iterator`: `(kernel, fit's)`."""
    kernel, fit = [], []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(x, y)
        kernel.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.train_function(iterator)
        fit.append(time.perf_counter() - started)
    return kernel, fit


def pipeline_seconds(task, config, episodes):
    """Seconds per episode of the trainer's dataset alone (after one warm-up batch)."""
    iterator = iter(task.dataset(config))
    next(iterator)
    started = time.perf_counter()
    for _ in range(episodes // config.batch_size):
        next(iterator)
    return (time.perf_counter() - started) / (episodes // config.batch_size * config.batch_size)


def main(argv):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.perf_counter()
    import hebbcli

    hebbcli.import_tensorflow()
    import keras

    from trainers import binary, completion

    imports = time.perf_counter() - started

    print(f"load average at start: {loadavg()}")
    run_dir = tempfile.mkdtemp(prefix="trainer-overhead-")
    config = binary.BinaryConfig(episodes=FLAGS.episodes, verbose=FLAGS.verbose,
                                 run_dir=os.path.join(run_dir, "binary"))
    if FLAGS.steps_per_epoch:
        config.steps_per_epoch = FLAGS.steps_per_epoch
    task = binary.BinaryTask(config)

    # The kernel: the same network, compiled the same way, on the trainer's first episode.
    x, y = (t.numpy() for t in next(iter(task.dataset(config))))
    keras.utils.set_random_seed(config.seed)
    model = completion.build_model(config)
    model.compile(optimizer=task.optimizer(), jit_compile=config.jit_compile,
                  **task.compile_args())
    iterator = iter(task.dataset(config))
    model.train_on_batch(x, y)  # traces and compiles
    model.train_function(iterator)  # traces fit's function around the same step
    half = max(1, FLAGS.kernel_steps // 2)
    kernel, fit = kernel_seconds(model, x, y, iterator, half)

    timers = FitTimers()
    output = io.StringIO()
    try:
        with timers.installed(), contextlib.redirect_stdout(output):
            summary = binary.run(config)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    more = kernel_seconds(model, x, y, iterator, FLAGS.kernel_steps - half)
    kernel, fit = kernel + more[0], fit + more[1]
    data = pipeline_seconds(task, config, FLAGS.data_episodes)

    k, t = statistics.mean(kernel), summary["step_seconds"]
    steps, total = len(timers.step_seconds), timers.total()
    train_function = timers.seconds["train function"] / steps
    print(f"kernel, train_on_batch ({len(kernel)} steps):  mean {k:.4f} s/step, median "
          f"{statistics.median(kernel):.4f}, min {min(kernel):.4f}")
    print(f"trainer, trainers.binary ({summary['episodes']} episodes, epochs of "
          f"{config.steps_per_epoch} steps), its own step_seconds: {t:.4f} s/step")
    print(f"RATIO trainer / kernel: {t / k:.3f}")
    # Under a changing load the two runs above see different machines; these two
    # ratios are each measured side by side, and their product is the ratio's estimate.
    beside = statistics.median(f / kk for f, kk in zip(fit, kernel))
    beyond = t / train_function
    print(f"  side by side: fit's train function / kernel, alternating step by step (median of "
          f"the pairs): {beside:.3f};"
          f" trainer / its train function, in the run: {beyond:.3f}; product: "
          f"{beside * beyond:.3f}")
    rest = (summary["wall_seconds"] - timers.train_begin - timers.first_step - total
            - timers.train_end)
    print(f"\nthe trainer's run: {summary['wall_seconds']:.1f} s of training: callbacks' "
          f"on_train_begin {timers.train_begin:.2f} s; the first step (tracing, compiling, first "
          f"episode) {timers.first_step:.2f} s; then {steps} steps in {total:.2f} s; callbacks' "
          f"on_train_end {timers.train_end:.2f} s; fit's set-up and the rest {rest:.2f} s. "
          "Per step after the first:")
    hooks = {n: sec for n, sec in timers.seconds.items() if "." in n}
    rows = [(f"train function (step and in-graph next episode; median "
             f"{1000 * statistics.median(timers.step_seconds):.1f} ms, slowest "
             f"{1000 * max(timers.step_seconds):.0f} ms)", timers.seconds["train function"])]
    rows += sorted(((n, sec) for n, sec in hooks.items() if sec / steps >= 5e-5),
                   key=lambda item: -item[1])
    rows.append(("other callback hooks", sum(sec for sec in hooks.values() if sec / steps < 5e-5)))
    rows.append(("callback lists' own work (logs to Python floats)",
                 timers.seconds["callback lists"] - sum(hooks.values())))
    rows.append(("fit loop (the rest: epoch loop, metric resets)",
                 total - timers.seconds["train function"] - timers.seconds["callback lists"]))
    for name, seconds in rows:
        print(f"  {1000 * seconds / steps:8.2f} ms {100 * seconds / total:5.1f}%  {name}")
    print(f"\nepisode pipeline alone: {1000 * data:.2f} ms/episode ({1 / data:.0f} episodes/s); "
          f"start-up before the kernel's first step: {imports:.1f} s of imports")
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    app.run(main)
