"""Score identity Distillation (SiD) generator loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.losses._common import (
    TIME_WEIGHTS,
    Denoiser,
    call,
    check_inputs,
    choose,
    noised,
    pmean_abs,
    psum,
    sg,
    time_weight,
)

SID_WEIGHTINGS = ("mean_abs",) + tuple(TIME_WEIGHTS)


def sid_scale(weighting: str, x_g, f_real, sigma, min_weight: float) -> jax.Array:
    """Detached (≥ float32) per-sample scale of the SiD loss -> [B] (see :func:`sid`)."""
    if weighting == "mean_abs":
        return sg(1.0 / jnp.maximum(pmean_abs(x_g - f_real), min_weight))
    return time_weight(weighting, sigma, "weighting")


def sid(
    x_g: jax.Array,
    noise: jax.Array,
    sigma: jax.Array,
    real: Denoiser,
    fake: Denoiser,
    *,
    alpha: float = 1.2,
    weighting: str = "mean_abs",
    min_weight: float = 1e-5,
) -> tuple[jax.Array, dict]:
    """SiD generator loss (per sample).

    With ``x_t = x_g + σ·ε``, ``f_r = real(x_t, σ)``, ``f_f = fake(x_t, σ)`` and ``Δ = f_r - f_f``::

        loss_i = scale_i · Σ_elements Δ ⊙ [(f_r - x_g) - α·Δ]

    (for α=1 this is ``Δ ⊙ (f_f - x_g)``). Only ``scale`` is under ``stop_gradient``; the gradient
    flows through ``x_g`` directly **and** through ``x_t`` into both denoisers, so a generator step
    back-propagates through the teacher and the critic. With ``J_r, J_f`` the Jacobians of the
    denoisers at ``x_t`` (``∂x_t/∂x_g = I``)::

        ∂loss_i/∂x_g = scale_i · [ (J_r - J_f)ᵀ((f_r - x_g) - 2αΔ) + J_rᵀΔ - Δ ]

    which reduces to ``-scale·Δ`` (the DMD / Diff-Instruct direction) only if the nets were detached.

    ``weighting`` chooses ``scale``:

    - ``"mean_abs"`` (SiD / SiD-LSG, ml-sid-dit ``sid_legacy``): ``1/max(mean|x_g - f_r|, min_weight)``,
      the mean over non-batch axes, computed in (at least) float32.
    - few-step SiD (ml-sid-dit ``--weighting_scheme``), written in σ through the flow time
      ``t = σ/(1+σ)``: ``"one_minus_t"`` (1-t = 1/(1+σ)), ``"one_minus_t_squared"`` ((1-t)²),
      ``"snr_sqrt"`` ((1-t)/t = 1/σ), ``"snr"`` (1/σ²), ``"one_over_t"`` (1/t),
      ``"one_over_t_squared"`` (1/t²).

    The loss is summed over elements (as SiD does); batch reduction and SiD's ``lsg`` factor are the
    caller's.

    Paper: SiD, Zhou et al., arXiv 2404.04057; few-step SiD arXiv 2505.12674 / 2509.25127.
    Code: ``mingyuanzhou/SiD`` training/sid_loss.py (``SID_EDMLoss.generator_loss``);
    ``mingyuanzhou/SiD-LSG`` training/sid_training_loop.py; ``apple/ml-sid-dit``
    training/sid_dit_training_loop.py (weighting schemes).

    Returns ``(loss [B] (≥ float32), aux)`` with aux ``scale`` [B] and ``delta_abs`` (mean |Δ|) [B].
    """
    check_inputs(x_g, noise, sigma)
    choose("weighting", weighting, dict.fromkeys(SID_WEIGHTINGS))
    x_t = noised(x_g, noise, sigma)
    f_real = call(real, x_t, sigma, "real")
    f_fake = call(fake, x_t, sigma, "fake")
    delta = f_real - f_fake
    scale = sid_scale(weighting, x_g, f_real, sigma, min_weight)
    loss = psum(delta * ((f_real - x_g) - alpha * delta)) * scale
    return loss, {"scale": scale, "delta_abs": pmean_abs(delta)}


__all__ = ["sid", "sid_scale", "SID_WEIGHTINGS"]
