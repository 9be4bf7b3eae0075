"""Flax NNX modules: the toy MLP denoiser and discriminator head (SD modules come later)."""

from jaxdistill.models.mlp import DiscriminatorHead, MLPDenoiser
from jaxdistill.models.unet import UNet2DConditionModel

__all__ = ["DiscriminatorHead", "MLPDenoiser", "UNet2DConditionModel"]
