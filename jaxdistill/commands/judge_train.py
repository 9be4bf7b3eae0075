"""`jaxdistill judge-train --config configs/world_judge.py --out <folder>`: train the embedded
world's judge (jaxdistill/world/judge.py) and write it with its held-out accuracy."""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from jaxdistill.commands._app import run
from jaxdistill.world.judge import train_judge


def main() -> None:
    config = config_flags.DEFINE_config_file("config", None, "judge config, e.g. configs/world_judge.py")
    out = flags.DEFINE_string("out", None, "the folder to write (must not hold a judge yet)")
    flags.mark_flags_as_required(["config", "out"])
    run(lambda: train_judge(config.value, out.value))
