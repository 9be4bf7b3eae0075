"""`make demo`: the main job on the embedded default.

Today that is distilling the analytic Gaussian-mixture teacher (a 2-D ring of 4 modes with
unequal weights) into one-step MLP generators with SiD and DMD2, and printing teacher versus
students: network calls per sample, max relative mode-weight error, MMD² over its noise floor
(≤ 2 passes the tests), mean log-density under the teacher, samples/s and training seconds.
About 1.5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import time

import jax

from jaxdistill.diffusion import edm_heun, karras_sigmas
from jaxdistill.eval.mixture_metrics import evaluate
from jaxdistill.teachers import ring_mixture
from jaxdistill.toy import distill_mixture, toy_spec

N_EVAL = 1000
THROUGHPUT_BATCH = 100_000
STEPS = 3000


def _throughput(fn) -> float:
    fn().block_until_ready()
    start = time.perf_counter()
    fn().block_until_ready()
    return THROUGHPUT_BATCH / (time.perf_counter() - start)


def main() -> None:
    gm = ring_mixture(num_modes=4, radius=2.0, std=0.5)
    print(f"jaxdistill demo: distilling an analytic 4-mode mixture on {jax.devices()[0].platform}; "
          f"metrics on {N_EVAL} samples\n")
    header = f"{'model':<34} {'calls':>5} {'weight err':>10} {'MMD²/floor':>10} {'log p':>7} " \
             f"{'samples/s':>10} {'train s':>8}"
    print(header)
    print("-" * len(header))

    def row(name, calls, r, rate, train):
        print(f"{name:<34} {calls:>5} {r['max_rel_weight_err']:>10.3f} {r['mmd2'] / r['mmd2_floor']:>10.2f} "
              f"{r['mean_log_p']:>7.3f} {rate:>10.0f} {train:>8}", flush=True)

    exact = evaluate(gm.sample(jax.random.key(3), N_EVAL), gm)
    row("exact samples", "-", exact, float("nan"), "-")
    noise = jax.random.normal(jax.random.key(0), (N_EVAL, 2))
    heun = jax.jit(lambda n: edm_heun(gm.denoiser(), n, karras_sigmas(18)))
    big = jax.random.normal(jax.random.key(1), (THROUGHPUT_BATCH, 2))
    row("teacher: EDM Heun, 18 steps", 35, evaluate(heun(noise), gm), _throughput(lambda: heun(big)), "-")
    for method in ("sid", "dmd2"):
        run = distill_mixture(gm, toy_spec(method), steps=STEPS)
        rate = _throughput(lambda: run.sample(THROUGHPUT_BATCH, seed=4))
        row(f"{method}: one-step student", 1, evaluate(run.sample(N_EVAL), gm), rate,
            f"{run.train_seconds:.1f}")


if __name__ == "__main__":
    main()
