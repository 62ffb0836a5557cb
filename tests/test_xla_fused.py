"""The XLA-compiled fused kernel (`hebbkeras.kernels.xla_fused`) against autodiff through the cell loop.

Every kernel call here runs inside `tf.function(jit_compile=True)`, which
compiles the whole function with XLA or fails (it never falls back), and one
compiled function serves several values of `eta` (a tensor argument), so the
default run compiles only a few programs.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import numpy_kinds, ops_cell_loop, schedule_cases

import hebbkeras
from hebbkeras.kernels import schedule, xla_fused

TOL = {"float64": 1e-5, "float32": 1e-4}
INTERVAL = 7  # checkpoints every 7 steps: 40 steps are 6 chunks, the last one padded


def episode(mode, n=6, batch=2, steps=40, seed=0):
    """Inputs mixing free, partly clamped, fully clamped and held steps.

    Clamp mode (chunks of 7 steps start at 0, 7, 14, ...): steps 2-3 clamp
    every neuron to new values; 5-11 hold one pattern (its held run 6-11 is
    cut at the chunk start 7: step 6 alone is a plain clamped step, 7-11 a
    run); 13-15 hold another (the run 14-15 starts a chunk); 23-26 a third
    (the run 24-26 inside a chunk); 20-21 clamp every neuron of one episode
    only (computed steps); 30-35 free; the rest mix clamped and free neurons.
    Add mode: small random drives.
    """
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 0.0, 1.0], size=(batch, steps, n), p=[0.3, 0.4, 0.3])
    if mode == "add":
        return x * 0.3
    x[:, 2:4] = rng.choice([-1.0, 1.0], size=(batch, 2, n))
    x[:, 5:12] = rng.choice([-1.0, 1.0], size=(batch, 1, n))
    x[:, 13:16] = rng.choice([-1.0, 1.0], size=(batch, 1, n))
    x[:, 20:22] = rng.choice([-1.0, 1.0], size=(batch, 2, n))
    x[:, 23:27] = rng.choice([-1.0, 1.0], size=(batch, 1, n))
    x[1:, 20:22, 0] = 0.0
    x[:, 30:36] = 0.0
    return x


def numpy_forward(x, y0, h0, w, alpha, eta, mode, rule):
    """Eqs. (1)-(2) in numpy, independent of `hebbkeras.ops`: `(ys, hebb_T)`."""
    y, hebb, ys = y0, h0, []
    for t in range(x.shape[1]):
        pre = y @ w + np.einsum("bi,ij,bij->bj", y, alpha * np.ones_like(w), hebb)
        if mode == "clamp":
            y_new = np.where(x[:, t] != 0, x[:, t], np.tanh(pre))
        else:
            y_new = np.tanh(pre + x[:, t])
        if rule == "hebb":
            hebb = (1 - eta) * hebb + eta * y[:, :, None] * y_new[:, None, :]
        else:
            hebb = hebb + eta * y_new[:, None, :] * (y[:, :, None] - y_new[:, None, :] * hebb)
        y = y_new
        ys.append(y)
    return np.stack(ys, 1), hebb


def arguments(mode, plasticity, dtype, steps=40, n=6, batch=2, seed=1):
    """`(x, y0, h0, w, alpha)` and output projections `(p_ys, p_hebb)` as numpy."""
    rng = np.random.default_rng(seed)
    x = episode(mode, n=n, batch=batch, steps=steps)
    alpha = rng.normal(0, 0.5, (n, n)) if plasticity == "per_connection" else np.array(0.7)
    args = (x, rng.normal(0, 0.5, (batch, n)), rng.normal(0, 0.5, (batch, n, n)),
            rng.normal(0, 0.5, (n, n)), alpha)
    projections = (rng.normal(size=(batch, steps, n)), rng.normal(size=(batch, n, n)))
    return [a.astype(dtype) for a in args], [p.astype(dtype) for p in projections]


def loss_and_grads(kernel, args, eta, projections):
    """`(ys, hebb, grads of sum(p * out) w.r.t. (x, y0, h0, w, alpha, eta))`."""
    with tf.GradientTape() as tape:
        tape.watch(args + [eta])
        ys, hebb = kernel(*args, eta)
        loss = tf.reduce_sum(ys * projections[0]) + tf.reduce_sum(hebb * projections[1])
    return ys, hebb, tape.gradient(loss, args + [eta])


@functools.lru_cache(maxsize=None)
def compiled(mode, rule, interval=INTERVAL):
    """One XLA-compiled forward + gradient per (mode, rule); shapes retrace."""
    def kernel(*a):
        return xla_fused.plastic_sequence(*a, input_mode=mode, rule=rule, interval=interval)

    return tf.function(lambda args, eta, p: loss_and_grads(kernel, args, eta, p),
                       jit_compile=True)


def cell_loop(mode, rule):
    """Eqs. (1)-(2) step by step through `hebbkeras.ops` (autodiff reference)."""
    return lambda *args: ops_cell_loop(*args, mode, rule)


def check(mode, plasticity, rule, dtype, etas, steps=40, interval=INTERVAL):
    args, projections = arguments(mode, plasticity, dtype, steps=steps)
    tol = TOL[dtype]
    args_t = [tf.constant(a) for a in args]
    proj_t = [tf.constant(p) for p in projections]
    names = ("x", "y0", "h0", "w", "alpha", "eta")
    for eta in etas:
        eta_t = tf.constant(eta, dtype)
        ys, hebb, grads = compiled(mode, rule, interval)(args_t, eta_t, proj_t)
        want_ys, want_hebb = numpy_forward(*[a.astype("float64") for a in args], eta, mode, rule)
        ref_ys, ref_hebb, ref_grads = loss_and_grads(cell_loop(mode, rule), args_t, eta_t, proj_t)
        for got, want, name in ((ys, want_ys, "ys"), (hebb, want_hebb, "hebb"),
                                (ys, ref_ys, "ys (ops)")):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(),
                                       err_msg=f"{name} at eta={eta}")
        g_w_scale = np.abs(ref_grads[3]).max()
        for got, want, name in zip(grads, ref_grads, names):
            want = np.asarray(want)
            assert np.abs(want).max() > 0, name  # the comparison means something
            # A scalar's gradient (shared alpha, eta) sums as many terms as w's, and
            # can nearly cancel (float32 autodiff itself is then off by 1e-3
            # relative): its error is measured on w's gradient's scale.
            scale = max(np.abs(want).max(), g_w_scale if want.ndim == 0 else 0.0)
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale,
                                       err_msg=f"d/d{name} at eta={eta}")


# eta 0.05: 7 steps invert within INVERSION_GROWTH (the inversion path);
# 0.5 and 1: they would not (the trace is recomputed from the checkpoint).
@pytest.mark.parametrize("mode,plasticity,rule,dtype,etas", [
    ("clamp", "per_connection", "hebb", "float64", (0.05, 0.5, 1.0)),
    ("clamp", "shared", "oja", "float32", (0.05, 0.5)),
    ("add", "shared", "hebb", "float32", (0.05, 0.5)),
    ("add", "per_connection", "oja", "float64", (0.05, 0.5)),
])
def test_kernel_matches_cell_loop(mode, plasticity, rule, dtype, etas):
    check(mode, plasticity, rule, dtype, etas)


@pytest.mark.slow
@pytest.mark.parametrize("mode,plasticity,rule,dtype", [
    ("clamp", "per_connection", "oja", "float64"),
    ("clamp", "shared", "hebb", "float32"),
    ("add", "per_connection", "hebb", "float64"),
    ("add", "shared", "oja", "float32"),
])
def test_kernel_matches_cell_loop_other_combinations(mode, plasticity, rule, dtype):
    check(mode, plasticity, rule, dtype, (0.05, 0.5))


@pytest.mark.slow
@pytest.mark.parametrize("mode,rule,dtype,interval", [
    ("clamp", "hebb", "float32", 17), ("clamp", "oja", "float64", 20),
    ("add", "hebb", "float64", 44),
])
def test_long_episode_with_checkpoints(mode, rule, dtype, interval):
    """400 steps; intervals as `checkpoint_interval` picks them (17 = ceil(sqrt(400))
    for a trainable eta, 44 for eta = 0.05): inversion over the long chunks."""
    check(mode, "per_connection", rule, dtype, (0.05, 0.2), steps=400, interval=interval)


def test_no_trace_passes_through_a_per_step_conditional():
    """XLA copies every tensor a conditional returns into the loop state (a
    pass over the trace per step): in the compiled forward pass and gradient
    (clamp mode: its steps switch on their kind), the one conditional that
    yields a trace-sized tensor is the backward pass's choice, made once,
    between inverting traces and rebuilding them."""
    args, projections = arguments("clamp", "per_connection", "float64")
    const = functools.partial(tf.nest.map_structure, tf.constant)
    hlo = compiled("clamp", "hebb").experimental_get_compiler_ir(
        const(args), tf.constant(0.05, tf.float64), const(projections))(stage="hlo")
    results = [line.split(" conditional(")[0] for line in hlo.splitlines()
               if " conditional(" in line]
    assert len(results) >= 2  # the per-step switches are there
    assert sum("f64[2,6,6]" in r for r in results) == 1


def test_checkpoint_interval_bounds_inversion_growth():
    """The shared rule (`hebbkeras.kernels.schedule`): the largest k with (1 - eta)^-k <= 10."""
    for eta, steps in [(0.01, 500), (0.05, 400), (0.3, 50), (0.7, 9), (0.0, 12), (1.0, 9)]:
        k = schedule.checkpoint_interval(eta, steps)
        assert 1 <= k <= steps
        if 0 < eta < 1 and k < steps:
            assert (1 - eta) ** -k <= 10 < (1 - eta) ** -(k + 1), (eta, k)
        trained = schedule.checkpoint_interval(eta, steps, eta_may_change=True)
        assert trained == min(k, int(np.ceil(np.sqrt(steps))))
    assert schedule.checkpoint_interval(0.05, 400) == 44  # log(10) / -log(0.95) = 44.9
    assert schedule.checkpoint_interval(1.0, 9) == schedule.checkpoint_interval(0.0, 1) == 1


def test_step_kinds_match_a_walk_over_time():
    """`schedule.step_kinds` under XLA: held runs cut at chunk starts and at
    changed, partly clamped or free steps; positions and lengths within runs."""
    from hebbkeras.kernels import schedule
    cases = [(np.swapaxes(episode("clamp"), 0, 1), INTERVAL)] + schedule_cases()
    for x, interval in cases:
        for clamp_mode, rule in [(True, "hebb"), (True, "oja"), (False, "hebb")]:
            chunks = -(-x.shape[0] // interval)
            got = tf.function(lambda x: schedule.step_kinds(x, clamp_mode, rule, interval, chunks),
                              jit_compile=True)(tf.constant(x))
            want = numpy_kinds(x, clamp_mode, rule, interval)
            for name, a, b in zip(("kind", "j", "k"), got, want):
                assert a.shape == (chunks, interval)
                np.testing.assert_array_equal(a.numpy().ravel(), b, err_msg=f"{name}, {interval}")
    held = numpy_kinds(cases[0][0], True, "hebb", INTERVAL)[0]
    assert list(np.flatnonzero(held == 3)) == [7, 8, 9, 10, 11, 14, 15, 24, 25, 26]  # as documented


def test_bad_arguments_raise_clear_errors():
    x = tf.zeros([1, 3, 4])
    args = (tf.zeros([1, 4]), tf.zeros([1, 4, 4]), tf.zeros([4, 4]), tf.zeros([4, 4]), 0.1)
    with pytest.raises(ValueError, match="input_mode='dense'.*'clamp' or 'add'"):
        xla_fused.plastic_sequence(x, *args, input_mode="dense")
    with pytest.raises(ValueError, match="rule"):
        xla_fused.plastic_sequence(x, *args, rule="bcm")
    f = tf.function(lambda x: xla_fused.plastic_sequence(x, *args)[0],
                    input_signature=[tf.TensorSpec([1, None, 4])])
    with pytest.raises(ValueError, match=r"static number of time steps.*\(1, None, 4\)"):
        f.get_concrete_function()


def layer_pair(mode, **kwargs):
    """A fused PlasticRNN and its cell-loop twin with the same weights."""
    layers = []
    for use_fused in (True, False):
        layer = hebbkeras.PlasticRNN(6, input_mode=mode, use_fused=use_fused, **kwargs)
        layer.build((2, 40, 5 if mode == "dense" else 6))
        layers.append(layer)
    rng = np.random.default_rng(4)
    for v in layers[0].weights:
        if v.name != "eta":
            v.assign(rng.normal(0, 0.5, v.shape))
    layers[1].set_weights(layers[0].get_weights())
    return layers


def test_layer_under_jit_compile_runs_the_xla_kernel(kernel_calls):
    """Inside jit_compile the layer runs xla_fused (dense input, trainable eta,
    a batch unknown when traced): the same outputs and gradients as autodiff through the cell loop, and the
    compiled program keeps no per-step trace (no (T, B, N, N) buffer)."""
    fused_layer, loop_layer = layer_pair("dense", eta=0.2, trainable_eta=True, rule="oja",
                                         return_sequences=True, return_state=True)
    x = tf.constant(np.random.default_rng(5).normal(0, 1, (2, 40, 5)), tf.float32)
    projections = [tf.constant(np.random.default_rng(6).normal(size=s), tf.float32)
                   for s in ((2, 40, 6), (2, 6), (2, 6, 6))]

    def step(layer, x):
        with tf.GradientTape() as tape:
            out = layer(x)
            loss = sum(tf.reduce_sum(o * p) for o, p in zip(out, projections))
        return out, tape.gradient(loss, layer.trainable_weights)

    jitted = tf.function(functools.partial(step, fused_layer), jit_compile=True,
                         input_signature=[tf.TensorSpec([None, 40, 5], tf.float32)])
    out, grads = jitted(x)
    assert len(kernel_calls["xla"]) == 1 and not kernel_calls["fused"]
    assert kernel_calls["xla"][0]["interval"] == 7  # ceil(sqrt(40)): eta is trained
    want_out, want_grads = step(loop_layer, x)
    for a, b in zip(list(out) + grads, list(want_out) + want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    hlo = jitted.experimental_get_compiler_ir(x)(stage="hlo")
    assert "while" in hlo and "f32[6,2,6,6]" in hlo  # the loops, the 6 checkpoints
    assert "[40,2,6,6]" not in hlo


def test_unknown_time_under_jit_compile_runs_the_cell_loop(kernel_calls):
    fused_layer, loop_layer = layer_pair("add", eta=0.3)
    f = tf.function(fused_layer, jit_compile=True,
                    input_signature=[tf.TensorSpec([2, None, 6], tf.float32)])
    x = np.random.default_rng(7).normal(0, 0.3, (2, 9, 6)).astype("float32")
    np.testing.assert_allclose(f(x), loop_layer(x), rtol=1e-5, atol=1e-6)
    assert not kernel_calls["xla"] and not kernel_calls["fused"]


def test_keras_fit_with_jit_compile_trains_on_the_xla_kernel(kernel_calls):
    """A model compiled with jit_compile=True keeps XLA and trains as the cell
    loop does (the same weights after a few SGD steps)."""
    x = episode("clamp", steps=40, batch=4)[:, :20].astype("float32")
    y = np.sign(np.random.default_rng(8).normal(size=(4, 6))).astype("float32")
    models, losses = [], []
    for use_fused in (True, False):
        inputs = keras.Input((20, 6), batch_size=4)
        layer = hebbkeras.PlasticRNN(6, eta=0.1, use_fused=use_fused)  # eta fixed: no gradient
        model = keras.Model(inputs, layer(inputs))
        model.compile(keras.optimizers.SGD(0.02), hebbkeras.summed_squared_error,
                      jit_compile=True)
        assert model.jit_compile is True and layer.supports_jit
        if models:
            model.set_weights(initial)
        initial = model.get_weights()
        history = model.fit(x, y, epochs=4, batch_size=4, verbose=0, shuffle=False)
        models.append(model)
        losses.append(history.history["loss"])
    assert kernel_calls["xla"] and not kernel_calls["fused"]
    assert kernel_calls["xla"][0]["eta_grad"] is False
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    assert losses[0][-1] < losses[0][0]
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
