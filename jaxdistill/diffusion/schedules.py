"""Noise schedules, all expressed as EDM noise levels σ (x_t = x_0 + σ·ε).

A discrete-time VP (DDPM) model trained on ᾱ_t sees `x_vp = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε`, which is
`√ᾱ_t · (x_0 + σ_t·ε)` with `σ_t = √((1−ᾱ_t)/ᾱ_t)`. `VPSchedule` keeps that σ table and maps any
continuous σ to a fractional timestep by interpolating log σ over the table, exactly as diffusers'
`EulerDiscreteScheduler._sigma_to_t` does (the inverse, `timestep_to_sigma`, interpolates log σ
linearly in t, so the two are inverse to float precision).

Also here: the EDM/Karras σ grid (Karras et al. 2022, eq. 5) and the rectified-flow time with the
resolution shift of SD3 (`t' = s·t / (1 + (s−1)·t)`), for which σ = t / (1 − t).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_positive(value, name: str, *, allow_zero: bool = False) -> None:
    """Raise ValueError if a concrete (non-traced) noise level `value` has an entry ≤ 0 (< 0 with
    `allow_zero`) or a non-finite one. Traced values are not checked (shapes are, elsewhere)."""
    if _is_concrete(value):
        arr = np.asarray(value, dtype=np.float64)
        ok = (arr >= 0) if allow_zero else (arr > 0)
        if arr.size and not (np.all(ok) and np.all(np.isfinite(arr))):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(
                f"{name} must be a noise level σ {bound} and finite; got min {arr.min()!r}. "
                "Pass σ in (0, ∞), e.g. 0.002 ≤ σ ≤ 80 as in EDM."
            )


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> np.ndarray:
    """The β table of a DDPM schedule, computed in float32 exactly as diffusers' schedulers do
    (the table a diffusers-trained teacher was trained on; returned as float64 holding those values).

    - `scaled_linear` (Stable Diffusion 1.x/2.x/XL): `linspace(√β_start, √β_end, N)²`.
    - `linear` (DDPM, Ho et al. 2020): `linspace(β_start, β_end, N)`.
    - `squaredcos_cap_v2` (improved DDPM cosine, Nichol & Dhariwal 2021), β capped at 0.999.
    """
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}.")
    if beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float32) ** 2
        return betas.astype(np.float64)
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32).astype(np.float64)
    if beta_schedule == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        n = num_train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return np.array(betas, dtype=np.float32).astype(np.float64)
    raise ValueError(
        f"beta_schedule={beta_schedule!r} is not a known schedule; expected one of {BETA_SCHEDULES}."
    )


@dataclasses.dataclass(frozen=True)
class VPSchedule:
    """A discrete-time variance-preserving schedule seen in σ-space.

    Attributes are host numpy arrays so that construction never touches a device; the jnp
    methods convert them at trace time (they become float32 constants). ᾱ is held in float32
    like diffusers' `DDPMScheduler`, so σ_t agrees with the σ the teacher was trained at (near
    t = 0, 1 − ᾱ from a float32 ᾱ differs from the exact float64 value by ~1e-5 relative).
    """

    betas: np.ndarray
    prediction_type: str = "epsilon"

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t as diffusers holds it: float32 α = 1 − β, a float64-accumulated product (what
        torch.cumprod does on CPU), rounded to float32 (equal to `DDPMScheduler.alphas_cumprod` to ~4e-7 relative)."""
        alphas = (1.0 - self.betas.astype(np.float32)).astype(np.float64)
        return np.cumprod(alphas).astype(np.float32).astype(np.float64)

    @property
    def sigmas(self) -> np.ndarray:
        """σ_t = √((1−ᾱ_t)/ᾱ_t) for t = 0..N−1 (increasing)."""
        ac = self.alphas_cumprod
        return np.sqrt((1.0 - ac) / ac)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_timestep(self, sigma: jax.Array) -> jax.Array:
        """Continuous timestep for σ by log-σ interpolation over the table, clipped to [0, N−1].

        Matches diffusers' `EulerDiscreteScheduler._sigma_to_t`: σ below the table's first entry
        maps to t = 0 and above its last to t = N−1 (a discrete model knows no other times).
        """
        check_positive(sigma, "sigma")
        sigma = jnp.asarray(sigma)
        dtype = jnp.promote_types(sigma.dtype, jnp.float32)
        log_sigmas = jnp.asarray(np.log(self.sigmas), dtype)
        log_sigma = jnp.log(jnp.maximum(sigma.astype(dtype), 1e-10))
        return jnp.interp(log_sigma, log_sigmas, jnp.arange(self.num_train_timesteps, dtype=dtype))

    def timestep_to_sigma(self, t: jax.Array) -> jax.Array:
        """σ at a (possibly fractional) timestep; log-linear in t, the inverse of `sigma_to_timestep`."""
        t = jnp.asarray(t)
        dtype = jnp.promote_types(t.dtype, jnp.float32)
        log_sigmas = jnp.asarray(np.log(self.sigmas), dtype)
        return jnp.exp(jnp.interp(t.astype(dtype), jnp.arange(self.num_train_timesteps, dtype=dtype), log_sigmas))

    def timesteps(self, num_steps: int, spacing: str = "leading", steps_offset: int = 0) -> np.ndarray:
        """Integer sampling timesteps, decreasing, as diffusers' `set_timesteps` builds them.

        `spacing` is diffusers' `timestep_spacing`: "leading" (SD1.5's scheduler config, with
        `steps_offset=1`), "trailing" or "linspace".
        """
        n = self.num_train_timesteps
        if not 1 <= num_steps <= n:
            raise ValueError(f"num_steps must be in [1, {n}], got {num_steps}.")
        if spacing == "leading":
            ratio = n // num_steps
            ts = (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
        elif spacing == "trailing":
            ratio = n / num_steps
            ts = np.round(np.arange(n, 0, -ratio)).astype(np.int64) - 1
        elif spacing == "linspace":
            ts = np.linspace(0, n - 1, num_steps).round()[::-1].astype(np.int64)
        else:
            raise ValueError(
                f"spacing={spacing!r} is not a timestep spacing; expected 'leading', 'trailing' or 'linspace'."
            )
        return ts

    def sampling_sigmas(
        self,
        num_steps: int,
        spacing: str = "leading",
        steps_offset: int = 0,
        set_alpha_to_one: bool = True,
    ) -> np.ndarray:
        """The σ ladder a DDIM/DDPM-style sampler walks: σ at each integer timestep, then the final
        σ (0 if `set_alpha_to_one`, else σ_0 of the table — diffusers' DDIMScheduler convention)."""
        ts = self.timesteps(num_steps, spacing, steps_offset)
        final = 0.0 if set_alpha_to_one else self.sigmas[0]
        return np.append(self.sigmas[ts], final)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "VPSchedule":
        """Build from a diffusers scheduler config dict (e.g. a folder's `scheduler/scheduler_config.json`)."""
        if config.get("trained_betas") is not None:
            betas = np.asarray(config["trained_betas"], dtype=np.float64)
        else:
            betas = make_betas(
                config.get("beta_schedule", "linear"),
                int(config.get("num_train_timesteps", 1000)),
                float(config.get("beta_start", 0.0001)),
                float(config.get("beta_end", 0.02)),
            )
        prediction_type = config.get("prediction_type", "epsilon")
        return cls(betas=betas, prediction_type=prediction_type)


def stable_diffusion_schedule(prediction_type: str = "epsilon") -> VPSchedule:
    """SD1.x/2.x/XL: scaled-linear β from 0.00085 to 0.012 over 1000 steps."""
    return VPSchedule(make_betas("scaled_linear", 1000, 0.00085, 0.012), prediction_type)


def karras_sigmas(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    append_zero: bool = True,
) -> np.ndarray:
    """EDM's σ grid (Karras et al. 2022, eq. 5), decreasing from σ_max to σ_min, then 0.

    σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0..N−1.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    check_positive(sigma_min, "sigma_min")
    check_positive(sigma_max, "sigma_max")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must be < sigma_max ({sigma_max}).")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}.")
    ramp = np.linspace(0.0, 1.0, num_steps) if num_steps > 1 else np.zeros(1)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return np.append(sigmas, 0.0) if append_zero else sigmas


def flow_shift(t, shift: float):
    """SD3's resolution shift of rectified-flow time: t' = s·t / (1 + (s − 1)·t)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}.")
    return shift * t / (1 + (shift - 1) * t)


def flow_time_to_sigma(t):
    """Rectified flow x_t = (1−t)·x_0 + t·ε is x_0 + σ·ε scaled by (1−t), with σ = t/(1−t)."""
    return t / (1 - t)


def sigma_to_flow_time(sigma):
    """Inverse of `flow_time_to_sigma`: t = σ/(1+σ)."""
    return sigma / (1 + sigma)


def flow_sigmas(
    num_steps: int,
    shift: float = 1.0,
    num_train_timesteps: int = 1000,
    append_zero: bool = True,
) -> np.ndarray:
    """σ grid for sampling a flow model, as diffusers' `FlowMatchEulerDiscreteScheduler` builds it.

    Flow time t runs uniformly from 1 down to t_min = shift(1/N_train) (the scheduler's own
    `sigma_min`, already shifted once), and the shift is then applied to the whole ramp, so the
    last point is shifted twice, exactly as diffusers does. t = 1 is pure noise (σ = ∞); samplers
    here start from a finite σ, so t is clipped to 1 − 1e-4 (σ ≈ 1e4, where the network input
    x/(1+σ) equals the noise to float32 precision).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    t_min = flow_shift(1.0 / num_train_timesteps, shift)
    t = flow_shift(np.linspace(1.0, t_min, num_steps, dtype=np.float64), shift)
    sigmas = flow_time_to_sigma(np.minimum(t, 1 - 1e-4))
    return np.append(sigmas, 0.0) if append_zero else sigmas
