"""The reproduction table on the embedded world: each method distils the shipped teacher through
`jaxdistill train`, then is scored by the judge on the same prompts and seeds as the teacher.

    python experiments/world/table.py [--methods sid_lsg_1.5,zero_cfg,...] [--steps 300] [--out runs/world_table]

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
from jaxdistill.recipes import world_config
from jaxdistill.train.program import open_run, train
from jaxdistill.world import metrics, scene

METHODS = {
    "sid_lsg_1.5": lambda steps: world_config("sid_lsg", "", guidance="sid_lsg", kappa=1.5, steps=steps),
    "sid_lsg_3": lambda steps: world_config("sid_lsg", "", guidance="sid_lsg", kappa=3.0, steps=steps),
    "sid_fewstep_k4": lambda steps: world_config("sid_fewstep", "", guidance="sid_lsg", kappa=1.5, steps=steps),
    "zero_cfg": lambda steps: world_config("sid_lsg", "", guidance="zero_cfg", steps=steps),
    "anti_cfg": lambda steps: world_config("sid_lsg", "", guidance="anti_cfg", kappa=-1.0, steps=steps),
    "dmd2": lambda steps: world_config("dmd2", "", guidance="dmd2", kappa=1.75, steps=steps,
                                       optim=dict(gen_lr=5e-5, critic_lr=5e-5)),
    "diff_instruct": lambda steps: world_config("diff_instruct", "", guidance="sid_lsg", kappa=1.5, steps=steps),
}
PER_PROMPT = 10


def _row(name, calls, m, seconds):
    return f"| {name} | {calls} | {m['alignment']:.1f} | {m['diversity']:.2f} | {m['fd']:.2f} | {seconds} |"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=300)
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


if __name__ == "__main__":
    main()
