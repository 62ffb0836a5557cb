import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# --- The native CPU kernels (hebbkeras.native) -------------------------------
# Where a GPU (or TPU) is visible the fused path never uses the native CPU
# kernels (`hebbkeras.native.available()` is False there), so tests that need
# them are marked `@pytest.mark.native_cpu` (or `pytest.param(..., marks=
# pytest.mark.native_cpu)`) and are skipped on such machines, with the reason.

import pytest  # noqa: E402


def native_cpu_skip_reason():
    """Why the native-kernel tests cannot run here, or None where they can."""
    import tensorflow as tf

    found = [d.name for kind in ("GPU", "TPU") for d in tf.config.list_logical_devices(kind)]
    if found:
        return (f"needs the native CPU kernels, which the fused path does not use where a "
                f"GPU or TPU is visible ({', '.join(found)})")
    return None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "native_cpu: needs hebbkeras.native's CPU kernels on the fused path "
        "(skipped where a GPU or TPU is visible)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("native_cpu"):
        reason = native_cpu_skip_reason()
        if reason:
            pytest.skip(reason)
