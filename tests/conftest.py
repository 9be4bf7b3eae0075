"""Tests run on 8 fake CPU devices, set before JAX initialises its backend.

The long single-device training tests (marked `single_device`: convergence and guidance on the
analytic mixture) run in a second pytest session with JAXDISTILL_TEST_CPU_DEVICES=1 (see the
Makefile): splitting the host into 8 fake devices makes a one-device computation slower
(measured alone: 1,000 DMD2 iterations in 16.9 s with 8 devices vs 10.8 s with 1; in the
two-worker suite the split saves about 30 s).
"""

import os

NUM_CPU_DEVICES = int(os.environ.get("JAXDISTILL_TEST_CPU_DEVICES", "8"))
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_CPU_DEVICES}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


def _has_gpu() -> bool:
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or not _has_gpu():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (JAX_PLATFORMS=cpu or none present)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def pytest_sessionstart(session):
    n = len(jax.devices("cpu"))
    assert n == NUM_CPU_DEVICES, f"tests expect {NUM_CPU_DEVICES} fake CPU devices, found {n}"
