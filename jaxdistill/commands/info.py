"""`jaxdistill info --config configs/<recipe>.py[:variant] [--config.a.b=value]`.

Prints what a config resolves to, without training: every config value, the devices and
mesh, parameter counts and state bytes, and the compiled train step's cost from XLA's own
analyses — FLOPs and bytes accessed (`Compiled.cost_analysis`) and per-device memory:
arguments, outputs, temporaries, generated code (`Compiled.memory_analysis`).
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from jaxdistill.commands._app import run
from jaxdistill.train.program import build_run

def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _mib(n) -> str:
    return f"{n / 2**20:,.2f} MiB"


def info(config, *, print_fn=print) -> dict:
    job = build_run(config)
    d = job.distiller
    compiled = d.compile(job.teacher)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    report = {
        "devices": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
        "mesh": dict(d.mesh.shape),
        "parameters": {"generator": _count(d.state.gen), "critic": _count(d.state.critic.get("net")),
                       "discriminator_head": _count(d.state.critic.get("head", {})),
                       "teacher": _count(job.teacher)},
        "state_bytes": _bytes(d.state),
        "compile_seconds": round(d.compile_seconds, 2),
        "step_flops": float(cost.get("flops", float("nan"))),
        "step_bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
        "memory_per_device": {name: int(getattr(memory, f"{name}_size_in_bytes"))
                              for name in ("argument", "output", "temp", "alias", "generated_code")},
    }
    print_fn("config:\n" + json.dumps(job.resolved, indent=2))
    p = report["parameters"]
    print_fn(f"devices: {report['devices']}; mesh {report['mesh']}")
    print_fn(f"parameters: generator {p['generator']:,}, critic {p['critic']:,}, discriminator head "
             f"{p['discriminator_head']:,}, teacher {p['teacher']:,}; train state {_mib(report['state_bytes'])}")
    print_fn(f"train step (one iteration: {d.spec.n_critic} critic update(s) + 1 generator update): "
             f"{report['step_flops']:,.0f} FLOPs, {report['step_bytes_accessed']:,.0f} bytes accessed; "
             f"compiled in {report['compile_seconds']} s")
    print_fn("memory per device: " + ", ".join(f"{k} {_mib(v)}" for k, v in report["memory_per_device"].items()))
    return report


def main() -> None:
    config = config_flags.DEFINE_config_file("config", None, "recipe file with get_config()")
    flags.mark_flags_as_required(["config"])
    run(lambda: info(config.value))
