"""`make demo`: the main job on the embedded default.

Today that is sampling the analytic Gaussian-mixture teachers with EDM's Heun sampler and
comparing the samples' statistics with the exact ones, next to the same statistics of exact
samples of the same size (the noise floor). Runs in well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.diffusion import edm_heun, euler, karras_sigmas
from jaxdistill.teachers import GaussianMixture, image_mixture, ring_mixture

NUM_SAMPLES = 20_000


def sample_statistics(x: jax.Array, gm: GaussianMixture) -> dict:
    """Errors of a sample's moments and mode weights against the mixture's exact values."""
    xf = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    mean, cov = np.asarray(gm.mean(), np.float64), np.asarray(gm.covariance(), np.float64)
    comp = np.asarray(jnp.argmax(gm.responsibilities(x, jnp.zeros(x.shape[0])), axis=1))
    freq = np.bincount(comp, minlength=gm.num_components) / x.shape[0]
    return {
        "mean_err": float(np.max(np.abs(xf.mean(0) - mean))),
        "cov_rel_err": float(np.linalg.norm(np.cov(xf.T) - cov) / np.linalg.norm(cov)),
        "weight_err": float(np.max(np.abs(freq - np.asarray(gm.weights)))),
        "mean_log_p": float(jnp.mean(gm.log_prob(x))),
    }


def _rows(name: str, gm: GaussianMixture, seed: int):
    key_noise, key_exact = jax.random.split(jax.random.key(seed))
    noise = jax.random.normal(key_noise, (NUM_SAMPLES,) + gm.event_shape)
    runs = [
        ("exact samples (noise floor)", 0, lambda: gm.sample(key_exact, NUM_SAMPLES)),
        ("EDM Heun, 18 steps", 35, jax.jit(lambda: edm_heun(gm.denoiser(), noise, karras_sigmas(18)))),
        ("EDM Heun, 35 steps", 69, jax.jit(lambda: edm_heun(gm.denoiser(), noise, karras_sigmas(35)))),
        ("Euler, 35 steps", 35, jax.jit(lambda: euler(gm.denoiser(), noise, karras_sigmas(35)))),
    ]
    for label, nfe, run in runs:
        run().block_until_ready()  # compile
        start = time.perf_counter()
        x = run().block_until_ready()
        seconds = time.perf_counter() - start
        yield name, label, nfe, sample_statistics(x, gm), seconds


def main() -> None:
    teachers = [
        ("ring-8 (2-D)", ring_mixture(num_modes=8), 0),
        ("image 8x8x3, 6 comp.", image_mixture(seed=0, shape=(8, 8, 3), num_components=6), 1),
    ]
    print(f"jaxdistill demo: analytic Gaussian-mixture teachers, {NUM_SAMPLES} samples each, "
          f"on {jax.devices()[0].platform} ({jax.device_count()} device(s))")
    print("errors against the exact mixture; the first row of each teacher is the sampling-noise floor\n")
    header = f"{'teacher':<22} {'sampler':<28} {'NFE':>4} {'|mean| err':>10} {'cov rel err':>11} " \
             f"{'weight err':>10} {'mean log p':>10} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    for name, gm, seed in teachers:
        for teacher, label, nfe, st, sec in _rows(name, gm, seed):
            print(f"{teacher:<22} {label:<28} {nfe:>4} {st['mean_err']:>10.4f} {st['cov_rel_err']:>11.4f} "
                  f"{st['weight_err']:>10.4f} {st['mean_log_p']:>10.3f} {sec:>8.3f}")


if __name__ == "__main__":
    main()
