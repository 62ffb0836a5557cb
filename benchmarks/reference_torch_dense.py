"""A PlasticDense episode written plainly in PyTorch: the dense benchmark's reference.

As the Omniglot code of Miconi et al. (2018) runs its plastic readout
(uber-research/differentiable-plasticity, `omniglot/`), every step computed,
for inputs `x_t` (B, in), the trace `hebb` (B, in, units) zero at the start:

    y_t        = act(x_t @ (w + alpha * hebb_t) + b + scale * u_t)     (`u_t`: the teacher, if any)
    hebb_{t+1} = (1 - eta) * hebb_t + eta * outer(x_t, y_t)                      ("hebb")
    hebb_{t+1} = hebb_t + eta * y_t[j] * (x_t[i] - y_t[j] * hebb_t[i, j])        ("oja")

(`x_t @ M_t` is one `bmm` over the batch), then the loss of the last step's
output, autograd back through the whole episode and one Adam step on `w`,
`alpha` (and `eta` when learned). No kernel: each line is one or two
PyTorch ops.
"""

import time

import numpy as np

ACTIVATIONS = ("linear", "tanh", "softmax")
LOSSES = ("mse", "categorical")


def make_params(width, units, trainable_eta, eta=0.01, alpha_max=None, seed=0):
    """`[w, alpha, eta]`: w normal with stddev 0.01; alpha normal with stddev 0.01, or
    uniform in [0, alpha_max]; eta a tensor if learned.

    Args:
        width, units: the layer's input and output widths.
        trainable_eta: learn eta.
        eta: its value.
        alpha_max: alpha ~ U(0, alpha_max) (the Omniglot trainer's) instead of N(0, 0.01^2).
        seed: torch's seed.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(width, units, generator=gen)).requires_grad_()
    if alpha_max is None:
        alpha = 0.01 * torch.randn(width, units, generator=gen)
    else:
        alpha = alpha_max * torch.rand(width, units, generator=gen)
    eta = torch.full((1,), eta, requires_grad=True) if trainable_eta else eta
    return [w, alpha.requires_grad_(), eta]


def forward(params, x, teacher=None, activation="linear", rule="hebb", teacher_scale=1000.0):
    """Every step's output `(B, T, units)` of the episodes `x` (B, T, in).

    Args:
        params: `[w, alpha, eta]` of `make_params`.
        x: float32 tensor (B, T, in); teacher: (B, T, units) or None ("add" mode).
        activation: one of `ACTIVATIONS`; rule: "hebb" or "oja".
        teacher_scale: the teacher's factor (1000 in the Omniglot code).
    """
    import torch

    w, alpha, eta = params
    batch, steps, width = x.shape
    act = {"linear": lambda v: v, "tanh": torch.tanh,
           "softmax": lambda v: torch.softmax(v, -1)}[activation]
    hebb = x.new_zeros(batch, width, w.shape[1])
    ys = []
    for t in range(steps):
        x_t = x[:, t]
        pre = torch.bmm(x_t.unsqueeze(1), w + alpha * hebb).squeeze(1)
        if teacher is not None:
            pre = pre + teacher_scale * teacher[:, t]
        y = act(pre)
        if rule == "hebb":
            hebb = (1 - eta) * hebb + eta * torch.bmm(x_t.unsqueeze(2), y.unsqueeze(1))
        else:
            hebb = hebb + eta * y.unsqueeze(1) * (x_t.unsqueeze(2) - y.unsqueeze(1) * hebb)
        ys.append(y)
    return torch.stack(ys, 1)


def loss(y_last, target, kind):
    """`mse`: the mean squared error; `categorical`: the cross-entropy of probabilities
    (Keras's `CategoricalCrossentropy`, clipped at 1e-7); both means over the batch."""
    import torch

    if kind == "mse":
        return ((y_last - target) ** 2).mean()
    return -(target * torch.log(y_last.clamp(1e-7, 1 - 1e-7))).sum(-1).mean()


def run(spec):
    """In a child process: seconds per training step of the spec's episodes.

    Args:
        spec: dict with `data` (an .npz of `x`, `target` and optionally `teacher`),
            `activation`, `rule`, `loss`, `trainable_eta`, `eta`, `alpha_max`,
            `threads`, `seconds` (time to spend timing; at least 3 steps).

    Returns:
        dict: `train`, the median seconds of a training step (forward, backward, Adam).
    """
    import torch

    torch.set_num_threads(spec["threads"])
    with np.load(spec["data"]) as data:
        x, target = torch.from_numpy(data["x"]), torch.from_numpy(data["target"])
        teacher = torch.from_numpy(data["teacher"]) if "teacher" in data else None
    params = make_params(x.shape[-1], target.shape[-1], spec["trainable_eta"], spec["eta"],
                         spec.get("alpha_max"))
    optimizer = torch.optim.Adam([p for p in params if isinstance(p, torch.Tensor)], lr=1e-3)

    def step():
        optimizer.zero_grad()
        ys = forward(params, x, teacher, spec["activation"], spec["rule"])
        value = loss(ys[:, -1], target, spec["loss"])
        value.backward()
        optimizer.step()
        return value.item()

    return {"train": timed(step, spec["seconds"])}


def timed(fn, seconds, warmup=2, least=3):
    """The median seconds of `fn()` over calls made for about `seconds` (at least `least`),
    after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times, spent = [], 0.0
    while spent < seconds or len(times) < least:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return float(np.median(times))
