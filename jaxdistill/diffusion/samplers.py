"""Reference samplers for teachers, in σ-space: EDM Heun, Euler, DDIM.

All take a denoiser `D(x, σ[B]) -> x̂_0`, the initial unit noise `noise` ([B, ...]; the sampler
starts from x = σ_0·noise) and a decreasing σ ladder `sigmas` (usually ending in 0, e.g.
`karras_sigmas(n)`), run as one `lax.scan`, and return the final x. They are `jit`-compatible,
batch-vectorised (one denoiser call per step covers the batch) and deterministic: stochastic
variants draw all their noise from an explicit `key`.

With a ladder ending at σ = 0 the result is the sample; with a ladder ending at σ_end > 0 (e.g. SD's
DDIM with `set_alpha_to_one=False`) the result is x at σ_end, in σ-space (multiply by
1/√(1+σ_end²) to get diffusers' VP-scaled latent).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.diffusion.adapters import Denoiser


def _ladder(sigmas, noise: jax.Array) -> jax.Array:
    sig = jnp.asarray(sigmas, jnp.float32)
    if sig.ndim != 1 or sig.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D ladder of at least 2 noise levels; got shape {tuple(sig.shape)}.")
    if not isinstance(sigmas, jax.core.Tracer):
        s = np.asarray(sigmas, np.float64)
        if np.any(s < 0) or np.any(np.diff(s) >= 0) or s[0] <= 0:
            raise ValueError(
                "sigmas must be strictly decreasing, positive except for a final 0 "
                f"(e.g. karras_sigmas(n)); got {s.tolist()[:4]}... ."
            )
    if noise.ndim < 1:
        raise ValueError(f"noise must be batch-first [B, ...]; got shape {tuple(noise.shape)}.")
    return sig


def _full(sigma: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.full((x.shape[0],), sigma, dtype=x.dtype)


def _require_key(key, what: str):
    if key is None:
        raise ValueError(f"{what} is stochastic: pass `key` (a jax.random key).")


def edm_heun(
    denoiser: Denoiser,
    noise: jax.Array,
    sigmas,
    *,
    key: Optional[jax.Array] = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> jax.Array:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Algorithm 2; NVlabs/edm generate.py
    `edm_sampler`). With N grid points ending at 0 it costs 2N − 1 denoiser calls (the last step,
    to σ = 0, is an Euler step). `s_churn > 0` adds EDM's stochastic churn and needs `key`."""
    sig = _ladder(sigmas, noise)
    n = sig.shape[0] - 1
    stochastic = s_churn > 0
    if stochastic:
        _require_key(key, "edm_heun with s_churn > 0")
    keys = jax.random.split(key, n) if stochastic else jnp.zeros((n,), jnp.uint32)
    gamma_max = min(s_churn / n, 2**0.5 - 1)

    def step(x, inp):
        s_cur, s_next, k = inp
        if stochastic:
            gamma = jnp.where((s_cur >= s_tmin) & (s_cur <= s_tmax), gamma_max, 0.0)
            s_hat = s_cur * (1 + gamma)
            x = x + jnp.sqrt(s_hat**2 - s_cur**2) * s_noise * jax.random.normal(k, x.shape, x.dtype)
        else:
            s_hat = s_cur
        d = (x - denoiser(x, _full(s_hat, x))) / s_hat
        x_euler = x + (s_next - s_hat) * d

        def heun(_):
            d2 = (x_euler - denoiser(x_euler, _full(s_next, x))) / s_next
            return x + (s_next - s_hat) * (0.5 * d + 0.5 * d2)

        x_new = jax.lax.cond(s_next > 0, heun, lambda _: x_euler, None)
        return x_new, None

    x0 = noise * sig[0]
    x, _ = jax.lax.scan(step, x0, (sig[:-1], sig[1:], keys))
    return x


def euler(denoiser: Denoiser, noise: jax.Array, sigmas) -> jax.Array:
    """Deterministic Euler on the probability-flow ODE dx/dσ = (x − D(x, σ))/σ; one call per step.
    Equals diffusers' `EulerDiscreteScheduler` (s_churn = 0) on the same σ ladder."""
    sig = _ladder(sigmas, noise)

    def step(x, inp):
        s_cur, s_next = inp
        d = (x - denoiser(x, _full(s_cur, x))) / s_cur
        return x + (s_next - s_cur) * d, None

    x, _ = jax.lax.scan(step, noise * sig[0], (sig[:-1], sig[1:]))
    return x


def ddim(
    denoiser: Denoiser,
    noise: jax.Array,
    sigmas,
    *,
    eta: float = 0.0,
    key: Optional[jax.Array] = None,
) -> jax.Array:
    """DDIM (Song et al. 2021, eq. 12) in σ-space; one call per step.

    x̂_0 = D(x, σ), ε̂ = (x − x̂_0)/σ, σ_η = η·σ'·√(σ² − σ'²)/σ, and
    x' = x̂_0 + √(σ'² − σ_η²)·ε̂ + σ_η·z. Dividing DDIM's VP update by √ᾱ_{t'} gives exactly this
    (σ_η is DDIM's σ_t(η)/√ᾱ_{t'}); with η = 0 it is the Euler step. Run on the σ ladder of SD's
    discrete timesteps (`VPSchedule.sampling_sigmas`) it equals diffusers' `DDIMScheduler`.
    """
    sig = _ladder(sigmas, noise)
    n = sig.shape[0] - 1
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}.")
    stochastic = eta > 0
    if stochastic:
        _require_key(key, "ddim with eta > 0")
    keys = jax.random.split(key, n) if stochastic else jnp.zeros((n,), jnp.uint32)

    def step(x, inp):
        s_cur, s_next, k = inp
        x0 = denoiser(x, _full(s_cur, x))
        eps = (x - x0) / s_cur
        if not stochastic:
            return x0 + s_next * eps, None
        s_eta = eta * s_next * jnp.sqrt(jnp.maximum(s_cur**2 - s_next**2, 0.0)) / s_cur
        z = jax.random.normal(k, x.shape, x.dtype)
        return x0 + jnp.sqrt(jnp.maximum(s_next**2 - s_eta**2, 0.0)) * eps + s_eta * z, None

    x, _ = jax.lax.scan(step, noise * sig[0], (sig[:-1], sig[1:], keys))
    return x


SAMPLERS = {"edm_heun": edm_heun, "euler": euler, "ddim": ddim}


def get_sampler(name: str):
    """Sampler by name: "edm_heun", "euler" or "ddim"."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is unknown; expected one of {tuple(SAMPLERS)}.")
    return SAMPLERS[name]
