"""A saved planning step counted by `jaxdistill.train.costs` as it was at another commit, beside
today's count: when a row is compiled again, this separates what the step's change did from what
the count's change did.

    python experiments/count_at_commit.py --commit 8a98074 rows.md.jsonl

For each record of `tpu_plan.py --out`'s .jsonl whose HLO was saved (`--hlo_dir`) it prints, per
chip and step, the HBM bytes that commit's `step_cost` reported and the sum of its kernel traffic
by kind, its collective bytes, and the same from today's `costs`. Before commit 4b6c156
(2026-11-25) `step_cost`'s HBM bytes were XLA's "bytes accessed" (each loop body once, logical
shapes) plus that commit's own count of the later loop iterations and the splash kernels'
re-reads; since then they are jaxdistill's own count of every kernel. `costs.py` imports only
the standard library, so the old module is loaded from `git show` alone. Three planning records
(SD1.5 and SDXL steps), both counts each: 98 to 108 s and 1.3 GiB resident on a 2-core host.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from tpu_plan import saved_records, saved_step  # noqa: E402

from jaxdistill.train import costs  # noqa: E402
from jaxdistill.train.step import UPDATE_SCOPES  # noqa: E402


def costs_at(commit: str):
    """`jaxdistill/train/costs.py` as it was at `commit`, imported as a standalone module."""
    try:
        source = subprocess.run(["git", "show", f"{commit}:jaxdistill/train/costs.py"], cwd=ROOT,
                                check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"--commit {commit}: git show found no jaxdistill/train/costs.py there "
                         f"({e.stderr.strip()}); give a commit of this repository from 2026-11-23 on")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"costs_{commit}.py")
        with open(path, "w") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location(f"costs_{commit}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    return module


def step_counts(module, text: str, devices: int, xla: dict, memory: dict) -> tuple[float, float, dict]:
    """(step HBM bytes as `module`'s step_cost reported them, the sum of its traffic by kind (0
    before that existed), its collective bytes by kind) for one step's HLO `text`."""
    if hasattr(module, "hlo_step_cost"):
        step = module.hlo_step_cost(text, devices, xla, memory, UPDATE_SCOPES)
        return step.bytes_accessed, sum(step.traffic_by_kind.values()), step.collectives
    # its step_cost's sum, from the HLO; before a37aec8 (2026-11-24) no traffic by kind or scope
    scoped = "scopes" in inspect.signature(module.loop_costs).parameters
    loops = module.loop_costs(text, devices, scopes=UPDATE_SCOPES) if scoped else module.loop_costs(text, devices)
    total = xla["bytes accessed"] + loops.bytes_accessed + getattr(loops, "splash_bytes", 0.0)
    return total, sum(getattr(loops, "traffic_by_kind", {}).values()), loops.collectives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", help="a .jsonl written by tpu_plan.py --out, its rows compiled with --hlo_dir")
    parser.add_argument("--commit", required=True, help="the commit whose costs.py counts beside today's")
    args = parser.parse_args()
    old = costs_at(args.commit)
    print(f"| recipe | slice | batch | HBM TB at {args.commit} | its kernels by kind, TB | ICI GiB at {args.commit} "
          "| HBM TB today | kernels by kind today, TB | ICI GiB today |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in saved_records(args.records):
        step = saved_step(r)
        cells = []
        for module in (old, costs):
            total, kinds, collectives = step_counts(module, *step)
            cells += [f"{total / 1e12:.3f}", f"{kinds / 1e12:.3f}", f"{sum(collectives.values()) / 2**30:.2f}"]
        print(f"| {r['recipe']} | {r['slice']} | {r['best']['global_batch']} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
