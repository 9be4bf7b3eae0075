"""Planning table: SiD-LSG and DMD2 with SD1.5 (512²) and SDXL (1024²) on TPU slices, compiled
ahead of time on a CPU host (`jaxdistill info --topology`; needs the libtpu extra).

    pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"
    python experiments/tpu_plan.py                      # every row (hours on a 2-core host)
    python experiments/tpu_plan.py --rows sid_lsg/sdxl/v5e-256 --batch 256 --max_tries 1 --scan_layers
    python experiments/tpu_plan.py --rows sid_lsg/sd15/v5p-8 --batch 512 --max_tries 1 --attention splash --microbatches 2

The SDXL compile that fits took about 47 minutes and about 45 GB of host memory (RAM + swap) on
a 2-core, 24 GiB machine, with `--scan_layers`; unrolled layers need more.

For each row (recipe, teacher, slice, mesh, remat policy) it compiles the full train step at the
published recipe's global batch, then doubles the batch while it fits (or halves it until it
does), up to `--max_tries` compiles; the largest batch that fits is the row's. "Fits" means the
TPU compiler accepts the step and XLA's memory analysis of it stays within the chip's HBM; a step
the compiler accepts past the HBM is "at the edge" (as `jaxdistill info` says): not planned on, so
the search stops doubling there. Per-chip memory is XLA's memory analysis of that step, and
images/s the roofline estimate of `jaxdistill.train.costs` from the chip's published peak rates
(not a measurement). Each row prints as soon as it is done. With `--hlo_dir` the optimised HLO of
each compile the compiler accepts is saved, and `--reread rows.md.jsonl` counts those rows' costs
again from it in a minute, without compiling (after a change to `jaxdistill.train.costs`). With
`--out rows.md`, each compile is also written the moment it ends to `rows.md.compiles.jsonl` as a
row of its own, so a search stopped (or killed for memory) during a later compile keeps the
earlier ones; `--reread` reads that file as it reads `rows.md.jsonl`. A compile that does not fit
keeps its report there too, under "not_fitting": the shortfall the compiler gave and the whole
text of its error, or the whole memory analysis and estimate of a step at the edge.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (recipe file, teacher architecture, resolution, published global batch)
RECIPES = {
    "sid_lsg/sd15": ("sid_lsg_sd15.py", "sd15", 512, 512),
    "sid_lsg/sdxl": ("sid_lsg_sd15.py", "sdxl", 1024, 256),
    "dmd2/sd15": ("dmd2_sdxl.py", "sd15", 512, 2048),
    "dmd2/sdxl": ("dmd2_sdxl.py", "sdxl", 1024, 128),
}
# slice: (mesh (data, fsdp, tensor), remat policy). fsdp must divide every UNet width (320, 640,
# 1280): at most 64 on these slices.
SLICES = {
    "v5p-8": ((1, 4, 1), "full"),
    "v5p-64": ((1, 32, 1), "full"),
    "v5e-256": ((4, 64, 1), "full"),
    "v6e-256": ((4, 64, 1), "full"),
}


def planning_config(recipe_file: str, architecture: str, resolution: int, mesh, batch: int, remat: str,
                    scan_layers: bool = False, microbatches: int = 1, attention: str = "xla"):
    """`configs/<recipe_file>`'s full config for a published teacher architecture (no folder),
    with the given mesh, global batch (in `microbatches`), remat policy and attention kernel."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe", os.path.join(ROOT, "configs", recipe_file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.teacher.update(architecture=architecture, resolution=resolution, path="")
    config.mesh.shape, config.train.batch_size, config.train.microbatches = tuple(mesh), batch, microbatches
    config.model.update(remat=remat, attention=attention, scan_layers=scan_layers)
    return config


def plan(recipe: str, slice_name: str, batch: int, mesh, remat: str, scan_layers: bool = False,
         microbatches: int = 1, attention: str = "xla", hlo_dir: str = "") -> dict:
    """`info` of one configuration; {'fits': False, 'needs': bytes, 'free': bytes, 'compiler_said':
    text} when the compiler refuses it for memory: what it needs (arguments, temporaries and outputs
    not donated; `experiments/oom_accounting.py`) against what the chip leaves a program, and the
    whole text of its error. With `hlo_dir` a fitting step's optimised HLO is written there (gzip),
    its path under 'hlo'."""
    from jaxdistill.commands.info import info
    from jaxdistill.train import costs
    from jaxdistill.train.program import RunError

    path, arch, resolution, _ = RECIPES[recipe]
    config = planning_config(path, arch, resolution, mesh, batch, remat, scan_layers, microbatches, attention)
    hlo = os.path.join(hlo_dir, f"{recipe.replace('/', '_')}_{slice_name}_{batch}_{microbatches}mb_{attention}"
                       f"{'_scanned' if scan_layers else ''}.hlo.gz") if hlo_dir else ""
    start = time.perf_counter()
    try:
        report = info(config, topology=slice_name, hlo_out=hlo, print_fn=lambda *_: None)
    except RunError as e:
        short = costs.hbm_shortfall(e.__cause__) if e.__cause__ is not None else None
        if short is None:
            raise
        return {"fits": False, "batch": batch, "seconds": time.perf_counter() - start,
                "needs": short[0], "free": short[1], "compiler_said": str(e.__cause__)}
    return {"fits": True, "batch": batch, "seconds": time.perf_counter() - start, **report,
            **({"hlo": hlo} if hlo else {})}


def search(recipe: str, slice_name: str, max_tries: int, batch: int = 0, remat: str = "",
           scan_layers: bool = False, microbatches: int = 1, attention: str = "xla",
           hlo_dir: str = "", on_compile=None) -> tuple[dict | None, list]:
    """(the largest fitting compile's report or None, [(batch, fits, seconds, note)] per compile,
    the note as `_verdict` reads it); `on_compile(attempt, report)` is called after each compile,
    with the report of a step at the edge too."""
    mesh, default_remat = SLICES[slice_name]
    remat = remat or default_remat
    unit = mesh[0] * mesh[1] * microbatches  # the batch must be a multiple of microbatches × data × fsdp
    batch = max((batch or RECIPES[recipe][3]) // unit, 1) * unit
    tried, best = [], None
    while len(tried) < max_tries and batch >= unit:
        r = plan(recipe, slice_name, batch, mesh, remat, scan_layers, microbatches, attention, hlo_dir)
        if not r["fits"]:
            fits, note = False, f"{r['needs'] / 2**30:.2f} GiB of {r['free'] / 2**30:.2f} GiB"
        else:
            peak, fraction = r["memory_per_device"]["peak"], r["estimate"]["hbm_fraction"]
            fits = fraction <= 1
            note = "" if fits else f"at the edge ({peak / 2**30:.2f} GiB, {100 * fraction:.0f}% of the HBM)"
        tried.append((batch, fits, round(r["seconds"]), note))
        if on_compile is not None:
            on_compile(tried[-1], r)
        print(f"  {recipe} on {slice_name}, global batch {batch}: {_verdict(*tried[-1])}",
              file=sys.stderr, flush=True)
        if fits:
            best = r if best is None or r["batch"] > best["batch"] else best
            if any(b > batch and not ok for b, ok, *_ in tried):
                break
            batch *= 2
        else:
            if best is not None:
                break
            batch = batch // 2 // unit * unit
    return best, tried


def _verdict(batch: int, fits: bool, seconds: int, note: str) -> str:
    """One compile of a search (an entry of its `tried`) in words: "<batch> fits (<s> s)", "<batch>
    at the edge (<GiB>, <%> of the HBM)" for a step the compiler accepts past the HBM, or "<batch>
    needs <GiB> of <GiB>" for one it refuses (arguments, temporaries and outputs not donated, against
    what the chip leaves a program: `experiments/oom_accounting.py`)."""
    said = "fits" if fits else note if note.startswith("at the edge") else f"needs {note}"
    return f"{batch} {said} ({seconds} s)"


def row(recipe: str, slice_name: str, best: dict | None, tried: list, remat: str = "", scan_layers: bool = False,
        microbatches: int = 1, attention: str = "xla") -> str:
    mesh, default_remat = SLICES[slice_name]
    remat = ((remat or default_remat) + (", scanned layers" if scan_layers else "")
             + (f", {microbatches} microbatches" if microbatches > 1 else "")
             + (f", {attention} attention" if attention != "xla" else ""))
    attempts = ", ".join(_verdict(*t) for t in tried)
    if best is None:
        return f"| {recipe} | {slice_name} | {mesh} | {remat} | < {min(t[0] for t in tried)} | | | | {attempts} |"
    m, e = best["memory_per_device"], best["estimate"]
    exact = any(t[0] > best["batch"] and not t[1] for t in tried)
    largest = f"{best['batch']}" if exact else f"≥ {best['batch']}"
    return (f"| {recipe} | {slice_name} | {mesh} | {remat} | {largest} | {m['peak'] / 2**30:.2f} GiB "
            f"({100 * e['hbm_fraction']:.0f}%) | {e['images_per_s']:,.1f} | {e['binds']} | {attempts} |")


def _append(out: str, line: str, record: dict) -> None:
    """Append a row (markdown) to `out` and its record (JSON) to `out`.jsonl, when `out` is set."""
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
        _append_json(out + ".jsonl", record)


def _append_json(path: str, record: dict) -> None:
    """Append `record` to the .jsonl at `path`, one line."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def _record(recipe: str, slice_name: str, args: argparse.Namespace, tried: list, best: dict | None) -> dict:
    """A row's record as `--out`'s .jsonl holds it (what `--reread` and `saved_records` read)."""
    return {"recipe": recipe, "slice": slice_name, "remat": args.remat, "scan_layers": args.scan_layers,
            "microbatches": args.microbatches, "attention": args.attention, "tried": tried, "best": best}


def saved_records(path: str) -> list[dict]:
    """The records of a `--out` .jsonl whose compile saved its HLO (`--hlo_dir`); the others are
    named on stderr, with why: no compile fitted, or it fitted without `--hlo_dir`."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for r in records:
        if r["best"] is None:
            compiles = ", ".join(_verdict(*t) for t in r["tried"])
            print(f"{r['recipe']} on {r['slice']}: no compile fitted ({compiles}), nothing to read again",
                  file=sys.stderr)
        elif not r["best"].get("hlo"):
            print(f"{r['recipe']} on {r['slice']}: no saved HLO, not read again (compile it with --hlo_dir)",
                  file=sys.stderr)
    return [r for r in records if (r["best"] or {}).get("hlo")]


def saved_step(record: dict) -> tuple[str, int, dict, dict]:
    """(optimised HLO text, devices, XLA's cost analysis, memory analysis) of the step a planning
    record's compile saved (`--hlo_dir`), the analyses as recorded: `costs.hlo_step_cost`'s input."""
    import gzip

    best = record["best"]
    with gzip.open(best["hlo"], "rt") as f:
        text = f.read()
    memory = {k: v for k, v in best["memory_per_device"].items() if k != "peak"}
    xla = {"flops": best["xla_flops_per_device"], "bytes accessed": best["xla_bytes_accessed_per_device"]}
    return text, math.prod(best["mesh"].values()), xla, memory


def reread(record: dict) -> dict:
    """A planning record (a line of `--out`'s .jsonl) with its costs counted again from the HLO
    its compile saved (`--hlo_dir`), with XLA's analyses as recorded: the table under a changed
    cost model without compiling again."""
    from jaxdistill.commands.info import cost_report
    from jaxdistill.train import costs
    from jaxdistill.train import topology as tpu
    from jaxdistill.train.step import UPDATE_SCOPES

    best = record["best"]
    step = costs.hlo_step_cost(*saved_step(record), UPDATE_SCOPES)
    chip = tpu.parse(record["slice"]).chip
    return {**record, "best": {**best, **cost_report(step, chip, best["global_batch"])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="", help="comma-separated recipe/teacher/slice, e.g. sid_lsg/sdxl/v5e-256")
    parser.add_argument("--max_tries", type=int, default=3)
    parser.add_argument("--batch", type=int, default=0, help="first global batch to try (default: the recipe's)")
    parser.add_argument("--remat", default="", help="remat policy for every row (default: the slice's in SLICES)")
    parser.add_argument("--scan_layers", action="store_true",
                        help="run each UNet transformer's stack of blocks as one lax.scan (config.model.scan_layers)")
    parser.add_argument("--microbatches", type=int, default=1,
                        help="accumulate each gradient over this many microbatches (config.train.microbatches)")
    parser.add_argument("--attention", default="xla", choices=("xla", "splash"),
                        help="self-attention kernel (config.model.attention); splash pads head_dim to 128")
    parser.add_argument("--out", default="", help="also append the rows (markdown) and JSON reports here")
    parser.add_argument("--hlo_dir", default="", help="also write the optimised HLO of each step the compiler accepts here (gzip)")
    parser.add_argument("--reread", default="",
                        help="instead of compiling, count the rows of this .jsonl again from their saved HLO")
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)
    print("| recipe | slice | mesh (data, fsdp, tensor) | remat | largest global batch | per-chip peak (of HBM) "
          "| est. images/s | binds | compiles: global batch, verdict (compile s on a 2-core host) |")
    print("|---|---|---|---|---|---|---|---|---|")
    if args.reread:
        for r in saved_records(args.reread):
            r = reread(r)
            line = row(r["recipe"], r["slice"], r["best"], r["tried"], r.get("remat", ""), r.get("scan_layers", False),
                       r["microbatches"], r["attention"])
            print(line, flush=True)
            _append(args.out, line, r)
        return
    rows = ([r.rsplit("/", 1) for r in args.rows.split(",")] if args.rows
            else [(r, s) for r in RECIPES for s in SLICES])
    for recipe, slice_name in rows:
        def keep(attempt: tuple, report: dict) -> None:
            fits = attempt[1]
            record = _record(recipe, slice_name, args, [attempt], report if fits else None)
            _append_json(args.out + ".compiles.jsonl", record if fits else {**record, "not_fitting": report})

        best, tried = search(recipe, slice_name, args.max_tries, args.batch, args.remat, args.scan_layers,
                             args.microbatches, args.attention, args.hlo_dir, keep if args.out else None)
        line = row(recipe, slice_name, best, tried, args.remat, args.scan_layers, args.microbatches,
                   args.attention)
        print(line, flush=True)
        _append(args.out, line, _record(recipe, slice_name, args, tried, best))


if __name__ == "__main__":
    main()
