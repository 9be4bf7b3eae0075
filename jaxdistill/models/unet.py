"""Stable Diffusion's conditional UNet in Flax NNX, mirroring diffusers' `UNet2DConditionModel`.

This is the latent-diffusion UNet of Rombach et al. 2022 ("High-Resolution Image Synthesis with
Latent Diffusion Models", SD1.x / SD2.x) with the SDXL additions of Podell et al. 2023 ("SDXL:
Improving Latent Diffusion Models for High-Resolution Image Synthesis": per-level transformer
depth, a first level without attention, micro-conditioning on image size and crop through the
"text_time" added embedding). It mirrors, module for module and attribute for attribute,

    diffusers/models/unets/unet_2d_condition.py   UNet2DConditionModel
    diffusers/models/unets/unet_2d_blocks.py      CrossAttnDownBlock2D, DownBlock2D,
                                                  UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D
    diffusers/models/transformers/transformer_2d.py  Transformer2DModel (continuous input)
    diffusers/models/attention.py                 BasicTransformerBlock, FeedForward, GEGLU
    diffusers/models/embeddings.py                Timesteps, TimestepEmbedding

so a parameter's path is its PyTorch state-dict key and `jaxdistill.models.weights` converts
only the leaf layouts. The network is built from diffusers' `unet/config.json`; configuration
options this module does not implement raise a `ValueError` naming the key instead of being
ignored. Feature maps are channels-last NHWC: `unet(sample [B, H, W, C], timestep [B],
encoder_hidden_states [B, L, D], added_cond_kwargs) -> [B, H, W, C_out]`.

Numerics: norms run in float32, attention logits and softmax in float32 (so diffusers'
`upcast_attention` holds by construction); everything else in the compute `dtype`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill.models import layers
from jaxdistill.models.attention import IMPLS, Attention
from jaxdistill.models.layers import (
    Downsample2D,
    ResnetBlock2D,
    Upsample2D,
    dense,
    norm,
)
from jaxdistill.models.target import shard_batch
from jaxdistill.models.weights import (
    WeightsError,
    load_params,
    module_tensors,
    open_weights,
    param_shardings,
    read_config,
    write_safetensors,
)
from jaxdistill.train.sharding import DEFAULT_RULES, check_divisible, param_specs

DIFFUSERS_VERSION = "0.36.0"  # written into exported config.json files (diffusers reads it only for warnings)

# diffusers' UNet2DConditionModel.__init__ defaults (diffusers 0.3x-0.4x).
DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "dropout": 0.0, "act_fn": "silu",
    "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 1280, "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "attention_head_dim": 8, "num_attention_heads": None, "dual_cross_attention": False,
    "use_linear_projection": False, "class_embed_type": None, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None, "upcast_attention": False,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional", "time_embedding_dim": None, "time_embedding_act_fn": None,
    "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None, "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None, "addition_embed_type_num_heads": 64,
}

# Options accepted only at the values listed (the ones SD1.x, SD2.x and SDXL use).
_ONLY = {
    "class_embed_type": (None,), "num_class_embeds": (None,), "addition_embed_type": (None, "text_time"),
    "resnet_time_scale_shift": ("default",), "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None, "silu", "swish"), "timestep_post_act": (None,), "time_cond_proj_dim": (None,),
    "dual_cross_attention": (False,), "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,),
    "attention_type": ("default",), "class_embeddings_concat": (False,), "cross_attention_norm": (None,),
    "mid_block_only_cross_attention": (None, False), "act_fn": ("silu", "swish"), "num_attention_heads": (None,),
    "reverse_transformer_layers_per_block": (None,), "mid_block_type": ("UNetMidBlock2DCrossAttn", None),
    "dropout": (0.0, 0),
}
_DOWN = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP = ("CrossAttnUpBlock2D", "UpBlock2D")
# Accepted at any value because they change nothing here: sample_size (metadata); resnet_skip_time_act,
# resnet_out_scale_factor, addition_embed_type_num_heads (diffusers passes them only to block and
# embedding types not supported here); upcast_attention (softmax is always float32 here).
REMAT_POLICIES = ("none", "full", "dots_saveable")


def _bad(key: str, value: Any, supported: str) -> ValueError:
    return ValueError(f"UNet config.json key {key!r} = {value!r} is not supported by jaxdistill's "
                      f"UNet2DConditionModel; supported: {supported}.")


def resolve_config(config: dict) -> dict:
    """diffusers' defaults filled in, every option checked; per-level lists expanded.

    Raises ValueError naming the config.json key for anything not implemented here."""
    unknown = sorted(k for k in config if not k.startswith("_") and k not in DEFAULTS)
    if unknown:
        raise ValueError(f"UNet config.json has keys {unknown} that diffusers' UNet2DConditionModel (as mirrored "
                         f"by jaxdistill) does not define; supported keys: {sorted(DEFAULTS)}.")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key, allowed in _ONLY.items():
        value = cfg[key]
        if value not in allowed:
            raise _bad(key, value, " or ".join(map(repr, allowed)))
    oca = cfg["only_cross_attention"]
    if any(oca) if isinstance(oca, (list, tuple)) else oca:
        raise _bad("only_cross_attention", oca, "False (self- and cross-attention in every transformer block)")
    n = len(cfg["down_block_types"])
    strip = lambda t: t[7:] if isinstance(t, str) and t.startswith("UNetRes") else t
    for key, allowed in (("down_block_types", _DOWN), ("up_block_types", _UP)):
        for t in cfg[key]:
            if strip(t) not in allowed:
                raise _bad(key, cfg[key], f"lists of {' / '.join(allowed)}")
    if len(cfg["up_block_types"]) != n or len(cfg["block_out_channels"]) != n:
        raise ValueError(f"UNet config.json: down_block_types ({n}), up_block_types ({len(cfg['up_block_types'])}) "
                         f"and block_out_channels ({len(cfg['block_out_channels'])}) must have the same length.")
    if not isinstance(cfg["norm_num_groups"], int):
        raise _bad("norm_num_groups", cfg["norm_num_groups"], "an integer group count")
    for k in ("conv_in_kernel", "conv_out_kernel"):
        if not isinstance(cfg[k], int) or cfg[k] % 2 == 0:
            raise _bad(k, cfg[k], "an odd integer kernel size")
    if cfg["addition_embed_type"] == "text_time":
        for k in ("addition_time_embed_dim", "projection_class_embeddings_input_dim"):
            if not isinstance(cfg[k], int):
                raise ValueError(  # noqa: TRY004 (a bad config value, as everywhere here)
                    f"UNet config.json: addition_embed_type 'text_time' needs the integer key {k!r}; "
                    f"got {cfg[k]!r}.")

    def per_level(key, value):
        value = list(value) if isinstance(value, (list, tuple)) else [value] * n
        if len(value) != n:
            raise ValueError(f"UNet config.json key {key!r} = {cfg[key]!r} must be one value or a list of "
                             f"{n} (one per down block).")
        return value

    # diffusers' naming quirk (unet_2d_condition.py, issue #2011): num_attention_heads defaults to
    # attention_head_dim, and the *head count* of each level is that number.
    heads = per_level("attention_head_dim", cfg["num_attention_heads"] or cfg["attention_head_dim"])
    tlpb = per_level("transformer_layers_per_block", cfg["transformer_layers_per_block"])
    for t in tlpb:
        if isinstance(t, (list, tuple)):
            raise _bad("transformer_layers_per_block", cfg["transformer_layers_per_block"],
                       "an integer or one integer per down block")
    return {
        **cfg,
        "_down": [strip(t) for t in cfg["down_block_types"]],
        "_up": [strip(t) for t in cfg["up_block_types"]],
        "_heads": heads,
        "_layers": per_level("layers_per_block", cfg["layers_per_block"]),
        "_tlpb": tlpb,
        "_cross": per_level("cross_attention_dim", cfg["cross_attention_dim"]),
    }


def remat_policy(name: str):
    """(wrap?, jax.checkpoint policy) for a remat policy name."""
    if name == "none":
        return False, None
    if name == "full":
        return True, None
    if name == "dots_saveable":
        return True, jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    raise ValueError(f"remat policy {name!r} is unknown; expected one of {REMAT_POLICIES}.")


def _apply(remat: str, layer: nnx.Module, *args):
    """Call `layer(*args)`, under jax.checkpoint (nnx.remat) with the named policy unless 'none'."""
    wrap, policy = remat_policy(remat)
    if not wrap:
        return shard_batch(layer(*args))
    return shard_batch(nnx.remat(lambda m, *a: m(*a), policy=policy)(layer, *args))


def _scan(remat: str, blocks: list, x: jax.Array, *args) -> jax.Array:
    """`x = block(x, *args)` for each of the identical `blocks` in turn, as one `lax.scan` over
    their parameters stacked on a new leading axis: the compiled program holds one block instead
    of len(blocks). The parameter tree (and so the state-dict keys) is unchanged; the stacked copy
    lives for one UNet pass. Under remat the scan body is the checkpointed unit, as `_apply`'s
    per-block checkpoint. (XLA's cost analysis counts a loop body once; `jaxdistill.train.costs`
    adds the other iterations.)"""
    graphdef, first = nnx.split(blocks[0])
    states = [first] + [nnx.state(b) for b in blocks[1:]]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)

    def body(h, state):
        return shard_batch(nnx.merge(graphdef, state)(h, *args)), None

    wrap, policy = remat_policy(remat)
    if wrap:
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    return jax.lax.scan(body, x, stacked)[0]


def timestep_embedding(t: jax.Array, dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> jax.Array:
    """diffusers' `get_timestep_embedding` (embeddings.py), in float32: sinusoids of `dim` channels."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """diffusers' `TimestepEmbedding`: linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_channels: int, time_embed_dim: int, *, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.linear_1 = dense(in_channels, time_embed_dim, axes=("embed", "mlp"), **kw)
        self.linear_2 = dense(time_embed_dim, time_embed_dim, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class GEGLU(nnx.Module):
    """diffusers' `GEGLU`: proj to 2·inner, value · GELU(gate) (exact erf GELU)."""

    def __init__(self, dim: int, inner: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.proj = dense(dim, inner * 2, axes=("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(self.proj(x), 2, axis=-1)
        return value * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
    """diffusers' `FeedForward(activation_fn="geglu")`: net = [GEGLU, Dropout, Linear]."""

    def __init__(self, dim: int, *, mult: int = 4, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        inner = dim * mult
        self.net = nnx.List([
            GEGLU(dim, inner, dtype=dtype, param_dtype=param_dtype, rngs=rngs),
            nnx.Dropout(0.0),  # no parameters; keeps index 2 = diffusers' `ff.net.2`
            dense(inner, dim, axes=("mlp", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs),
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net[2](self.net[0](x))


def _layer_norm(dim: int, param_dtype, rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=1e-5, dtype=jnp.float32, param_dtype=param_dtype, use_fast_variance=False,
                         rngs=rngs)


class BasicTransformerBlock(nnx.Module):
    """diffusers' `BasicTransformerBlock` (norm_type="layer_norm", GEGLU feed-forward):
    x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x))."""

    def __init__(self, dim: int, heads: int, dim_head: int, *, cross_attention_dim: int, impl: str = "xla",
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.norm1 = _layer_norm(dim, param_dtype, rngs)
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head, bias=False, impl=impl, **kw)
        self.norm2 = _layer_norm(dim, param_dtype, rngs)
        self.attn2 = Attention(dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=dim_head,
                               bias=False, impl=impl, **kw)
        self.norm3 = _layer_norm(dim, param_dtype, rngs)
        self.ff = FeedForward(dim, **kw)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        x = x + self.attn1(norm(self.norm1, x))
        x = x + self.attn2(norm(self.norm2, x), context)
        return x + self.ff(norm(self.norm3, x))


class Transformer2DModel(nnx.Module):
    """diffusers' `Transformer2DModel` on continuous (feature-map) input: group norm, proj_in
    (1x1 conv, or Linear when `use_linear_projection`), transformer blocks, proj_out, residual."""

    def __init__(self, heads: int, dim_head: int, in_channels: int, *, num_layers: int, cross_attention_dim: int,
                 norm_num_groups: int, use_linear_projection: bool, impl: str = "xla", remat: str = "none",
                 scan_layers: bool = False, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        inner = heads * dim_head
        self.linear = use_linear_projection
        self.remat = remat
        self.scan_layers = scan_layers and num_layers > 1
        self.norm = layers.group_norm(in_channels, norm_num_groups, 1e-6, param_dtype=param_dtype, rngs=rngs)
        if use_linear_projection:
            self.proj_in = dense(in_channels, inner, axes=("embed", "mlp"), **kw)
        else:
            self.proj_in = layers.conv(in_channels, inner, 1, axes=("embed", "mlp"), **kw)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim=cross_attention_dim, impl=impl, **kw)
            for _ in range(num_layers)
        ])
        if use_linear_projection:
            self.proj_out = dense(inner, in_channels, axes=("mlp", "embed"), **kw)
        else:
            self.proj_out = layers.conv(inner, in_channels, 1, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        residual = x
        x = norm(self.norm, x)
        if self.linear:
            x = self.proj_in(x.reshape(b, h * w, -1))
        else:
            x = self.proj_in(x)
            x = x.reshape(b, h * w, -1)
        if self.scan_layers:
            x = _scan(self.remat, list(self.transformer_blocks), x, context)
        else:
            for block in self.transformer_blocks:
                x = _apply(self.remat, block, x, context)
        if self.linear:
            x = self.proj_out(x).reshape(b, h, w, -1)
        else:
            x = self.proj_out(x.reshape(b, h, w, -1))
        return x + residual


class _Block(nnx.Module):
    """Shared constructor pieces of the down/mid/up blocks."""

    def _resnet(self, cin, cout, cfg, kw, scale=1.0):
        return ResnetBlock2D(cin, cout, temb_channels=cfg["_temb"], groups=cfg["norm_num_groups"], eps=cfg["norm_eps"],
                             output_scale_factor=scale, **kw)

    def _transformer(self, channels, heads, n_layers, cross, cfg, kw):
        return Transformer2DModel(heads, channels // heads, channels, num_layers=n_layers, cross_attention_dim=cross,
                                  norm_num_groups=cfg["norm_num_groups"], use_linear_projection=cfg["use_linear_projection"],
                                  impl=cfg["_impl"], remat=cfg["_remat"], scan_layers=cfg["_scan"], **kw)


class DownBlock(_Block):
    """diffusers' `CrossAttnDownBlock2D` (cross_attention=True) or `DownBlock2D`: resnets
    (interleaved with transformers), then an optional stride-2 `downsamplers.0`."""

    def __init__(self, cin, cout, *, num_layers, cross_attention, heads, transformer_layers, cross_dim,
                 add_downsample, cfg, kw):
        self.remat = cfg["_remat"]
        self.resnets = nnx.List([self._resnet(cin if i == 0 else cout, cout, cfg, kw) for i in range(num_layers)])
        self.attentions = (nnx.List([self._transformer(cout, heads, transformer_layers, cross_dim, cfg, kw)
                                     for _ in range(num_layers)]) if cross_attention else None)
        self.downsamplers = (nnx.List([Downsample2D(cout, out_channels=cout, padding=cfg["downsample_padding"], **kw)])
                             if add_downsample else None)

    def __call__(self, x, temb, context):
        outputs = []
        for i, resnet in enumerate(self.resnets):
            x = _apply(self.remat, resnet, x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            outputs.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outputs.append(x)
        return x, outputs


class UNetMidBlock2DCrossAttn(_Block):
    """diffusers' `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs."""

    def __init__(self, channels, *, heads, transformer_layers, cross_dim, cfg, kw):
        self.remat = cfg["_remat"]
        scale = cfg["mid_block_scale_factor"]
        self.attentions = nnx.List([self._transformer(channels, heads, transformer_layers, cross_dim, cfg, kw)])
        self.resnets = nnx.List([self._resnet(channels, channels, cfg, kw, scale) for _ in range(2)])

    def __call__(self, x, temb, context):
        x = _apply(self.remat, self.resnets[0], x, temb)
        for attn, resnet in zip(self.attentions, list(self.resnets)[1:]):
            x = _apply(self.remat, resnet, attn(x, context), temb)
        return x


class UpBlock(_Block):
    """diffusers' `CrossAttnUpBlock2D` (cross_attention=True) or `UpBlock2D`: each resnet takes
    the previous output concatenated with a skip connection; optional nearest-2x `upsamplers.0`."""

    def __init__(self, cin, cout, prev, *, num_layers, cross_attention, heads, transformer_layers, cross_dim,
                 add_upsample, cfg, kw):
        self.remat = cfg["_remat"]
        self.resnets = nnx.List([
            self._resnet((prev if i == 0 else cout) + (cin if i == num_layers - 1 else cout), cout, cfg, kw)
            for i in range(num_layers)
        ])
        self.attentions = (nnx.List([self._transformer(cout, heads, transformer_layers, cross_dim, cfg, kw)
                                     for _ in range(num_layers)]) if cross_attention else None)
        self.upsamplers = nnx.List([Upsample2D(cout, out_channels=cout, **kw)]) if add_upsample else None

    def __call__(self, x, skips, temb, context):
        for i, resnet in enumerate(self.resnets):
            x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
            x = _apply(self.remat, resnet, x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class UNet2DConditionModel(nnx.Module):
    """diffusers' `UNet2DConditionModel` (diffusers/models/unets/unet_2d_condition.py) for
    SD1.x / SD2.x (Rombach et al. 2022) and SDXL (Podell et al. 2023), in NHWC.

    config: the diffusers `unet/config.json` dict. dtype: compute dtype (e.g. jnp.bfloat16;
    None computes in the parameters' dtype). attention_impl: "xla" | "cudnn" | "splash" for every
    attention. remat: "none" | "full" | "dots_saveable" — jax.checkpoint around every resnet and
    transformer block, saving nothing or the batch-free matmuls. scan_layers: run each
    transformer's stack of blocks (SDXL's 2 and 10 at its inner levels) as one `lax.scan`, so the
    compiled program holds one block per stack: a smaller program and a faster compile, for the
    price of a stacked copy of those blocks' parameters per pass. Parameters and outputs are the
    same either way. Traced under `target.compiling_for(mesh)`, the inputs and every block's
    output are pinned to the mesh's batch axes (`target.shard_batch`).

    `unet(sample [B, H, W, C], timestep [B] (or scalar), encoder_hidden_states [B, L, D],
    added_cond_kwargs={"text_embeds": [B, E], "time_ids": [B, 6]} for SDXL) -> [B, H, W, C_out]`.
    """

    def __init__(self, config: dict, *, dtype=None, param_dtype=jnp.float32, attention_impl: str = "xla",
                 remat: str = "none", scan_layers: bool = False, rngs: nnx.Rngs):
        if attention_impl not in IMPLS:
            raise ValueError(f"attention_impl {attention_impl!r} is unknown; expected one of {IMPLS}.")
        remat_policy(remat)
        cfg = resolve_config(config)
        self._config_json = json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}, sort_keys=True)
        self.dtype = dtype
        boc = list(cfg["block_out_channels"])
        n = len(boc)
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        time_dim = cfg["time_embedding_dim"] or boc[0] * 4
        cfg.update(_temb=time_dim, _impl=attention_impl, _remat=remat, _scan=bool(scan_layers))
        self.flip_sin_to_cos, self.freq_shift = bool(cfg["flip_sin_to_cos"]), float(cfg["freq_shift"])
        self.center_input_sample = bool(cfg["center_input_sample"])
        self.time_embed_act = cfg["time_embedding_act_fn"] is not None
        self.num_upsamplers = n - 1

        self.conv_in = layers.conv(cfg["in_channels"], boc[0], cfg["conv_in_kernel"], axes=(None, "mlp"), **kw)
        # time_proj (diffusers' `Timesteps`) has no parameters: see `timestep_embedding`.
        self.time_proj_dim = boc[0]
        self.time_embedding = TimestepEmbedding(boc[0], time_dim, **kw)
        self.addition_time_embed_dim = None
        if cfg["addition_embed_type"] == "text_time":
            self.addition_time_embed_dim = int(cfg["addition_time_embed_dim"])
            self.add_embedding = TimestepEmbedding(cfg["projection_class_embeddings_input_dim"], time_dim, **kw)
        else:
            self.add_embedding = None

        heads, nl, tl, cross = cfg["_heads"], cfg["_layers"], cfg["_tlpb"], cfg["_cross"]
        down, out = [], boc[0]
        for i, kind in enumerate(cfg["_down"]):
            cin, out = out, boc[i]
            down.append(DownBlock(cin, out, num_layers=nl[i], cross_attention=kind == "CrossAttnDownBlock2D",
                                  heads=heads[i], transformer_layers=tl[i], cross_dim=cross[i],
                                  add_downsample=i < n - 1, cfg=cfg, kw=kw))
        self.down_blocks = nnx.List(down)
        if cfg["mid_block_type"] == "UNetMidBlock2DCrossAttn":
            self.mid_block = UNetMidBlock2DCrossAttn(boc[-1], heads=heads[-1], transformer_layers=tl[-1],
                                                     cross_dim=cross[-1], cfg=cfg, kw=kw)
        else:
            self.mid_block = None
        rboc, rheads, rnl, rtl, rcross = (list(reversed(v)) for v in (boc, heads, nl, tl, cross))
        up, out = [], rboc[0]
        for i, kind in enumerate(cfg["_up"]):
            prev, out = out, rboc[i]
            cin = rboc[min(i + 1, n - 1)]
            up.append(UpBlock(cin, out, prev, num_layers=rnl[i] + 1, cross_attention=kind == "CrossAttnUpBlock2D",
                              heads=rheads[i], transformer_layers=rtl[i], cross_dim=rcross[i],
                              add_upsample=i < n - 1, cfg=cfg, kw=kw))
        self.up_blocks = nnx.List(up)
        self.conv_norm_out = layers.group_norm(boc[0], cfg["norm_num_groups"], cfg["norm_eps"],
                                               param_dtype=param_dtype, rngs=rngs)
        self.conv_out = layers.conv(boc[0], cfg["out_channels"], cfg["conv_out_kernel"], axes=("embed", None), **kw)

    @property
    def config(self) -> dict:
        """The full diffusers config (defaults filled in)."""
        return json.loads(self._config_json)

    # ------------------------------------------------------------------------------------ forward

    def __call__(self, sample: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array,
                 added_cond_kwargs: dict | None = None, return_mid_block: bool = False):
        """The prediction [B, H, W, C_out]; with `return_mid_block=True` also the mid-block's
        output [B, h, w, C_mid] (the bottleneck features a DMD2-style discriminator head reads)."""
        b, h, w, _ = sample.shape
        factor = 2 ** self.num_upsamplers
        if h % factor or w % factor:
            raise ValueError(f"sample height and width must be multiples of {factor} (2 ** number of upsamplers); "
                             f"got {h}x{w}.")
        dtype = self.dtype or sample.dtype
        x = sample.astype(dtype)
        context = encoder_hidden_states.astype(dtype)
        if self.center_input_sample:
            x = 2 * x - 1.0
        t = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (b,))
        t_emb = timestep_embedding(t, self.time_proj_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                                   freq_shift=self.freq_shift).astype(dtype)
        emb = self.time_embedding(t_emb)
        if self.add_embedding is not None:
            if not added_cond_kwargs or "text_embeds" not in added_cond_kwargs or "time_ids" not in added_cond_kwargs:
                raise ValueError("this UNet has addition_embed_type 'text_time' (SDXL): pass added_cond_kwargs="
                                 "{'text_embeds': [B, E], 'time_ids': [B, 6]}.")
            time_ids = jnp.asarray(added_cond_kwargs["time_ids"])
            time_embeds = timestep_embedding(time_ids.reshape(-1), self.addition_time_embed_dim,
                                             flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift)
            time_embeds = time_embeds.reshape(time_ids.shape[0], -1)
            add = jnp.concatenate([jnp.asarray(added_cond_kwargs["text_embeds"]).astype(jnp.float32), time_embeds],
                                  axis=-1)
            emb = emb + self.add_embedding(add.astype(dtype))
        if self.time_embed_act:
            emb = jax.nn.silu(emb)

        x, emb, context = (shard_batch(v) for v in (self.conv_in(x), emb, context))
        skips = [x]
        for block in self.down_blocks:
            x, outputs = block(x, emb, context)
            skips.extend(outputs)
        if self.mid_block is not None:
            x = self.mid_block(x, emb, context)
        mid = x
        for block in self.up_blocks:
            x = block(x, skips, emb, context)
        x = jax.nn.silu(norm(self.conv_norm_out, x))
        out = self.conv_out(x)
        return (out, mid) if return_mid_block else out

    # ------------------------------------------------------------------------------------ weights

    @classmethod
    def abstract(cls, config: dict, **kwargs) -> UNet2DConditionModel:
        """The module built with `nnx.eval_shape` (ShapeDtypeStruct parameters, nothing allocated);
        keyword arguments as the constructor's, without rngs."""
        return layers.abstract_module(lambda rngs: cls(config, rngs=rngs, **kwargs))

    @classmethod
    def from_pretrained(cls, folder: str, *, dtype=None, param_dtype=jnp.float32, mesh=None, rules=DEFAULT_RULES,
                        attention_impl: str = "xla", remat: str = "none", scan_layers: bool = False,
                        variant: str | None = None) -> UNet2DConditionModel:
        """Load a diffusers UNet folder (`config.json` + `diffusion_pytorch_model[.variant].safetensors`
        or its sharded index); `folder` may also be the model root holding `unet/`.

        The module is built abstractly (`nnx.eval_shape`, nothing allocated), then each tensor is
        converted on the host, cast to `param_dtype` and placed on its target sharding: derived from
        the parameters' logical axes and `rules` when `mesh` is given, else the default device."""
        if os.path.isfile(os.path.join(folder, "unet", "config.json")):
            folder = os.path.join(folder, "unet")
        config = read_config(folder)
        if config.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
            raise WeightsError(f"{os.path.join(folder, 'config.json')} describes a {config['_class_name']}, not a "
                               "UNet2DConditionModel; point at a diffusers model root or its unet/ folder.")
        source = open_weights(folder, variant=variant)
        abstract = cls.abstract(config, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl,
                                remat=remat, scan_layers=scan_layers)
        shardings = None
        if mesh is not None:
            check_divisible(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)), param_specs(abstract, rules), mesh)
            shardings = param_shardings(abstract, mesh, rules)
        return load_params(abstract, source, dtype=param_dtype, shardings=shardings)

    def save_pretrained(self, folder: str, *, dtype=None) -> None:
        """Write a diffusers UNet folder: `config.json` and `diffusion_pytorch_model.safetensors`
        (PyTorch layout, the parameters' dtype unless `dtype` is given), loadable by diffusers'
        PyTorch `UNet2DConditionModel.from_pretrained(folder)`."""
        os.makedirs(folder, exist_ok=True)
        config = {"_class_name": "UNet2DConditionModel", "_diffusers_version": DIFFUSERS_VERSION, **self.config}
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=False)
            f.write("\n")
        tensors = module_tensors(self, dtype=np.dtype(dtype) if dtype is not None else None)
        write_safetensors(os.path.join(folder, "diffusion_pytorch_model.safetensors"), tensors)


__all__ = ["UNet2DConditionModel", "resolve_config", "timestep_embedding"]
