"""2-D convolution for the UNet and VAE layers, with kernel gradients that XLA:CPU runs fast.

`conv_general_dilated` has `jax.lax.conv_general_dilated`'s signature, which is what `nnx.Conv`
calls. On a CPU target (`jaxdistill.models.target`) it is `conv_tap_grads`. There the forward
and the input gradient stay XLA convolutions. The kernel gradient becomes one matmul per tap:

    ∂L/∂W[i, j] = Σ_{b,h,w} x_pad[b, s·h + i, s·w + j, :]ᵀ · ∂L/∂y[b, h, w, :]

Why: XLA:CPU computes a kernel gradient as a convolution whose window is the whole feature map.
In the embedded world's SiD-LSG train step (batch 8, 32×32 pixels, channels 16/32/64) those
ran at 1–2 GFLOP/s. In a profile, one [3, 3, 64, 64] kernel's gradient over 16×16 maps (0.15
or 0.3 GFLOP, at batch 8 or 16) took 142 ms per step, and all the convolutions took 1.85 s of
the step's 3.7 s. With tap matmuls `experiments/conv_grads.py` measured 1.391 s per step
against 3.670 s on a 2-core CPU, with the losses equal to float32 rounding.

On GPU and TPU targets, and for dilated, grouped or string-padded convolutions, it is
`lax.conv_general_dilated` itself. The CPU path is a `jax.custom_vjp`, so it supports reverse
mode only: `jax.jvp` through a CPU-traced UNet raises.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxdistill.models import target

NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_tap_grads(x: jax.Array, w: jax.Array, strides: tuple, padding: tuple, precision=None) -> jax.Array:
    """An NHWC × HWIO convolution (`strides` (sh, sw), `padding` ((lo, hi), (lo, hi)), both
    non-negative) whose kernel gradient is a sum over taps of matmuls (module docstring)."""
    return _conv(x, w, strides, padding, precision)


def _forward(x, w, strides, padding, precision):
    return _conv(x, w, strides, padding, precision), (x, w)


def _backward(strides, padding, precision, residuals, g):
    x, w = residuals
    (dx,) = jax.vjp(lambda x_: _conv(x_, w, strides, padding, precision), x)[1](g)
    (sh, sw), (oh, ow) = strides, g.shape[1:3]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    taps = [jnp.einsum("bhwc,bhwo->co", xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw], g,
                       precision=precision, preferred_element_type=jnp.float32)
            for i in range(w.shape[0]) for j in range(w.shape[1])]
    return dx, jnp.stack(taps).reshape(w.shape).astype(w.dtype)


conv_tap_grads.defvjp(_forward, _backward)


def _takes_tap_grads(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                     kwargs) -> bool:
    return (lhs.ndim == 4 and feature_group_count == 1
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
            and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
            and not isinstance(padding, str) and all(p >= 0 for pair in padding for p in pair)
            and all(v is None for v in kwargs.values()))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs) -> jax.Array:
    """`lax.conv_general_dilated`, or `conv_tap_grads` for a plain NHWC convolution traced for a CPU."""
    if target.platform() == "cpu" and _takes_tap_grads(lhs, rhs, padding, lhs_dilation, rhs_dilation,
                                                        dimension_numbers, feature_group_count, kwargs):
        return conv_tap_grads(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision, **kwargs)
