"""Runs hebbkeras checks on one Keras backend in a fresh process; prints JSON.

    KERAS_BACKEND=jax python tests/backend_worker.py SPEC.json

Used by tests/test_backends.py (a backend is fixed per process). SPEC holds
"dir" (a folder with `inputs.npz`), and optional tasks:
- "layers": PlasticRNN configs; for each, the outputs of the cell loop and of
  the fused path with the weights of `inputs.npz` (`w{i}_{k}`, `x{i}`) are
  written to `outputs.npz`, and the largest relative difference between the
  gradients of the two paths (every weight and the input) is reported.
- "load": `.keras` files to load and predict `x{i}` with -> `outputs.npz`;
  "save": a config whose model is saved, with its predictions.
- "kernel": float64 cases of `jax_fused.plastic_sequence` against autodiff
  through the independent numpy-style reference `reference_scan` (JAX only);
  for a neuromodulated rule ("simple", "retroactive"), of
  `jax_remat.plastic_sequence` (or the case's "kernel", `jax_modfused`) against
  `modulated_reference_scan`.
- "schedule": `hebbkeras.kernels.schedule.step_kinds` under `jax.jit` for each
  `{"interval", "clamp_mode", "rule"}` on time-major `sx{i}` ->
  `schedule{i}_{k}` (kind, j, k).
- "rnn_cell": a PlasticRNNCell config run by `keras.layers.RNN` on `cell_x`
  with weights `cw_{k}` -> `rnn_cell_{k}` (outputs, final y and trace).
- "dense": PlasticDense configs; inputs `dx{i}`, teacher `du{i}` (if the
  config has a teacher_mode), weights `dw{i}_{k}` -> `dense{i}_{k}`.
- "fit": one `model.fit` step (SGD, the paper's summed squared error, the
  bit error rate) of a PlasticRNN -> PlasticDense model with weights
  `fw_{k}` on `fit_x`, `fit_y` -> `fit_w_{k}` and the reported loss; the
  fitted model is saved to `fit_{backend}.keras` with its predictions
  `fit_pred` on `fit_x` (with "fit_epochs": 0, the model is saved unfitted).
- "data_parallel": the "fit" model's step with weights `dpw_{k}` on `dp_x`,
  `dp_y`, on one device (`dp1_w_{k}`) and under `keras.distribution.DataParallel`
  over every device (`dp2_w_{k}`; JAX, started with
  `XLA_FLAGS=--xla_force_host_platform_device_count=2` for two CPU devices).
On TensorFlow-free backends ("torch"; "jax" for the cell loop), the gradients of
`probe_loss` (every trainable weight, then the input) of the "layers" cell
loops, "rnn_cell" and "dense" go to `grad{i}_{k}`, `rnn_cell_grad_{k}` and
`dense_grad{i}_{k}`. "load" paths may name a file another worker is still
writing: it is waited for (saves are atomic) until `abort` appears in "dir".
With "hide_tensorflow", an import hook hides TensorFlow from the start (all of
the above then runs as where it is not installed), and the report holds the
error of each TensorFlow-only module and the tensorflow modules loaded (none).
"""

import importlib
import importlib.abc
import json
import os
import sys
import time

import numpy as np


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def probe(shape):
    """A fixed projection, the same on every backend: cos(0), cos(1), ... in `shape`."""
    return np.cos(np.arange(int(np.prod(shape)))).reshape(tuple(shape)).astype("float32")


def probe_loss(outputs):
    """`sum_k sum(outputs[k] * probe)`: every output reaches the loss."""
    import keras

    return sum(keras.ops.sum(o * keras.ops.convert_to_tensor(probe(o.shape), o.dtype))
               for o in outputs)


def as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def outputs_and_grads(fn, variables, x, backend):
    """`fn(x)` as numpy arrays and, on torch, the gradients of `probe_loss` with
    respect to `variables` and then `x` (torch autograd); `[]` elsewhere."""
    import keras

    if backend != "torch":
        return [keras.ops.convert_to_numpy(o) for o in as_list(fn(x))], []
    import torch

    x = torch.tensor(x, requires_grad=True)
    outputs = as_list(fn(x))
    grads = torch.autograd.grad(probe_loss(outputs), [v.value for v in variables] + [x])
    return [keras.ops.convert_to_numpy(o) for o in outputs], [g.numpy() for g in grads]


def layer_outputs_and_grad_gap(config, weights, x, backend):
    """Outputs `(ys, y_T, hebb_T)` of both paths, the gap of their gradients (JAX),
    and the cell loop's gradients (JAX and torch; see `probe_loss`)."""
    from hebbkeras import PlasticRNN

    results = {}
    for fused in (False, True):
        layer = PlasticRNN(**config, return_sequences=True, return_state=True, use_fused=fused)
        layer.build(x.shape)
        layer.set_weights(weights)
        if backend != "jax":
            results[fused] = outputs_and_grads(layer, layer.trainable_variables, x, backend)
            continue
        import jax

        def loss(trainable, fixed, inputs):
            """A fixed projection of every output; the outputs as aux."""
            outputs, _ = layer.stateless_call(trainable, fixed, inputs)
            return sum(jax.numpy.sum(o * probe(o.shape)) for o in outputs), outputs

        trainable = [v.value for v in layer.trainable_variables]
        fixed = [v.value for v in layer.non_trainable_variables]
        grad_fn = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True))
        (g_vars, g_x), outs = grad_fn(trainable, fixed, x)
        results[fused] = [np.asarray(o) for o in outs], [np.asarray(g) for g in g_vars] + [
            np.asarray(g_x)]
    gap = None
    if backend == "jax":
        gap = max(rel(a, b) for a, b in zip(results[True][1], results[False][1]))
    return results[False][0], results[True][0], gap, results[False][1]


def rnn_cell_outputs(config, weights, x, backend):
    """`keras.layers.RNN(PlasticRNNCell(...))`: outputs (ys, y_T, hebb_T) and gradients."""
    import keras

    from hebbkeras import PlasticRNNCell

    layer = keras.layers.RNN(PlasticRNNCell(**config), return_sequences=True, return_state=True)
    layer.build(x.shape)
    layer.set_weights(weights)
    return outputs_and_grads(layer, layer.trainable_variables, x, backend)


def dense_outputs(config, weights, x, teacher, backend):
    """PlasticDense's outputs and gradients (the input, not the teacher)."""
    from hebbkeras import PlasticDense

    layer = PlasticDense(**config)

    def call(inputs):
        return layer(inputs if teacher is None else [inputs, teacher])

    call(x)
    layer.set_weights(weights)
    return outputs_and_grads(call, layer.trainable_variables, x, backend)


def fit_model(spec):
    """Input -> PlasticRNN (every step) -> PlasticDense (last step), compiled with
    SGD, the paper's summed squared error and the bit error rate."""
    import keras

    import hebbkeras

    inputs = keras.Input((spec["steps"], spec["width"]))
    hidden = hebbkeras.PlasticRNN(**spec["rnn"], return_sequences=True)(inputs)
    outputs = hebbkeras.PlasticDense(**spec["dense"])(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(spec["learning_rate"]), hebbkeras.summed_squared_error,
                  metrics=[hebbkeras.BitErrorRate()])
    return model


def fit_step(spec, weights, x, y):
    """The model's weights after one `fit` step on `(x, y)`, and the logs."""
    model = fit_model(spec)
    model.set_weights(weights)
    if not spec.get("fit_epochs", 1):
        return model, {}
    history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return model, {k: float(v[-1]) for k, v in history.history.items()}


def data_parallel_steps(spec, weights, x, y):
    """`fit_step` on the default device, then under `DataParallel` over every JAX
    device: `(report, {"dp1_w_k": weights, "dp2_w_k": weights})`. The report
    says how the second step was laid out: the devices, the data's sharded axes,
    and over how many devices each variable is replicated."""
    import jax
    import keras

    one, logs_one = fit_step(spec, weights, x, y)
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    with distribution.scope():
        two, logs_two = fit_step(spec, weights, x, y)
    report = {"devices": len(jax.devices()),
              "data_axes": list(distribution.get_data_layout(x.shape).axes),
              "variable_devices": [len(v.value.sharding.device_set) for v in two.weights],
              "logs": [logs_one, logs_two]}
    outputs = {f"dp{n}_w_{k}": w for n, model in ((1, one), (2, two))
               for k, w in enumerate(model.get_weights())}
    return report, outputs


def save_atomically(model, path):
    """`model.save(path)` under a temporary name, then renamed: a reader in another
    process never sees half a file."""
    temporary = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp.keras")
    model.save(temporary)
    os.replace(temporary, path)


def wait_for(path, folder, timeout=600):
    """Waits until `path` exists (another worker saves it), or fails."""
    started = time.time()
    while not os.path.exists(path):
        if os.path.exists(os.path.join(folder, "abort")) or time.time() - started > timeout:
            raise SystemExit(f"gave up waiting for {path}")
        time.sleep(0.2)


def reference_scan(x, y0, h0, w, alpha, eta, clamp_mode, rule):
    """Eqs. (1)-(2) in jax.numpy, written apart from hebbkeras (autodiff reference)."""
    import jax
    import jax.numpy as jnp

    def step(carry, x_t):
        y, h = carry
        pre = y @ w + jnp.einsum("bi,bij->bj", y, alpha * h)
        y_new = jnp.where(x_t != 0, x_t, jnp.tanh(pre)) if clamp_mode else jnp.tanh(pre + x_t)
        outer = y[:, :, None] * y_new[:, None, :]
        if rule == "hebb":
            h = (1 - eta) * h + eta * outer
        else:
            h = h + eta * y_new[:, None, :] * (y[:, :, None] - y_new[:, None, :] * h)
        return (y_new, h), y_new

    (_, h), ys = jax.lax.scan(step, (y0, h0), jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1), h


def modulated_reference_scan(x, y0, h0, e0, w, alpha, eta, mk, mb, clamp_mode, rule, clip,
                             count_ties=False):
    """Backpropamine's equations in jax.numpy, written apart from hebbkeras: M_t =
    tanh(y_t @ mk + mb); simple: hebb += M outer(y_{t-1}, y_t); retroactive: hebb +=
    M E, E = (1 - eta) E + eta outer(y_{t-1}, y_t); hebb clipped to [-clip, clip].

    The clip's derivative is 1 on [-clip, clip], bounds included (docs: the mask
    -c <= S <= c). At |S| = clip no derivative exists, and jnp.clip's autodiff
    takes 1/2 there; held +-1 clamps make S land exactly on the bound (an
    increment, then its negative), so the convention is written out here.
    `count_ties`: also the number of entries with |S| = clip, exactly."""
    import jax
    import jax.numpy as jnp

    def step(carry, x_t):
        y, h, e, ties = carry
        pre = y @ w + jnp.einsum("bi,bij->bj", y, alpha * h)
        y_new = jnp.where(x_t != 0, x_t, jnp.tanh(pre)) if clamp_mode else jnp.tanh(pre + x_t)
        m = jnp.tanh(y_new @ mk + mb)[:, :, None]
        outer = y[:, :, None] * y_new[:, None, :]
        s = h + m * (outer if rule == "simple" else e)
        h = jnp.where(jnp.abs(s) <= clip, s, jnp.sign(s) * clip)
        e = (1 - eta) * e + eta * outer
        return (y_new, h, e, ties + jnp.sum(jnp.abs(s) == clip, dtype=jnp.int32)), y_new

    (_, h, e, ties), ys = jax.lax.scan(step, (y0, h0, e0, jnp.int32(0)), jnp.swapaxes(x, 0, 1))
    out = (jnp.swapaxes(ys, 0, 1), h) + ((e,) if rule == "retroactive" else ())
    return (out, ties) if count_ties else out


def modulated_kernel_case(case, x, y0, h0, w, alpha, rng):
    """`kernel_case` of a neuromodulated rule on `jax_remat` or the case's "kernel"
    (`jax_modfused`), the clip active."""
    import importlib

    import jax
    import jax.numpy as jnp

    kernel = importlib.import_module(f"hebbkeras.kernels.{case.get('kernel', 'jax_remat')}")

    b, n, rule, clip = x.shape[0], w.shape[0], case["rule"], case["trace_clip"]
    retro = rule == "retroactive"
    e0 = 0.3 * rng.normal(size=(b, n, n)) if retro else np.zeros((b, n, n))
    mk, mb = rng.normal(size=(n, 1)), rng.normal(0, 0.3, size=(1,))
    args = [jnp.asarray(a, jnp.float64)
            for a in (x, y0, 5 * h0, e0, w, alpha, case["eta"], mk, mb)]
    probes = [jnp.asarray(rng.normal(size=s)) for s in [x.shape, h0.shape, h0.shape]]

    def fused(x, y0, h0, e0, w, alpha, eta, mk, mb):
        ys, traces = kernel.plastic_sequence(
            x, y0, (h0, e0) if retro else (h0,), w, alpha, eta, (mk, mb),
            input_mode=case["input_mode"], rule=rule, trace_clip=clip,
            interval=case.get("interval"))
        return (ys, *traces)

    def reference(*a, count_ties=False):
        return modulated_reference_scan(*a, case["input_mode"] == "clamp", rule, clip,
                                        count_ties)

    def value(fn):
        def loss(*a):
            outs = fn(*a)
            return sum(jnp.sum(o * p) for o, p in zip(outs, probes)), outs
        return loss

    def outputs_and_grads(fn):
        grads, outputs = jax.jit(jax.grad(value(fn), tuple(range(9)), has_aux=True))(*args)
        return list(outputs) + [g for i, g in enumerate(grads) if retro or i != 3]

    got, want = outputs_and_grads(fused), outputs_and_grads(reference)
    assert len(got) == len(want) and float(jnp.mean(jnp.abs(want[1]) == clip)) > 0.05
    if case.get("ties"):  # the case is there for the clip's derivative at |S| = c
        _, ties = jax.jit(lambda *a: reference(*a, count_ties=True))(*args)
        assert int(ties) > 0, case
    return max(rel(a, b) for a, b in zip(got, want))


def kernel_case(case):
    """The largest relative error of outputs and gradients for one case."""
    import jax
    import jax.numpy as jnp

    from hebbkeras.kernels import jax_fused

    rng = np.random.default_rng(case["seed"])
    b, t, n = case["batch"], case["steps"], case["units"]
    clamp_mode = case["input_mode"] == "clamp"
    x = rng.normal(size=(b, t, n))
    if clamp_mode:  # free, partly clamped, fully clamped and held steps, mixed
        x = np.where(rng.random((b, t, n)) < 0.5, np.sign(x), 0.0)
        kinds = rng.integers(0, 4, size=t)
        for s in range(t):
            if kinds[s] == 0:
                x[:, s] = 0.0
            elif kinds[s] >= 2:
                x[:, s] = np.where(x[:, s] == 0, 1.0, x[:, s])
                if kinds[s] == 3 and s > 0 and kinds[s - 1] >= 2:
                    x[:, s] = x[:, s - 1]
    y0 = 0.3 * rng.normal(size=(b, n))
    h0 = 0.1 * rng.normal(size=(b, n, n))
    w = rng.normal(size=(n, n)) / np.sqrt(n)
    alpha = rng.normal(size=() if case["plasticity"] == "shared" else (n, n)) / np.sqrt(n)
    if case["rule"] in ("simple", "retroactive"):
        return modulated_kernel_case(case, x, y0, h0, w, alpha, rng)
    args = [jnp.asarray(a, jnp.float64) for a in (x, y0, h0, w, alpha, case["eta"])]
    g_ys = jnp.asarray(rng.normal(size=(b, t, n)))
    g_h = jnp.asarray(rng.normal(size=(b, n, n)))

    def fused(*a):
        return jax_fused.plastic_sequence(*a, input_mode=case["input_mode"], rule=case["rule"],
                                          interval=case.get("interval"))

    def reference(*a):
        return reference_scan(*a, clamp_mode, case["rule"])

    def loss(fn):
        def value(*a):
            ys, h = fn(*a)
            return jnp.sum(ys * g_ys) + jnp.sum(h * g_h), (ys, h)
        return value

    def outputs_and_grads(fn):
        grads, outputs = jax.jit(jax.grad(loss(fn), tuple(range(6)), has_aux=True))(*args)
        return list(outputs) + list(grads)

    return max(rel(a, b) for a, b in zip(outputs_and_grads(fused), outputs_and_grads(reference)))


def step_kinds(x, case):
    """The step schedule of `x` (time-major) as the JAX kernel compiles it."""
    import jax

    from hebbkeras.kernels import schedule

    chunks = -(-x.shape[0] // case["interval"])
    kinds = jax.jit(lambda x: schedule.step_kinds(x, case["clamp_mode"], case["rule"],
                                                  case["interval"], chunks))(x)
    return [np.asarray(a) for a in kinds]


class NoTensorFlow(importlib.abc.MetaPathFinder):
    """Hides TensorFlow (and tfds), as on a machine where it is not installed:
    wraps the import system's finders and finds no `tensorflow*` module, so an
    import raises ModuleNotFoundError and `importlib.util.find_spec` returns None
    (torch probes for TensorFlow that way)."""

    def __init__(self, finders):
        self.finders = finders

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
        return None

    def invalidate_caches(self):
        for finder in self.finders:
            getattr(finder, "invalidate_caches", lambda: None)()

    @classmethod
    def install(cls):
        sys.meta_path[:] = [cls(list(sys.meta_path))]


def tensorflow_only_errors():
    """The ImportError message of each TensorFlow-only module, in both spellings
    (`hebbkeras.NAME` and `from hebbkeras import NAME`), or what came instead."""
    import hebbkeras

    messages = {}
    for path in hebbkeras._TENSORFLOW_MODULES:
        package, name = f"hebbkeras.{path}".rsplit(".", 1)
        parent = importlib.import_module(package)
        for form, load in (("attribute", lambda: getattr(parent, name)),
                           ("from-import", lambda: __import__(package, fromlist=[name]))):
            try:
                load()
                messages[f"{form} {name}"] = "imported"
            except ImportError as error:
                messages[f"{form} {name}"] = str(error)
    return messages


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if spec.get("hide_tensorflow"):
        NoTensorFlow.install()
    if backend == "jax" and spec.get("kernel"):
        import jax

        jax.config.update("jax_enable_x64", True)
    import keras

    import hebbkeras  # noqa: F401  (registers the layers for loading)

    folder = spec["dir"]
    data = dict(np.load(os.path.join(folder, "inputs.npz")))
    report, outputs = {"backend": keras.backend.backend(), "seconds": {}}, {}
    started = time.time()
    # What other workers load first, so that they need not wait long.
    if spec.get("save"):
        cfg = spec["save"]
        inputs = keras.Input((None, cfg["units"]) if cfg["input_mode"] != "dense" else (None, 3))
        model = keras.Model(inputs, hebbkeras.PlasticRNN(**cfg)(inputs))
        path = os.path.join(folder, f"saved_{backend}.keras")
        save_atomically(model, path)
        outputs["saved"] = keras.ops.convert_to_numpy(model(data["save_x"]))
        report["saved"] = path
    if spec.get("fit"):
        weights = [data[f"fw_{k}"] for k in range(int(data["fw_n"]))]
        model, report["fit"] = fit_step(spec["fit"], weights, data["fit_x"], data["fit_y"])
        for k, w in enumerate(model.get_weights()):
            outputs[f"fit_w_{k}"] = w
        report["supports_jit"] = {layer.name: layer.supports_jit for layer in model.layers[1:]}
        save_atomically(model, os.path.join(folder, f"fit_{backend}.keras"))
        outputs["fit_pred"] = keras.ops.convert_to_numpy(model(data["fit_x"]))
    if spec.get("data_parallel"):
        weights = [data[f"dpw_{k}"] for k in range(int(data["dpw_n"]))]
        report["data_parallel"], dp = data_parallel_steps(spec["data_parallel"], weights,
                                                          data["dp_x"], data["dp_y"])
        outputs.update(dp)
    report["seconds"]["saving_and_fit"] = time.time() - started
    report["gaps"] = []
    for i, config in enumerate(spec.get("layers", [])):
        weights = [data[f"w{i}_{k}"] for k in range(int(data[f"n{i}"]))]
        cell, fused, gap, grads = layer_outputs_and_grad_gap(config, weights, data[f"x{i}"],
                                                             backend)
        for k in range(len(cell)):
            outputs[f"cell{i}_{k}"], outputs[f"fused{i}_{k}"] = cell[k], fused[k]
        outputs.update({f"grad{i}_{k}": g for k, g in enumerate(grads)})
        report["gaps"].append(gap)
    if spec.get("rnn_cell"):
        weights = [data[f"cw_{k}"] for k in range(int(data["cw_n"]))]
        outs, grads = rnn_cell_outputs(spec["rnn_cell"], weights, data["cell_x"], backend)
        outputs.update({f"rnn_cell_{k}": o for k, o in enumerate(outs)})
        outputs.update({f"rnn_cell_grad_{k}": g for k, g in enumerate(grads)})
    for i, config in enumerate(spec.get("dense", [])):
        weights = [data[f"dw{i}_{k}"] for k in range(int(data[f"dn{i}"]))]
        teacher = data[f"du{i}"] if config.get("teacher_mode") else None
        outs, grads = dense_outputs(config, weights, data[f"dx{i}"], teacher, backend)
        outputs.update({f"dense{i}_{k}": o for k, o in enumerate(outs)})
        outputs.update({f"dense_grad{i}_{k}": g for k, g in enumerate(grads)})
    report["seconds"]["layers"] = time.time() - started - report["seconds"]["saving_and_fit"]
    report["kernel"] = [kernel_case(c) for c in spec.get("kernel", [])]
    for i, c in enumerate(spec.get("schedule", [])):
        outputs.update({f"schedule{i}_{k}": a for k, a in enumerate(step_kinds(data[f"sx{i}"], c))})
    for load in spec.get("load", []):  # {"path": a .keras file, "x": the inputs' key}
        wait_for(load["path"], folder)
        model = keras.saving.load_model(load["path"])
        name = os.path.basename(load["path"])[: -len(".keras")]
        outputs[f"loaded_{name}"] = keras.ops.convert_to_numpy(model(data[load["x"]]))
    if spec.get("hide_tensorflow"):
        report["tensorflow_only"] = tensorflow_only_errors()
        report["tensorflow_loaded"] = sorted(m for m in sys.modules if m.startswith("tensorflow"))
    report["seconds"]["total"] = time.time() - started
    np.savez(os.path.join(folder, f"outputs_{backend}.npz"), **outputs)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
