"""Attention kernels: splash (in Pallas' interpreter, so on a CPU) against the XLA reference, with
head_dim padded to 128 and mapped over a mesh; the kernel chosen for the compile target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.models import attention as attn, target
from jaxdistill.train.sharding import make_mesh


def _qkv(b, lq, lk, heads, head_dim):
    ks = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(ks[0], (b, lq, heads, head_dim)), jax.random.normal(ks[1], (b, lk, heads, head_dim)),
            jax.random.normal(ks[2], (b, lk, heads, head_dim)))


def _loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * jnp.cos(jnp.arange(q.shape[-1])))


@pytest.mark.parametrize("head_dim", [40, 160])  # SD1.5's smallest and largest: padded to 128 and 256
def test_splash_with_padded_head_dim_equals_xla(head_dim):
    q, k, v = _qkv(2, 128, 128, 2, head_dim)
    splash = lambda q, k, v: attn._splash(q, k, v, False, interpret=True)  # noqa: E731
    xla = lambda q, k, v: attn._xla(q, k, v, False)  # noqa: E731
    np.testing.assert_allclose(splash(q, k, v), xla(q, k, v), atol=2e-5)
    if head_dim > 128:
        return  # the backward kernels' padding is the same code path; checked once (interpreting is slow)
    g_splash = jax.grad(_loss(splash), argnums=(0, 1, 2))(q, k, v)
    g_xla = jax.grad(_loss(xla), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_splash, g_xla):
        np.testing.assert_allclose(a, b, atol=5e-5)


def test_splash_tiles():
    """Up to 1024 tokens per tile for 16-bit inputs and 512 for 32-bit, dividing the sequence."""
    assert [attn.splash_block(n, 2) for n in (128, 384, 1024, 1536, 4096)] == [128, 384, 1024, 768, 1024]
    assert [attn.splash_block(n, 4) for n in (1024, 4096, 640)] == [512, 512, 128]


def test_splash_over_several_tiles_equals_xla():
    """float32 at 1024 tokens: two 512-token tiles of queries and of keys, forward and backward."""
    q, k, v = _qkv(1, 1024, 1024, 1, 40)
    splash = lambda q, k, v: attn._splash(q, k, v, False, interpret=True)  # noqa: E731
    xla = lambda q, k, v: attn._xla(q, k, v, False)  # noqa: E731
    np.testing.assert_allclose(splash(q, k, v), xla(q, k, v), atol=2e-5)
    for a, b in zip(jax.grad(_loss(splash), argnums=(0, 1, 2))(q, k, v), jax.grad(_loss(xla), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("batch", [4, 3])  # 4 splits over data x fsdp = 2 x 2; 3 stays whole on each device
def test_splash_over_a_mesh_equals_xla(batch):
    mesh = make_mesh((2, 2, 2), jax.devices()[:8])
    q, k, v = _qkv(batch, 128, 128, 2, 40)
    out = jax.jit(lambda q, k, v: attn._splash(q, k, v, False, mesh, interpret=True))(q, k, v)
    np.testing.assert_allclose(out, attn._xla(q, k, v, False), atol=2e-5)


def test_the_compile_target_picks_the_kernel(monkeypatch):
    def kernels(lk, impl="splash"):
        q, k, v = _qkv(2, 128, lk, 2, 40)
        return str(jax.make_jaxpr(lambda q, k, v: attn.attention(q, k, v, impl=impl))(q, k, v))

    assert "pallas_call" not in kernels(128)  # this host's backend is the CPU: splash falls back
    with target.compiling_for(make_mesh((1, 1, 1), jax.devices()[:1])):
        assert target.platform() == "cpu"
    monkeypatch.setattr(target, "platform", lambda: "tpu")  # as under compiling_for(a TPU topology's mesh)
    assert "pallas_call" in kernels(128)
    assert "pallas_call" not in kernels(77)  # CLIP's 77 text tokens: cross-attention falls back to xla
    assert "pallas_call" not in kernels(128, impl="cudnn")


def test_cudnn_takes_what_jax_can_train_and_says_why_not():
    """cuDNN's fused attention: bf16 or f16, head_dim a multiple of 8 up to 128 (256 on Hopper),
    even sequence lengths; SD's 77-token cross-attention and float32 go to XLA, with the reason."""
    bf16 = lambda L, d=40: jnp.zeros((2, L, 8, d), jnp.bfloat16)  # noqa: E731
    assert "even" in attn._unsupported("cudnn", bf16(4096), bf16(77))
    assert "float32" in attn._unsupported("cudnn", bf16(4096).astype(jnp.float32), bf16(4096).astype(jnp.float32))
    assert "head_dim 160 (needs <= 128" in attn._unsupported("cudnn", bf16(256, 160), bf16(256, 160))  # no GPU: not Hopper
    assert "backend is cpu" in attn._unsupported("cudnn", bf16(4096), bf16(4096))
