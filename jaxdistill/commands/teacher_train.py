"""`jaxdistill teacher-train --config configs/world_teacher.py --out <folder>`: train the embedded
world's pixel-space text-to-image teacher and write it as a diffusers folder
(jaxdistill/world/teacher_training.py)."""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from jaxdistill.commands._app import run
from jaxdistill.world.teacher_training import train_teacher


def main() -> None:
    config = config_flags.DEFINE_config_file("config", None, "teacher config, e.g. configs/world_teacher.py")
    out = flags.DEFINE_string("out", None, "the diffusers folder to write (must not hold a model yet)")
    flags.mark_flags_as_required(["config", "out"])
    run(lambda: train_teacher(config.value, out.value))
