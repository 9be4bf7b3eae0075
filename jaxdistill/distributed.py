"""Multi-process start-up: JAX's own distributed runtime, initialised once per process.

A run spans several processes (TPU pod hosts, GPU cluster nodes, or processes on one machine)
when the environment or the flags say so; every process runs the same program over one global
mesh, and the compiled step's collectives are the only communication. The rule, in order:

1. `--coordinator_address` (or `JAX_COORDINATOR_ADDRESS`) given: initialise with it and
   `--num_processes` / `--process_id` (or `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`).
2. A cluster that describes itself: a SLURM job step with more than one task (`SLURM_NTASKS`),
   an Open MPI launch (`OMPI_COMM_WORLD_SIZE`), or a multi-host Cloud TPU slice
   (`TPU_WORKER_HOSTNAMES` listing several hosts, or `MEGASCALE_COORDINATOR_ADDRESS`):
   `jax.distributed.initialize()` with no arguments, which reads the same variables.
3. Otherwise one process, no coordinator.

`--distributed=off` skips all of this; `--distributed=on` calls `jax.distributed.initialize()`
even when nothing above matched (JAX then asks the cluster itself, e.g. a TPU VM's metadata).
On CPU, cross-process collectives use JAX's default, gloo (`jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import os
from typing import Mapping

import jax

MODES = ("auto", "on", "off")


def cluster_described(env: Mapping[str, str]) -> str | None:
    """The name of the multi-process launcher the environment describes, or None."""
    def count(name):
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    if count("SLURM_NTASKS") > 1:
        return "SLURM"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    hosts = env.get("TPU_WORKER_HOSTNAMES", "").split(",")
    # (libtpu itself may fill the variable with a sentence containing commas on a non-TPU host)
    if (len(hosts) > 1 and all(h and " " not in h for h in hosts)) or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "Cloud TPU (multi-host)"
    return None


def initialize(mode: str = "auto", coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, env: Mapping[str, str] | None = None) -> str:
    """Initialise JAX's distributed runtime when the rule above says so (call before any device
    is touched); returns a one-line description of what was done."""
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r} is not a mode; use one of {MODES}.")
    if mode == "off":
        return "one process (--distributed=off)"
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if coordinator_address:
        num_processes = _int_value("num_processes", num_processes, env.get("JAX_NUM_PROCESSES"))
        process_id = _int_value("process_id", process_id, env.get("JAX_PROCESS_ID"))
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id={process_id} must be in [0, {num_processes}) for num_processes={num_processes}.")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return f"process {process_id} of {num_processes}, coordinator {coordinator_address}"
    launcher = cluster_described(env)
    if launcher is None and mode == "auto":
        return "one process"
    jax.distributed.initialize()
    return f"process {jax.process_index()} of {jax.process_count()} ({launcher or 'detected by JAX'})"


def _int_value(name: str, flag: int | None, env_value: str | None) -> int:
    value = flag if flag is not None else env_value
    if value is None or value == "":
        raise ValueError(f"a coordinator address was given but not --{name} (or JAX_{name.upper()}); every process "
                         "needs the process count and its own id in [0, count).")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer.") from None


def is_primary() -> bool:
    """Whether this process writes the run's files (logs, pictures, config): process 0."""
    return jax.process_index() == 0
