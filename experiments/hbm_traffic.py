"""How much of a UNet layer's kernel traffic on a TPU goes through HBM, by jaxdistill's count
(`jaxdistill.train.costs.loop_costs`), against the same count with every memory space taken as
HBM and XLA's own cost analysis (needs the libtpu extra; a minute).

    python experiments/hbm_traffic.py                      # SDXL's 64x64 level, v6e-8 at (1, 8, 1), 4 per chip
    python experiments/hbm_traffic.py --topology v5e-8 --per_chip 2
    python experiments/hbm_traffic.py --saved rows.md.jsonl     # planning steps saved by tpu_plan.py

With `--saved`, the same two counts, by kernel kind, of whole train steps a planning search saved
(`experiments/tpu_plan.py --out rows.md --hlo_dir hlo`), read from their optimised HLO in a minute
each without compiling: how much of a step's traffic the compiler keeps in VMEM, and how that
changes with the batch.

The TPU compiler's memory-space assignment keeps many of a step's arrays in VMEM (memory space
1, `S(1)` in the optimised HLO): results a kernel writes there and the next one reads, operands
it prefetches with async copies and slices. Those reads and writes are not HBM traffic; the
copies are, on their HBM side. Each row is one layer's value and gradient (a sum of squares,
activations rematerialised as the planning rows do), per chip, plus two kernels whose HBM
traffic is known: an elementwise op reads and writes its array once, a matmul its two operands
and its result.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdistill.models import layers, target
from jaxdistill.models.unet import BasicTransformerBlock
from jaxdistill.train import costs
from jaxdistill.train import sharding as shd
from jaxdistill.train import topology as tpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpu_plan import saved_records, saved_step  # noqa: E402  this folder's planning script


def compile_layer(mesh, module, *inputs):
    """The value and gradient of a sum of squares of `module`'s output, rematerialised, its
    parameters and inputs sharded as the train step shards them."""
    graphdef, params = nnx.split(module, nnx.Param)
    specs = shd.named(mesh, shd.param_specs(module))
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), nnx.to_pure_dict(params))

    def loss(p, *xs):
        y = jax.checkpoint(lambda p_, *xs_: nnx.merge(graphdef, p_)(*xs_))(p, *xs)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    batch = NamedSharding(mesh, P(shd.BATCH_AXES))
    step = jax.jit(jax.grad(loss, argnums=tuple(range(len(inputs) + 1))),
                   in_shardings=(specs,) + (batch,) * len(inputs))
    with target.compiling_for(mesh):
        return step.lower(params, *inputs).compile()


def compile_kernel(mesh, fn, *inputs):
    """`fn` on one chip's whole arrays (no collectives)."""
    whole = NamedSharding(mesh, P())
    return jax.jit(fn, in_shardings=(whole,) * len(inputs), out_shardings=whole).lower(*inputs).compile()


def every_memory_as_hbm(hlo_text: str) -> str:
    """The optimised HLO with every array's memory space dropped, so `costs.loop_costs` counts
    the arrays in VMEM (`S(1)`) as HBM traffic too."""
    return re.sub(r"S\(\d+\)", "", hlo_text)


def saved_step_traffic(record: dict) -> list[tuple[str, float, float]]:
    """[(kernel kind, HBM bytes per chip by jaxdistill's count, the bytes with every memory taken
    as HBM)] of the step a planning record saved (`tpu_plan.py --hlo_dir`), kind "all" last."""
    text, devices, _, _ = saved_step(record)
    hbm = costs.loop_costs(text, devices)
    every = costs.loop_costs(every_memory_as_hbm(text), devices)
    return ([(kind, hbm.traffic_by_kind.get(kind, 0.0), e) for kind, e in every.traffic_by_kind.items()]
            + [("all", hbm.hbm_bytes, every.hbm_bytes)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--topology", default="v6e-8")
    p.add_argument("--per_chip", type=int, default=4, help="samples per chip")
    p.add_argument("--dim", type=int, default=640, help="channels (SDXL's 64x64 level: 640)")
    p.add_argument("--size", type=int, default=64, help="feature map height and width")
    p.add_argument("--saved", default="", help="instead, count the steps a planning .jsonl saved (tpu_plan.py --hlo_dir)")
    args = p.parse_args()
    if args.saved:
        print("per chip, GB")
        print("| step | kernel kind | HBM (jaxdistill) | every memory as HBM | in HBM |")
        print("|---|---|---|---|---|")
        for r in saved_records(args.saved):
            step = f"{r['recipe']} on {r['slice']} at {r['best']['batch']}"
            for kind, hbm, every in saved_step_traffic(r):
                print(f"| {step} | {kind} | {hbm / 1e9:,.1f} | {every / 1e9:,.1f} | "
                      f"{f'{100 * hbm / every:.0f}%' if every else '-'} |", flush=True)
        return
    devices = tpu.devices(tpu.parse(args.topology))
    mesh = shd.make_mesh((1, len(devices), 1), devices)
    b, d, s = args.per_chip * len(devices), args.dim, args.size
    bf16 = jnp.bfloat16
    rngs = nnx.Rngs(0)
    n = 8192
    big = jax.ShapeDtypeStruct((n, n), bf16)
    rows = [
        (f"ResnetBlock2D({d}), [{b}, {s}, {s}, {d}]",
         compile_layer(mesh, layers.ResnetBlock2D(d, d, temb_channels=1280, dtype=bf16, rngs=rngs),
                       jax.ShapeDtypeStruct((b, s, s, d), bf16), jax.ShapeDtypeStruct((b, 1280), bf16)), None),
        (f"BasicTransformerBlock({d}), [{b}, {s * s}, {d}], 77 text tokens",
         compile_layer(mesh, BasicTransformerBlock(d, d // 64, 64, cross_attention_dim=2048, dtype=bf16, rngs=rngs),
                       jax.ShapeDtypeStruct((b, s * s, d), bf16), jax.ShapeDtypeStruct((b, 77, 2048), bf16)), None),
        (f"x * 2 + 1, bf16 [{n}, {n}], one chip", compile_kernel(mesh, lambda x: x * 2 + 1, big), 2 * n * n * 2),
        (f"x @ y, bf16 [{n}, {n}], one chip", compile_kernel(mesh, lambda x, y: x @ y, big, big), 3 * n * n * 2),
    ]
    print(f"{args.topology}, mesh (1, {len(devices)}, 1); per chip, GB")
    print("| kernel | HBM (jaxdistill) | every memory as HBM | XLA's cost analysis | known |")
    print("|---|---|---|---|---|")
    for label, compiled, known in rows:
        text = compiled.as_text()
        hbm = costs.loop_costs(text, len(devices)).hbm_bytes
        every = costs.loop_costs(every_memory_as_hbm(text), len(devices)).hbm_bytes
        xla = costs.step_cost(compiled, len(devices)).xla_bytes_accessed
        print(f"| {label} | {hbm / 1e9:.3f} | {every / 1e9:.3f} | {xla / 1e9:.3f} | "
              f"{'' if known is None else f'{known / 1e9:.3f}'} |")


if __name__ == "__main__":
    main()
