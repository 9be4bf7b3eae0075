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
