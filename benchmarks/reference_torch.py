"""The original algorithm written plainly in PyTorch: the speed benchmark's reference.

As the paper's code runs it (Miconi et al. 2018; uber-research/differentiable-plasticity,
`simple/` for the binary task and `images/` for clamped inputs), every step computed,
for `y` (B, N) and the trace `hebb` (B, N, N), both zero at the start:

    M_t        = w + alpha * hebb_t
    "add":     y_t = tanh(y_{t-1} @ M_t + 20 x_t)              (the binary code; eta learned)
    "clamp":   y_t = tanh(y_{t-1} @ M_t) * (1 - c_t) + x_t * c_t,   c_t = (x_t != 0)
               (the images code's clamps; eta fixed, as the paper's binary task keeps it)
    hebb_{t+1} = (1 - eta) * hebb_t + eta * outer(y_{t-1}, y_t)

(`y_{t-1} @ M_t` is one `bmm` over the batch: at B = 1 the original's `y.mm(M_t)`),
then the loss `sum((y_T[:P] - target)^2)` (mean over the batch), autograd back through
the whole episode and one Adam step on `w`, `alpha` (and `eta`). No kernel, no
skipped step: each line is one or two PyTorch ops, each a pass over `N x N` arrays.
`count_bytes` counts those passes as PyTorch runs them.
"""

import time

import numpy as np


def make_params(units, trainable_eta, seed=0):
    """`[w, alpha, eta]`: w, alpha normal with stddev 0.01; eta 0.01 (a tensor if learned).

    Args:
        units: N.
        trainable_eta: learn eta (the binary code does; "add" mode here).
        seed: torch's seed.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(units, units, generator=gen)).requires_grad_()
    alpha = (0.01 * torch.randn(units, units, generator=gen)).requires_grad_()
    eta = torch.full((1,), 0.01, requires_grad=True) if trainable_eta else 0.01
    return [w, alpha, eta]


def forward(params, x, mode, input_scale=20.0):
    """The last step's `y_T` (B, N) of the episodes `x` (B, T, N) (see the module docstring).

    Args:
        params: `[w, alpha, eta]` of `make_params`.
        x: float32 tensor (B, T, N).
        mode: "clamp" or "add".
        input_scale: the factor of "add" mode (20 in the original code).
    """
    import torch

    w, alpha, eta = params
    batch, steps, units = x.shape
    y = x.new_zeros(batch, units)
    hebb = x.new_zeros(batch, units, units)
    for t in range(steps):
        pre = torch.bmm(y.unsqueeze(1), w + alpha * hebb).squeeze(1)
        if mode == "add":
            y_new = torch.tanh(pre + input_scale * x[:, t])
        else:
            clamps = (x[:, t] != 0).to(x.dtype)
            y_new = torch.tanh(pre) * (1 - clamps) + x[:, t] * clamps
        hebb = (1 - eta) * hebb + eta * torch.bmm(y.unsqueeze(2), y_new.unsqueeze(1))
        y = y_new
    return y


def loss(y_last, target):
    """The paper's loss: squared error summed over the pattern, mean over the batch."""
    return ((y_last[:, : target.shape[-1]] - target) ** 2).sum(-1).mean()


def train_step(params, optimizer, x, target, mode):
    """One training step: forward, autograd through the episode, Adam. Returns the loss."""
    optimizer.zero_grad()
    value = loss(forward(params, x, mode), target)
    value.backward()
    optimizer.step()
    return value.item()


def count_bytes(fn, min_numel):
    """Bytes PyTorch reads and writes in `fn()`, over tensors of at least `min_numel` elements.

    Every operator that runs (autograd's backward and the optimizer included)
    reads its tensor arguments and writes its results; views move nothing.
    With `min_numel = N * N`, what is counted is the passes over `N x N`
    arrays, the traffic the floors of `benchmarks.floors` count.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    def nbytes(tree):
        leaves = tree if isinstance(tree, (list, tuple)) else [tree]
        total = 0
        for leaf in leaves:
            if isinstance(leaf, (list, tuple)):
                total += nbytes(leaf)
            elif isinstance(leaf, torch.Tensor) and leaf.numel() >= min_numel:
                total += leaf.numel() * leaf.element_size()
        return total

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view:
                Counter.total += nbytes(list(args) + list((kwargs or {}).values())) + nbytes(out)
            return out

    with Counter():
        fn()
    return Counter.total


def run(spec):
    """In a child process: time the reference's training and inference on the spec's episodes.

    Args:
        spec: dict with `data` (an .npz of `x`, `y`), `mode`, `trainable_eta`,
            `repeats`, `threads`, `train` (False: inference only), `count`
            (also count the bytes one training step moves).

    Returns:
        dict: `train` and `infer` seconds per episode, and `bytes` per batch if counted.
    """
    import torch

    torch.set_num_threads(spec["threads"])
    with np.load(spec["data"]) as data:
        x, target = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    batch, _, units = x.shape
    params = make_params(units, spec["trainable_eta"])
    learned = [p for p in params if isinstance(p, torch.Tensor)]
    optimizer = torch.optim.Adam(learned, lr=1e-3)
    result = {}
    if spec["train"]:
        train_step(params, optimizer, x, target, spec["mode"])  # warm-up
        start = time.perf_counter()
        for _ in range(spec["repeats"]):
            train_step(params, optimizer, x, target, spec["mode"])
        result["train"] = (time.perf_counter() - start) / spec["repeats"] / batch
        if spec.get("count"):
            result["bytes"] = count_bytes(
                lambda: train_step(params, optimizer, x, target, spec["mode"]), units * units)
    with torch.no_grad():
        forward(params, x, spec["mode"])
        start = time.perf_counter()
        for _ in range(spec["repeats"]):
            forward(params, x, spec["mode"])
        result["infer"] = (time.perf_counter() - start) / spec["repeats"] / batch
    return result
