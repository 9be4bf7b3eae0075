"""Flax NNX modules: the toy MLP denoiser and discriminator head, and Stable Diffusion's UNet, VAE
and CLIP text encoders (`jaxdistill.models.{unet,vae,clip}`)."""

from jaxdistill.models.mlp import DiscriminatorHead, MLPDenoiser
from jaxdistill.models.unet import UNet2DConditionModel

__all__ = ["DiscriminatorHead", "MLPDenoiser", "UNet2DConditionModel"]
