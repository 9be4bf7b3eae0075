"""Noise-level distributions for the generator and critic losses, all returning σ of shape [n].

| name           | method family           | definition                                                      |
|----------------|-------------------------|-----------------------------------------------------------------|
| "sid_karras"   | SiD (EDM teachers)      | u ~ U[0, t_max/1000]; σ = Karras ramp at 1 − u (below)         |
| "edm_lognormal"| EDM DSM, Diff-Instruct  | ln σ ~ N(P_mean, P_std²)                                        |
| "ddpm"         | SiD-LSG, DMD2, VSD (SD) | integer t ~ U{t_min..t_max−1} of a VP table, σ = σ_t            |
| "logit_normal" | flow teachers (ml-sid-dit) | t = sigmoid(m + s·n), n ~ N(0,1); σ = t/(1−t)                |

SiD's ramp: σ = (σ_max^{1/ρ} + (1−u)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, so u = 0 gives σ_min.
Sources: `mingyuanzhou/SiD` training/sid_loss.py (t_max = 800 → σ ∈ [0.002, ≈24.4]);
EDM (Karras et al. 2022) P_mean = −1.2, P_std = 1.2; `mingyuanzhou/SiD-LSG` and `tianweiy/DMD2`
(t ∈ [20, 980)); `apple/ml-sid-dit` (logit-normal, m = ln 2, s = 1.6, median t = 2/3).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.diffusion.schedules import VPSchedule, stable_diffusion_schedule

NoiseLevelFn = Callable[[jax.Array, int], jax.Array]


def sid_karras(key, n, *, t_max=800.0, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """SiD's σ: a Karras-ρ ramp at u ~ U[0, t_max/1000] (u = 0 → σ_min, u = 1 → σ_max)."""
    u = jax.random.uniform(key, (n,), minval=0.0, maxval=t_max / 1000.0)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (inv_max + (1 - u) * (inv_min - inv_max)) ** rho


def edm_lognormal(key, n, *, p_mean=-1.2, p_std=1.2):
    """EDM's training σ: ln σ ~ N(P_mean, P_std²)."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, (n,)))


def ddpm(key, n, *, t_min=20, t_max=980, schedule: VPSchedule | None = None):
    """σ at an integer DDPM timestep t ~ U{t_min, …, t_max − 1} of `schedule` (SD's by default)."""
    schedule = schedule or stable_diffusion_schedule()
    t = jax.random.randint(key, (n,), t_min, t_max)
    return jnp.asarray(schedule.sigmas, jnp.float32)[t]


def logit_normal(key, n, *, mean=math.log(2.0), std=1.6, t_min=1e-4, t_max=1 - 1e-4):
    """Flow time t = sigmoid(mean + std·n), clipped to [t_min, t_max], as σ = t/(1−t)."""
    t = jnp.clip(jax.nn.sigmoid(mean + std * jax.random.normal(key, (n,))), t_min, t_max)
    return t / (1 - t)


NOISE_LEVELS = {
    "sid_karras": sid_karras,
    "edm_lognormal": edm_lognormal,
    "ddpm": ddpm,
    "logit_normal": logit_normal,
}


def get_noise_level(name: str, **kwargs) -> NoiseLevelFn:
    """`fn(key, n) -> σ [n]` for a distribution name and its keyword parameters."""
    if name not in NOISE_LEVELS:
        raise ValueError(f"noise level distribution {name!r} is unknown; expected one of {tuple(NOISE_LEVELS)}.")
    fn = NOISE_LEVELS[name]
    if name == "ddpm":
        t_min, t_max = kwargs.get("t_min", 20), kwargs.get("t_max", 980)
        n_train = (kwargs.get("schedule") or stable_diffusion_schedule()).num_train_timesteps
        if not 0 <= t_min < t_max <= n_train:
            raise ValueError(f"ddpm needs 0 <= t_min < t_max <= {n_train}; got t_min={t_min}, t_max={t_max}.")
    if name == "sid_karras" and not 0 < kwargs.get("t_max", 800.0) <= 1000:
        raise ValueError(f"sid_karras t_max must be in (0, 1000]; got {kwargs['t_max']}.")
    try:
        inspect.signature(fn).bind(None, None, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad parameters {sorted(kwargs)} for noise level {name!r}: {e}") from None
    return functools.partial(fn, **kwargs)


def distribution_quantiles(fn: NoiseLevelFn, qs=(0.01, 0.5, 0.99), n: int = 100_000, seed: int = 0) -> np.ndarray:
    """Empirical σ quantiles of a distribution (for `info` printouts and tests)."""
    return np.quantile(np.asarray(fn(jax.random.key(seed), n)), qs)
