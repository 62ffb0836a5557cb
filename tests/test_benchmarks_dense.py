"""benchmarks.dense_speed and its PyTorch reference, held to numpy and to a tiny run.

The reference (`benchmarks.reference_torch_dense`) against a numpy version of
PlasticDense's equations written here (both rules, a teacher, softmax and tanh),
its loss and training step; the readout task's settings against the Omniglot
trainer's; and one tiny run of the benchmark in a fresh process (slow).
"""

import numpy as np
import pytest
import torch
from conftest import run_python

from benchmarks import reference_torch_dense as ref


def numpy_episode(w, alpha, eta, x, teacher, activation, rule, scale):
    """Every step's output, float64: y_t = act(x_t @ (w + alpha * hebb_t) + scale * u_t)."""
    batch, steps, width = x.shape
    hebb = np.zeros((batch, width, w.shape[1]))
    acts = {"tanh": np.tanh, "linear": lambda v: v,
            "softmax": lambda v: np.exp(v - v.max(-1, keepdims=True))
            / np.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True)}
    ys = []
    for t in range(steps):
        pre = np.einsum("bi,bij->bj", x[:, t], w + alpha * hebb)
        if teacher is not None:
            pre = pre + scale * teacher[:, t]
        y = acts[activation](pre)
        for b in range(batch):
            for i in range(width):
                for j in range(w.shape[1]):
                    if rule == "hebb":
                        hebb[b, i, j] = (1 - eta) * hebb[b, i, j] + eta * x[b, t, i] * y[b, j]
                    else:
                        hebb[b, i, j] += eta * y[b, j] * (x[b, t, i] - y[b, j] * hebb[b, i, j])
        ys.append(y)
    return np.stack(ys, 1)


@pytest.mark.parametrize("rule,activation,taught", [
    ("hebb", "tanh", False), ("oja", "softmax", True), ("hebb", "linear", True)])
def test_reference_forward_is_plastic_dense_equations(rule, activation, taught):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (2, 5, 4)).astype(np.float32)
    teacher = (rng.random((2, 5, 3)) < 0.4).astype(np.float32) if taught else None
    w, alpha, eta = ref.make_params(4, 3, trainable_eta=True, eta=0.3, alpha_max=1.5, seed=2)
    with torch.no_grad():
        w.mul_(60)  # weights large enough that the trace changes the outputs
    got = ref.forward([w, alpha, eta], torch.from_numpy(x),
                      None if teacher is None else torch.from_numpy(teacher),
                      activation, rule, teacher_scale=2.0).detach().numpy()
    want = numpy_episode(w.detach().double().numpy(), alpha.detach().double().numpy(), 0.3,
                         x.astype(np.float64), teacher, activation, rule, 2.0)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    zero_alpha = numpy_episode(w.detach().double().numpy(), 0.0, 0.3, x.astype(np.float64),
                               teacher, activation, rule, 2.0)
    assert np.abs(zero_alpha - want).max() > 1e-3  # the trace mattered


def test_reference_parameters_and_losses():
    w, alpha, eta = ref.make_params(64, 5, trainable_eta=True, eta=0.5, alpha_max=1.0)
    assert alpha.min() >= 0 and alpha.max() <= 1 and alpha.std() > 0.2  # U(0, 1)
    assert eta.requires_grad and eta.item() == 0.5
    assert abs(w.std().item() - 0.01) < 0.002
    _, alpha, eta = ref.make_params(64, 5, trainable_eta=False)
    assert eta == 0.01 and abs(alpha.std().item() - 0.01) < 0.002  # N(0, 0.01^2)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    target = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    want = -(np.log(0.7) + np.log(1e-7)) / 2  # Keras's clipping at 1e-7
    assert ref.loss(probs, target, "categorical").item() == pytest.approx(want, rel=1e-5)
    assert ref.loss(probs, target, "mse").item() == pytest.approx(
        float(((probs - target) ** 2).mean()), rel=1e-6)


def test_reference_run_trains_and_times(tmp_path):
    rng = np.random.default_rng(3)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.normal(0, 1, (1, 6, 8)).astype(np.float32),
             teacher=np.eye(6, 3, dtype=np.float32)[None],
             target=np.eye(3, dtype=np.float32)[:1])
    result = ref.run(dict(data=str(data), activation="softmax", rule="oja", loss="categorical",
                          trainable_eta=True, eta=0.5, alpha_max=1.0, threads=1, seconds=0.01))
    assert set(result) == {"train"} and 0 < result["train"] < 5


READOUT_SCRIPT = """
from benchmarks import dense_speed
from trainers import omniglot

config = omniglot.OmniglotConfig()
s = dense_speed.task_settings("readout")
assert (s["width"], s["units"], s["steps"]) == (config.channels, config.ways, config.steps)
assert (s["rule"], s["eta"], s["trainable_eta"], s["alpha_max"]) == (
    config.rule, config.eta, config.trainable_eta, config.alpha_init), s
layer = dense_speed.ours_model("readout", True, s).layers[-1]
built = omniglot.build_model(config).get_layer("readout")
assert {k: v for k, v in layer.get_config().items() if k != "name"} == {
    k: v for k, v in built.get_config().items() if k != "name"}
print("ok", s["width"], s["units"], s["steps"])
"""


def test_readout_task_is_the_trainers_readout():
    """In a fresh process: benchmarks' flags would clash in this one (absl)."""
    proc = run_python(["-c", READOUT_SCRIPT])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok 64 5 6" in proc.stdout


@pytest.mark.slow
def test_benchmark_prints_the_side_by_side_table():
    proc = run_python(["-m", "benchmarks.dense_speed", "--tasks", "readout", "--rounds", "1",
                       "--seconds", "0.01", "--noomniglot_step"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "round 1: readout reference" in proc.stdout and "ratio" in proc.stdout
    assert "| readout | 64 -> 5 | 6 | 1 | fused |" in proc.stdout
    bad = run_python(["-m", "benchmarks.dense_speed", "--tasks", "conv"])
    assert bad.returncode != 0 and "error: unknown task 'conv'" in bad.stderr
