"""The shipped world teacher's sampler and CFG sweep, the judge's accuracy, and the real-data floor.

    python experiments/world/teacher_cfg.py [--per_prompt 10] [--write]

Prints one row per (DDIM steps, CFG scale): alignment (%), diversity (relative to real scenes),
FD in the judge's feature space, calls per image; then the floor (real against real, same
prompts and size). `--write` records the best scale (highest alignment, then lowest FD) in
jaxdistill/world/assets/teacher_eval.json, which `make demo` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from jaxdistill import world
from jaxdistill.recipes import world_config
from jaxdistill.train.program import build_run
from jaxdistill.world import judge as judge_lib
from jaxdistill.world import metrics, scene


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--per_prompt", type=int, default=10)
    p.add_argument("--scales", default="1,2,3,4.5,6")
    p.add_argument("--steps", default="25")
    p.add_argument("--teacher", default=world.TEACHER)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    config = world_config("sid_lsg", "", guidance="sid_lsg", kappa=1.5)
    config.teacher.path = args.teacher
    run = build_run(config)
    prompts = metrics.eval_prompts(args.per_prompt * len(scene.all_prompts()))
    seeds = np.arange(len(prompts))
    real = scene.scenes_for_prompts(1, prompts)
    held_out = scene.sample_scenes(123, 2000)
    read = judge_lib.readout(run.judge, held_out.images)
    judge_acc = 100 * float(np.mean((read["kind"] == held_out.kind) & (read["colour"] == held_out.colour)))
    floor = metrics.real_floor(run.judge, prompts)
    print(f"judge: kind and colour both right on {judge_acc:.2f}% of 2000 held-out real scenes")
    header = f"{'sampler':<22} {'calls':>5} {'align %':>8} {'diversity':>9} {'FD':>7} {'seconds':>8}"
    print(f"{len(prompts)} images per row\n{header}\n{'-' * len(header)}")
    print(f"{'real scenes (floor)':<22} {'-':>5} {floor['alignment']:>8.1f} {floor['diversity']:>9.2f} "
          f"{floor['fd']:>7.2f} {'-':>8}")
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        for scale in (float(s) for s in args.scales.split(",")):
            start = time.perf_counter()
            images = np.asarray(run.decode(run.teacher_samples(seeds, steps, scale)))
            seconds = time.perf_counter() - start
            m = metrics.world_metrics(run.judge, images, prompts, real)
            calls = steps if scale == 1.0 else 2 * steps
            rows.append({"steps": steps, "cfg": scale, "calls": calls, **m})
            print(f"{f'DDIM {steps}, CFG {scale}':<22} {calls:>5} {m['alignment']:>8.1f} {m['diversity']:>9.2f} "
                  f"{m['fd']:>7.2f} {seconds:>8.1f}", flush=True)
    best = max(rows, key=lambda r: (round(r["alignment"], 1), -r["fd"]))
    print(f"best: DDIM {best['steps']}, CFG {best['cfg']}")
    if args.write:
        path = os.path.join(world.ASSETS, "teacher_eval.json")
        with open(path, "w") as f:
            json.dump({"best_cfg": best["cfg"], "best_steps": best["steps"], "judge_accuracy": judge_acc,
                       "floor": floor, "rows": rows, "images_per_row": len(prompts),
                       "command": "python experiments/world/teacher_cfg.py --write"}, f, indent=2)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
