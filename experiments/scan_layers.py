"""How much smaller the SDXL train step's program is with scanned transformer layers
(`model.scan_layers`): the step lowered for a TPU slice (`--topology`, needs the libtpu extra)
or this host's devices, with the layers unrolled and scanned, side by side.

    python experiments/scan_layers.py --topology v5e-256 --mesh 4,64,1 --batch 256

Prints, per variant, the lowering time and the size of the lowered StableHLO (text MB, lines,
and the dot_general and convolution ops in it). Lowering only; the compile is what
`jaxdistill info` and `experiments/tpu_plan.py` run.
"""

from __future__ import annotations

import argparse
import time

def lower(recipe: str, architecture: str, resolution: int, topology: str, mesh: tuple, batch: int, remat: str,
          scan_layers: bool) -> tuple[float, str]:
    from tpu_plan import planning_config  # this folder's planning script

    from jaxdistill.train import topology as tpu
    from jaxdistill.train.program import build_run

    config = planning_config(recipe, architecture, resolution, mesh, batch, remat, scan_layers)
    devices = tpu.devices(tpu.parse(topology)) if topology else None
    job = build_run(config, devices=devices, abstract=True)
    start = time.perf_counter()
    text = job.distiller.lower(job.teacher).as_text()
    return time.perf_counter() - start, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="sid_lsg_sd15.py")
    parser.add_argument("--architecture", default="sdxl")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--topology", default="", help="a TPU slice, e.g. v5e-256 (default: this host's devices)")
    parser.add_argument("--mesh", default="1,1,1", help="data,fsdp,tensor")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--remat", default="full")
    args = parser.parse_args()
    mesh = tuple(int(v) for v in args.mesh.split(","))
    print(f"{args.recipe} with {args.architecture} at {args.resolution}², {args.topology or 'this host'}, mesh {mesh}, "
          f"global batch {args.batch}, remat {args.remat}")
    print("| transformer layers | lowered in s | StableHLO MB | lines | dot_general | convolution |")
    print("|---|---|---|---|---|---|")
    for scan in (False, True):
        seconds, text = lower(args.recipe, args.architecture, args.resolution, args.topology, mesh, args.batch,
                              args.remat, scan)
        print(f"| {'scanned' if scan else 'unrolled'} | {seconds:.1f} | {len(text) / 1e6:.1f} | "
              f"{text.count(chr(10)):,} | {text.count('stablehlo.dot_general'):,} | "
              f"{text.count('stablehlo.convolution'):,} |", flush=True)


if __name__ == "__main__":
    main()
