"""One UNet feed-forward compiled for a TPU slice with fsdp-split kernels, with and without
FSDP's explicit all-gather of each kernel before use and reduce-scatter of its gradient after
(`jaxdistill.models.target.apply_gathered`): HBM traffic, FLOPs, collectives and the loops XLA
adds (needs the libtpu extra; seconds).

    python experiments/fsdp_gather.py                          # SD1.5 64x64 GEGLU, v5p-64 at (1, 32, 1)
    python experiments/fsdp_gather.py --topology v5e-256 --mesh 4,64,1 --per_chip 2 --dim 640 --tokens 1024

Without the gather, XLA's SPMD partitioner keeps a kernel split over fsdp while the batch is
split over the same axis and runs the matmul as a windowed einsum (`windowed_dot_general` loops,
collective-permutes of kernel shards), every trip reading and writing the whole output. The
gathered kernels' gradients are constrained back to the kernels' shards (a reduce-scatter where
XLA makes one); "gradient whole" leaves them whole over fsdp, as the gather's transpose does;
"one-stage gradient" sums them over every batch shard, then slices (what the layers do without
a data axis), where the layers, on a mesh with data and fsdp axes, reduce-scatter over fsdp and
then all-reduce the shard over data ("gathered"). The feed-forward is
`jaxdistill.models.unet.FeedForward` (GEGLU, 4x), value and gradient of a sum of squares, its
activations rematerialised as the planning rows do.
"""

from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdistill.models import target
from jaxdistill.models.unet import FeedForward
from jaxdistill.train import costs
from jaxdistill.train import sharding as shd
from jaxdistill.train import topology as tpu


KERNELS = ("as split", "gathered, gradient whole", "gathered, one-stage gradient", "gathered")


def compile_feed_forward(mesh, dim: int, tokens: int, batch: int, kernels: str):
    """The feed-forward's value and gradient compiled for `mesh`, its kernels (`KERNELS`) as
    split (traced outside `compiling_for`: the layers see no mesh), gathered with the gradient
    left whole (the gather as a plain sharding constraint), gathered with the gradient summed
    over all batch shards and sliced (`target.gather_weight` alone), or as the layers do."""
    ff = FeedForward(dim, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(ff, nnx.Param)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), nnx.to_pure_dict(params))

    def loss(p, x):
        y = jax.checkpoint(lambda p_, x_: nnx.merge(graphdef, p_)(x_))(p, x)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    step = jax.jit(jax.grad(loss, argnums=(0, 1)),
                   in_shardings=(shd.named(mesh, shd.param_specs(ff)), NamedSharding(mesh, P(shd.BATCH_AXES))))
    x = jax.ShapeDtypeStruct((batch, tokens, dim), jnp.bfloat16)
    if kernels == "as split":
        return step.lower(params, x).compile()
    gather, apply_gathered = target._gather, target.apply_gathered
    if kernels == "gathered, gradient whole":
        target._gather = lambda w, whole, own: jax.lax.with_sharding_constraint(w, whole)
    if kernels != "gathered":
        target.apply_gathered = lambda op, lhs, w, axes: op(lhs, target.gather_weight(w, axes))
    try:
        with target.compiling_for(mesh):
            return step.lower(params, x).compile()
    finally:
        target._gather, target.apply_gathered = gather, apply_gathered


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--topology", default="v5p-64")
    p.add_argument("--mesh", default="1,32,1", help="data,fsdp,tensor")
    p.add_argument("--per_chip", type=int, default=32, help="samples per chip")
    p.add_argument("--dim", type=int, default=320, help="channels (SD1.5: 320, 640, 1280)")
    p.add_argument("--tokens", type=int, default=4096, help="tokens (SD1.5 at 512px: 4096 at 64x64)")
    args = p.parse_args()
    devices = tpu.devices(tpu.parse(args.topology))
    mesh = shd.make_mesh(tuple(int(a) for a in args.mesh.split(",")), devices)
    chips = len(devices)
    print(f"FeedForward({args.dim}) on [{args.per_chip * chips}, {args.tokens}, {args.dim}] bf16, {args.topology} "
          f"at mesh {args.mesh}; per chip:")
    print(f"{'kernels':<30} {'HBM GB':>8} {'TFLOPs':>7} {'collectives MiB':>60} {'loops (windowed einsum)':>24}")
    for kernels in KERNELS:
        compiled = compile_feed_forward(mesh, args.dim, args.tokens, args.per_chip * chips, kernels)
        cost = costs.step_cost(compiled, chips)
        text = compiled.as_text()
        loops = re.findall(r" while\(.*body=%?([\w.\-]+)", text)
        windowed = sum("windowed" in body for body in loops)
        sent = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in cost.collectives.items() if v)
        print(f"{kernels:<30} {cost.bytes_accessed / 1e9:>8.2f} {cost.flops / 1e12:>7.2f} "
              f"{sent:>60} {len(loops):>12} ({windowed})")


if __name__ == "__main__":
    main()
