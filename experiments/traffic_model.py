"""How close jaxdistill's count of a step's HBM traffic and FLOPs is to XLA's own.

    python experiments/traffic_model.py                  # on this host's devices (CPU: 4 fake ones)
    python experiments/traffic_model.py --topology v5p:2x2x1   # compiled for a TPU slice (libtpu extra)

XLA's cost analysis counts each loop body once, every array at its logical size in whatever
memory it sits; `jaxdistill.train.costs` counts every iteration of a loop, arrays as their
layout stores them, and only what moves through HBM (`loop_costs`). This script compiles a tiny
SD1.5-shaped DMD2 step (a random tiny folder like the tests', mesh (2, 2, 1), global batch 8,
full remat) with one critic update, with 5 as a `lax.scan`, and with the 5 unrolled, and prints
both counts of FLOPs and bytes side by side: the scanned and unrolled programs should agree
with each other on jaxdistill's count, and XLA's count of the unrolled program is the one that
sees every iteration.

About 6 minutes for a v5p:2x2x1 on a 2-core host, 3 on its CPU.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_dmd2(folder: str, n_critic: int):
    spec = importlib.util.spec_from_file_location("recipe", os.path.join(ROOT, "configs", "dmd2_sdxl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.teacher.update(architecture="", resolution=32, path=folder)
    config.mesh.shape, config.train.batch_size, config.model.remat = (2, 2, 1), 8, "full"
    config.optim.n_critic = n_critic
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="", help="a TPU slice to compile for, e.g. v5p:2x2x1")
    args = parser.parse_args()
    if not args.topology:
        os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    import jax

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from sd_folder import make_tiny_sd  # a tiny random SD1.5-shaped folder (needs torch and diffusers)

    from jaxdistill.commands.info import info

    folder = make_tiny_sd(os.path.join(tempfile.mkdtemp(), "sd"), "sd15")
    scan = jax.lax.scan
    rows = []
    for label, n_critic, unroll in (("1 critic update", 1, False), ("5 critic updates, scanned", 5, False),
                                    ("5 critic updates, unrolled", 5, True)):
        jax.lax.scan = functools.partial(scan, unroll=True) if unroll else scan
        try:
            r = info(tiny_dmd2(folder, n_critic), topology=args.topology, print_fn=lambda *_: None)
        finally:
            jax.lax.scan = scan
        rows.append((label, r["xla_flops_per_device"], r["step_flops_per_device"], r["xla_bytes_accessed_per_device"],
                     r["step_bytes_accessed_per_device"]))
    print(f"tiny DMD2 step on {args.topology or jax.devices()[0].device_kind}, per device")
    print("| step | XLA GFLOP | jaxdistill GFLOP | XLA GB (every memory) | jaxdistill HBM GB |")
    print("|---|---|---|---|---|")
    for label, xf, f, xb, b in rows:
        print(f"| {label} | {xf / 1e9:.3f} | {f / 1e9:.3f} | {xb / 1e9:.3f} | {b / 1e9:.3f} |")


if __name__ == "__main__":
    main()
