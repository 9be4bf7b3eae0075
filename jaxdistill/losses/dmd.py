"""DMD / DMD2 distribution-matching generator loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.losses._common import Denoiser, bcast, detached_pair, pmean_abs, pseudo_target, sg


def dm_gradient(x_g, noise, sigma, real, fake, h, min_weight: float):
    """DMD2 pseudo-gradient ``nan_to_num(-h·Δ/w)`` (≥ float32, detached), ``w``, ``mean|Δ|``.

    Shared by :func:`dmd` (``h = 1``) and :func:`~jaxdistill.losses.fdistill` (``h`` = f-weights).
    """
    f_real, f_fake = detached_pair(x_g, noise, sigma, real, fake)
    w = sg(jnp.maximum(pmean_abs(x_g - f_real), min_weight))
    grad = jnp.nan_to_num((f_fake - f_real) * bcast(h / w, f_real))
    return sg(grad), w, pmean_abs(f_real - f_fake)


def dmd(
    x_g: jax.Array,
    noise: jax.Array,
    sigma: jax.Array,
    real: Denoiser,
    fake: Denoiser,
    *,
    min_weight: float = 1e-5,
) -> tuple[jax.Array, dict]:
    """DMD2 distribution-matching loss (per sample).

    Both denoisers run under ``stop_gradient`` at ``x_t = sg(x_g) + σ·ε``. With ``p = x_g - f``::

        grad   = nan_to_num((p_real - p_fake) / w) = nan_to_num(-Δ / w),
        w_i    = max(mean_{non-batch} |x_g - f_real|, min_weight)      (≥ float32, detached)
        loss_i = 0.5 · Σ (x_g - sg(x_g - grad))²                        (value 0.5‖grad‖²)

    so ``∂loss_i/∂x_g,i = grad_i = -Δ_i / w_i`` exactly. DMD2 takes the element *mean* of the
    pseudo-target MSE (gradient ``grad/numel``); this kernel sums per sample, so the caller's batch
    mean reproduces DMD2 up to the constant ``numel``. DMD2 divides by ``mean|p_real|`` unclipped;
    the ``min_weight`` floor (SiD's 1e-5) only guards against a zero weight.

    Paper: DMD (Yin et al., arXiv 2311.18828) and DMD2 (arXiv 2405.14867).
    Code: ``tianweiy/DMD2`` main/sd_guidance.py and main/edm/edm_guidance.py
    (``compute_distribution_matching_loss``).

    Returns ``(loss [B] (≥ float32), aux)`` with aux ``scale`` (= 1/w) [B] and ``delta_abs`` [B].
    """
    grad, w, delta_abs = dm_gradient(x_g, noise, sigma, real, fake, 1.0, min_weight)
    return pseudo_target(x_g, grad), {"scale": 1.0 / w, "delta_abs": delta_abs}


__all__ = ["dmd", "dm_gradient"]
