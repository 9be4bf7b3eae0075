"""`jaxdistill sample --workdir runs/x [--num_steps k] [--num 64] [--seed 0] [--out dir] [--step N]`.

Generates one sample per seed in [seed, seed + num) with the EMA generator of a checkpoint,
using its first `num_steps` ladder steps (1..K, default K). Sample i depends only on its seed,
so the same seeds give the same samples at any `--num`. Writes, under `--out` (default
`<workdir>/samples`):

    sample_s<step>_k<k>.png      the grid (images) or density plot (2-D points)
    sample_s<step>_k<k>/         one file per sample: <seed>.png for images, <seed>.npy otherwise
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from jaxdistill.commands._app import run
from jaxdistill.commands._flags import run_dir_flags
from jaxdistill.eval.render import save_png, to_uint8
from jaxdistill.train.program import RunError, open_run

def sample(workdir: str, *, step: int | None = None, num_steps: int | None = None, num: int = 64, seed: int = 0,
           out: str | None = None, print_fn=print) -> str:
    """Write the grid and per-sample files; returns the grid's path."""
    job = open_run(workdir, step)
    k_max = job.distiller.spec.num_steps
    k = k_max if num_steps is None else num_steps
    if not 1 <= k <= k_max:
        raise RunError(f"--num_steps={k} is outside 1..{k_max}, the steps this generator was trained with.")
    if num < 1:
        raise RunError(f"--num={num}: ask for at least one sample.")
    samples, picture = job.picture(np.arange(seed, seed + num), num_steps=k)
    out = out or os.path.join(workdir, "samples")
    name = f"sample_s{int(job.distiller.state.step)}_k{k}"
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    for s, x in zip(range(seed, seed + num), samples):
        if x.ndim == 3:
            save_png(os.path.join(folder, f"{s:06d}.png"), to_uint8(x))
        else:
            np.save(os.path.join(folder, f"{s:06d}.npy"), x)
    grid = save_png(os.path.join(out, name + ".png"), picture)
    print_fn(f"wrote {grid} and {num} samples in {folder} (seeds {seed}..{seed + num - 1}, {k} generator step(s))")
    return grid


def main() -> None:
    workdir, step = run_dir_flags()
    num_steps = flags.DEFINE_integer("num_steps", None, "generator steps 1..K (default: K, the trained ladder)")
    num = flags.DEFINE_integer("num", 64, "number of samples (seeds seed .. seed+num-1)")
    seed = flags.DEFINE_integer("seed", 0, "first seed")
    out = flags.DEFINE_string("out", None, "output folder (default: <workdir>/samples)")
    run(lambda: sample(workdir.value, step=step.value, num_steps=num_steps.value, num=num.value, seed=seed.value,
                       out=out.value))
