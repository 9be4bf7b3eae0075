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
    fsdp is 1. Layers call it through `apply_gathered`, which reduces the gradient in two stages
    where the mesh has a data axis too.

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
    whole, own = _kernel_shardings(m, w, axes)
    return _gather(w, whole, own)


def apply_gathered(op, lhs: jax.Array, w: jax.Array, axes: tuple) -> jax.Array:
    """`op(lhs, w)` for a layer's linear map `op` (a matmul or convolution, linear in each
    argument) of a batch `lhs` and a kernel `w` split over the mesh axes `axes`, with the kernel
    gathered over fsdp first (`gather_weight`).

    Where the mesh splits the batch over data as well as fsdp (a v5e-256 or v6e-256 at
    (4, 64, 1)), the kernel's gradient is the sum of data × fsdp partial sums, and XLA's SPMD
    partitioner sums them with one all-reduce over every device, then slices: the slice covers a
    sub-group, so XLA does not turn the pair into a reduce-scatter. Here each device computes its
    partial gradient under `jax.shard_map` and reduces it in two stages: a reduce-scatter over
    fsdp (the kernel's own split), then an all-reduce of that 1/fsdp shard over data. A ring
    model sends (f−1)/f·S + 2(d−1)/(d·f)·S bytes per device instead of 2(df−1)/(df)·S: about
    half. What the TPU compiler keeps depends on the kernel's size. For SDXL's 32×32-level
    feed-forward (FeedForward(1280), kernels of 25 and 12.5 MiB in bf16) compiled for a v5e-256
    at (4, 64, 1), 2 samples per chip, its gradients' collectives per chip went from an
    all-reduce of 74.8 MiB to a reduce-scatter of 44.3 (the kernels padded from 1,280 to 1,536
    rows), an all-reduce of 0.9 and collective-permutes of 7.4: 52.6 MiB. For FeedForward(640)
    and FeedForward(320) (kernels of 6.25 MiB and less) it turns the reduce-scatter into an
    all-reduce and sends the same bytes both ways (18.7 and 4.7 MiB;
    `experiments/fsdp_gather.py`). On a multi-host slice without a data axis (a v5p-64 at
    (1, 32, 1)) it all-reduces even an explicit reduce-scatter of a 50 MiB kernel
    (`experiments/tpu_plan.md`), so the one-stage path stays there, as it does with a tensor
    axis, for kernels not split over fsdp and for batches that data × fsdp does not divide. The
    kernel's cotangent is `op`'s own transpose on each device's shard of the batch, so the
    gradient is the unsharded one up to the order of the sums."""
    m = mesh()
    data, fsdp, tensor = (1, 1, 1) if m is None else (m.shape.get(a, 1) for a in ("data", "fsdp", "tensor"))
    if data == 1 or fsdp == 1 or tensor > 1 or "fsdp" not in axes or lhs.shape[0] % (data * fsdp):
        return op(lhs, gather_weight(w, axes))
    return _two_stage(op, lhs, w, m, axes)


def _kernel_shardings(m: jax.sharding.Mesh, w: jax.Array, axes: tuple) -> tuple[NamedSharding, NamedSharding]:
    """(the kernel whole over fsdp and still split over tensor, the kernel's own sharding)."""
    tensor = m.shape.get("tensor", 1)
    whole = P(*("tensor" if a == "tensor" and tensor > 1 and w.shape[i] % tensor == 0 else None
                for i, a in enumerate(axes)))
    return NamedSharding(m, whole), NamedSharding(m, P(*axes))


def _two_stage(op, lhs: jax.Array, w: jax.Array, m: jax.sharding.Mesh, axes: tuple) -> jax.Array:
    """`apply_gathered`'s two-stage gradient reduction (see there); tensor is 1, so the gathered
    kernel is whole on every device."""
    batch, whole = P(BATCH_AXES), NamedSharding(m, P())
    scatter_dim = axes.index("fsdp")

    def kernel_grad(x, g, k):  # per device: its batch shard's partial sum, reduced in two stages
        k = jax.lax.pcast(k, BATCH_AXES, to="varying")  # its cotangent varies with the batch shard
        (dk,) = jax.vjp(lambda k_: op(x, k_), k)[1](g)
        return jax.lax.psum(jax.lax.psum_scatter(dk, "fsdp", scatter_dimension=scatter_dim, tiled=True), "data")

    @jax.custom_vjp
    def apply(x, k):
        return op(x, jax.lax.with_sharding_constraint(k, whole))

    def apply_fwd(x, k):
        k = jax.lax.with_sharding_constraint(k, whole)
        return op(x, k), (x, k)

    def apply_bwd(residuals, g):
        x, k = residuals
        (dx,) = jax.vjp(lambda x_: op(x_, k), x)[1](g)
        dk = jax.shard_map(kernel_grad, mesh=m, in_specs=(batch, batch, P()), out_specs=P(*axes))(x, g, k)
        return dx, dk

    apply.defvjp(apply_fwd, apply_bwd)
    return apply(lhs, w)


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
