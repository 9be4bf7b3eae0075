"""`jaxdistill train --config configs/<recipe>.py[:variant] --workdir runs/x [--config.a.b=value]`.

Flags follow the JAX ecosystem's convention: absl flags, `ml_collections.config_flags` for the
config file, dotted overrides of any field. A run resumes from the latest complete checkpoint
in its workdir.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdistill.train.program import RunError, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "recipe file with get_config(), e.g. configs/mixture_sid.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics.jsonl, config.json")
flags.mark_flags_as_required(["config", "workdir"])


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; flags only (--config, --workdir, --config.x=...).")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        train(_CONFIG.value, _WORKDIR.value)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    app.run(_main)
