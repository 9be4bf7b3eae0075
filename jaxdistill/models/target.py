"""The devices a program is being compiled for, which pick the kernels that models trace.

Outside `compiling_for` that is `jax.default_backend()`. Inside it, it is the devices of the
given mesh. That mesh may belong to a TPU topology planned from a CPU host
(`jaxdistill info --topology`). `Distiller.compile` traces the train step under its own mesh.

The kernels that ask are attention (`jaxdistill.models.attention`: cuDNN, splash) and
convolution (`jaxdistill.models.conv`: tap-wise weight gradients on CPU).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_MESH = contextvars.ContextVar("compile_target_mesh", default=None)


@contextlib.contextmanager
def compiling_for(mesh: jax.sharding.Mesh):
    """Trace for the devices of `mesh`, e.g. around `jax.jit(...).lower(...)` of a train step for
    a TPU slice: their platform picks the kernels, and splash attention is mapped over the mesh."""
    token = _MESH.set(mesh)
    try:
        yield
    finally:
        _MESH.reset(token)


def mesh() -> jax.sharding.Mesh | None:
    """The mesh given to the enclosing `compiling_for`, or None."""
    return _MESH.get()


def platform() -> str:
    """'cpu', 'gpu' or 'tpu': the platform of `mesh()`'s devices, else the default backend's."""
    m = mesh()
    return m.devices.flat[0].platform if m is not None else jax.default_backend()
