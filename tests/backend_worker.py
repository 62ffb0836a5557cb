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
  through the independent numpy-style reference `reference_scan` (JAX only).
"""

import json
import os
import sys
import time

import numpy as np


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def layer_outputs_and_grad_gap(config, weights, x, backend):
    """Outputs `(ys, y_T, hebb_T)` of both paths and the gap of their gradients."""
    import keras

    from hebbkeras import PlasticRNN

    results = {}
    for fused in (False, True):
        layer = PlasticRNN(**config, return_sequences=True, return_state=True, use_fused=fused)
        layer.build(x.shape)
        layer.set_weights(weights)
        if backend != "jax":
            results[fused] = [keras.ops.convert_to_numpy(o) for o in layer(x)], None
            continue
        import jax

        def loss(trainable, fixed, inputs):
            """A fixed projection of every output; the outputs as aux."""
            outputs, _ = layer.stateless_call(trainable, fixed, inputs)
            probe = [jax.numpy.cos(jax.numpy.arange(o.size).reshape(o.shape)) for o in outputs]
            return sum(jax.numpy.sum(o * p) for o, p in zip(outputs, probe)), outputs

        trainable = [v.value for v in layer.trainable_variables]
        fixed = [v.value for v in layer.non_trainable_variables]
        grad_fn = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True))
        (g_vars, g_x), outs = grad_fn(trainable, fixed, x)
        results[fused] = [np.asarray(o) for o in outs], list(g_vars) + [g_x]
    gap = None
    if results[True][1] is not None:
        gap = max(rel(a, b) for a, b in zip(results[True][1], results[False][1]))
    return results[False][0], results[True][0], gap


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


def kernel_case(case):
    """The largest relative error of outputs and gradients for one case."""
    import jax
    import jax.numpy as jnp

    from hebbkeras import jax_fused

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


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax" and spec.get("kernel"):
        import jax

        jax.config.update("jax_enable_x64", True)
    import keras

    import hebbkeras  # noqa: F401  (registers the layers for loading)

    folder = spec["dir"]
    data = dict(np.load(os.path.join(folder, "inputs.npz")))
    report, outputs = {"backend": keras.backend.backend()}, {}
    report["gaps"], started = [], time.time()
    for i, config in enumerate(spec.get("layers", [])):
        weights = [data[f"w{i}_{k}"] for k in range(int(data[f"n{i}"]))]
        cell, fused, gap = layer_outputs_and_grad_gap(config, weights, data[f"x{i}"], backend)
        for k in range(len(cell)):
            outputs[f"cell{i}_{k}"], outputs[f"fused{i}_{k}"] = cell[k], fused[k]
        report["gaps"].append(gap)
    report["seconds"] = {"layers": time.time() - started}
    for i, path in enumerate(spec.get("load", [])):
        model = keras.saving.load_model(path)
        outputs[f"loaded{i}"] = keras.ops.convert_to_numpy(model(data[f"load_x{i}"]))
    if spec.get("save"):
        from hebbkeras import PlasticRNN

        cfg = spec["save"]
        inputs = keras.Input((None, cfg["units"]) if cfg["input_mode"] != "dense" else (None, 3))
        model = keras.Model(inputs, PlasticRNN(**cfg)(inputs))
        path = os.path.join(folder, f"saved_{backend}.keras")
        model.save(path)
        outputs["saved"] = keras.ops.convert_to_numpy(model(data["save_x"]))
        report["saved"] = path
    report["seconds"]["saving"] = time.time() - started - report["seconds"]["layers"]
    report["kernel"] = [kernel_case(c) for c in spec.get("kernel", [])]
    report["seconds"]["total"] = time.time() - started
    np.savez(os.path.join(folder, f"outputs_{backend}.npz"), **outputs)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
