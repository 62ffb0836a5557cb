"""benchmarks.modulated: the interleaved ratios, and an interleaved run on JAX."""

import re

import pytest

from benchmarks.modulated import median_ratio
from conftest import run_python


def test_median_ratio_is_the_median_of_each_rounds_ratio():
    # Load that changes between rounds (round 3 is tenfold slower for both variants)
    # moves the ratio of the medians (3 / 2 = 1.5), not the rounds' own ratios.
    assert median_ratio([3.0, 2.2, 11.0], [1.0, 2.0, 10.0]) == pytest.approx(1.1)
    assert median_ratio([1.0, 2.0], [1.0, 2.0]) == 1.0
    with pytest.raises(ValueError):
        median_ratio([1.0, 2.0], [1.0])


@pytest.mark.slow
def test_interleaved_on_jax_times_jax_fused_and_jax_modfused_side_by_side(tmp_path):
    out = run_python(["-m", "benchmarks.modulated", "--backend", "jax", "--variants",
                      "none,simple,retroactive", "--interleaved", "2", "--units", "5",
                      "--steps", "7", "--batch", "2"],
                     env={"HEBBKERAS_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "jax, batch 2, 5 units, T = 7" in out.stdout
    rows = re.findall(r"^\| (\w+) \| (\w+) \| ([\d.]+) \| ([\d.]+)x \| ([\d.]+) \| ([\d.]+)x \|$",
                      out.stdout, re.M)
    assert [r[:2] for r in rows] == [("none", "jax_fused"), ("simple", "jax_modfused"),
                                     ("retroactive", "jax_modfused")]
    assert rows[0][3] == rows[0][5] == "1.00"  # the first variant against itself
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("timing", [[], ["--train_on_batch"]])
def test_interleaved_inside_xla_times_xla_modfused_and_tf_remat_side_by_side(tmp_path, timing):
    out = run_python(["-m", "benchmarks.modulated", "--jit", "--variants",
                      "none,simple,retroactive,retroactive-tf_remat", "--interleaved", "2",
                      "--units", "5", "--steps", "7", "--batch", "2", *timing],
                     env={"HEBBKERAS_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^\| ([\w-]+) \| (\w+) \| ([\d.]+) \| ([\d.]+)x \|", out.stdout, re.M)
    assert [r[:2] for r in rows] == [("none", "xla_fused"), ("simple", "xla_modfused"),
                                     ("retroactive", "xla_modfused"),
                                     ("retroactive-tf_remat", "tf_remat")]
