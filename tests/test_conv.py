"""Convolution with tap-wise kernel gradients (the CPU path of jaxdistill.models.conv): values
and gradients equal lax's, and the compile target picks it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill.models import conv, layers, target


def _lax(x, w, strides, padding):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=conv.NHWC)


def _loss(fn):  # a weighting that differs per output element, so every gradient entry is tested
    return lambda x, w: jnp.sum(fn(x, w) * jnp.cos(jnp.arange(w.shape[-1]) + 0.5))


@pytest.mark.parametrize("kernel,strides,padding,shape", [
    (3, (1, 1), ((1, 1), (1, 1)), (2, 8, 8, 5)),   # a ResnetBlock2D conv
    (3, (2, 2), ((1, 1), (1, 1)), (2, 8, 8, 5)),   # Downsample2D
    (3, (2, 2), ((0, 1), (0, 1)), (2, 7, 9, 5)),   # the VAE's asymmetric downsampling pad, odd sizes
    (1, (1, 1), ((0, 0), (0, 0)), (3, 4, 6, 5)),   # proj_in / conv_shortcut
])
def test_tap_gradients_equal_lax(kernel, strides, padding, shape):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (kernel, kernel, shape[-1], 6))
    tap = lambda x, w: conv.conv_tap_grads(x, w, strides, padding)  # noqa: E731
    ref = lambda x, w: _lax(x, w, strides, padding)  # noqa: E731
    np.testing.assert_allclose(tap(x, w), ref(x, w), rtol=1e-6, atol=1e-5)
    for a, b in zip(jax.grad(_loss(tap), argnums=(0, 1))(x, w), jax.grad(_loss(ref), argnums=(0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_the_compile_target_picks_the_path(monkeypatch):
    x = jnp.ones((2, 8, 8, 4))

    def traced(layer):  # the forward's jaxpr: the custom VJP shows as its call
        graph, params = nnx.split(layer)
        return str(jax.make_jaxpr(lambda p: nnx.merge(graph, p)(x))(params))

    layer = layers.conv(4, 6, 3, rngs=nnx.Rngs(0))
    assert "custom_vjp_call" in traced(layer)  # this host is a CPU
    dilated = nnx.Conv(4, 6, (3, 3), kernel_dilation=2, padding=((2, 2), (2, 2)),
                       conv_general_dilated=conv.conv_general_dilated, rngs=nnx.Rngs(0))
    assert "custom_vjp_call" not in traced(dilated)  # lax for what the tap path does not cover
    monkeypatch.setattr(target, "platform", lambda: "tpu")  # as under compiling_for(a TPU topology's mesh)
    assert "custom_vjp_call" not in traced(layer)
