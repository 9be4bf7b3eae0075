"""Shared helpers of the loss kernels: static shape checks, σ-weight tables, per-sample reductions.

Everything here is shape bookkeeping done in Python on static shapes (so it also works under
``jit``/``vmap``) or a pure elementwise function of ``sigma``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]

sg = jax.lax.stop_gradient


def choose(arg: str, value: str, table: Mapping[str, object]):
    """``table[value]``, or a ValueError naming ``arg`` and the valid choices."""
    if value not in table:
        raise ValueError(f"unknown {arg}={value!r}; valid choices: {', '.join(sorted(table))}")
    return table[value]


def check_inputs(x, noise, sigma, x_name: str = "x_g") -> None:
    """Check ``x`` [B, ...], ``noise`` of the same shape and ``sigma`` of shape [B] (static shapes)."""
    if x.ndim < 1:
        raise ValueError(f"{x_name} must have a leading batch axis, got shape {x.shape}")
    if noise.shape != x.shape:
        raise ValueError(f"noise shape {noise.shape} must equal {x_name} shape {x.shape}")
    if sigma.shape != x.shape[:1]:
        raise ValueError(f"sigma shape {sigma.shape} must be [B] = {x.shape[:1]} ({x_name} shape {x.shape})")


def bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape a per-sample [B] array to broadcast against ``x`` [B, ...]."""
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def noised(x: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
    """EDM forward process ``x_t = x + σ·ε`` in the dtype of ``x``."""
    return x + bcast(sigma, x).astype(x.dtype) * noise


def call(denoiser: Denoiser, x_t: jax.Array, sigma: jax.Array, name: str) -> jax.Array:
    """Call a denoiser closure and check it returned an x0 estimate shaped like ``x_t``."""
    out = denoiser(x_t, sigma)
    if out.shape != x_t.shape:
        raise ValueError(f"{name} denoiser returned shape {out.shape}, expected {x_t.shape}")
    return out


def f32(x: jax.Array) -> jax.Array:
    """``x`` in at least float32 (bf16/fp16 are upcast, float64 is kept)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def psum(x: jax.Array) -> jax.Array:
    """Per-sample sum over all non-batch axes, accumulated in at least float32 -> [B]."""
    return jnp.sum(f32(x), axis=tuple(range(1, x.ndim)))


def pmean_abs(x: jax.Array) -> jax.Array:
    """Per-sample mean of ``|x|`` over all non-batch axes, in at least float32 -> [B]."""
    return jnp.mean(jnp.abs(f32(x)), axis=tuple(range(1, x.ndim)))


# Per-sample σ-weights of few-step SiD (apple/ml-sid-dit training/sid_dit_training_loop.py,
# `--weighting_scheme`), written in EDM σ via the flow time t = σ/(1+σ), i.e. 1-t = 1/(1+σ) and
# (1-t)/t = 1/σ. ml-sid-dit names in brackets.
TIME_WEIGHTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "one_minus_t": lambda s: 1.0 / (1.0 + s),  # [1_minus_sigma], ml-sid-dit default
    "one_minus_t_squared": lambda s: 1.0 / (1.0 + s) ** 2,  # [1_minus_sigma_squared]
    "snr_sqrt": lambda s: 1.0 / s,  # [snr_sqrt] (1-t)/t
    "snr": lambda s: 1.0 / s**2,  # [snr] ((1-t)/t)^2
    "one_over_t": lambda s: (1.0 + s) / s,  # [1_over_sigma]
    "one_over_t_squared": lambda s: ((1.0 + s) / s) ** 2,  # [1_over_sigma2]
}


def time_weight(name: str, sigma: jax.Array, arg: str) -> jax.Array:
    """Detached (≥ float32) per-sample weight ``TIME_WEIGHTS[name](σ)`` -> [B]."""
    fn = choose(arg, name, TIME_WEIGHTS)
    return sg(fn(f32(sigma)))


def detached_pair(x_g, noise, sigma, real: Denoiser, fake: Denoiser):
    """``(f_real, f_fake)`` under ``stop_gradient`` at ``x_t = sg(x_g) + σ·ε``, in at least float32."""
    check_inputs(x_g, noise, sigma)
    x_t = noised(sg(x_g), noise, sigma)
    f_real = f32(sg(call(real, x_t, sigma, "real")))
    f_fake = f32(sg(call(fake, x_t, sigma, "fake")))
    return f_real, f_fake


def pseudo_target(x_g: jax.Array, grad: jax.Array) -> jax.Array:
    """Per-sample ``0.5·Σ(x_g - sg(x_g - grad))²``: value ``0.5‖grad‖²``, gradient ``grad`` w.r.t. x_g."""
    target = sg(f32(x_g) - grad)
    return 0.5 * psum((f32(x_g) - target) ** 2)
