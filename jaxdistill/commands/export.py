"""`jaxdistill export --workdir runs/x --out exported/ [--noema] [--step N]`.

Writes a checkpoint's generator (the EMA weights by default) as a standalone folder:

    generator.safetensors   the parameters, PyTorch-style keys and layouts (`jaxdistill.models.weights`)
    config.json             what rebuilds it: architecture and its arguments, the σ ladder, the teacher

For Stable Diffusion runs it writes `unet/` instead: a diffusers-format UNet folder
(config.json + diffusion_pytorch_model.safetensors) that diffusers' PyTorch
`UNet2DConditionModel.from_pretrained` loads. Mixture-run generators are residuals on the analytic teacher (`Networks.on_teacher`), so the
teacher's parameters are part of config.json; the generator is D(x, σ) = teacher(x, σ) + net(x, σ).
"""

from __future__ import annotations

import json
import os

from absl import flags
from flax import nnx

from jaxdistill.commands._app import run
from jaxdistill.commands._flags import run_dir_flags
from jaxdistill.models.weights import module_tensors, write_safetensors
from jaxdistill.train.program import RunError, SDRun, open_run

def export(workdir: str, out: str, *, step: int | None = None, ema: bool = True, print_fn=print) -> str:
    targets = [os.path.join(out, name) for name in ("generator.safetensors", "config.json", "unet")]
    existing = [p for p in targets if os.path.exists(p)]
    if existing:
        raise RunError(f"{existing[0]} already exists; export into an empty folder (nothing is overwritten).")
    job = open_run(workdir, step)
    d = job.distiller
    generator = nnx.merge(d.nets.gen, d.state.ema if ema else d.state.gen)
    if isinstance(job, SDRun):
        # A diffusers UNet folder: drop it into a copy of the teacher's folder to use the
        # student with diffusers' pipelines (one step, at the recipe's σ_init).
        generator.unet.save_pretrained(targets[2])
        print_fn(f"exported the {'EMA ' if ema else ''}generator UNet of step {int(d.state.step)} to {targets[2]} "
                 f"(diffusers format; one step from σ={d.spec.sigma_ladder[0]:g})")
        return targets[2]
    cfg = job.config
    config = {
        "architecture": type(generator).__name__,
        "arguments": {"event_shape": list(job.teacher.event_shape), "hidden": cfg.model.hidden,
                      "depth": cfg.model.depth, "residual": True,
                      "num_classes": job.teacher.num_classes if job.teacher.num_classes > 1 else 0},
        "residual_on_teacher": True,
        "teacher": cfg.teacher.to_dict(),
        "sigma_ladder": [float(s) for s in d.spec.sigma_ladder],
        "method": cfg.method.to_dict(),
        "step": int(d.state.step),
        "weights": "ema" if ema else "generator",
    }
    os.makedirs(out, exist_ok=True)
    write_safetensors(targets[0], module_tensors(generator), {"step": str(int(d.state.step))})
    with open(targets[1], "w") as f:
        json.dump(config, f, indent=2)
    print_fn(f"exported the {'EMA ' if ema else ''}generator of step {int(d.state.step)} to {out}")
    return out


def main() -> None:
    workdir, step = run_dir_flags()
    out = flags.DEFINE_string("out", None, "folder to write (created; existing files of the same names are refused)",
                              required=True)
    ema = flags.DEFINE_boolean("ema", True, "export the EMA weights (--noema: the raw generator weights)")
    run(lambda: export(workdir.value, out.value, step=step.value, ema=ema.value))
