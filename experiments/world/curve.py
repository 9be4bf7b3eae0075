"""The demo recipe's learning curve: distil the world's teacher with SiD-LSG for `steps`
iterations, keeping a checkpoint every `every`, then score each checkpoint's EMA student on the
demo's 90 images (5 per prompt, the demo's seeds) with the judge.

    python experiments/world/curve.py STEPS KAPPA LR BATCH EVERY OUT [ema=0.99] [sigma_init=2.5]
    python experiments/world/curve.py 300 2.0 1e-4 8 50 runs/curve_k2      # the README's curve, about 12 min
    python experiments/world/curve.py 300 2.0 3e-4 8 50 runs/curve_k2_lr3  # the lr 3e-4 comparison

Prints one `RESULT <out> step <n> align <%> div <diversity> fd <FD>` line per checkpoint.
"""

import sys
import time

import numpy as np

from jaxdistill.recipes import world_config
from jaxdistill.train.program import open_run, train
from jaxdistill.world import metrics, scene


def main() -> None:
    steps, kappa, lr, batch, every, out = (int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]),
                                           int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    extra = dict(a.split("=") for a in sys.argv[7:])
    config = world_config("sid_lsg", "", guidance="sid_lsg", kappa=kappa,
                          optim=dict(gen_lr=lr, critic_lr=lr, ema_decay=float(extra.get("ema", 0.99))),
                          batch_size=batch, steps=steps)
    if "sigma_init" in extra:
        config.method.sigma_init = float(extra["sigma_init"])
    config.train.update(log_every=25, checkpoint_every=every, keep=100, eval_samples=36)
    prompts = metrics.eval_prompts(90)
    seeds, real = np.arange(90), scene.scenes_for_prompts(1, prompts)
    start = time.time()
    train(config, out, print_fn=lambda s: print(s, flush=True))
    print("train seconds", time.time() - start, flush=True)
    for step in range(every, steps + 1, every):
        run = open_run(out, step)
        images = np.asarray(run.decode(run.student_samples(seeds, None)))
        m = metrics.world_metrics(run.judge, images, prompts, real)
        print(f"RESULT {out} step {step} align {m['alignment']:.1f} div {m['diversity']:.2f} fd {m['fd']:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
