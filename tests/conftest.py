"""Every test runs on 8 fake CPU devices, set before JAX initialises its backend."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
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
    assert n == 8, f"tests expect 8 fake CPU devices, found {n}"
