"""The devices a program is being compiled for, which pick the kernels that models trace.

Outside `compiling_for` that is `jax.default_backend()`. Inside it, it is the devices of the
given mesh. That mesh may belong to a TPU topology planned from a CPU host
(`jaxdistill info --topology`). `Distiller.compile` traces the train step under its own mesh.

The kernels that ask are attention (`jaxdistill.models.attention`: cuDNN, splash) and
convolution (`jaxdistill.models.conv`: tap-wise weight gradients on CPU). Models also pin their
activations to the mesh's batch axes (`shard_batch`) and gather their kernels over its fsdp axis
before use (`gather_weight`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")  # jaxdistill.train.sharding's mesh axes that split the batch
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


def jit_for(mesh: jax.sharding.Mesh, fn, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)` traced under `compiling_for(mesh)`: for programs that run on
    `mesh` outside the train step (samplers), so that they get the step's kernels and batch
    constraints."""
    jitted = jax.jit(fn, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args):
        with compiling_for(mesh):
            return jitted(*args)

    return call


def mesh() -> jax.sharding.Mesh | None:
    """The mesh given to the enclosing `compiling_for`, or None."""
    return _MESH.get()


def platform() -> str:
    """'cpu', 'gpu' or 'tpu': the platform of `mesh()`'s devices, else the default backend's."""
    m = mesh()
    return m.devices.flat[0].platform if m is not None else jax.default_backend()


def shard_batch(x: jax.Array) -> jax.Array:
    """`x` constrained to be split along its first (batch) axis over `mesh()`'s batch axes and
    replicated along the others; unchanged outside `compiling_for`, on one device, or when the
    batch does not divide. Without this, XLA's SPMD partitioner may keep a matmul's weights
    sharded over fsdp and gather the activations instead: every device then computes the whole
    batch's activations (the tiny SDXL-shaped SiD-LSG step on 8 CPU devices at mesh (1, 8, 1):
    3.4× the temporaries and 1.9× the FLOPs of data parallelism, 4.9× and 2.9× without
    `gather_weight` as well; tests/test_planning.py)."""
    m = mesh()
    if m is None:
        return x
    axes = tuple(a for a in BATCH_AXES if m.shape.get(a, 1) > 1)
    if not axes or x.shape[0] % math.prod(m.shape[a] for a in axes):
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(m, P(axes)))


def gather_weight(w: jax.Array, axes: tuple) -> jax.Array:
    """FSDP's all-gather before use, and its reduce-scatter after: a layer's kernel `w`, whose
    dims are split over the mesh axes `axes` (a mesh axis name or None per dim: the kernel's own
    sharding), constrained whole over `mesh()`'s fsdp axis and still split over tensor; its
    gradient, the sum of the batch shards' partial sums, is taken whole and sliced back to `axes`
    (one reduce-scatter, where XLA makes the pair one). Unchanged outside `compiling_for` or when
    fsdp is 1.

    Without the gather, XLA's SPMD partitioner may keep a kernel split over fsdp while the batch
    is split over the same axis, and run the matmul as a windowed einsum: a loop over the
    kernel's shards in which every trip reads and writes the whole output. One SD1.5 64×64 GEGLU
    feed-forward (value and gradient, 32 samples per chip) compiled for a v5p-64 at mesh
    (1, 32, 1) moved 104.2 GB of HBM per chip and ran 1.67 TFLOPs that way, and 8.8 GB and 1.22
    TFLOPs with its kernels gathered (`experiments/fsdp_gather.py`).

    Without the constraint on the gradient, the gather's transpose leaves it whole over fsdp,
    and XLA may all-reduce it (twice a ring reduce-scatter's bytes) before each chip keeps its
    slice: a tiny SD1.5-shaped DMD2 step compiled for a v5p-8 at (1, 4, 1) sent 3.07 MB per chip
    that way and 2.18 MB with the constraint (all-reduce 3.04 → 1.28 MB, reduce-scatter 0.02 →
    0.91). On multi-host slices (v5e-16, v5p-16 to v5p-64, v5e-256) the TPU compiler
    all-reduces and slices either way; on single-host ones (v5p-8, v5e-8) it reduce-scatters.
    A custom VJP, so reverse mode only (as the CPU convolution already is)."""
    m = mesh()
    if m is None or m.shape.get("fsdp", 1) == 1:
        return w
    tensor = m.shape.get("tensor", 1)
    whole = P(*("tensor" if a == "tensor" and tensor > 1 and w.shape[i] % tensor == 0 else None
                for i, a in enumerate(axes)))
    return _gather(w, NamedSharding(m, whole), NamedSharding(m, P(*axes)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gather(w: jax.Array, whole: NamedSharding, own: NamedSharding) -> jax.Array:
    return jax.lax.with_sharding_constraint(w, whole)


def _gather_fwd(w, whole, own):
    return _gather(w, whole, own), None


def _gather_bwd(whole, own, _, g):
    # Summed whole first, then sliced: XLA may make the pair one reduce-scatter. Constrained to `own`
    # directly, XLA may run the kernel-gradient matmul as a windowed einsum over the kernel's
    # shards instead (one SD1.5 feed-forward on a v5p-64: 45.2 GB of HBM against 8.8).
    return (jax.lax.with_sharding_constraint(jax.lax.with_sharding_constraint(g, whole), own),)


_gather.defvjp(_gather_fwd, _gather_bwd)
