"""Denoising score matching for the fake-score network (critic)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxdistill.losses._common import Denoiser, call, check_inputs, choose, f32, noised, psum

# λ(σ) such that λ·‖D - x0‖² is the named regression error (σ_d = sigma_data).
DSM_WEIGHTINGS: dict[str, Callable[[jax.Array, float], jax.Array]] = {
    "edm": lambda s, sd: (s**2 + sd**2) / (s * sd) ** 2,
    "eps": lambda s, sd: 1.0 / s**2,
    "flow": lambda s, sd: (1.0 + s) ** 2 / s**2,
    "x0": lambda s, sd: jnp.ones_like(s),
    "none": lambda s, sd: jnp.ones_like(s),
}


def score_matching(
    x0: jax.Array,
    noise: jax.Array,
    sigma: jax.Array,
    denoiser: Denoiser,
    *,
    weighting: str = "edm",
    sigma_data: float = 0.5,
) -> tuple[jax.Array, dict]:
    """Denoising score-matching loss of the critic (per sample).

    With ``x_t = x0 + σ·ε`` and ``D = denoiser(x_t, σ)``::

        loss_i = λ(σ_i) · Σ_elements (D - x0)²

    ``weighting`` gives λ, chosen so the loss equals the regression error of the named
    parameterisation:

    - ``"edm"``: ``(σ² + σ_d²)/(σ σ_d)²`` (EDM; SiD ``SID_EDMLoss.__call__``, DMD2
      ``compute_loss_fake`` as ``1/σ² + 1/σ_d²``).
    - ``"eps"``: ``1/σ²`` = ε-MSE, since ``ε̂ = (x_t - D)/σ`` gives ``ε̂ - ε = (x0 - D)/σ``
      (SiD-LSG, DMD2-SD). SiD-LSG's v-pred loss ``‖v̂ - v‖²·snr/(snr+1)`` equals this too: in VP
      ``v̂ - v = (x0 - D)/s`` and ``snr/(snr+1) = 1/(1+σ²)``, giving ``(1+σ²)/σ² · 1/(1+σ²) = 1/σ²``.
    - ``"flow"``: ``(1+σ)²/σ²`` = flow-matching velocity MSE ``‖v̂ - v‖²`` (ml-sid-dit), since with
      ``t = σ/(1+σ)``, ``x_flow = x_t/(1+σ) = (1-t)x0 + tε``, ``v = ε - x0`` and
      ``v̂ = (x_flow - D)/t``: ``v̂ - v = (x0 - D)/t`` and ``1/t² = (1+σ)²/σ²``.
    - ``"x0"`` / ``"none"``: 1.

    ``x0`` is treated as data: the caller passes ``stop_gradient`` of the generator sample. The
    gradient flows into ``denoiser`` (w.r.t. whatever it closes over) and through ``x_t``.
    CFG "before the error" (SiD-LSG's κ1) is obtained by passing a guided denoiser closure
    ``D^κ = D(∅) + κ(D(c) - D(∅))``: the x0, ε and v predictions are affine in the network output at
    fixed ``x_t, σ``, so CFG on x0 equals CFG on ε or v and the identities above still hold.

    Paper: EDM, Karras et al., arXiv 2206.00364 (λ(σ)); SiD arXiv 2404.04057; DMD2 arXiv 2405.14867.
    Code: ``mingyuanzhou/SiD`` training/sid_loss.py (``SID_EDMLoss.__call__``); ``tianweiy/DMD2``
    main/edm/edm_guidance.py (``compute_loss_fake``); ``apple/ml-sid-dit``
    training/sid_dit_training_loop.py (flow-matching critic loss).

    Returns ``(loss [B] (≥ float32), aux)`` with aux ``scale`` (λ) [B].
    """
    check_inputs(x0, noise, sigma, x_name="x0")
    lam_fn = choose("weighting", weighting, DSM_WEIGHTINGS)
    x_t = noised(x0, noise, sigma)
    d = call(denoiser, x_t, sigma, "denoiser")
    lam = lam_fn(f32(sigma), sigma_data)
    return lam * psum(jnp.square(d - x0)), {"scale": lam}


__all__ = ["score_matching", "DSM_WEIGHTINGS"]
