"""Keras's own distribution API on JAX: `keras.distribution.DataParallel` with the
plastic layers, in a fresh JAX worker process with two CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`), against one device and
against TensorFlow (this process). A file of its own so that pytest-xdist runs it
beside `tests/test_backends.py` rather than after it."""

import numpy as np

import pytest

from tests.backend_worker import fit_model, fit_step
from tests.test_backends import FIT, backend_or_skip, close, random_weights, run_worker


@pytest.mark.slow
def test_jax_data_parallel_on_two_devices_equals_one_device_and_tensorflow(tmp_path):
    """`keras.distribution.DataParallel` over two JAX CPU devices: one `fit` step of
    the PlasticRNN -> PlasticDense model (JAX's fused kernel) with the batch split
    between the devices leaves the weights one device leaves, and TensorFlow's."""
    backend_or_skip("jax")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, FIT["steps"], FIT["width"])).astype("float32")
    y = np.sign(rng.normal(size=(4, FIT["dense"]["units"]))).astype("float32")
    weights = random_weights(rng, fit_model(FIT))
    reference, logs = fit_step(FIT, weights, x, y)  # TensorFlow, this process
    np.savez(tmp_path / "inputs.npz", dp_x=x, dp_y=y, dpw_n=len(weights),
             **{f"dpw_{k}": w for k, w in enumerate(weights)})
    report, out = run_worker("jax", dict(data_parallel=FIT), tmp_path,
                             env=dict(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    layout = report["data_parallel"]
    assert layout["devices"] == 2 and layout["data_axes"][0] == "batch", layout
    assert set(layout["variable_devices"]) == {2}, layout  # replicated on both devices
    want = reference.get_weights()
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(want, weights)) > 1e-2  # it trained
    for k, w in enumerate(want):
        close(out[f"dp2_w_{k}"], out[f"dp1_w_{k}"], f"weight {k}: two devices against one",
              atol=1e-6)
        close(out[f"dp2_w_{k}"], w, f"weight {k}: two JAX devices against TensorFlow")
    one, two = layout["logs"]
    for key in ("loss", "bit_error"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(two[key], logs[key], rtol=1e-5, err_msg=key)
