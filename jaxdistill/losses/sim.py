"""Score Implicit Matching (SIM) generator loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.losses._common import Denoiser, call, check_inputs, choose, f32, noised, pmean_abs, psum
from jaxdistill.losses._common import time_weight as sigma_weight

SIM_DISTANCES = ("l2", "pseudo_huber")


def sim(
    x_g: jax.Array,
    noise: jax.Array,
    sigma: jax.Array,
    real: Denoiser,
    fake: Denoiser,
    *,
    distance: str = "l2",
    huber_c: float = 1.0,
    time_weight: str | None = None,
) -> tuple[jax.Array, dict]:
    """SIM generator loss (per sample), in x0 units.

    With ``x_t = x_g + σ·ε``, ``f_r = real(x_t, σ)``, ``f_f = fake(x_t, σ)``, ``Δ = f_r - f_f`` and the
    sums over all non-batch elements::

        "l2":            loss_i = tw_i · ⟨Δ, f_f - x_g⟩
        "pseudo_huber":  loss_i = tw_i · ⟨Δ, f_f - x_g⟩ / sqrt(‖Δ‖² + c²)

    Derivation (EDM σ-space, a=1, s=σ): SIM's loss is ``-d'(y)ᵀ(s_ψ(x_t) - ∇log q(x_t|x_g))`` with
    ``y = s_ψ - s_φ = -Δ/σ²`` and ``s_ψ - ∇log q(x_t|x_g) = (f_f - x_g)/σ²``. For ``d(y) = ‖y‖²`` this
    is ``(2/σ⁴)·⟨Δ, f_f - x_g⟩``: exactly SiD with α=1 (``Δ⊙[(f_r - x_g) - Δ] = Δ⊙(f_f - x_g)``) up
    to the per-sample weight, so ``sim(l2, time_weight=w) == sid(alpha=1, weighting=w)``. For the
    pseudo-Huber ``d(y) = sqrt(‖y‖² + c_s²) - c_s`` it is
    ``(1/σ²)·⟨Δ, f_f - x_g⟩/sqrt(‖Δ‖² + (c_s σ²)²)``; this kernel takes ``huber_c`` directly in x0
    units (``c = c_s·σ²``) and leaves the σ-power to ``time_weight``.

    Gradient: as in SiD, the whole expression is differentiated, through ``x_g`` and through ``x_t``
    into both denoisers (SIM's score-gradient theorem freezes only the critic's *parameters*). The
    pseudo-Huber normaliser ``sqrt(‖Δ‖² + c²)`` is **not** detached: it is ``d'(y)``, a function of
    ``x_t``, and the theorem differentiates it like ``d'(y) = 2y`` is differentiated in the L2/SiD
    case; detaching it would drop a term that does not vanish in expectation. (The SIM training
    code is not public, spec §9: unverified against the authors' practice.) With detached nets the
    x_g-gradient would be ``-tw·Δ`` (L2) or ``-tw·Δ/sqrt(‖Δ‖² + c²)`` (pseudo-Huber).

    ``time_weight``: ``None`` (1) or a name of the few-step SiD σ-weights (see :func:`sid`), applied
    detached. Any other per-sample weight (e.g. the theorem's ``2/σ⁴``) can be multiplied onto the
    returned per-sample loss by the caller. ``huber_c`` (> 0) and SIM's own time weighting are
    unverified (spec §9); since ‖Δ‖ is a sum over elements, pick ``huber_c`` ∝ √(elements per sample)
    (as iCT's pseudo-Huber constant) to keep the same regime across resolutions.

    Paper: Luo et al., "One-Step Diffusion Distillation through Score Implicit Matching",
    arXiv 2410.16794 (score-gradient theorem, §3.2–3.3). Code: ``maple-research-lab/SIM`` is
    inference-only; the L2 case matches ``mingyuanzhou/SiD`` training/sid_loss.py with alpha=1.

    Returns ``(loss [B] (≥ float32), aux)`` with aux ``scale`` (time weight) [B] and ``delta_abs`` [B].
    """
    check_inputs(x_g, noise, sigma)
    choose("distance", distance, dict.fromkeys(SIM_DISTANCES))
    if time_weight is None:
        tw = jnp.ones_like(f32(sigma))
    else:
        tw = sigma_weight(time_weight, sigma, "time_weight")
    x_t = noised(x_g, noise, sigma)
    f_real = call(real, x_t, sigma, "real")
    f_fake = call(fake, x_t, sigma, "fake")
    delta = f_real - f_fake
    inner = psum(delta * (f_fake - x_g))
    if distance == "pseudo_huber":
        inner = inner / jnp.sqrt(psum(jnp.square(delta)) + huber_c**2)
    return tw * inner, {"scale": tw, "delta_abs": pmean_abs(delta)}


__all__ = ["sim", "SIM_DISTANCES"]
