"""Reproduction table on the exact world: every method distils the same analytic mixture.

    python experiments/mixture_table.py [--steps 3000] [--out experiments/mixture_table.md]

Teacher: 2-D ring of 4 Gaussians (radius 2, std 0.5, weights 0.1/0.2/0.3/0.4). Student: a
one-step (few-step for sid_fewstep) MLP generator with an MLP critic, both residuals on the
teacher, batch 256, the settings of `jaxdistill.toy.TOY_SETTINGS`. Metrics on 1,000 samples of
the EMA generator: max relative mode-weight error, MMD² over its noise floor (2 = the pass line
of the tests), mean log-density under the teacher (exact samples: the last row). Seconds are
training wall time on the machine that ran it (compile excluded, printed separately).
Cost: about 3-4 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax

from jaxdistill.diffusion import edm_heun, karras_sigmas
from jaxdistill.eval.mixture_metrics import evaluate
from jaxdistill.teachers import ring_mixture
from jaxdistill.toy import distill_mixture, toy_spec

TARGET = ring_mixture(num_modes=4, radius=2.0, std=0.5)
METHODS = ("sid", "sim", "diff_instruct", "dmd2", "fdistill", "sid_fewstep")
N_EVAL = 1000


def _row(name, steps_label, nfe, seconds, r):
    return (f"| {name} | {steps_label} | {nfe} | {r['max_rel_weight_err']:.3f} | {r['mmd2'] / r['mmd2_floor']:.2f} "
            f"| {r['mean_log_p']:.3f} | {seconds} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    lines = [
        f"Machine: {platform.machine()}, {jax.devices()[0].platform} ({jax.device_count()} device), "
        f"jax {jax.__version__}; {args.steps} iterations each; {N_EVAL} evaluation samples.",
        "",
        "| method | training iterations | generator NFE | max rel. weight err | MMD²/floor | mean log p | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        spec = toy_spec(method, sigma_ladder=(2.5, 1.0, 0.5, 0.25)) if method == "sid_fewstep" else toy_spec(method)
        run = distill_mixture(TARGET, spec, steps=args.steps)
        compile_s = run.distiller.compile_seconds
        for n in ((1, 2, 4) if method == "sid_fewstep" else (1,)):
            r = evaluate(run.sample(N_EVAL, num_steps=n), TARGET)
            lines.append(_row(method, args.steps, n, f"{run.train_seconds:.1f} (+{compile_s:.1f} compile)", r))
            print(lines[-1], flush=True)
    noise = jax.random.normal(jax.random.key(0), (N_EVAL, 2))
    start = time.perf_counter()
    x = jax.jit(lambda n: edm_heun(TARGET.denoiser(), n, karras_sigmas(18)))(noise).block_until_ready()
    seconds = f"{time.perf_counter() - start:.2f} (incl. compile)"
    lines.append(_row("teacher, EDM Heun 18 steps", "-", 35, seconds, evaluate(x, TARGET)))
    exact = evaluate(TARGET.sample(jax.random.key(3), N_EVAL), TARGET)
    lines.append(_row("exact samples", "-", "-", "-", exact))
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
