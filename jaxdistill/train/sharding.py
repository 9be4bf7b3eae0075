"""The device mesh ('data', 'fsdp', 'tensor') and logical-axis rules (design §6).

Parameters carry logical axis names (`nnx.with_partitioning`); a rules table maps each name to
mesh axes. The batch is split over ('data', 'fsdp'); optimizer states follow their parameters.
One device is the trivial mesh (1, 1, 1): the same code path.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # also jaxdistill.models.target.BATCH_AXES (tests check they agree)
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
)


def make_mesh(shape: Sequence[int] = (1, 1, 1), devices=None) -> jax.sharding.Mesh:
    """A mesh of shape (data, fsdp, tensor) with explicit Auto axis types (GSPMD propagation)."""
    shape = tuple(int(s) for s in shape)
    devices = jax.devices() if devices is None else devices
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"mesh shape must be three positive sizes (data, fsdp, tensor); got {shape}.")
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices; {len(devices)} are available. "
                         f"Nearest shapes that fit: {mesh_suggestions(len(devices), shape)}.")
    if devices[0].platform == "tpu":  # order the chips so that inner mesh axes are ICI neighbours
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    else:
        arr = np.asarray(devices).reshape(shape)
    return jax.sharding.Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def mesh_suggestions(n: int, near: Sequence[int] = (), count: int = 3) -> list[tuple[int, int, int]]:
    """The `count` (data, fsdp, tensor) shapes with product `n` closest to `near` (in log2 steps
    per axis; all data-parallel first when `near` is not given)."""
    shapes = [(d, f, n // (d * f)) for d in range(1, n + 1) if n % d == 0
              for f in range(1, n // d + 1) if (n // d) % f == 0]
    near = tuple(near) if len(tuple(near)) == 3 and min(near) > 0 else (n, 1, 1)
    dist = lambda s: sum(abs(math.log2(a) - math.log2(b)) for a, b in zip(s, near))  # noqa: E731
    return sorted(shapes, key=lambda s: (dist(s), s[2], s[1]))[:count]


def _resolve(spec: P, rules: dict) -> P:
    out = []
    for name in spec:
        if name is None:
            out.append(None)
        elif name in rules:
            out.append(rules[name])
        else:
            raise ValueError(f"logical axis {name!r} has no rule; add it to the sharding rules {sorted(rules)}.")
    return P(*out)


def param_specs(module: nnx.Module, rules=DEFAULT_RULES) -> dict:
    """PartitionSpecs (mesh axes) of a module's parameters, as a pure dict like its params."""
    logical = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(module, nnx.Param)))
    table = dict(rules)
    return jax.tree.map(lambda s: _resolve(s, table), logical, is_leaf=lambda x: isinstance(x, P))


def check_divisible(params: Any, specs: Any, mesh) -> None:
    """Every sharded dimension must divide by its mesh axes' size; name the offender if not."""
    def check(path, x, spec):
        for dim, axes in zip(x.shape, tuple(spec) + (None,) * (x.ndim - len(spec))):
            if axes is None:
                continue
            size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
            if dim % size:
                raise ValueError(
                    f"parameter {jax.tree_util.keystr(path)} of shape {x.shape} cannot be sharded as {spec}: "
                    f"dimension {dim} is not divisible by mesh size {size}; change the rules or the mesh (sizes "
                    f"that divide it near {size}: {sorted((d for d in range(1, dim + 1) if dim % d == 0), key=lambda d: (abs(math.log2(d / size)), -d))[:3]})."
                )
    jax.tree_util.tree_map_with_path(check, params, specs, is_leaf=lambda x: isinstance(x, P))


def named(mesh, specs: Any) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def opt_state_specs(tx: optax.GradientTransformation, params: Any, specs: Any) -> Any:
    """Specs of an optimizer state: parameter-shaped leaves follow their parameter, the rest
    (counts, scalars) are replicated."""
    abstract = jax.eval_shape(tx.init, params)
    mapped = optax.tree_map_params(tx, lambda _, s: s, abstract, specs,
                                   transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
    return jax.tree.map(lambda x: x if isinstance(x, P) else P(), mapped, is_leaf=lambda x: isinstance(x, P))


def check_batch(batch_size: int, mesh, microbatches: int = 1) -> None:
    """The global batch must split into `microbatches` equal microbatches, each split evenly
    over ('data', 'fsdp')."""
    if microbatches < 1:
        raise ValueError(f"microbatches={microbatches} must be at least 1 (1: no gradient accumulation).")
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    unit = shards * microbatches
    if batch_size % unit:
        nearest = sorted({max(unit, batch_size // unit * unit), (batch_size // unit + 1) * unit})
        per = f"microbatches × data × fsdp = {microbatches} × {shards}" if microbatches > 1 else f"data×fsdp = {shards}"
        raise ValueError(
            f"batch_size={batch_size} does not fit the mesh: it must be a multiple of {per} "
            f"(mesh {dict(mesh.shape)}); the nearest that fit are {' and '.join(map(str, nearest))}."
        )


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))
