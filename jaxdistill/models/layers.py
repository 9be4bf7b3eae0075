"""Building blocks shared by the UNet and the VAE, mirroring diffusers' module trees.

    ResnetBlock2D   diffusers/models/resnet.py `ResnetBlock2D` (time_embedding_norm="default")
    Downsample2D    diffusers/models/downsampling.py `Downsample2D` (use_conv=True)
    Upsample2D      diffusers/models/upsampling.py `Upsample2D` (use_conv=True, nearest 2x)

Attribute names equal diffusers' (`norm1`, `conv1`, `time_emb_proj`, `conv_shortcut`, `conv`),
so a parameter's path is its PyTorch state-dict key (see `jaxdistill.models.weights`). Feature
maps are channels-last NHWC. GroupNorm statistics are computed in float32 whatever the compute
dtype; the result is cast back to the input's dtype.

Parameters carry logical axis names (`jaxdistill.train.sharding`): convolution kernels
[kh, kw, in, out] are (None, None, "embed", "mlp"), linear kernels [in, out] ("embed", "mlp"),
biases follow their output axis, norms are replicated. Layers whose channel count is tiny and
fixed (the 4 latent channels of `conv_in` / `conv_out`) pass `axes` to leave that side whole.

Convolutions and linear layers gather their kernel over the mesh's fsdp axis before use
(`jaxdistill.models.target.gather_weight`, FSDP's all-gather), so that XLA never runs their
matmuls as windowed einsums over kernel shards, and reduce-scatter their gradients back
(`jaxdistill.models.target.apply_gathered`: in two stages, over fsdp then data, where the mesh
has both).
"""

from __future__ import annotations

import contextvars
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models import target
from jaxdistill.models.conv import conv_general_dilated

# True while `abstract_module` builds: kernels then get the (cheaper to trace) zeros initializer.
_SHAPE_ONLY = contextvars.ContextVar("jaxdistill_shape_only", default=False)
CONV_AXES = ("embed", "mlp")
DENSE_AXES = ("embed", "mlp")
# The mesh axes `jaxdistill.train.sharding.DEFAULT_RULES` maps kernels' logical axes to (tests
# check they agree): a kernel's own sharding, which `target.gather_weight` gathers over fsdp
# before use and reduce-scatters its gradient back to.
KERNEL_MESH_AXES = {"embed": "fsdp", "mlp": "tensor", "heads": "tensor"}


def _mesh_axes(axes: tuple) -> tuple:
    return tuple(KERNEL_MESH_AXES.get(a) for a in axes)


@dataclasses.dataclass(frozen=True)
class GatheredDot:
    """`lax.dot_general` with its kernel gathered over fsdp first (`target.apply_gathered`);
    `kernel_axes` is the kernel's own sharding (a mesh axis or None per dim). Frozen, so layers
    built alike have equal graph definitions."""

    kernel_axes: tuple

    def __call__(self, lhs, rhs, *args, **kwargs):
        return target.apply_gathered(lambda x, k: jax.lax.dot_general(x, k, *args, **kwargs), lhs, rhs,
                                     self.kernel_axes)


@dataclasses.dataclass(frozen=True)
class GatheredConv:
    """`jaxdistill.models.conv.conv_general_dilated` with its HWIO kernel gathered over fsdp first."""

    kernel_axes: tuple

    def __call__(self, lhs, rhs, *args, **kwargs):
        return target.apply_gathered(lambda x, k: conv_general_dilated(x, k, *args, **kwargs), lhs, rhs,
                                     self.kernel_axes)


class _ShapeOnlyRngs:
    """Stands in for `nnx.Rngs` when only shapes are wanted: every stream returns one constant key.

    Under `nnx.eval_shape` a real `nnx.Rngs` updates its traced counter on every call, and flax
    (0.12) then asks the tracer for `.sharding`, which makes JAX build an error-origin message by
    scanning the whole trace: construction becomes quadratic in the number of parameters (about
    6 s for a 30-tensor toy UNet, minutes for SDXL). The values are discarded anyway."""

    def __init__(self):
        self._key = jax.random.key(0)

    def __call__(self):
        return self._key

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self


def abstract_module(constructor):
    """`nnx.eval_shape(lambda: constructor(rngs))`: the module with ShapeDtypeStruct parameters
    (nothing allocated), built with shape-only rngs — the starting point of `weights.load_params`."""
    rngs = _ShapeOnlyRngs()
    token = _SHAPE_ONLY.set(True)  # initializer values are discarded: trace the cheapest ones
    try:
        return nnx.eval_shape(lambda: constructor(rngs))
    finally:
        _SHAPE_ONLY.reset(token)


def _kernel_init():
    return nnx.initializers.zeros_init() if _SHAPE_ONLY.get() else nnx.initializers.lecun_normal()


def conv(in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1, padding=None,
         axes: tuple = CONV_AXES, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
    """nnx.Conv with PyTorch's symmetric padding (kernel_size // 2 unless given), logical axes
    `axes` = (in-channel axis, out-channel axis) on its HWIO kernel, its kernel gathered over
    fsdp before use, and `jaxdistill.models.conv.conv_general_dilated` (fast kernel gradients
    on a CPU)."""
    pad = kernel_size // 2 if padding is None else padding
    padding = pad if isinstance(pad, str) else ((pad, pad), (pad, pad))
    with nnx.use_eager_sharding(False):  # logical names only; placement happens at load time
        return nnx.Conv(
            in_channels, out_channels, (kernel_size, kernel_size), strides=stride, padding=padding,
            kernel_init=nnx.with_partitioning(_kernel_init(), (None, None) + tuple(axes)),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
            dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            conv_general_dilated=GatheredConv(_mesh_axes((None, None) + tuple(axes))),
        )


def dense(in_features: int, out_features: int, *, use_bias: bool = True, axes: tuple = DENSE_AXES, dtype=None,
          param_dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Linear:
    """nnx.Linear with logical axes `axes` = (in axis, out axis) on its [in, out] kernel, its
    kernel gathered over fsdp before use."""
    with nnx.use_eager_sharding(False):
        return nnx.Linear(
            in_features, out_features, use_bias=use_bias,
            kernel_init=nnx.with_partitioning(_kernel_init(), tuple(axes)),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
            dtype=dtype, param_dtype=param_dtype, dot_general=GatheredDot(_mesh_axes(axes)), rngs=rngs,
        )


def group_norm(channels: int, groups: int, eps: float, *, param_dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """nnx.GroupNorm computing in float32 (two-pass variance, as torch) — call through `norm`."""
    if channels % groups:
        raise ValueError(f"GroupNorm over {channels} channels needs a group count dividing it; got {groups}.")
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype,
                         use_fast_variance=False, rngs=rngs)


def norm(layer: nnx.Module, x: jax.Array) -> jax.Array:
    """Apply a norm layer in float32 and return the input's dtype."""
    return layer(x.astype(jnp.float32)).astype(x.dtype)


class ResnetBlock2D(nnx.Module):
    """diffusers' `ResnetBlock2D` with time_embedding_norm="default", non-linearity SiLU:

        h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb))[:, None, None]
        out = (shortcut(x) + conv2(silu(norm2(h)))) / output_scale_factor
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, temb_channels: int | None = 512,
                 groups: int = 32, groups_out: int | None = None, eps: float = 1e-6,
                 output_scale_factor: float = 1.0, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        out_channels = out_channels or in_channels
        groups_out = groups_out or groups
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.output_scale_factor = output_scale_factor
        self.norm1 = group_norm(in_channels, groups, eps, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = conv(in_channels, out_channels, 3, **kw)
        self.time_emb_proj = dense(temb_channels, out_channels, **kw) if temb_channels else None
        self.norm2 = group_norm(out_channels, groups_out, eps, param_dtype=param_dtype, rngs=rngs)
        self.conv2 = conv(out_channels, out_channels, 3, **kw)
        self.conv_shortcut = conv(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None

    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        h = self.conv1(jax.nn.silu(norm(self.norm1, x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :].astype(h.dtype)
        h = self.conv2(jax.nn.silu(norm(self.norm2, h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        out = shortcut.astype(h.dtype) + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nnx.Module):
    """diffusers' `Downsample2D(use_conv=True)`: a 3x3 stride-2 `conv`. padding=1 (UNet) pads
    one pixel on every side; padding=0 (VAE) pads (0, 1) bottom/right, then a valid conv."""

    def __init__(self, channels: int, *, out_channels: int | None = None, padding: int = 1, rngs: nnx.Rngs,
                 dtype=None, param_dtype=jnp.float32):
        self.padding = padding
        self.conv = conv(channels, out_channels or channels, 3, stride=2, padding=padding, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


class Upsample2D(nnx.Module):
    """diffusers' `Upsample2D(use_conv=True)`: nearest-neighbour 2x, then a 3x3 `conv`."""

    def __init__(self, channels: int, *, out_channels: int | None = None, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        self.conv = conv(channels, out_channels or channels, 3, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)
