"""Where a run's numbers and pictures go: `metrics.jsonl`, TensorBoard event files, PNG grids.

Only process 0 writes (multi-host runs log once). TensorBoard events are written with
tensorboardX (protobuf only, no TensorFlow): `tensorboard --logdir <workdir>/tensorboard`.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from jaxdistill.eval.render import save_png


class MetricWriter:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0
        self._jsonl = self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=10)

    def scalars(self, step: int, values: dict) -> None:
        """One JSON line {"step": step, **values} and one TensorBoard scalar per value."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tb.add_scalar(name, float(value), int(step))

    def image(self, step: int, name: str, image: np.ndarray) -> str | None:
        """Save a uint8 [H, W, 3] picture as `<workdir>/samples/<name>_<step>.png` and in TensorBoard."""
        if not self.enabled:
            return None
        path = save_png(os.path.join(self.workdir, "samples", f"{name}_{int(step):07d}.png"), image)
        self._tb.add_image(name, image, int(step), dataformats="HWC")
        return path

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
