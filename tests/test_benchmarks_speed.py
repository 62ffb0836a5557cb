"""benchmarks.speed, its PyTorch reference and its floors, held to hand counts and numpy.

The reference (`benchmarks.reference_torch`) against a numpy version of the paper's
equations written here; its byte counter against operators whose traffic is known;
`floor_bytes` and `step_kinds` against a count made by hand for a tiny schedule; the
cache-size reader against a fake /sys tree; and one tiny run of the benchmark in a
fresh process, which must print the header, the columns and the side-by-side ratios;
tiny runs of `benchmarks.passes` and `benchmarks.profile_step` (slow).
"""

import re

import numpy as np
import pytest
import torch
from conftest import run_python

from benchmarks import floors, reference_torch


def numpy_episode(w, alpha, eta, x, mode, scale=20.0):
    """The paper's eqs. (1)-(2) in numpy, float64: the last step's y, every step computed."""
    batch, steps, units = x.shape
    y, hebb = np.zeros((batch, units)), np.zeros((batch, units, units))
    for t in range(steps):
        pre = np.einsum("bi,bij->bj", y, w + alpha * hebb)
        if mode == "add":
            y_new = np.tanh(pre + scale * x[:, t])
        else:
            y_new = np.where(x[:, t] != 0, x[:, t], np.tanh(pre))
        hebb = (1 - eta) * hebb + eta * np.einsum("bi,bj->bij", y, y_new)
        y = y_new
    return y


def tiny_episodes(rng, batch=2, steps=9, units=7):
    """Episodes with fully clamped, partly clamped and zero steps."""
    x = rng.choice([-1.0, 1.0], (batch, steps, units))
    x[:, 2] = 0.0  # a gap
    x[:, 3, : units // 2] = 0.0  # a degraded pattern
    x[0, -2] = 0.0
    x[:, -1, : units // 2] = 0.0  # the query: half its bits zero (unsaturated in "add")
    return x.astype(np.float32)


@pytest.mark.parametrize("mode", ["clamp", "add"])
def test_reference_forward_is_the_papers_equations(mode):
    rng = np.random.default_rng(0)
    x = tiny_episodes(rng)
    w, alpha, eta = reference_torch.make_params(7, trainable_eta=(mode == "add"), seed=3)
    eta_value = float(eta) if isinstance(eta, float) else eta.item()
    got = reference_torch.forward([w, alpha, eta], torch.from_numpy(x), mode).detach().numpy()
    # Larger weights than the 0.01 init, so the trace matters to the result.
    want = numpy_episode(w.detach().numpy().astype(np.float64), alpha.detach().numpy(), eta_value,
                         x.astype(np.float64), mode)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        w.mul_(50), alpha.mul_(80)
    got = reference_torch.forward([w, alpha, eta], torch.from_numpy(x), mode).detach().numpy()
    want = numpy_episode(w.detach().numpy().astype(np.float64), alpha.detach().numpy(), eta_value,
                         x.astype(np.float64), mode)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_reference_trains_what_the_original_code_trains():
    """Adam moves w, alpha and (in add mode) eta; the loss is the summed squared error."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(tiny_episodes(rng))
    target = torch.from_numpy(rng.choice([-1.0, 1.0], (2, 6)).astype(np.float32))
    params = reference_torch.make_params(7, trainable_eta=True)
    before = [p.detach().clone() for p in params]
    y_last = reference_torch.forward(params, x, "add").detach()
    want = float(((y_last[:, :6] - target) ** 2).sum(-1).mean())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    assert reference_torch.train_step(params, optimizer, x, target, "add") == pytest.approx(want, rel=1e-6)
    for p, b in zip(params, before):
        assert not torch.equal(p.detach(), b)


def test_count_bytes_counts_reads_and_writes_of_large_tensors():
    n = 16
    a, b, v = torch.ones(n, n), torch.ones(n, n), torch.ones(n)
    nn = n * n * 4
    assert reference_torch.count_bytes(lambda: a + b, n * n) == 3 * nn  # two reads, one write
    assert reference_torch.count_bytes(lambda: a.t(), n * n) == 0  # a view moves nothing
    assert reference_torch.count_bytes(lambda: v * 2, n * n) == 0  # vectors are left out
    assert reference_torch.count_bytes(lambda: a.mul_(1.0), n * n) == 2 * nn


@pytest.mark.parametrize("mode", ["clamp", "add"])
def test_reference_forward_makes_fifteen_passes_per_step(mode):
    """By hand, per step at batch 1: alpha * hebb (2 reads, 1 write), + w (2, 1), the
    matrix of y @ M (1 read), outer(y, y_t) (1 write), (1 - eta) * hebb (1, 1),
    eta * outer (1, 1), their sum (2, 1): 15 N x N passes; plus the zero trace (1)."""
    n, steps = 12, 6
    x = torch.from_numpy(tiny_episodes(np.random.default_rng(2), 1, steps, n))
    params = reference_torch.make_params(n, trainable_eta=(mode == "add"))
    with torch.no_grad():
        moved = reference_torch.count_bytes(lambda: reference_torch.forward(params, x, mode), n * n)
    assert moved == (15 * steps + 1) * n * n * 4


def test_floor_bytes_of_a_tiny_schedule_by_hand():
    units, batch = 3, 2
    a, b = np.ones(units), -np.ones(units)
    part = np.array([1.0, 0.0, -1.0])
    # steps: part | a a | 0 | b | a | part: computed: part, 0, part (3);
    # trace-only segments: (a a), (b), (a) (3).
    steps = [part, a, a, 0 * a, b, a, part]
    x = np.stack([np.stack(steps)] * batch)
    assert floors.step_kinds(x) == (3, 3)
    # One episode changing its pattern within the held run: still fully clamped,
    # but the run breaks into two segments.
    x2 = x.copy()
    x2[1, 2] = b
    assert floors.step_kinds(x2) == (3, 4)
    n2 = units * units * 4
    forward_step = 2 * n2 + 2 * batch * n2  # read w, alpha; read + write each trace
    backward_step = 2 * n2 + 4 * batch * n2  # w, alpha; trace and its gradient
    segment = 6 * batch * n2
    galpha = n2
    want = 3 * (forward_step + backward_step) + 3 * segment + galpha
    assert floors.floor_bytes(units, batch, 3, 3) == want == 85 * n2


def test_floor_bytes_of_a_grouped_batch_by_hand():
    """A batch of 5 in groups of 2 (2 + 2 + 1, `hebbkeras.kernels.groups`): each group
    reads w and alpha in each computed step and writes galpha once."""
    units, n2 = 3, 3 * 3 * 4
    per_group = {g: 3 * ((2 + 2 * g) + (2 + 4 * g)) * n2 + 3 * 6 * g * n2 + n2 for g in (1, 2)}
    assert per_group == {1: 49 * n2, 2: 85 * n2}
    assert floors.floor_bytes(units, 5, 3, 3, group=2) == 2 * 85 * n2 + 49 * n2
    assert floors.floor_bytes(units, 5, 3, 3, group=5) == floors.floor_bytes(units, 5, 3, 3)
    assert floors.floor_bytes(units, 5, 3, 3) == 193 * n2 < 219 * n2


def test_which_floor_holds(tmp_path):
    bw = {"l3": 100e9, "dram": 20e9}
    mb32 = 32 * 2**20
    # N = 1001: (3 + 2 B) N^2 x 4 bytes: B = 1 is 20 MB, in a 32 MB L3; B = 8 is 76 MB.
    assert floors.floors(1e9, 1001, 1, bw, mb32) == (0.01, 0.05, "L3")
    assert floors.floors(8e9, 1001, 8, bw, mb32) == (0.01, 0.05, "DRAM")
    # In groups of 2: (3 + 2 x 2) N^2 x 4 = 28 MB fits; of 3, 36 MB does not.
    assert floors.floors(8e9, 1001, 8, bw, mb32, group=2)[2] == "L3"
    assert floors.floors(8e9, 1001, 8, bw, mb32, group=3)[2] == "DRAM"
    for level, size in ((1, "48K"), (2, "1024K"), (3, "32768K")):
        d = tmp_path / f"index{level}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "size").write_text(f"{size}\n")
    assert floors.l3_size(str(tmp_path)) == mb32
    assert floors.l3_size(str(tmp_path / "none")) is None


def test_pass_bandwidth_is_bytes_over_seconds(monkeypatch):
    """2 x 4 MB per pass over the time the passes took, the best try."""
    clock = iter(np.arange(0.0, 1000.0, 0.5))  # every reading half a second later
    monkeypatch.setattr(floors.time, "perf_counter", lambda: next(clock))
    got = floors.pass_bandwidth(4 * 2**20, threads=1, passes=3, tries=2)
    assert got == 2 * 4 * 2**20 * 3 / 0.5


def test_bracketed_bandwidth_gives_the_mean_of_the_two_floors():
    """A measurement between a probe at 50 GB/s and one at 100 GB/s: its floor is the
    mean of the floors at each (bytes / 50 and bytes / 100 GB/s), not either one."""
    before, after = {"l3": 400e9, "dram": 50e9}, {"l3": 200e9, "dram": 100e9}
    got = floors.bracketed(before, after)
    nbytes = 6e9
    for k in ("l3", "dram"):
        assert nbytes / got[k] == pytest.approx((nbytes / before[k] + nbytes / after[k]) / 2)
    assert floors.bracketed(before, before) == pytest.approx(before)


@pytest.mark.slow  # about 35 s: six processes that each import TensorFlow or torch
def test_tiny_run_prints_the_reference_ours_the_ratios_and_both_floors(tmp_path):
    out = run_python(
        ["-m", "benchmarks.speed", "--units", "17", "--tasks", "binary", "--batch_sizes", "1",
         "--paths", "fused", "--jit", "off", "--rounds", "2", "--repeats", "1"],
        env={"HEBBKERAS_CACHE": str(tmp_path / "cache")}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert re.search(r"load average [\d.]+ [\d.]+ [\d.]+", text)
    assert re.search(r"L3 \d+ GB/s \(4 MB array\), DRAM [\d.]+ GB/s \(256 MB array\)", text)
    rounds = re.findall(r"round (\d): binary B=1 (\w+)/(\w+)/off", text)
    assert rounds == [("1", "torch", "reference"), ("1", "tensorflow", "fused"),
                      ("2", "torch", "reference"), ("2", "tensorflow", "fused")]
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| task | backend"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    for column in ("train s/ep", "x ref (train)", "L3 floor s/ep", "DRAM floor s/ep",
                   "floor holds", "x L3 floor", "x DRAM floor"):
        assert column in cells
    ours = next(line for line in lines if line.startswith("| binary | tensorflow | 17 |"))
    row = dict(zip(cells, [c.strip() for c in ours.strip("|").split("|")]))
    assert row["floor holds"] == "L3" and float(row["x ref (train)"]) > 0
    assert float(row["x DRAM floor"]) > 0 and float(row["train s/ep"]) > 0
    summary = next(line for line in lines if line.startswith("| binary | 17 | 201 | 1 |"))
    ref_s, ours_s, ratio = (c.strip() for c in summary.strip("|").split("|")[4:7])
    assert float(ratio.rstrip("x")) > 0 and float(ref_s) > 0 and float(ours_s) > 0
    assert re.search(r"reference, binary, B=1: moves \d+ MB per training episode", text)
    # A probe before every measurement; the ratios use each round's own (see speed's docstring).
    probes = [float(p) for p in re.findall(r"round \d: .*, DRAM probe ([\d.]+) GB/s", text)]
    assert len(probes) == 4 and min(probes) > 0
    # ... and one after it: each round's floor at the harmonic mean of the two
    pairs = re.findall(r"DRAM probe ([\d.]+) GB/s before, ([\d.]+) after \(floor at ([\d.]+)\)",
                       text)
    assert len(pairs) == 4
    for b, a, mid in pairs:
        assert float(mid) == pytest.approx(2 / (1 / float(b) + 1 / float(a)), abs=0.11)
    line = re.search(r"DRAM probe before each measurement: ([\d.]+) to ([\d.]+) GB/s", text)
    assert line and (float(line[1]), float(line[2])) == (min(probes), max(probes))


@pytest.mark.slow
def test_scaling_table_runs_what_fits_and_says_why_it_skips(tmp_path):
    out = run_python(
        ["-m", "benchmarks.speed", "--scaling", "--scaling_units", "17,4000",
         "--scaling_batches", "1", "--memory_budget_gb", "1.2", "--repeats", "1"],
        env={"HEBBKERAS_CACHE": str(tmp_path / "cache")}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("| N | B | T | train s/ep |") for line in lines)
    ran = next(line for line in lines if line.startswith("| 17 | 1 | 201 |"))
    assert float(ran.split("|")[4]) > 0 and "L3" in ran
    skipped = next(line for line in lines if line.startswith("| 4000 | 1 |"))
    assert "skipped: needs ~1.5 GB, over the 1.2 GB budget" in skipped


@pytest.mark.slow  # a fresh process that imports TensorFlow and builds the native kernels
@pytest.mark.native_cpu
def test_passes_prints_every_kind_of_native_pass(tmp_path):
    """`benchmarks.passes`: one row per kind of call the fused path makes, each with
    the trace arrays it reads and writes (2 forward, 4 backward) and positive times."""
    out = run_python(["-m", "benchmarks.passes", "--batch", "4", "--units", "40",
                      "--rounds", "1"], env={"HEBBKERAS_CACHE": str(tmp_path / "cache")},
                     timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in out.stdout.splitlines() if line.startswith(("| forward", "| backward"))]
    assert len(rows) == 8
    for name, arrays, wall, cpu, ratio in rows:
        assert arrays == ("2" if name.startswith("forward") else "4"), name
        assert float(wall) > 0 and float(cpu) >= 0 and float(ratio) > 0, name
    assert re.search(r"reference: one read \+ write pass over", out.stdout)


@pytest.mark.slow  # a fresh process that imports TensorFlow and builds the native kernels
@pytest.mark.native_cpu
def test_profile_step_lists_the_native_passes_among_the_op_types(tmp_path):
    """`benchmarks.profile_step`: a table of op types whose rows include both native
    passes, called once per forward segment and once per backward segment and more."""
    out = run_python(["-m", "benchmarks.profile_step", "--batch", "4", "--units", "40",
                      "--top", "40"], env={"HEBBKERAS_CACHE": str(tmp_path / "cache")},
                     timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {c[0]: c[1:] for c in ([x.strip() for x in line.strip("|").split("|")]
                                  for line in out.stdout.splitlines()
                                  if line.startswith("| ") and not line.startswith("| op"))}
    forward = int(rows["HebbkerasTraceUpdate"][0])
    backward = int(rows["HebbkerasTraceBackward"][0])
    assert forward > 10 and backward > 10, rows  # T = 201: dozens of segments each way
    assert re.search(r"native passes [\d.]+ s \([\d.]+% of the step\)", out.stdout)
