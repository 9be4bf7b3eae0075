"""One self-attention layer, forward and backward, per chip of a TPU slice: XLA attention against
the splash kernel with its default 128-token tiles and with jaxdistill's (`attention.splash_block`),
compiled ahead of time from any host (needs the libtpu extra, as `jaxdistill info --topology`):

    python experiments/attention_kernels.py [--topology v5p-8] [--mesh 1,4,1] [--batch 16]

One row per self-attention shape of SD1.5 at 512² and SDXL at 1024² (sequence length, heads,
head_dim) and kernel, bf16, the batch split over the mesh's data and fsdp axes as in the train
step. Columns: temporaries per chip (XLA's memory analysis), FLOPs and HBM bytes per chip
(`jaxdistill.train.costs.step_cost`: XLA's cost analysis, plus the splash kernels' matmuls and
tile re-reads, which XLA does not see) and the roofline time max(FLOPs / peak, bytes /
bandwidth) from the chip's published rates. Splash pads head_dim to a multiple of 128; XLA
materialises the [batch, heads, L, L] probabilities. A roofline, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
from unittest import mock

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdistill.models import attention as attn, target
from jaxdistill.train import costs
from jaxdistill.train import sharding as shd
from jaxdistill.train import topology as tpu

# (model, latent level, sequence length, heads, head_dim) of the self-attention layers.
SHAPES = [("SD1.5", "64x64", 4096, 8, 40), ("SD1.5", "32x32", 1024, 8, 80), ("SD1.5", "16x16", 256, 8, 160),
          ("SDXL", "64x64", 4096, 10, 64), ("SDXL", "32x32", 1024, 20, 64)]
# row label: (attention impl, tile override or None for attention.splash_block's)
KERNELS = {"xla": ("xla", None), "splash, 128 tiles": ("splash", 128), "splash": ("splash", None)}


def compile_grad(impl: str, mesh, batch: int, length: int, heads: int, head_dim: int, tile: int | None = None):
    x = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.bfloat16,
                             sharding=NamedSharding(mesh, P(shd.BATCH_AXES)))

    def forward_backward(q, k, v, cotangent):  # the cotangent an input, so XLA cannot simplify the backward
        return jax.vjp(lambda q, k, v: attn.attention(q, k, v, impl=impl), q, k, v)[1](cotangent)

    tiles = (mock.patch.object(attn, "splash_block", lambda length, itemsize: min(tile, length)) if tile
             else contextlib.nullcontext())
    with target.compiling_for(mesh), tiles:
        lowered = jax.jit(forward_backward).lower(x, x, x, x)
    return lowered.compile()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--topology", default="v5p-8")
    p.add_argument("--mesh", default="1,4,1", help="data,fsdp,tensor")
    p.add_argument("--batch", type=int, default=16, help="global batch")
    args = p.parse_args()
    slice_ = tpu.parse(args.topology)
    devices = tpu.devices(slice_)
    mesh = shd.make_mesh(tuple(int(s) for s in args.mesh.split(",")), devices)
    chip = slice_.chip
    print(f"{args.topology} ({len(devices)} × {devices[0].device_kind}), mesh {dict(mesh.shape)}, global batch "
          f"{args.batch}; one self-attention layer, forward + backward, bf16; per chip\n")
    print("| model | level | L | heads | head_dim | kernel | temporaries GiB | GFLOP | HBM GB | roofline ms | binds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, level, length, heads, head_dim in SHAPES:
        for label, (impl, tile) in KERNELS.items():
            compiled = compile_grad(impl, mesh, args.batch, length, heads, head_dim, tile)
            step = costs.step_cost(compiled, len(devices))
            if impl == "splash" and not step.splash_calls:
                raise RuntimeError(f"no splash kernel in the compiled {model} {level} layer: it fell back to XLA")
            t = step.times(chip)
            print(f"| {model} | {level} | {length} | {heads} | {head_dim} | {label} | "
                  f"{step.memory['temp'] / 2**30:.3f} | {step.flops / 1e9:,.1f} | {step.bytes_accessed / 1e9:.2f} | "
                  f"{max(t['compute'], t['hbm']) * 1e3:.2f} | {'compute' if t['compute'] >= t['hbm'] else 'HBM'} |",
                  flush=True)


if __name__ == "__main__":
    main()
