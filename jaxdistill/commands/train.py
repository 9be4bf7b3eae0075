"""`jaxdistill train --config configs/<recipe>.py[:variant] --workdir runs/x [--config.a.b=value]`.

Multi-process runs (TPU pod slices, GPU clusters) start the same command in every process;
`jaxdistill.distributed` says when and how the processes find each other
(`--coordinator_address --num_processes --process_id`, or the cluster's own environment).

Flags follow the JAX ecosystem's convention: absl flags, `ml_collections.config_flags` for the
config file, dotted overrides of any field. A run resumes from the latest complete checkpoint
in its workdir.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from jaxdistill.commands._app import run
from jaxdistill.commands._flags import distributed_flags
from jaxdistill.train.program import train

def main() -> None:
    config = config_flags.DEFINE_config_file("config", None, "recipe file with get_config(), e.g. configs/mixture_sid.py")
    workdir = flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics.jsonl, config.json")
    start = distributed_flags()
    flags.mark_flags_as_required(["config", "workdir"])

    def main_():
        start()
        train(config.value, workdir.value)

    run(main_)
