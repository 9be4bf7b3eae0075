"""Scaled dot-product attention through one function, and diffusers' `Attention` layer.

`attention(q, k, v, impl=...)` takes [B, L, heads, head_dim] arrays and picks a kernel:

    xla     einsum + softmax, the logits and softmax statistics in float32 (any backend)
    cudnn   `jax.nn.dot_product_attention(implementation="cudnn")`: fused flash attention on
            NVIDIA GPUs; needs float16/bfloat16 inputs, head_dim a multiple of 8 and at most
            128 (256 on Hopper and later), and even sequence lengths (JAX 0.11 refuses SD's
            77-token cross-attention for training, so that goes to `xla`: its logits are small)
    splash  the Pallas splash-attention kernel on TPU (O(L) memory); needs sequence lengths
            that are multiples of 128. head_dim is zero-padded to a multiple of 128 (SD's 40, 80,
            160 and SDXL's 64), as MaxDiffusion does: exact, at the cost of the padded FLOPs.
            Tiles of up to 1024 tokens (`splash_block`), not the kernel's default 128

When the chosen kernel's constraints fail (dtype, head_dim, sequence length, backend) the call
falls back to `xla` and logs why, once per reason.

The backend is the one the program is compiled for (`jaxdistill.models.target`): the default
backend, or the devices of the mesh given to `target.compiling_for(mesh)` while tracing (a TPU
topology planned from a CPU host). Under `compiling_for`, splash runs per device through
`jax.shard_map`, the batch split over the mesh's batch axes and the heads over its `tensor` axis
where they divide (a Pallas call is not partitioned by XLA itself).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from jaxdistill.models import layers, target

IMPLS = ("xla", "cudnn", "splash")
HEAD_AXIS = "tensor"  # jaxdistill.train.sharding's mesh axis for heads


@functools.lru_cache(maxsize=None)
def _log_fallback(impl: str, reason: str) -> None:
    logging.warning("attention impl=%r unavailable (%s); using 'xla'.", impl, reason)


def _xla(q, k, v, causal: bool):
    # Heads moved next to batch before the products: XLA:CPU runs "bqhd,bkhd->bhqk" directly
    # about 5× slower than on [B, H, L, D] operands (measured at B=32, L=256, 4×8 heads).
    scale = 1.0 / math.sqrt(q.shape[-1])
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if causal:
        mask = jnp.tril(jnp.ones((q.shape[2], k.shape[2]), bool))
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, v, preferred_element_type=jnp.float32).astype(q.dtype)
    return jnp.swapaxes(out, 1, 2)


def _compute_capability() -> tuple:
    """The CUDA compute capability of the devices compiled for, (0, 0) when unknown."""
    m = target.mesh()
    device = m.devices.flat[0] if m is not None else jax.devices()[0]
    text = getattr(device, "compute_capability", "") or ""
    return tuple(int(x) for x in text.split(".")) if text else (0, 0)


def _unsupported(impl: str, q, k) -> str | None:
    backend = target.platform()
    head_dim = q.shape[-1]
    if impl == "cudnn":
        if q.dtype not in (jnp.float16, jnp.bfloat16):
            return f"dtype {q.dtype} (needs float16 or bfloat16)"
        head_max = 256 if _compute_capability() >= (9, 0) else 128
        if head_dim > head_max or head_dim % 8:
            return f"head_dim {head_dim} (needs <= {head_max} and a multiple of 8)"
        if q.shape[1] % 2 or k.shape[1] % 2:
            return f"sequence lengths {q.shape[1]}, {k.shape[1]} (need even lengths)"
        if backend != "gpu":
            return f"backend is {backend}, not gpu"
    elif impl == "splash":
        if backend != "tpu":
            return f"backend is {backend}, not tpu"
        if q.shape[1] % 128 or k.shape[1] % 128:
            return f"sequence lengths {q.shape[1]}, {k.shape[1]} (need multiples of 128)"
    return None


def splash_block(length: int, itemsize: int) -> int:
    """Splash attention's tile along a sequence of `length` tokens (a multiple of 128) for
    inputs of `itemsize` bytes: the largest multiple of 128 that divides it, up to 1024 tokens
    for 16-bit inputs and 512 otherwise (MaxDiffusion's rule, `max_block_size` in its
    `_tpu_flash_attention`). Every query tile reads all of K and V, so a tile of b queries
    does about b FLOPs per byte moved from HBM: the kernel's default 128 is under a v5p's
    166 (459 TFLOP/s over 2.77 TB/s), 1024 is well above it. `jaxdistill.train.costs` reads
    the tiles back from the compiled kernel's metadata."""
    block = 1024 if itemsize <= 2 else 512
    return next(b for b in range(min(block, length), 0, -128) if length % b == 0)


def _splash_local(q, k, v, causal: bool, interpret: bool):
    """Splash attention on one device's [B, L, heads, head_dim] block, head_dim zero-padded to a
    multiple of 128: the padded columns add nothing to q·k and give zero output columns, which
    are cut off; the scale is the true head_dim's."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    heads, lq, lk, head_dim = q.shape[2], q.shape[1], k.shape[1], q.shape[3]
    base = sm.CausalMask((lq, lk)) if causal else sm.FullMask((lq, lk))
    bq, bk = splash_block(lq, q.dtype.itemsize), splash_block(lk, q.dtype.itemsize)
    blocks = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                           block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    kernel = sk.make_splash_mha(mask=sm.MultiHeadMask([base] * heads), block_sizes=blocks, head_shards=1,
                                q_seq_shards=1, interpret=interpret)
    q = q * (1.0 / math.sqrt(head_dim))
    pad = [(0, 0)] * 3 + [(0, -head_dim % 128)]
    # The kernel works per example on [heads, L, head_dim].
    q, k, v = (jnp.pad(a, pad).transpose(0, 2, 1, 3) for a in (q, k, v))
    return jax.vmap(kernel)(q, k, v).transpose(0, 2, 1, 3)[..., :head_dim]


def _splash(q, k, v, causal: bool, mesh=None, interpret: bool = False):
    """Splash attention, per device of `mesh` through `jax.shard_map` when there is more than one:
    the batch over the batch axes and the heads over the tensor axis where each divides, else
    that dimension whole on every device. `interpret` runs the kernel in Pallas' interpreter
    (any backend; for tests)."""
    local = functools.partial(_splash_local, causal=causal, interpret=interpret)
    if mesh is None or mesh.devices.size == 1:
        return local(q, k, v)
    batch_axes = tuple(a for a in target.BATCH_AXES if a in mesh.shape)
    batch = batch_axes if q.shape[0] % math.prod(mesh.shape[a] for a in batch_axes) == 0 else None
    heads = HEAD_AXIS if HEAD_AXIS in mesh.shape and q.shape[2] % mesh.shape[HEAD_AXIS] == 0 else None
    spec = jax.sharding.PartitionSpec(batch, None, heads, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, impl: str = "xla", causal: bool = False) -> jax.Array:
    """softmax(q kᵀ / √d) v over [B, L, heads, head_dim] arrays, with the kernel `impl`."""
    if impl not in IMPLS:
        raise ValueError(f"attention impl {impl!r} is unknown; expected one of {IMPLS}.")
    if impl != "xla":
        reason = _unsupported(impl, q, k)
        if reason is not None:
            _log_fallback(impl, reason)
            impl = "xla"
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
    if impl == "splash":
        return _splash(q, k, v, causal, target.mesh())
    return _xla(q, k, v, causal)


class Attention(nnx.Module):
    """diffusers' `Attention` (self- or cross-attention) with its parameter names:
    `to_q`, `to_k`, `to_v`, `to_out.0`, and `group_norm` for the VAE's spatial attention.

    Called on [B, L, C] tokens, or on [B, H, W, C] feature maps when `norm_num_groups` is set
    (the VAE mid-block form: group-norm, attention over H·W, residual, rescale).
    """

    def __init__(self, query_dim: int, *, cross_attention_dim: int | None = None, heads: int = 8,
                 dim_head: int = 64, bias: bool = False, out_bias: bool = True, norm_num_groups: int | None = None,
                 eps: float = 1e-5, residual_connection: bool = False, rescale_output_factor: float = 1.0,
                 impl: str = "xla", dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        inner = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        # Logical axes for sharding (jaxdistill.train.sharding): q/k/v kernels [in, heads·dim]
        # are ("embed", "heads"), the output kernel ("heads", "embed").
        dense = functools.partial(layers.dense, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads, self.impl = heads, impl
        self.residual_connection, self.rescale_output_factor = residual_connection, rescale_output_factor
        self.group_norm = (nnx.GroupNorm(query_dim, num_groups=norm_num_groups, epsilon=eps, dtype=jnp.float32,
                                         param_dtype=param_dtype, use_fast_variance=False, rngs=rngs)
                           if norm_num_groups else None)
        self.to_q = dense(query_dim, inner, use_bias=bias, axes=("embed", "heads"))
        self.to_k = dense(context_dim, inner, use_bias=bias, axes=("embed", "heads"))
        self.to_v = dense(context_dim, inner, use_bias=bias, axes=("embed", "heads"))
        self.to_out = nnx.List([dense(inner, query_dim, use_bias=out_bias, axes=("heads", "embed"))])

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        residual, spatial = x, x.ndim == 4
        if self.group_norm is not None:
            x = self.group_norm(x.astype(jnp.float32)).astype(x.dtype)
        if spatial:
            b, h, w, c = x.shape
            x = x.reshape(b, h * w, c)
        context = x if context is None else context
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, -1)  # noqa: E731
        out = attention(split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context)), impl=self.impl)
        out = self.to_out[0](out.reshape(out.shape[0], out.shape[1], -1))
        if spatial:
            out = out.reshape(b, h, w, c)
        if self.residual_connection:
            out = out + residual
        return out / self.rescale_output_factor
