"""Flags shared by the commands that read a run directory (`sample`, `eval`, `export`).

Commands define their flags inside `main()`, so that importing several command modules (tests,
notebooks) never defines a flag twice.
"""

from absl import flags


def run_dir_flags():
    """(--workdir, --step) holders."""
    workdir = flags.DEFINE_string("workdir", None, "run directory written by `jaxdistill train`", required=True)
    step = flags.DEFINE_integer("step", None, "checkpoint step to read (default: the latest complete one)")
    return workdir, step


def distributed_flags():
    """A callable that initialises JAX's distributed runtime from --distributed,
    --coordinator_address, --num_processes and --process_id (`jaxdistill.distributed`)."""
    mode = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                             "multi-process start-up: auto (flags, JAX_COORDINATOR_ADDRESS, SLURM, MPI or a multi-host "
                             "TPU slice), on (always ask JAX), off (one process)")
    address = flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator "
                                  "(default: JAX_COORDINATOR_ADDRESS)")
    count = flags.DEFINE_integer("num_processes", None, "number of processes (default: JAX_NUM_PROCESSES)")
    index = flags.DEFINE_integer("process_id", None, "this process's id in [0, num_processes) (default: JAX_PROCESS_ID)")

    def start() -> str:
        from jaxdistill import distributed
        from jaxdistill.train.program import RunError

        try:
            return distributed.initialize(mode.value, address.value, count.value, index.value)
        except ValueError as e:
            raise RunError(str(e)) from e

    return start
