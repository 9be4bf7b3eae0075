"""What the TPU compiler counts when it refuses a program for memory: toy programs of known
arguments, outputs and temporaries, compiled for one chip of a slice at sizes around its HBM
(needs the libtpu extra; seconds each).

    python experiments/oom_accounting.py                        # v5e (16 GiB), 3.5 to 5.5 GiB arguments
    python experiments/oom_accounting.py --topology v6e-8 --sizes 6,7,8,9

Each program takes one f32 array of `size` GiB and keeps several elementwise results of the same
size live at once (reversals stop XLA fusing them away); "a sum" returns a scalar, "an array"
also returns one of those results, "donated" returns it in the argument's buffer. Where the step
compiles, the row gives XLA's memory analysis (arguments, temporaries, outputs, code); where the
compiler refuses it, the figure its out-of-memory error names against what the chip leaves a
program (`jaxdistill.train.costs.hbm_shortfall`). Comparing the two across sizes says whether
that figure is the temporaries alone or also the arguments and outputs.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from jaxdistill.train import costs
from jaxdistill.train import topology as tpu

GiB = 2**30
OUTPUTS = ("a sum", "an array", "donated")


def program(x, output: str):
    a = jnp.sin(x) * 2.0
    b = jnp.cos(x)[::-1]
    c = jnp.exp(a[::-1]) + b
    total = (a * c).sum() + (b * c).sum()
    return total if output == "a sum" else (total, c)


def compile_row(device, size_gib: float, output: str) -> str:
    rows = int(size_gib * GiB) // 4 // 1024
    x = jax.ShapeDtypeStruct((rows, 1024), jnp.float32, sharding=SingleDeviceSharding(device))
    step = jax.jit(lambda x: program(x, output), donate_argnums=(0,) if output == "donated" else ())
    try:
        m = costs.step_cost(step.lower(x).compile(), 1).memory
    except Exception as e:  # XLA raises its own runtime error types
        short = costs.hbm_shortfall(e)
        if short is None:
            raise
        return (f"| {size_gib:g} | {output} | refused | | | | | | {short[0] / GiB:.2f} of {short[1] / GiB:.2f} "
                f"({short[0] / (rows * 1024 * 4):.2f}× the argument) |")
    args, temps, outs, alias, code = (m[k] / GiB for k in ("argument", "temp", "output", "alias", "generated_code"))
    total = args + temps + outs - alias
    return (f"| {size_gib:g} | {output} | compiles | {args:.2f} | {temps:.2f} | {outs:.2f} | {alias:.2f} | {code:.4f} "
            f"| {total:.2f} ({total * GiB / (rows * 1024 * 4):.2f}× the argument) |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default="v5e-8", help="a TPU slice; one of its chips compiles each program")
    p.add_argument("--sizes", default="3.5,3.8,4,5.5", help="argument sizes in GiB, comma-separated")
    args = p.parse_args()
    device = tpu.devices(tpu.parse(args.topology))[0]
    print(f"One chip of {args.topology}; GiB per chip. The last column: arguments + temporaries + outputs "
          "- aliased where it compiles, the error's figure of what the chip leaves where refused.\n")
    print("| argument | output | verdict | arguments | temporaries | outputs | aliased | code | total or the error's |")
    print("|---|---|---|---|---|---|---|---|---|")
    for output in OUTPUTS:
        for size in (float(s) for s in args.sizes.split(",")):
            print(compile_row(device, size, output), flush=True)


if __name__ == "__main__":
    main()
