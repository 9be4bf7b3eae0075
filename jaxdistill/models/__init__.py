"""Flax NNX modules: the toy MLP denoiser and discriminator head (SD modules come later)."""

from jaxdistill.models.mlp import DiscriminatorHead, MLPDenoiser

__all__ = ["DiscriminatorHead", "MLPDenoiser"]
