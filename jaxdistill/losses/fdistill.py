"""f-distill: DMD2 with an f-divergence density-ratio weight."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxdistill.losses._common import Denoiser, choose, f32, pseudo_target, sg
from jaxdistill.losses.dmd import dm_gradient

# h(r) = r²·f''(r) (up to a constant factor, removed by the batch normalisation) for the generator
# f of each divergence D_f(p_data ‖ p_gen), r = p_data/p_gen. FastGen's names in brackets.
F_DIVERGENCES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "rkl": lambda r: jnp.ones_like(r),  # reverse KL, f = -log r  [rkl]
    "kl": lambda r: r,  # forward KL, f = r log r  [kl]
    "js": lambda r: 1.0 - 1.0 / (1.0 + r),  # Jensen-Shannon  [js]
    "sh": lambda r: jnp.sqrt(r),  # squared Hellinger, f = (√r - 1)²  [sh]
    "jeffreys": lambda r: 1.0 + r,  # Jeffreys, f = (r - 1) log r  [jf]
    "pearson": lambda r: r**2,  # Pearson χ², f = (r - 1)²  (not in FastGen)
    "neyman": lambda r: 1.0 / jnp.maximum(r, 1e-8),  # Neyman χ², f = (1 - r)²/r  [neyman]
    "sf": lambda r: 1.0 / (1.0 + r),  # softened reverse KL, f = (r+1) log((r+1)/(2r))  [sf]
}


def f_weight(logits, divergence: str, logit_clip: float, ratio_clip: tuple[float, float]):
    """Batch-normalised f-divergence weight ``h`` [B] and the ratio ``r`` [B], ≥ float32, detached."""
    h_fn = choose("divergence", divergence, F_DIVERGENCES)
    mean_logit = jnp.mean(f32(logits), axis=tuple(range(1, logits.ndim)))
    mean_logit = jnp.clip(jnp.nan_to_num(sg(mean_logit)), -logit_clip, logit_clip)
    r = jnp.clip(jnp.exp(mean_logit), ratio_clip[0], ratio_clip[1])
    h = h_fn(r)
    return h / jnp.mean(h), r


def fdistill(
    x_g: jax.Array,
    noise: jax.Array,
    sigma: jax.Array,
    real: Denoiser,
    fake: Denoiser,
    logits: jax.Array,
    *,
    divergence: str = "js",
    logit_clip: float = 10.0,
    ratio_clip: tuple[float, float] = (0.1, 20.0),
    min_weight: float = 1e-5,
) -> tuple[jax.Array, dict]:
    """f-distill generator loss (per sample): DMD2 (:func:`~jaxdistill.losses.dmd`) reweighted by h(r).

    ``logits`` [B, ...] are the discriminator's logits on the generated sample (``D ≈ log p_data/p_gen``).
    Per sample::

        r_i    = clip(exp(clip(mean_{non-batch} logits_i, ±logit_clip)), *ratio_clip)   (detached)
        h_i    = h(r_i) / mean_batch h(r)
        loss_i = 0.5 · Σ (x_g - sg(x_g - grad))²,   grad = nan_to_num(-h_i·Δ_i / w_i)

    so ``∂loss_i/∂x_g,i = -h_i·Δ_i/w_i`` with DMD2's ``w_i = max(mean|x_g - f_real|, min_weight)``;
    denoisers and ``h`` carry no gradient. ``h(r) = r²f''(r)`` per divergence (arXiv 2502.15681):
    ``rkl`` 1 (equals :func:`dmd` exactly), ``kl`` r, ``js`` 1-1/(1+r) (FastGen default), ``sh`` √r,
    ``jeffreys`` 1+r (FastGen ``jf``), ``pearson`` r² (not in FastGen), ``neyman`` 1/r, ``sf``
    1/(1+r) (softened reverse KL). The batch mean of ``h`` is global under sharding (inside ``jit``),
    as FastGen's all-reduce; the mean is taken without FastGen's +1e-6 so that ``rkl`` gives h ≡ 1.
    A non-finite mean logit is mapped to 0 (r = 1) so one bad sample cannot poison the batch mean.
    FastGen's optional per-t-bin EMA ratio normalisation is stateful and left to the caller.

    Paper: Xu et al., "One-step Diffusion Models with f-Divergence Distribution Matching",
    arXiv 2502.15681. Code: ``NVlabs/FastGen`` fastgen/methods/distribution_matching/f_distill.py
    (``FdistillModel._get_f_div_weighting_h``) and fastgen/methods/common_loss.py
    (``variational_score_distillation_loss``).

    Returns ``(loss [B] (≥ float32), aux)`` with aux ``scale`` (h/w) [B], ``h`` [B], ``ratio`` [B],
    ``delta_abs`` [B].
    """
    if logits.ndim < 1 or logits.shape[:1] != x_g.shape[:1]:
        raise ValueError(f"logits shape {logits.shape} must have the batch size of x_g {x_g.shape}")
    h, r = f_weight(logits, divergence, logit_clip, ratio_clip)
    grad, w, delta_abs = dm_gradient(x_g, noise, sigma, real, fake, h, min_weight)
    return pseudo_target(x_g, grad), {"scale": h / w, "h": h, "ratio": r, "delta_abs": delta_abs}


__all__ = ["fdistill", "f_weight", "F_DIVERGENCES"]
