"""The reproduction table on the embedded world: each method distils the shipped teacher through
`jaxdistill train`, then is scored by the judge on the same prompts and seeds as the teacher.

    python experiments/world/table.py [--methods sid_lsg_1.5,zero_cfg,...] [--steps 120] [--out runs/world_table]

Rows: the teacher (its best DDIM and CFG from teacher_eval.json), SiD-LSG κ ∈ {1.5, 3}, few-step
SiD (K=4, evaluated at 1, 2 and 4 steps), Zero-CFG, Anti-CFG (κ=−1), DMD2 (κ=1.75 on the
teacher, 5 critic updates per generator update) and Diff-Instruct. Each run's training seconds
are measured on the machine it ran on; the table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from jaxdistill import world
from jaxdistill.methods import get_method, ladder_within
from jaxdistill.recipes import world_config
from jaxdistill.teachers.stable_diffusion import StableDiffusion
from jaxdistill.train.program import open_run, train
from jaxdistill.world import metrics, scene

# The demo's optimiser (recipes.world_sid_lsg) for every row; DMD2 at half the rate, as its SD1.5
# recipe (5e-7) is half SiD-LSG's (1e-6).
OPTIM = dict(gen_lr=1e-4, critic_lr=1e-4, ema_decay=0.99)
DMD2_OPTIM = dict(gen_lr=5e-5, critic_lr=5e-5, ema_decay=0.99)
# The teacher's largest σ (t = 999 of its scaled-linear table, 14.6146; pure noise for it): where DMD2
# starts its SD generators, and where the few-step ladder's first rung (ml-sid-dit's σ = 80) is capped.
SIGMA_MAX = StableDiffusion.abstract(world.TEACHER).schedule.sigma_max
DDPM_T = ("ddpm", {"t_min": 20, "t_max": 980})  # DMD2's t range for SD teachers (configs/dmd2_sdxl.py)
METHODS = {
    "sid_lsg_1.5": lambda steps: world_config("sid_lsg", "", guidance="sid_lsg", kappa=1.5, optim=OPTIM, steps=steps),
    "sid_lsg_3": lambda steps: world_config("sid_lsg", "", guidance="sid_lsg", kappa=3.0, optim=OPTIM, steps=steps),
    # Few-step SiD on this ε-teacher: SiD-LSG's kernel, noise and κ with ml-sid-dit's K = 4 ladder
    # σ = t/(1 − t), t = 1 − i/4, capped at σ_max, and its uniform mixture over the steps.
    "sid_lsg_k4": lambda steps: world_config("sid_lsg", "", guidance="sid_lsg", kappa=1.5, optim=OPTIM, steps=steps,
                                             sigma_ladder=ladder_within(get_method("sid_fewstep").sigma_ladder,
                                                                        SIGMA_MAX)),
    "zero_cfg": lambda steps: world_config("sid_lsg", "", guidance="zero_cfg", optim=OPTIM, steps=steps),
    "anti_cfg": lambda steps: world_config("sid_lsg", "", guidance="anti_cfg", kappa=-1.0, optim=OPTIM, steps=steps),
    "dmd2": lambda steps: world_config("dmd2", "", guidance="dmd2", kappa=1.75, optim=DMD2_OPTIM, steps=steps,
                                       sigma_ladder=ladder_within(get_method("dmd2").sigma_ladder, SIGMA_MAX),
                                       gen_noise=DDPM_T, critic_noise=DDPM_T),
    "diff_instruct": lambda steps: world_config("diff_instruct", "", guidance="sid_lsg", kappa=1.5, optim=OPTIM,
                                                steps=steps),
}
PER_PROMPT = 10


def _row(name, calls, m, seconds):
    return f"| {name} | {calls} | {m['alignment']:.1f} | {m['diversity']:.2f} | {m['fd']:.2f} | {seconds} |"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--out", default="runs/world_table")
    args = p.parse_args()
    with open(os.path.join(world.ASSETS, "teacher_eval.json")) as f:
        best = json.load(f)
    prompts = metrics.eval_prompts(PER_PROMPT * len(scene.all_prompts()))
    seeds = np.arange(len(prompts))
    real = scene.scenes_for_prompts(1, prompts)
    lines = [f"{len(prompts)} images per row, {args.steps} iterations per method, {platform.processor() or 'cpu'} "
             f"({os.cpu_count()} cores)", "", "| model | calls | align % | diversity | FD | train s |",
             "|---|---|---|---|---|---|"]
    teacher_done = False
    for name in args.methods.split(","):
        workdir = os.path.join(args.out, name)
        start = time.perf_counter()
        train(METHODS[name](args.steps), workdir, print_fn=lambda s: print(f"[{name}] {s}", flush=True))
        seconds = f"{time.perf_counter() - start:.0f}"
        run = open_run(workdir)
        if not teacher_done:
            images = np.asarray(run.decode(run.teacher_samples(seeds, best["best_steps"], best["best_cfg"])))
            lines.append(_row(f"teacher: DDIM {best['best_steps']}, CFG {best['best_cfg']}", 2 * best["best_steps"],
                              metrics.world_metrics(run.judge, images, prompts, real), "-"))
            lines.append(_row("real scenes (floor)", "-", metrics.real_floor(run.judge, prompts), "-"))
            teacher_done = True
        for k in range(1, run.distiller.spec.num_steps + 1):
            if run.distiller.spec.num_steps > 1 and k == 3:
                continue
            images = np.asarray(run.decode(run.student_samples(seeds, k)))
            lines.append(_row(f"{name}" + (f" @ {k} steps" if run.distiller.spec.num_steps > 1 else ""), k,
                              metrics.world_metrics(run.judge, images, prompts, real), seconds))
        print("\n".join(lines), flush=True)
    print("\n".join(lines))
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
