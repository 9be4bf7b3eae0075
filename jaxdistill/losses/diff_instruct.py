"""Diff-Instruct (integral KL) and VSD / SwiftBrush generator losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.losses._common import Denoiser, bcast, detached_pair, f32, pmean_abs, pseudo_target, psum, sg


def diff_instruct(
    x_g: jax.Array,
    noise: jax.Array,
    sigma: jax.Array,
    real: Denoiser,
    fake: Denoiser,
) -> tuple[jax.Array, dict]:
    """Diff-Instruct (IKL) generator loss (per sample).

    Denoisers under ``stop_gradient`` at ``x_t = x_g + σ·ε``::

        loss_i = Σ sg(f_fake - f_real) ⊙ x_g      ⇒   ∂loss_i/∂x_g,i = -Δ_i

    with unit weight in denoiser space (the code's ``weight = 1.0``). The value itself is not a
    divergence estimate; only its gradient is meaningful.

    Paper: Luo et al., "Diff-Instruct", arXiv 2305.18455.
    Code: ``pkulwj1994/diff_instruct`` training/di_loss.py (``DI_EDMLoss.gloss``:
    ``(Dg_yn - Dd_yn) * images``, Sd the teacher, Sg the fake score).

    Returns ``(loss [B] (≥ float32), aux)`` with aux ``scale`` (ones) [B] and ``delta_abs`` [B].
    """
    f_real, f_fake = detached_pair(x_g, noise, sigma, real, fake)
    loss = psum((f_fake - f_real) * f32(x_g))
    return loss, {"scale": jnp.ones_like(f32(sigma)), "delta_abs": pmean_abs(f_real - f_fake)}


def vsd(
    x_g: jax.Array,
    noise: jax.Array,
    sigma: jax.Array,
    real: Denoiser,
    fake: Denoiser,
) -> tuple[jax.Array, dict]:
    """VSD / SwiftBrush generator loss (per sample), ProlificDreamer's weight in σ-space.

    Denoisers under ``stop_gradient`` at ``x_t = x_g + σ·ε``::

        ω(σ)   = σ / (1 + σ²)
        grad   = nan_to_num(-ω·Δ)
        loss_i = 0.5 · Σ (x_g - sg(x_g - grad))²     ⇒   ∂loss_i/∂x_g,i = -ω(σ_i)·Δ_i

    Derivation: SwiftBrush's score gradient is ``σ_t²(ε̂_φ - ε̂_ψ)`` with its VP ``σ_t² = 1 - ᾱ``
    (ε̂ with CFG applied to both nets). In VP coordinates ``x_t = a·x_g + s·ε``, ``a = √ᾱ``,
    ``s = √(1-ᾱ)``, and ``ε̂ = (x_t - a·f)/s``, so ``ε̂_φ - ε̂_ψ = -(a/s)·Δ`` and the gradient is
    ``-s²(a/s)Δ = -a·s·Δ`` (spec §5). The VP point is the EDM point ``x_t/a`` with ``σ = s/a``, i.e.
    ``ᾱ = 1/(1+σ²)``, and the x0-predictions are unchanged, so ``a·s = √ᾱ·√(1-ᾱ) = σ/(1+σ²)``.
    The value is ``0.5·ω²‖Δ‖²`` (SwiftBrush takes the element mean instead of the sum).

    Papers: ProlificDreamer (VSD), arXiv 2305.16213; SwiftBrush, arXiv 2312.05239.
    Code: ``VinAIResearch/SwiftBrush`` train_swiftbrush.py (``main`` loop: ``score_gradient``,
    ``loss_vsd``).

    Returns ``(loss [B] (≥ float32), aux)`` with aux ``scale`` (ω) [B] and ``delta_abs`` [B].
    """
    f_real, f_fake = detached_pair(x_g, noise, sigma, real, fake)
    s = f32(sigma)
    omega = sg(s / (1.0 + s**2))
    grad = jnp.nan_to_num((f_fake - f_real) * bcast(omega, f_real))
    return pseudo_target(x_g, grad), {"scale": omega, "delta_abs": pmean_abs(f_real - f_fake)}


__all__ = ["diff_instruct", "vsd"]
