"""Per-chip memory of one self-attention layer, forward and backward, XLA attention against the
splash kernel, compiled for a TPU slice from any host (needs the libtpu extra, as `jaxdistill
info --topology`):

    python experiments/attention_memory.py [--topology v5p-8] [--mesh 1,4,1] [--batch 16]

One row per self-attention shape of SD1.5 at 512² and SDXL at 1024² (sequence length, heads,
head_dim), bf16, the batch split over the mesh's data and fsdp axes as in the train step. Splash
pads head_dim to a multiple of 128 (jaxdistill.models.attention); XLA materialises the
[batch, heads, L, L] probabilities.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdistill.models import attention as attn, target
from jaxdistill.train import sharding as shd
from jaxdistill.train import topology as tpu

# (model, latent level, sequence length, heads, head_dim) of the self-attention layers.
SHAPES = [("SD1.5", "64x64", 4096, 8, 40), ("SD1.5", "32x32", 1024, 8, 80), ("SD1.5", "16x16", 256, 8, 160),
          ("SDXL", "64x64", 4096, 10, 64), ("SDXL", "32x32", 1024, 20, 64)]


def compile_grad(impl: str, mesh, batch: int, length: int, heads: int, head_dim: int):
    x = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.bfloat16,
                             sharding=NamedSharding(mesh, P(shd.BATCH_AXES)))
    loss = lambda q, k, v: jnp.sum(attn.attention(q, k, v, impl=impl).astype(jnp.float32))  # noqa: E731
    with target.compiling_for(mesh):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x)
    return lowered.compile()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--topology", default="v5p-8")
    p.add_argument("--mesh", default="1,4,1", help="data,fsdp,tensor")
    p.add_argument("--batch", type=int, default=16, help="global batch")
    args = p.parse_args()
    devices = tpu.devices(tpu.parse(args.topology))
    mesh = shd.make_mesh(tuple(int(s) for s in args.mesh.split(",")), devices)
    print(f"{args.topology} ({len(devices)} × {devices[0].device_kind}), mesh {dict(mesh.shape)}, global batch "
          f"{args.batch}; one self-attention layer, forward + backward, bf16; temporaries per chip\n")
    print("| model | level | L | heads | head_dim | XLA temp GiB | splash temp GiB | ratio | splash in HLO |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, level, length, heads, head_dim in SHAPES:
        temp, kernel = {}, False
        for impl in ("xla", "splash"):
            compiled = compile_grad(impl, mesh, args.batch, length, heads, head_dim)
            temp[impl] = compiled.memory_analysis().temp_size_in_bytes / 2**30
            kernel = kernel or (impl == "splash" and "tpu_custom_call" in compiled.as_text())
        ratio = f"{temp['xla'] / temp['splash']:.1f}" if temp["splash"] else "-"
        print(f"| {model} | {level} | {length} | {heads} | {head_dim} | {temp['xla']:.3f} | {temp['splash']:.3f} | "
              f"{ratio} | {kernel} |", flush=True)


if __name__ == "__main__":
    main()
