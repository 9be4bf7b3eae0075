"""Adapters: turn a network of any parameterisation into a σ-space denoiser `D(x, σ) -> x̂_0`.

Every loss kernel and sampler in jaxdistill works in EDM coordinates, `x = x_0 + σ·ε` (design §1).
A network is any callable `net(x_in, t) -> out` with the conditioning already bound; `t` has shape
[B]. The adapter computes the network's own input and time from (x, σ) and maps its output to x̂_0:

| prediction     | network input x_in       | time t                    | x̂_0                                   |
|----------------|--------------------------|---------------------------|---------------------------------------|
| "epsilon"      | x·√ᾱ = x/√(1+σ²)         | t(σ) from the VP table    | x − σ·ε̂                               |
| "v_prediction" | x/√(1+σ²)                | t(σ)                      | x/(1+σ²) − σ/√(1+σ²)·v̂                |
| "sample"       | x/√(1+σ²)                | t(σ)                      | x̂_0 (the output itself)               |
| "edm"          | c_in·x = x/√(σ²+σ_d²)    | c_noise = ln(σ)/4         | c_skip·x + c_out·F                    |
| "flow"         | x/(1+σ)                  | σ/(1+σ) (× timestep_scale)| x/(1+σ) − t·v̂                         |

The v-pred row follows from `x_vp = √ᾱ·x_0 + √(1−ᾱ)·ε` and `v = √ᾱ·ε − √(1−ᾱ)·x_0`, so
`x_0 = √ᾱ·x_vp − √(1−ᾱ)·v` with √ᾱ = 1/√(1+σ²). The flow row needs no rescaling: flow-matching
velocity v = ε − x_0 and x_flow = (1−t)·x_0 + t·ε give x_0 = x_flow − t·v directly.
EDM preconditioning: Karras et al. 2022, Table 1 (c_skip = σ_d²/(σ²+σ_d²), c_out = σ·σ_d/√(σ²+σ_d²)).
Discrete-time t(σ): log-σ interpolation over the training table, clipped to the table's range
(diffusers' `EulerDiscreteScheduler._sigma_to_t`); outside [σ_0, σ_{N−1}] the network is queried
at its nearest trained time, with the true σ kept in the input scaling and output map.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxdistill.diffusion.schedules import VPSchedule, check_positive

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]
Network = Callable[[jax.Array, jax.Array], jax.Array]

PREDICTIONS = ("epsilon", "v_prediction", "sample", "edm", "flow")


def expand_sigma(sigma: jax.Array, x: jax.Array) -> jax.Array:
    """Validate σ of shape [B] against x of shape [B, ...] and broadcast it to x's rank."""
    sigma = jnp.asarray(sigma)
    if sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
        raise ValueError(
            f"sigma must have shape [B] = [{x.shape[0]}] to match x of shape {tuple(x.shape)}; "
            f"got sigma of shape {tuple(sigma.shape)}."
        )
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - 1)).astype(x.dtype)


def make_denoiser(
    net: Network,
    prediction: str,
    schedule: Optional[VPSchedule] = None,
    *,
    sigma_data: float = 0.5,
    timestep_scale: float = 1.0,
) -> Denoiser:
    """Wrap `net` (conditioning bound) as a σ-space denoiser `D(x, σ) -> x̂_0`.

    Args:
      net: `net(x_in, t) -> output`, batch-first, `t` of shape [B].
      prediction: one of "epsilon", "v_prediction", "sample" (diffusers' `prediction_type`
        names, discrete-time VP models), "edm" (EDM-preconditioned raw network F), "flow"
        (rectified-flow velocity v = ε − x_0).
      schedule: the VP table; required for "epsilon", "v_prediction" and "sample".
      sigma_data: EDM's σ_d, for "edm".
      timestep_scale: multiplies the flow time t ∈ (0, 1) before it reaches a "flow" network
        (1000 for SD3-style transformers that take t·1000; 1 for FLUX-style ones).
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction={prediction!r} is not a network output kind; expected one of {PREDICTIONS}.")
    if prediction in ("epsilon", "v_prediction", "sample") and schedule is None:
        raise ValueError(f"prediction={prediction!r} is a discrete-time VP model: pass its `schedule` (a VPSchedule).")
    if sigma_data <= 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data}.")

    def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
        check_positive(sigma, "sigma")
        s = expand_sigma(sigma, x)
        if prediction == "edm":
            c_skip = sigma_data**2 / (s**2 + sigma_data**2)
            c_out = s * sigma_data / jnp.sqrt(s**2 + sigma_data**2)
            c_in = 1 / jnp.sqrt(s**2 + sigma_data**2)
            c_noise = jnp.log(jnp.asarray(sigma, x.dtype)) / 4
            return c_skip * x + c_out * net(c_in * x, c_noise)
        if prediction == "flow":
            t = s / (1 + s)
            x_in = x / (1 + s)
            v = net(x_in, (t.reshape(-1) * timestep_scale).astype(x.dtype))
            return x_in - t * v
        # Discrete-time VP model.
        t = schedule.sigma_to_timestep(sigma)
        scale = jax.lax.rsqrt(1 + s**2)  # √ᾱ(σ)
        out = net(x * scale, t)
        if prediction == "epsilon":
            return x - s * out
        if prediction == "v_prediction":
            return x * scale**2 - s * scale * out
        return out  # "sample"

    return denoise

