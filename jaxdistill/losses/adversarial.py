"""Non-saturating logistic GAN losses on discriminator logits (DMD2, SiDA, Diffusion-GAN)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.losses._common import f32


def _per_sample_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(f32(x), axis=tuple(range(1, x.ndim)))


def _clip(logits: jax.Array, clamp: float | None) -> jax.Array:
    return logits if clamp is None else jnp.clip(logits, -clamp, clamp)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, *, clamp: float | None = 10.0) -> jax.Array:
    """Discriminator loss (per sample) -> [B].

    ``loss_i = mean softplus(-D(real))_i + mean softplus(D(fake))_i``, each the mean over that
    sample's logit map (``[B]``, ``[B, K]`` or ``[B, 1, h, w]``), with logits clamped to ``±clamp``
    first (``None``: no clamp). The clamp has zero gradient outside the range, as ``torch.clamp``.
    Equal to ``BCE(D(real), 1) + BCE(D(fake), 0)`` with logits. DMD2 uses exactly this sum
    (unclamped); SiDA / ml-sid-dit use ``[BCE(real,1) + BCE(fake,0)]/2`` with the ±10 clamp (SiDA also
    scales by λ(σ) and C·H·W): identical up to constant factors the caller applies.

    Papers: DMD2 arXiv 2405.14867 (spec §4.4); SiDA arXiv 2410.14919 (spec §1.6).
    Code: ``tianweiy/DMD2`` main/edm/edm_guidance.py (``compute_guidance_clean_cls_loss``:
    ``softplus(pred_fake) + softplus(-pred_real)``); ``mingyuanzhou/SiD@sida``
    sida_training/sida_loss.py (``fakescore_discriminator_share_encoder_loss``).
    """
    if real_logits.ndim < 1 or real_logits.shape[:1] != fake_logits.shape[:1]:
        raise ValueError(
            f"real_logits shape {real_logits.shape} and fake_logits shape {fake_logits.shape} "
            "must share the batch axis"
        )
    real_term = jax.nn.softplus(-_clip(f32(real_logits), clamp))
    fake_term = jax.nn.softplus(_clip(f32(fake_logits), clamp))
    return _per_sample_mean(real_term) + _per_sample_mean(fake_term)


def generator_adversarial_loss(fake_logits: jax.Array, *, clamp: float | None = 10.0) -> jax.Array:
    """Non-saturating generator loss (per sample) -> [B].

    ``loss_i = mean softplus(-clamp(D(x_g)))_i = BCE(D(x_g), 1)``, averaged over the sample's logit
    map. Its gradient w.r.t. the logit is ``-sigmoid(-D)`` (zero where the clamp is active).
    DMD2: ``softplus(-D(x_g))`` times ``gen_cls_loss_weight``; SiDA: ``BCE(clamp(D(x_t), ±10), 1)``
    divided by SiD's per-sample w and scaled by C·H·W·lsg_gan (the caller's factors).

    Papers: DMD2 arXiv 2405.14867 (spec §4.4); SiDA arXiv 2410.14919 (spec §1.6).
    Code: ``tianweiy/DMD2`` main/edm/edm_guidance.py (``compute_generator_clean_cls_loss``);
    ``mingyuanzhou/SiD@sida`` sida_training/sida_loss.py (``generator_share_encoder_loss``).
    """
    if fake_logits.ndim < 1:
        raise ValueError(f"fake_logits must have a leading batch axis, got shape {fake_logits.shape}")
    return _per_sample_mean(jax.nn.softplus(-_clip(f32(fake_logits), clamp)))


__all__ = ["discriminator_loss", "generator_adversarial_loss"]
