"""The fused kernel against autodiff through the cell loop (`use_fused=False`).

Most of this file's time is TensorFlow building graphs, not running them, so
each layer configuration is traced once per session (`traced`: one layer and
one `tf.function` with unknown time, and unknown batch unless it is 1) and
every case with that configuration (other episodes, lengths, batches, eta,
clamped values) runs through it. Graph optimisation (Grappler) is off while
these comparisons first run their functions (`grappler_off`): it takes longer
than running them and changes no result checked here; the tests after them
(unknown batch and time, inside tf.distribute, under XLA) trace their own
functions and run the fused path as users get it, optimised.
"""

import contextlib
import dataclasses
import gc
import itertools
import types
import warnings
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

import hebbkeras
from hebbkeras.kernels import fused
from hebbkeras.kernels.schedule import step_kinds

MODES = ("clamp", "add", "dense")
PLASTIC = ("per_connection", "shared")
RULES = ("hebb", "oja")
TOL = {"float64": 1e-5, "float32": 1e-4}


def episode(mode, n=7, width=4, batch=3, steps=24, seed=0, clamp_scale=1.0):
    """Inputs mixing free, partly clamped, fully clamped and held steps.

    Steps 2-3 clamp every neuron to new values; steps 5-11 hold one pattern
    (the geometric-series shortcut); step 12 clamps every neuron to another
    pattern; the rest mix clamped and free neurons, or are zero. Clamped
    values are +-`clamp_scale`.
    """
    rng = np.random.default_rng(seed)
    in_width = width if mode == "dense" else n
    x = rng.choice([-1.0, 0.0, 1.0], size=(batch, steps, in_width), p=[0.3, 0.4, 0.3])
    if mode == "clamp":
        x[:, 2:4] = rng.choice([-1.0, 1.0], size=(batch, 2, n))
        x[:, 5:12] = rng.choice([-1.0, 1.0], size=(batch, 1, n))
        x[:, 12] = rng.choice([-1.0, 1.0], size=(batch, n))
        x[:, 15:17] = 0.0
        x[..., -1] = 1.0  # the bias neuron
        x = x * clamp_scale
    elif mode == "add":
        x = x * 0.1
    return x


@dataclasses.dataclass(frozen=True)
class Case:
    """One comparison: the layer's options, the episode and the dtype; `tol`
    (relative) and `atol` (times the largest value) override the dtype's tolerance."""

    mode: str
    plasticity: str
    rule: str
    dtype: str = "float64"
    steps: int = 24
    eta: float = 0.5
    n: int = 7
    batch: int = 3
    trainable_eta: bool = True
    clamp_scale: float = 1.0
    tol: float = None
    atol: float = None

    def layer_key(self, use_fused):
        """What the traced graph depends on; the rest are the data it runs on.
        A batch of one changes the fused kernel's graph only (`fused._batch_one`);
        the cell loop is always traced with a trainable eta (see `reference`)."""
        return (self.mode, self.plasticity, self.rule, self.dtype, self.n,
                self.trainable_eta or not use_fused, use_fused and self.batch == 1)


def make(case, use_fused, **kwargs):
    return hebbkeras.PlasticRNN(
        case.n, input_mode=case.mode, plasticity=case.plasticity, rule=case.rule, eta=case.eta,
        trainable_eta=case.trainable_eta, return_sequences=True, return_state=True,
        use_fused=use_fused, dtype=case.dtype, **kwargs,
    )


def set_weights(layer, seed=1):
    """Weights large enough that plasticity matters."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        if v.name != "eta":
            v.assign(rng.normal(0, 0.5, v.shape))


def inputs(case):
    """The episode and a random initial state `[y0, hebb0]` of `case`."""
    x = episode(case.mode, n=case.n, steps=case.steps, batch=case.batch,
                clamp_scale=case.clamp_scale).astype(case.dtype)
    rng = np.random.default_rng(3)
    state = [rng.normal(0, 0.5, (case.batch, case.n)).astype(case.dtype),
             rng.normal(0, 0.5, (case.batch, case.n, case.n)).astype(case.dtype)]
    return x, state


def xla_compiled(concrete):
    """Names of the functions a traced graph runs compiled by XLA: those marked
    `_XlaMustCompile` (TensorFlow compiles them, or fails; it never falls back)."""
    library = concrete.graph.as_graph_def().library.function
    return {f.signature.name for f in library
            if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b}


@pytest.fixture(scope="module", autouse=True)
def fewer_garbage_collections():
    """Tracing allocates millions of short-lived objects; with Python's default
    thresholds the collector walks TensorFlow's large heap over and over
    (about a sixth of the tracing time here)."""
    before = gc.get_threshold()
    gc.set_threshold(50_000, *before[1:])
    yield
    gc.set_threshold(*before)


@contextlib.contextmanager
def grappler_off():
    """Graph optimisation off for the functions first run in this block."""
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {"disable_meta_optimizer": before.get("disable_meta_optimizer", False)})


@dataclasses.dataclass
class Traced:
    """A layer and its traced step, with what happened while tracing: the
    fused kernel's calls (their keyword arguments), whether the native
    kernels were loaded, and the XLA-compiled functions of the graph."""

    layer: object
    run: object
    names: list
    calls: list
    native_loaded: bool
    xla: set


_TRACED = {}


def traced(case, use_fused, kernel="tf", fused_xla=False, flush=None):
    """The `Traced` of `case`'s layer configuration on one path, built once.

    kernel: "native" (`hebbkeras.kernels.native`'s ops) or "tf" (plain TensorFlow
    ops); flush: `fused.ALPHA_FLUSH` while tracing (the native backward
    pass reads it then)."""
    key = (case.layer_key(use_fused), use_fused, kernel, fused_xla, flush)
    if key in _TRACED:
        return _TRACED[key]
    layer = make(case if use_fused else dataclasses.replace(case, trainable_eta=True), use_fused,
                 fused_xla=fused_xla)
    width = 4 if case.mode == "dense" else case.n
    b, n, dtype = (1 if use_fused and case.batch == 1 else None), case.n, case.dtype
    layer.build((b, None, width))
    set_weights(layer)
    eta = layer.eta.value  # the tf.Variable
    ask_eta = use_fused and not case.trainable_eta  # the kernel must say "constant"
    names = [v.name for v in layer.trainable_weights] + ["inputs", "y0", "hebb0"]
    names += ["eta (fixed)"] if ask_eta else []

    @tf.function(input_signature=[
        tf.TensorSpec([b, None, width], dtype),
        [tf.TensorSpec([b, n], dtype), tf.TensorSpec([b, n, n], dtype)],
        [tf.TensorSpec([b, None, n], dtype), tf.TensorSpec([b, n], dtype),
         tf.TensorSpec([b, n, n], dtype)],
    ])
    def run(x, state, projections):
        """Outputs, and gradients of a random projection of all outputs (the
        sequence, the last y and the final trace, so the trace's incoming
        gradient is not zero) w.r.t. the trainable weights, the inputs and
        the initial state; and, for a fixed eta, eta's."""
        with tf.GradientTape() as tape:
            tape.watch([x] + state + ([eta] if ask_eta else []))
            out = layer(x, initial_state=state)
            loss = sum(tf.reduce_sum(o * p) for o, p in zip(out, projections))
        targets = list(layer.trainable_weights) + [x] + state + ([eta] if ask_eta else [])
        return out, tape.gradient(loss, targets)

    calls, loads = [], []
    original_sequence, original_load = fused.plastic_sequence, hebbkeras.kernels.native.load

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original_sequence(*args, **kwargs)

    with contextlib.ExitStack() as stack:
        patch = lambda *a, **k: stack.enter_context(mock.patch.object(*a, **k))  # noqa: E731
        patch(fused, "plastic_sequence", counting)
        patch(hebbkeras.kernels.native, "load", lambda: loads.append(1) or original_load())
        if kernel == "tf":
            patch(hebbkeras.kernels.native, "available", lambda dtype=None: False)
        else:
            assert hebbkeras.kernels.native.available(), (
                "the native kernels did not build (see the warning)")
        if flush is not None:
            patch(fused, "ALPHA_FLUSH", flush)
        concrete = run.get_concrete_function()
    _TRACED[key] = Traced(layer, run, names, calls, bool(loads), xla_compiled(concrete))
    return _TRACED[key]


@pytest.fixture(scope="module", autouse=True)
def free_traced_layers():
    """The traced graphs and their results are kept for this file only."""
    yield
    _TRACED.clear()
    _REFERENCES.clear()


def outputs_and_grads(case, use_fused, seed=2, **path):
    """`case` run through its traced layer: outputs and a dict of gradients
    (see `traced`), and the `Traced`."""
    entry = traced(case, use_fused, **path)
    entry.layer.eta.assign(case.eta)
    x, state = inputs(case)
    rng = np.random.default_rng(seed)
    shapes = [(case.batch, case.steps, case.n), (case.batch, case.n),
              (case.batch, case.n, case.n)]
    projections = [rng.normal(size=s).astype(case.dtype) for s in shapes]
    with grappler_off():
        out, grads = entry.run(tf.constant(x), [tf.constant(s) for s in state],
                               [tf.constant(p) for p in projections])
    assert len(grads) == len(entry.names)
    return [np.asarray(o) for o in out], dict(zip(entry.names, grads)), entry


# The cell loop's results depend only on the case, not on the fused kernel's
# settings (native or plain ops, XLA, alpha's flush size): each is computed
# once per session.
_REFERENCES = {}


def reference(case):
    """The cell loop's outputs and gradients for `case`. Its eta is always
    trainable (one graph for both settings; whether eta is trained changes no
    other number of the cell loop): for a fixed eta, its gradient is dropped."""
    if case not in _REFERENCES:
        out, grads, entry = outputs_and_grads(case, use_fused=False)
        assert not entry.calls and "eta" in grads  # the cell loop, eta trainable
        if not case.trainable_eta:
            del grads["eta"]
        _REFERENCES[case] = out, grads
    return _REFERENCES[case]


def compare(case, kernel="tf", fused_xla=False, flush=None):
    """The fused kernel's outputs and gradients equal the cell loop's; returns
    the fused path's `Traced`, after checking which kernel it traced."""
    out_f, grad_f, entry = outputs_and_grads(case, True, kernel=kernel, fused_xla=fused_xla,
                                             flush=flush)
    assert entry.native_loaded == (kernel == "native")
    assert len(entry.calls) == 1  # the fused kernel ran, once
    assert entry.calls[0]["eta_grad"] is case.trainable_eta
    assert entry.calls[0]["jit_backward"] is fused_xla
    if not case.trainable_eta:  # no gradient for a fixed eta, even when asked for
        assert grad_f.pop("eta (fixed)") is None
    out_c, grad_c = reference(case)
    tol = case.tol or TOL[case.dtype]
    atol = case.atol or tol
    for a, b, name in zip(out_f, out_c, ("ys", "y", "hebb")):
        np.testing.assert_allclose(a, b, rtol=tol, atol=atol * np.abs(b).max(), err_msg=name)
    assert list(grad_f) == list(grad_c)  # the same variables, in the same order
    assert ("eta" in grad_f) == case.trainable_eta
    for name, b in grad_c.items():
        a = grad_f[name]
        assert a is not None and b is not None, name
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(b).max() > 0, name  # the comparison means something
        np.testing.assert_allclose(a, b, rtol=tol, atol=atol * np.abs(b).max(), err_msg=name)
    return entry


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused kernel, to be sure the test exercised it."""
    calls = []
    original = fused.plastic_sequence

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "plastic_sequence", counting)
    return calls


def with_kernels(cases, rule_at):
    """`cases` x {native, tf} for the Hebbian rule; Oja's rule has no native kernel.
    The native cases are skipped where a GPU is visible (see conftest.py)."""
    out = []
    for case in cases:
        out.append(case + ("tf",))
        if case[rule_at] == "hebb":
            out.append(pytest.param(*case, "native", marks=pytest.mark.native_cpu))
    return out


# Every mode, plasticity and rule in float64; float32 for a few (the float32
# kernels are checked against numpy in test_native.py, and the long episodes
# below run in float32).
MATRIX = [c + ("float64",) for c in itertools.product(MODES, PLASTIC, RULES)] + [
    ("clamp", "per_connection", "hebb", "float32"),
    ("dense", "shared", "hebb", "float32"),
    ("add", "per_connection", "oja", "float32"),
]


@pytest.mark.parametrize("mode,plasticity,rule,dtype,kernel", with_kernels(MATRIX, 2))
def test_fused_matches_cell_loop(mode, plasticity, rule, dtype, kernel):
    entry = compare(Case(mode, plasticity, rule, dtype), kernel)
    assert not entry.xla


@pytest.mark.parametrize(
    "mode,plasticity,batch,trainable_eta,rule,kernel",
    with_kernels([c + (r,) for c in [("clamp", "per_connection", 1, False),
                                     ("add", "shared", 1, False),
                                     ("dense", "per_connection", 1, True),
                                     ("clamp", "shared", 2, False)] for r in RULES], 4),
)
def test_batch_one_and_fixed_eta(mode, plasticity, batch, trainable_eta, rule, kernel):
    """The paper's batch of one (2-D products, `fused._batch_one`) and a fixed
    eta (`eta_grad=False`), what a GPU user gets by default."""
    compare(Case(mode, plasticity, rule, batch=batch, trainable_eta=trainable_eta), kernel)


@pytest.mark.parametrize(
    "rule,eta,kernel",
    with_kernels([("hebb", 0.5), ("oja", 0.3), ("hebb", 1.0)], 0),
)
def test_long_episode_with_checkpoints(rule, eta, kernel):
    """400 steps: inversion must be reset from checkpoints to stay accurate."""
    compare(Case("clamp", "per_connection", rule, "float32", steps=400, eta=eta, batch=2),
            kernel)


@pytest.mark.parametrize(
    "mode,rule,kernel",
    with_kernels([("clamp", "hebb"), ("add", "hebb"), ("add", "oja")], 1),
)
def test_long_episode_small_eta_float64(mode, rule, kernel):
    compare(Case(mode, "per_connection", rule, steps=400, eta=0.01, batch=2), kernel)


def test_oja_with_clamped_values_above_one():
    """Oja's decay `1 - eta y^2` is smaller where a clamped |y| > 1, so inverting
    it grows rounding errors faster: the checkpoint interval uses the rate
    `eta * max(1, max x^2)` (here a checkpoint every 2 steps, not every 37)."""
    case = Case("clamp", "per_connection", "oja", "float32", steps=80, eta=0.06, batch=2,
                clamp_scale=3.0)
    compare(case)
    rate = fused._rate(tf.constant(inputs(case)[0]), case.eta, "oja")
    assert int(fused.checkpoint_interval(rate)) == 2 < int(fused.checkpoint_interval(case.eta))


@pytest.mark.native_cpu
@pytest.mark.parametrize("flush", [1, 2, 3, 50])
@pytest.mark.parametrize("mode,plasticity", [("clamp", "per_connection"), ("add", "shared")])
def test_native_alpha_gradient_queue_sizes(flush, mode, plasticity):
    """alpha's gradient terms applied every 1, 2, 3 segments, or only after the
    loop (50 > segments): the queue's replay of later traces is exact."""
    compare(Case(mode, plasticity, "hebb", eta=0.3), "native", flush=flush)


@pytest.mark.native_cpu
@pytest.mark.parametrize("mode,plasticity", [("clamp", "per_connection"), ("add", "shared")])
def test_native_alpha_gradient_applied_per_segment_from_batch_4(mode, plasticity):
    """From `ALPHA_DIRECT_BATCH` (4) episodes on, each segment's alpha-gradient term
    is applied in its own pass (a queue of one slot, chosen at run time where the
    batch is unknown when traced, as here): everything still equals the cell loop."""
    assert fused.ALPHA_DIRECT_BATCH == 4
    assert [fused._alpha_queue(tf.zeros([b, 3])) for b in (1, 3, 4, 32)] == [16, 16, 1, 1]
    compare(Case(mode, plasticity, "hebb", eta=0.3, batch=4), "native")


@pytest.mark.native_cpu
@pytest.mark.parametrize("plasticity", PLASTIC)
@pytest.mark.parametrize("eta,batch,merged_at", [
    (0.15, 3, [5]),  # interval 14: steps 5-11 one segment
    (0.35, 1, [5]),  # interval 5: a checkpoint at step 5, its run cut at step 10
    (0.5, 2, []),    # interval 3: step 6 starts a chunk, nothing merges
])
def test_native_merges_a_patterns_first_step_with_its_held_run(plasticity, eta, batch,
                                                                merged_at):
    """Native path: a clamped step followed by a held run of its pattern in the same
    chunk is one segment (`fused._merged_starts`), forward and backward, and
    everything still equals the cell loop (float64)."""
    case = Case("clamp", plasticity, "hebb", eta=eta, batch=batch)
    c = tf.transpose(tf.constant(inputs(case)[0]), [1, 0, 2])
    interval = fused.checkpoint_interval(fused._rate(c, eta, "hebb"))
    chunks = (case.steps + interval - 1) // interval
    kinds = tf.reshape(step_kinds(c, True, "hebb", interval, chunks)[0], [-1])[:case.steps]
    assert list(np.flatnonzero(fused._merged_starts(kinds, interval))) == merged_at
    compare(case, "native")


@pytest.mark.parametrize("rule,kernel", with_kernels([("hebb",), ("oja",)], 0))
def test_untrainable_eta_gets_no_gradient_but_the_rest_match(rule, kernel):
    """trainable_eta=False: eta is no trainable weight, the fused kernel treats it
    as a constant (no gradient even when asked for explicitly: `compare`), and
    every other gradient equals the cell loop's (rtol 1e-9, atol 1e-12 of the largest)."""
    case = Case("clamp", "per_connection", rule, eta=0.2, trainable_eta=False, tol=1e-9,
                atol=1e-12)
    compare(case, kernel)
    layer = traced(case, True, kernel).layer
    assert [v.name for v in layer.trainable_weights] == ["w", "alpha"]


@pytest.mark.slow
def test_paper_sized_binary_episode():
    """N = 1001, T = 201, the paper's episodes: fused gradients equal the cell loop's."""
    x, y = next(iter(hebbkeras.tasks.episodes.binary_dataset(batch_size=1)))
    grads = []
    for use_fused in (True, False):
        layer = hebbkeras.PlasticRNN(1001, use_fused=use_fused)
        layer.build(x.shape)
        rng = np.random.default_rng(0)
        layer.w.assign(rng.normal(0, 0.01, (1001, 1001)))
        layer.alpha.assign(rng.normal(0, 0.01, (1001, 1001)))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(hebbkeras.summed_squared_error(y, layer(x)))
            return loss, tape.gradient(loss, layer.trainable_weights)

        grads.append(step())
    (loss_f, g_f), (loss_c, g_c) = grads
    np.testing.assert_allclose(loss_f, loss_c, rtol=1e-5)
    for a, b in zip(g_f, g_c):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_checkpoint_interval_bounds_inversion_growth():
    for eta in (0.01, 0.1, 0.5, 0.9, 0.999):
        k = int(fused.checkpoint_interval(eta))
        growth = (1 / (1 - eta)) ** k
        assert k == 1 or growth <= fused.INVERSION_GROWTH * (1 + 1e-9)
        assert k == 1 or growth * (1 / (1 - eta)) > fused.INVERSION_GROWTH  # the largest such k
    assert int(fused.checkpoint_interval(1.0)) == 1  # nothing inverts at eta = 1
    assert int(fused.checkpoint_interval(0.01)) == 229


@pytest.mark.parametrize(
    "kwargs,masked",
    [({"go_backwards": True}, False), ({"unroll": True}, False), ({}, True),
     ({"use_fused": False}, False)],
)
def test_falls_back_to_cell_loop(kwargs, masked, fused_calls):
    x = episode("add", steps=6)
    layer = hebbkeras.PlasticRNN(7, input_mode="add", eta=0.3, return_sequences=True,
                                 dtype="float64", **kwargs)
    mask = np.ones(x.shape[:2], bool) if masked else None
    out = layer(x, mask=mask)
    assert out.shape == (3, 6, 7)
    assert not fused_calls


def test_xla_compiled_call_agrees_with_the_eager_call():
    x = tf.constant(episode("clamp", steps=16), tf.float32)
    layer = hebbkeras.PlasticRNN(7, eta=0.3, return_sequences=True)
    layer.build(x.shape)
    set_weights(layer)
    eager = layer(x)
    jitted = tf.function(layer, jit_compile=True)(x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


def test_unknown_batch_and_time_in_a_traced_function(fused_calls):
    layer = hebbkeras.PlasticRNN(7, input_mode="add", eta=0.3, return_state=True)
    layer.build((None, None, 7))
    set_weights(layer)
    f = tf.function(layer, input_signature=[tf.TensorSpec([None, None, 7], tf.float32)])
    concrete = f.get_concrete_function()
    for shape in ((2, 5, 7), (1, 9, 7)):
        x = np.random.default_rng(0).normal(0, 0.1, shape).astype("float32")
        y, y_last, hebb = concrete(tf.constant(x))
        ref = hebbkeras.PlasticRNN(7, input_mode="add", eta=0.3, return_state=True,
                                   use_fused=False)
        ref.build(x.shape)
        ref.set_weights(layer.get_weights())
        np.testing.assert_allclose(hebb, ref(x)[2], rtol=1e-5, atol=1e-6)
    assert fused_calls


def test_training_step_inside_a_distribution_strategy(fused_calls):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x = episode("clamp", steps=16)[:2].astype("float32")
    grads = []
    for use_fused in (True, False):
        with strategy.scope():
            layer = hebbkeras.PlasticRNN(7, eta=0.3, use_fused=use_fused)
            layer.build(x.shape)
            set_weights(layer)

        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(x) ** 2)
            return tape.gradient(loss, layer.trainable_weights)

        grads.append(strategy.run(tf.function(step)))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert fused_calls


def test_config_round_trip_keeps_the_path_flags():
    layer = hebbkeras.PlasticRNN(5, use_fused=False, fused_xla=True)
    config = layer.get_config()
    assert config["use_fused"] is False and config["fused_xla"] is True
    clone = hebbkeras.PlasticRNN.from_config(config)
    assert clone.get_config() == config
    assert hebbkeras.PlasticRNN(5).get_config()["use_fused"] is True


@pytest.mark.parametrize("mode,rule", [("add", "hebb"), ("clamp", "hebb"), ("clamp", "oja")])
def test_fused_xla_gradient_matches(mode, rule):
    """The XLA-compiled per-step gradient (`fused_xla=True`) computes the cell
    loop's numbers, and XLA compiles it: the traced step calls the per-step
    functions (computed and clamped steps, the inversion) marked for XLA."""
    entry = compare(Case(mode, "per_connection", rule, "float32", trainable_eta=rule == "oja"),
                    fused_xla=True)  # (compare checks jit_backward=True reached the kernel)
    compiled = {name.split("_")[-2] for name in entry.xla}
    assert compiled == ({"computed", "clamped", "invert"} if mode == "clamp"
                        else {"computed", "invert"}), compiled


def test_keras_jit_compile_keeps_xla():
    """jit_compile=True keeps XLA: inside it PlasticRNN runs hebbkeras.kernels.xla_fused (test_xla_fused.py)."""
    inputs = keras.Input((5, 4))
    plastic = keras.Model(inputs, hebbkeras.PlasticRNN(4, input_mode="add")(inputs))
    assert plastic.layers[1].supports_jit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plastic.compile("adam", "mse", jit_compile=True)
    assert plastic.jit_compile is True
    plain = keras.Model(inputs, hebbkeras.PlasticRNN(4, input_mode="add", plasticity="none")(inputs))
    assert plain.layers[1].supports_jit

@pytest.mark.slow  # a regression guard at the benchmark's size: 10-40 s; the native and
# plain kernels' equality at small sizes is in the default run
@pytest.mark.native_cpu
def test_native_binary_training_step_at_batch_32_and_256_units():
    """The binary task at batch 32, N = 256, trained through Keras as the benchmark does:
    TensorFlow's graph optimizer once turned a three-term sum inside an absorbed
    segment's branch into a temporary variable that clashed with itself
    (AlreadyExistsError in every training step from N = 256 at batch 32). The native
    step equals the plain-TensorFlow kernel's (float32; Adam's step elementwise)."""
    x, y = next(iter(hebbkeras.tasks.episodes.binary_dataset(pattern_size=255, batch_size=32)))
    results = []
    for native in (True, False):
        keras.utils.set_random_seed(0)
        inputs = keras.Input(x.shape[1:])
        model = keras.Model(inputs, hebbkeras.PlasticRNN(256)(inputs))
        model.compile(optimizer=keras.optimizers.Adam(1e-3),  # as the benchmark (the bug
                      # showed with it; not with SGD or another epsilon)
                      loss=hebbkeras.summed_squared_error, jit_compile=False)
        before = model.get_weights()
        with mock.patch.object(hebbkeras.kernels.native, "available",
                               (lambda dtype=None: True) if native else (lambda dtype=None: False)):
            loss = model.train_on_batch(x, y)
        results.append([np.asarray(loss)] + [b - a for a, b in zip(before, model.get_weights())])
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)  # the loss
    assert np.abs(results[1][1]).max() > 5e-4  # w moved: Adam's first step, about 1e-3
    for a, b in zip(results[0][1:], results[1][1:]):
        np.testing.assert_allclose(a, b, atol=2e-4)
        assert np.mean(np.abs(a - b) > 1e-5) < 1e-3


def slow_if_clamped(case):
    """The clamped cases (8-15 s each) run with -m slow; the "add" ones (4-7 s) check
    the same grouping in the default run."""
    values, marks = (case.values, case.marks) if hasattr(case, "values") else (case, ())
    return pytest.param(*values, marks=[*marks, pytest.mark.slow]) if values[0] == "clamp" else case


@pytest.mark.parametrize("mode,rule,kernel", map(slow_if_clamped, with_kernels(
    [("clamp", "hebb"), ("add", "hebb")], 1)))
def test_batch_groups_equal_the_whole_batch(mode, rule, kernel):
    """A batch of 5 run in groups of 2 (`hebbkeras.kernels.groups`: 2 + 2 + 1, one
    after another, forward and back; each group size traced once): outputs and every
    gradient (inputs, initial state, w, alpha, eta) equal the whole batch at once
    (float64, rtol 1e-10)."""
    case = Case(mode, "per_connection", rule, eta=0.3, batch=5)
    x, (y0, h0) = inputs(case)
    layer = make(case, True)
    layer.build((None, None, case.n))
    set_weights(layer)
    rng = np.random.default_rng(4)
    proj = [rng.normal(size=s) for s in (x.shape, h0.shape)]
    args = [tf.constant(v) for v in (x, y0, h0)] + [layer.w.value, layer.alpha.value,
                                                    tf.constant(case.eta, case.dtype)]
    results, forwards = [], []
    original = fused._forward
    for group in (2, 0):
        forwards.append(0)

        def counting(*a, **k):
            forwards[-1] += 1
            return original(*a, **k)

        @tf.function
        def run(*args):
            with tf.GradientTape() as tape:
                tape.watch(args)
                ys, h = fused.plastic_sequence(*args, input_mode=mode, group=group,
                                               native=kernel == "native")[:2]
                loss = tf.reduce_sum(ys * proj[0]) + tf.reduce_sum(h * proj[1])
            return [ys, h] + tape.gradient(loss, list(args))

        with mock.patch.object(fused, "_forward", counting):
            results.append([np.asarray(r) for r in run(*args)])
    assert forwards == [2, 1]  # traced once per group size (2 and 1), not per group
    names = ["ys", "hebb", "x", "y0", "h0", "w", "alpha", "eta"]
    for a, b, name in zip(*results, names):
        assert np.abs(b).max() > 0, name
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(b).max(), err_msg=name)


def test_group_size_from_the_cache():
    """Groups whose backward working set `(3 + 2 g) N^2` fills at most `FILL` (3/4) of
    the cache: at N = 1001 in float32, 1 episode in 32 MB (20 MB; 2 would be 28 MB > 24),
    2 in 40 MB; none where one does not fit (N = 2048, or float64 at N = 1001: 40 MB)
    or the cache is unknown; the last group takes the remainder."""
    mb = 2**20
    assert hebbkeras.kernels.groups.FILL == 0.75
    assert hebbkeras.kernels.groups.group_size(1001, 4, cache=32 * mb) == 1
    assert hebbkeras.kernels.groups.group_size(1001, 4, cache=40 * mb) == 2
    assert hebbkeras.kernels.groups.group_size(1001, 8, cache=32 * mb) is None
    assert hebbkeras.kernels.groups.group_size(256, 4, cache=32 * mb) == 46  # 94 N^2 <= 96
    assert hebbkeras.kernels.groups.group_size(2048, 4, cache=32 * mb) is None
    assert hebbkeras.kernels.groups.group_size(256, 4, cache=0) is None
    assert hebbkeras.kernels.groups.split(5, 2) == [(0, 2), (2, 2), (4, 1)]
    assert hebbkeras.kernels.groups.split(5, None) == [(0, 5)]
    assert hebbkeras.kernels.groups.split(5, 8) == [(0, 5)]
    # The default: the whole batch at once, whatever the cache; groups where asked for,
    # for a batch known when traced.
    y0 = types.SimpleNamespace(shape=(3, 1001), dtype=tf.float32)
    with mock.patch.dict(hebbkeras.kernels.groups._CACHE, {"l3": 32 * mb}):
        assert fused._groups(y0, None) == [(0, 3)] == fused._groups(y0, 0)
        assert fused._groups(y0, 1) == [(0, 1), (1, 1), (2, 1)]
        assert fused._groups(y0, 2) == [(0, 2), (2, 1)]
        unknown = types.SimpleNamespace(shape=(None, 1001), dtype=tf.float32)
        assert fused._groups(unknown, 1) == [(0, None)]
