"""Stable Diffusion's VAE, diffusers' `AutoencoderKL`, in Flax NNX (design §7).

The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", §3): an encoder maps an image x ∈ [-1, 1] to a diagonal
Gaussian posterior q(z | x) over an 8x-downsampled latent map (for SD's 4 blocks), a decoder
maps z back to pixels. The module tree mirrors diffusers'
`diffusers/models/autoencoders/autoencoder_kl.py` (`AutoencoderKL`) and
`diffusers/models/autoencoders/vae.py` (`Encoder`, `Decoder`, `DiagonalGaussianDistribution`),
with the blocks of `diffusers/models/unets/unet_2d_blocks.py` (`DownEncoderBlock2D`,
`UpDecoderBlock2D`, `UNetMidBlock2D`), so every parameter path is its PyTorch state-dict key
(`encoder.down_blocks.0.resnets.1.conv1.weight`, `decoder.mid_block.attentions.0.to_q.bias`,
`quant_conv.weight`, ...) and `weights.load_params` / `module_tensors` convert layouts only.

Arrays are channels-last: images [B, H, W, C], latents [B, H/f, W/f, latent_channels].

Latent scaling. Diffusion models are trained on scaled latents, not on the raw posterior
sample z. With s = `scaling_factor`, the SD pipelines use

    latents = (z − shift) · s / std          images = decode(latents · std / s + shift)

where shift = `shift_factor` (SD3, FLUX; 0 when None, as in SD1.x/2.x/SDXL) or the per-channel
`latents_mean` when the config has one (Playground v2.5 under the SDXL pipeline), and std the
per-channel `latents_std` (1 when absent). `latents_from_images` and `images_from_latents`
implement exactly that; `encode` / `decode` work on unscaled z.

`force_upcast` is kept in the config for round trips but not acted on: it tells diffusers' fp16
pipelines to run the VAE in float32 (SD's VAE overflows float16); here compute is float32 or,
when asked, bfloat16, which has float32's range. GroupNorm statistics are always float32.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill.models.attention import Attention
from jaxdistill.models.layers import (
    abstract_module,
    Downsample2D,
    ResnetBlock2D,
    Upsample2D,
    conv,
    group_norm,
    norm,
)
from jaxdistill.models.weights import (
    WeightsError,
    load_params,
    module_tensors,
    open_weights,
    param_shardings,
    read_config,
    write_safetensors,
)
from jaxdistill.train.sharding import DEFAULT_RULES

WEIGHTS_NAME = "diffusion_pytorch_model"

# diffusers' defaults for AutoencoderKL.__init__; a config.json may omit any of them.
DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}
_EPS = 1e-6  # diffusers' Encoder/Decoder fix resnet_eps and the output GroupNorm eps at 1e-6


def normalize_config(config: dict) -> dict:
    """diffusers' defaults filled in, private keys (`_class_name`, ...) dropped, and every
    option this module cannot build refused with a ValueError naming the key."""
    cls = config.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise ValueError(f"config _class_name={cls!r}: jaxdistill implements only 'AutoencoderKL' (SD1.x/2.x/SDXL/SD3 "
                         "VAEs).")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in DEFAULTS)
    if unknown:
        raise ValueError(f"AutoencoderKL config has keys {unknown} that jaxdistill does not know; supported keys: "
                         f"{sorted(DEFAULTS)}.")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        cfg[key] = list(cfg[key])
    if cfg["act_fn"] not in ("silu", "swish"):
        raise ValueError(f"AutoencoderKL config act_fn={cfg['act_fn']!r} is not supported; only 'silu' is.")
    for key, supported in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        bad = [t for t in cfg[key] if t != supported]
        if bad:
            raise ValueError(f"AutoencoderKL config {key}={cfg[key]} is not supported; every entry must be "
                             f"{supported!r}.")
        if len(cfg[key]) != len(cfg["block_out_channels"]):
            raise ValueError(f"AutoencoderKL config {key} has {len(cfg[key])} entries but block_out_channels has "
                             f"{len(cfg['block_out_channels'])}; they must match.")
    groups = cfg["norm_num_groups"]
    bad = [c for c in cfg["block_out_channels"] if c % groups]
    if bad:
        raise ValueError(f"AutoencoderKL config block_out_channels={cfg['block_out_channels']} has channel counts "
                         f"{bad} not divisible by norm_num_groups={groups}.")
    for key in ("latents_mean", "latents_std"):
        if cfg[key] is not None and len(cfg[key]) != cfg["latent_channels"]:
            raise ValueError(f"AutoencoderKL config {key} has {len(cfg[key])} entries; latent_channels is "
                             f"{cfg['latent_channels']}.")
    if (cfg["latents_mean"] is None) != (cfg["latents_std"] is None):
        raise ValueError("AutoencoderKL config sets only one of latents_mean / latents_std; set both or neither.")
    return cfg


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DiagonalGaussian:
    """The posterior q(z | x) = N(mean, exp(logvar)) of diffusers' `DiagonalGaussianDistribution`
    (logvar clamped to [-30, 20] there, see `AutoencoderKL.encode`). A pytree of two arrays."""

    mean: jax.Array
    logvar: jax.Array

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL(q ‖ N(0, I)) per example, summed over H, W, C (diffusers' `kl()` with no argument)."""
        return 0.5 * jnp.sum(jnp.square(self.mean) + self.var - 1.0 - self.logvar, axis=(1, 2, 3))


def _norm_act(layer: nnx.GroupNorm, x: jax.Array) -> jax.Array:
    """GroupNorm statistics in float32, back to the compute dtype, SiLU."""
    return jax.nn.silu(norm(layer, x))


class DownEncoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, groups: int, add_downsample: bool,
                 dtype, param_dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None, groups=groups,
                          eps=_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for i in range(num_layers)])
        # padding=0: the VAE's asymmetric form (pad bottom/right by one, stride-2 3x3 conv).
        self.downsamplers = (nnx.List([Downsample2D(out_channels, out_channels=out_channels, padding=0, dtype=dtype,
                                                    param_dtype=param_dtype, rngs=rngs)])
                             if add_downsample else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x, None)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, groups: int, add_upsample: bool,
                 dtype, param_dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None, groups=groups,
                          eps=_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for i in range(num_layers)])
        self.upsamplers = (nnx.List([Upsample2D(out_channels, out_channels=out_channels, dtype=dtype,
                                                param_dtype=param_dtype, rngs=rngs)])
                           if add_upsample else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x, None)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class UNetMidBlock2D(nnx.Module):
    """resnet → (single-head spatial self-attention → resnet), the VAE form (no time embedding)."""

    def __init__(self, channels: int, *, groups: int, add_attention: bool, dtype, param_dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(channels, channels, temb_channels=None, groups=groups, eps=_EPS, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs) for _ in range(2)])
        # attention_head_dim = channels in diffusers' Encoder/Decoder: one head.
        self.attentions = nnx.List([
            Attention(channels, heads=1, dim_head=channels, bias=True, norm_num_groups=groups, eps=_EPS,
                      residual_connection=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)]
            if add_attention else [])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x, None)
        for i, resnet in enumerate(self.resnets[1:]):
            if len(self.attentions):
                x = self.attentions[i](x)
            x = resnet(x, None)
        return x


class Encoder(nnx.Module):
    """image [B, H, W, in] → [B, H/f, W/f, 2·latent] (mean and log-variance, before quant_conv)."""

    def __init__(self, cfg: dict, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        chans, groups = cfg["block_out_channels"], cfg["norm_num_groups"]
        # The image and latent sides are a handful of channels: keep those axes unsharded.
        self.conv_in = conv(cfg["in_channels"], chans[0], 3, axes=(None, "mlp"), **kw)
        self.down_blocks = nnx.List([
            DownEncoderBlock2D(chans[max(i - 1, 0)], c, num_layers=cfg["layers_per_block"], groups=groups,
                               add_downsample=i < len(chans) - 1, **kw)
            for i, c in enumerate(chans)])
        self.mid_block = UNetMidBlock2D(chans[-1], groups=groups, add_attention=cfg["mid_block_add_attention"], **kw)
        self.conv_norm_out = group_norm(chans[-1], groups, _EPS, param_dtype=param_dtype, rngs=rngs)
        self.conv_out = conv(chans[-1], 2 * cfg["latent_channels"], 3, axes=("embed", None), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(_norm_act(self.conv_norm_out, x))


class Decoder(nnx.Module):
    """latent [B, h, w, latent] → image [B, h·f, w·f, out]; up blocks have layers_per_block + 1 resnets."""

    def __init__(self, cfg: dict, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        rev, groups = cfg["block_out_channels"][::-1], cfg["norm_num_groups"]
        self.conv_in = conv(cfg["latent_channels"], rev[0], 3, axes=(None, "mlp"), **kw)
        self.mid_block = UNetMidBlock2D(rev[0], groups=groups, add_attention=cfg["mid_block_add_attention"], **kw)
        self.up_blocks = nnx.List([
            UpDecoderBlock2D(rev[max(i - 1, 0)], c, num_layers=cfg["layers_per_block"] + 1, groups=groups,
                             add_upsample=i < len(rev) - 1, **kw)
            for i, c in enumerate(rev)])
        self.conv_norm_out = group_norm(rev[-1], groups, _EPS, param_dtype=param_dtype, rngs=rngs)
        self.conv_out = conv(rev[-1], cfg["out_channels"], 3, axes=("embed", None), **kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(_norm_act(self.conv_norm_out, x))


class AutoencoderKL(nnx.Module):
    """diffusers' `AutoencoderKL` built from its `vae/config.json` dict; NHWC in and out.

    dtype: compute dtype of convolutions and attention (None: the inputs'/params' promotion;
    bfloat16 when asked); param_dtype: the parameters' dtype; GroupNorm statistics are float32.
    """

    def __init__(self, config: dict, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        cfg = normalize_config(config)
        self.config = cfg
        self.dtype = dtype
        self.scaling_factor = float(cfg["scaling_factor"])
        self.shift_factor = None if cfg["shift_factor"] is None else float(cfg["shift_factor"])
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = Encoder(cfg, **kw)
        self.decoder = Decoder(cfg, **kw)
        lat = cfg["latent_channels"]
        self.quant_conv = conv(2 * lat, 2 * lat, 1, axes=(None, None), **kw) if cfg["use_quant_conv"] else None
        self.post_quant_conv = conv(lat, lat, 1, axes=(None, None), **kw) if cfg["use_post_quant_conv"] else None

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    # ------------------------------------------------------------------ encode / decode

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        """image NHWC in [-1, 1] → posterior over unscaled latents (logvar clamped to [-30, 20])."""
        h = self.encoder(x.astype(self.dtype) if self.dtype is not None else x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return DiagonalGaussian(mean, jnp.clip(logvar, -30.0, 20.0))

    def decode(self, z: jax.Array) -> jax.Array:
        """unscaled latents NHWC → image NHWC (about [-1, 1]; not clipped)."""
        z = z.astype(self.dtype) if self.dtype is not None else z
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Reconstruction: decode a posterior sample (with `key`) or its mode (diffusers' default)."""
        posterior = self.encode(x)
        return self.decode(posterior.mode() if key is None else posterior.sample(key))

    # ------------------------------------------------------------------ the diffusion latent space

    def _shift_std(self, dtype) -> tuple[Any, Any]:
        cfg = self.config
        if cfg["latents_mean"] is not None:  # host constants: no device op outside jit
            return np.asarray(cfg["latents_mean"], dtype), np.asarray(cfg["latents_std"], dtype)
        return (0.0 if self.shift_factor is None else self.shift_factor), 1.0

    def latents_from_images(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """(z − shift) · scaling_factor / std, z a posterior sample (its mode when key is None):
        the latents a diffusion model is trained on. See the module docstring."""
        posterior = self.encode(x)
        z = posterior.mode() if key is None else posterior.sample(key)
        shift, std = self._shift_std(z.dtype)
        return (z - shift) * self.scaling_factor / std

    def images_from_latents(self, latents: jax.Array) -> jax.Array:
        """decode(latents · std / scaling_factor + shift): the inverse of `latents_from_images`."""
        shift, std = self._shift_std(latents.dtype)
        return self.decode(latents * std / self.scaling_factor + shift)

    # ------------------------------------------------------------------ weights

    @classmethod
    def from_pretrained(cls, folder: str, *, dtype=None, param_dtype=jnp.float32, mesh=None, rules=DEFAULT_RULES,
                        variant: str | None = None) -> AutoencoderKL:
        """Load a diffusers VAE from `folder` (the model root holding `vae/`, or the vae folder)
        and its `diffusion_pytorch_model[.variant].safetensors`; parameters are cast to
        `param_dtype` and, with a `mesh`, placed by the logical-axis `rules`."""
        folder = vae_folder(folder)
        config = read_config(folder)
        normalize_config(config)  # refuse unsupported configs before touching the weights
        source = open_weights(folder, stems=(WEIGHTS_NAME,), variant=variant)
        abstract = abstract_module(lambda rngs: cls(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs))
        shardings = param_shardings(abstract, mesh, rules) if mesh is not None else None
        return load_params(abstract, source, dtype=param_dtype, shardings=shardings)

    def save_pretrained(self, folder: str, *, dtype=None, variant: str | None = None) -> None:
        """Write `config.json` and `diffusion_pytorch_model[.variant].safetensors` that diffusers'
        PyTorch `AutoencoderKL.from_pretrained(folder)` loads; dtype: cast the tensors (e.g.
        np.float16), default the parameters' own dtype."""
        os.makedirs(folder, exist_ok=True)
        config = {"_class_name": "AutoencoderKL", **self.config}
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        name = WEIGHTS_NAME + (f".{variant}" if variant else "") + ".safetensors"
        write_safetensors(os.path.join(folder, name), module_tensors(self, dtype=dtype))


def vae_folder(folder: str) -> str:
    """`folder/vae` when `folder` is a pipeline root, else `folder`."""
    sub = os.path.join(folder, "vae")
    if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(sub):
        return sub
    if not os.path.isdir(folder):
        raise WeightsError(f"VAE folder {folder} does not exist; point at a diffusers model root (with vae/) or its "
                           "vae/ folder.")
    return folder


__all__ = ["AutoencoderKL", "Decoder", "DiagonalGaussian", "Encoder", "normalize_config", "vae_folder"]
