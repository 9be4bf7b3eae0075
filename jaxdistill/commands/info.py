"""`jaxdistill info --config configs/<recipe>.py[:variant] [--topology v5p:4x4x4] [--config.a.b=value]`.

Prints what a config resolves to without training or loading weights: every config value, the
devices and mesh, parameter counts and state bytes, and the compiled train step's costs
(`jaxdistill.train.costs`): XLA's memory analysis per device, FLOPs, HBM bytes and collective
traffic per device, every iteration of the step's loops (scanned layers) counted.
`--hlo_out step.hlo.gz` also saves the optimised HLO, to count again without compiling.

`--topology` plans a TPU run from any host, a CPU included: the step is compiled ahead of time
for that slice's chips (`jaxdistill.train.topology`; needs the libtpu extra), its per-chip
memory is set against the chip's HBM (the TPU compiler itself refuses a step that does not
fit, and the report says by how much), and the chip's published rates give an estimated step
time, images/s and what binds. Nothing is chosen silently: mesh, batch, gradient accumulation,
dtypes and remat policy are the config's (`--config.mesh.shape`, `--config.train.batch_size`,
`--config.train.microbatches`, `--config.model.remat`).
Stable Diffusion recipes read only the teacher folder's config files, or none with
`--config.teacher.architecture=sd15|sd21|sdxl`; the prompt bank has the prompt file's length,
else `--num_prompts` rows.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os

import jax
from absl import flags
from ml_collections import config_flags

from jaxdistill.commands._app import run
from jaxdistill.train import costs
from jaxdistill.train import topology as tpu
from jaxdistill.train.program import RunError, build_run
from jaxdistill.train.step import UPDATE_SCOPES


def _count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _bytes(tree) -> int:
    return int(sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _gib(n) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def info(config, *, topology: str = "", num_prompts: int = 1024, hlo_out: str = "", print_fn=print) -> dict:
    """Build the run abstractly on this host's devices or a TPU `topology`, compile its step and
    report its costs (see the module docstring); returns the report as a dict. `hlo_out` also
    writes the optimised per-device HLO text there (gzip when it ends in .gz), to read again
    without compiling (`costs.hlo_step_cost`)."""
    if hlo_out:  # before the compile, which can take an hour: a folder that cannot be written fails now
        folder = os.path.dirname(os.path.abspath(hlo_out))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise RunError(f"--hlo_out={hlo_out!r}: cannot create its folder {folder} ({e.strerror}).") from e
        if not os.access(folder, os.W_OK) or os.path.isdir(hlo_out):
            raise RunError(f"--hlo_out={hlo_out!r} cannot be written: give a file path in a writable folder.")
    chip, devices = None, None
    if topology:
        try:
            slice_ = tpu.parse(topology)
            devices = tpu.devices(slice_)
        except (ValueError, RuntimeError) as e:
            raise RunError(str(e)) from e
        chip = slice_.chip
    job = build_run(config, devices=devices, abstract=True, num_prompts=num_prompts)
    d = job.distiller
    try:
        compiled = d.compile(job.teacher)
    except Exception as e:  # XLA raises its own runtime error types
        short = costs.hbm_shortfall(e)
        if short is None:
            raise
        raise RunError(f"the train step does not fit {topology or 'the device'}: the compiler needs {_gib(short[0])} "
                       f"(arguments, temporaries and outputs not donated) where a chip leaves a program "
                       f"{_gib(short[1])} (mesh {dict(d.mesh.shape)}, batch "
                       f"{config.train.batch_size} in {config.train.microbatches} microbatch(es), remat "
                       f"{config.model.get('remat', 'none')!r}). Accumulate the gradient over more microbatches "
                       "(--config.train.microbatches), lower --config.train.batch_size, shard the weights over more "
                       "chips (--config.mesh.shape with a larger fsdp axis) or save memory with "
                       "--config.model.remat.") from e
    n = len(d.mesh.devices.flat)
    if hlo_out:
        with (gzip.open if hlo_out.endswith(".gz") else open)(hlo_out, "wt") as f:
            f.write(compiled.as_text())
    step = costs.step_cost(compiled, n, scopes=UPDATE_SCOPES)
    report = {
        "devices": f"{n} × {d.mesh.devices.flat[0].device_kind}" + (f" ({slice_.name}, {slice_.slice_name})"
                                                                       if topology else ""),
        "mesh": dict(d.mesh.shape),
        "global_batch": config.train.batch_size,
        "microbatches": config.train.microbatches,
        "parameters": {"generator": _count(d.state.gen), "critic": _count(d.state.critic.get("net")),
                       "discriminator_head": _count(d.state.critic.get("head", {})),
                       "teacher": _count(job.teacher)},
        "state_bytes": _bytes(d.state),
        "compile_seconds": round(d.compile_seconds, 2),
        **cost_report(step, chip, config.train.batch_size),
    }
    _print(report, job, d, print_fn)
    return report


def cost_report(step: costs.StepCost, chip, global_batch: int) -> dict:
    """The report's fields that come from a step's `StepCost`, with the roofline estimate on
    `chip` (a `topology.Chip`) when there is one."""
    report = {
        "step_flops_per_device": step.flops,
        "step_bytes_accessed_per_device": step.bytes_accessed,
        "xla_flops_per_device": step.xla_flops,
        "xla_bytes_accessed_per_device": step.xla_bytes_accessed,
        "collective_bytes_per_device": step.collectives,
        "memory_per_device": {**step.memory, "peak": step.peak_bytes},
        "loops_counted_once": step.unknown_trip_counts,
        "splash_calls": step.splash_calls,
        "splash_flops_per_device": step.splash_flops,
        "hbm_traffic_by_kind": step.traffic_by_kind,
        "hbm_traffic_by_scope": step.traffic_by_scope,
        "top_kernels_by_traffic": [dataclasses.asdict(k) for k in step.top_kernels],
    }
    if chip is not None:
        times = step.times(chip)
        report["chip"] = {"hbm_bytes": chip.hbm_bytes, "bf16_flops": chip.bf16_flops,
                          "hbm_bytes_per_s": chip.hbm_bytes_per_s, "ici_bytes_per_s": chip.ici_bytes_per_s}
        report["estimate"] = {**{f"{k}_s": v for k, v in times.items() if k != "binds"}, "binds": times["binds"],
                              "images_per_s": global_batch / times["estimate"],
                              "hbm_fraction": step.peak_bytes / chip.hbm_bytes}
    return report


def _print(report: dict, job, d, print_fn) -> None:
    print_fn("config:\n" + json.dumps(job.resolved, indent=2))
    p = report["parameters"]
    micro = f" in {report['microbatches']} microbatches" if report["microbatches"] > 1 else ""
    print_fn(f"devices: {report['devices']}; mesh {report['mesh']}; global batch {report['global_batch']}{micro}")
    print_fn(f"parameters: generator {p['generator']:,}, critic {p['critic']:,}, discriminator head "
             f"{p['discriminator_head']:,}, teacher {p['teacher']:,}; train state {_gib(report['state_bytes'])}")
    print_fn(f"train step (one iteration: {d.spec.n_critic} critic update(s) + 1 generator update), per device: "
             f"{report['step_flops_per_device']:,.0f} FLOPs, {report['step_bytes_accessed_per_device']:,.0f} bytes "
             f"of HBM traffic (XLA's cost analysis, each loop body once, every memory: "
             f"{report['xla_flops_per_device']:,.0f} and {report['xla_bytes_accessed_per_device']:,.0f} bytes "
             f"accessed); compiled in {report['compile_seconds']} s")
    if report["loops_counted_once"]:
        print_fn(f"note: {report['loops_counted_once']} loop(s) in the compiled step have no trip count jaxdistill "
                 "could read; their bodies are counted once in FLOPs, bytes and collectives (an underestimate)")
    if report["splash_calls"]:
        print_fn(f"of which splash attention: {report['splash_calls']:,} kernel calls, "
                 f"{report['splash_flops_per_device']:,.0f} FLOPs, counted from their shapes (XLA sees none in a "
                 "Pallas kernel)")
    traffic = report["hbm_traffic_by_kind"]
    whole = sum(traffic.values()) or 1.0
    print_fn("HBM traffic per device by kernel kind (jaxdistill's count of every kernel run): " + ", ".join(
        f"{k} {_gib(v)} ({100 * v / whole:.0f}%)" for k, v in sorted(traffic.items(), key=lambda kv: -kv[1]) if v))
    by_scope = report["hbm_traffic_by_scope"]
    print_fn("  by where it runs: " + ", ".join(f"{k.replace('_', ' ')}s {_gib(v)} ({100 * v / whole:.0f}%)"
                                                if k in UPDATE_SCOPES else f"{k} {_gib(v)} ({100 * v / whole:.0f}%)"
                                                for k, v in by_scope.items()))
    for k in report["top_kernels_by_traffic"][:5]:
        print_fn(f"  {_gib(k['bytes'])} in {k['calls']:,} run(s): {k['kind']}, {k['type'][:80]}, from {k['op_name'][:120]}")
    sent = [f"{k} {_gib(v)}" for k, v in report["collective_bytes_per_device"].items() if v]
    print_fn("collective bytes sent per device: " + (", ".join(sent) or "none"))
    print_fn("memory per device: " + ", ".join(f"{k} {_gib(v)}" for k, v in report["memory_per_device"].items()))
    if "estimate" in report:
        e, c = report["estimate"], report["chip"]
        print_fn(f"chip: {_gib(c['hbm_bytes'])} HBM; the step's peak is {100 * e['hbm_fraction']:.1f}% of it")
        if e["hbm_fraction"] > 1:
            print_fn("note: the TPU compiler accepted this step although XLA's memory analysis adds up to more than "
                     "the chip's HBM; the compiler's own accounting is the verdict, so this batch is at the edge")
        print_fn(f"estimated step: {e['estimate_s'] * 1e3:,.1f} ms = max(compute {e['compute_s'] * 1e3:,.1f}, "
                 f"HBM {e['hbm_s'] * 1e3:,.1f}) + ICI {e['ici_s'] * 1e3:,.1f} ms; {e['images_per_s']:,.1f} images/s; "
                 f"bound by {e['binds']}")


def main() -> None:
    config = config_flags.DEFINE_config_file("config", None, "recipe file with get_config()")
    topology = flags.DEFINE_string("topology", "", "plan for a TPU slice without its hardware, e.g. v5p:4x4x4, "
                                   "v5p-64, v5e:16x16, v5e-256, v6e-256 (needs libtpu: pip install \"jax[tpu]\")")
    num_prompts = flags.DEFINE_integer("num_prompts", 1024, "prompt bank rows when the config has no prompt file")
    hlo_out = flags.DEFINE_string("hlo_out", "", "also write the compiled step's optimised HLO text here (.gz: gzip)")
    flags.mark_flags_as_required(["config"])
    run(lambda: info(config.value, topology=topology.value, num_prompts=num_prompts.value, hlo_out=hlo_out.value))
