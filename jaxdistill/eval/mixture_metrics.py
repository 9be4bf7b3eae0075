"""Metrics of generated samples against an analytic mixture: mode weights, MMD and its noise floor.

- mode weights: each sample is assigned to its most responsible component at σ = 0;
- MMD²: the biased (V-statistic) squared maximum mean discrepancy with a sum of Gaussian kernels
  at bandwidths (0.05, 0.1, 0.2, 0.5, 1, 2)·√(mean per-dimension variance of the mixture);
- noise floor: the same statistic between two independent exact samples of the same size,
  averaged over `floor_repeats` pairs. "Within 2× the floor" means MMD² ≤ 2·floor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.teachers.gaussian_mixture import GaussianMixture

BANDWIDTHS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def mode_weights(x: jax.Array, gm: GaussianMixture, label=None) -> np.ndarray:
    """Fraction of samples assigned to each component (most responsible at σ = 0)."""
    comp = np.asarray(jnp.argmax(gm.responsibilities(x, jnp.zeros(x.shape[0]), label), axis=1))
    return np.bincount(comp, minlength=gm.num_components) / x.shape[0]


@jax.jit
def _mmd2(x, y, scale):
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)

    def kernel(a, b):
        d2 = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2 * a @ b.T
        d2 = jnp.maximum(d2, 0.0) / a.shape[1]
        return sum(jnp.exp(-d2 / (2 * (bw * scale) ** 2)) for bw in BANDWIDTHS)

    return jnp.mean(kernel(x, x)) + jnp.mean(kernel(y, y)) - 2 * jnp.mean(kernel(x, y))


def mmd2(x: jax.Array, y: jax.Array, gm: GaussianMixture) -> float:
    """Biased MMD² between two sample sets, kernels scaled to the mixture."""
    scale = float(jnp.sqrt(jnp.mean(jnp.diag(gm.covariance()))))
    return float(_mmd2(x, y, scale))


def mmd2_noise_floor(gm: GaussianMixture, n: int, seed: int = 0, floor_repeats: int = 3, label=None) -> float:
    """Mean MMD² between two independent exact samples of size n."""
    vals = []
    for r in range(floor_repeats):
        k1, k2 = jax.random.split(jax.random.key(seed + 1000 + r))
        lab = None if label is None else jnp.full((n,), label, jnp.int32)
        vals.append(mmd2(gm.sample(k1, n, lab), gm.sample(k2, n, lab), gm))
    return float(np.mean(vals))


def evaluate(x: jax.Array, gm: GaussianMixture, seed: int = 0, label=None) -> dict:
    """Mode weights (vs exact), max relative weight error, MMD² and its noise floor, mean log p."""
    n = x.shape[0]
    lab = None if label is None else jnp.full((n,), label, jnp.int32)
    ref = gm.sample(jax.random.key(seed + 7), n, lab)
    weights = mode_weights(x, gm, lab)
    exact = np.asarray(jnp.exp(gm._class_log_weights(lab, 1)[0])) if lab is not None else np.asarray(gm.weights)
    present = exact > 0
    return {
        "weights": weights,
        "exact_weights": exact,
        "max_rel_weight_err": float(np.max(np.abs(weights[present] - exact[present]) / exact[present])),
        "mmd2": mmd2(x, ref, gm),
        "mmd2_floor": mmd2_noise_floor(gm, n, seed, label=label),
        "mean_log_p": float(jnp.mean(gm.log_prob(x, 0.0, lab))),
        "exact_mean_log_p": float(jnp.mean(gm.log_prob(ref, 0.0, lab))),
    }
