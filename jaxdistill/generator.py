"""One-step and few-step generators as rollouts of a σ-space denoiser (design §4).

The generator is a network used as a denoiser, `G(x, σ) -> x̂_0` (conditioning bound), run on a
fixed decreasing σ ladder σ_1 > … > σ_K:

    x̂_0^{(0)} = 0
    step i:  x_i = x̂_0^{(i−1)} + σ_i · n_i,   x̂_0^{(i)} = G(x_i, σ_i)

with n_1 = z and fresh Gaussian noise n_i for i > 1 (few-step SiD's default `fresh` noise;
`fixed` reuses z at every step). One step (K = 1) is `G(σ_init·z, σ_init)`: SiD's σ_init = 2.5
(SD's t_init = 625), DMD2-EDM's 80.

Training (few-step SiD, arXiv 2505.12674; `apple/ml-sid-dit` training/sid_dit_util.py
`sid_dit_generate`): draw k ~ U{1..K} once per iteration, run steps 1..k−1 under stop_gradient
and differentiate only step k, so training matches the uniform mixture over k of the step-k
outputs. DMD2's backward simulation (`tianweiy/DMD2` main/sd_unified_model.py `sample_backward`)
is the same rollout on its own ladder (t ∈ {999, 749, 499, 249}). Inference runs all K steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.diffusion.adapters import Denoiser

NOISE_TYPES = ("fresh", "fixed")


def check_ladder(ladder) -> jax.Array:
    """Validate a generator σ ladder (K ≥ 1 positive, strictly decreasing σ's)."""
    arr = np.asarray(ladder, np.float64).reshape(-1)
    if arr.size < 1:
        raise ValueError("the generator σ ladder needs K >= 1 steps; got an empty ladder.")
    if np.any(arr <= 0) or np.any(np.diff(arr) >= 0):
        raise ValueError(f"the generator σ ladder must be positive and strictly decreasing; got {arr.tolist()}.")
    return jnp.asarray(arr, jnp.float32)


def _noise(key: jax.Array, i, z: jax.Array, noise_type: str) -> jax.Array:
    if noise_type == "fixed":
        return z
    fresh = jax.random.normal(jax.random.fold_in(key, i), z.shape, z.dtype)
    return jnp.where(i == 0, z, fresh)


def _step(denoiser: Denoiser, x0_prev, i, ladder, key, z, noise_type):
    sigma = ladder[i]
    x = x0_prev + sigma * _noise(key, i, z, noise_type)
    return denoiser(x, jnp.full((z.shape[0],), sigma, z.dtype))


def generate_train(
    denoiser: Denoiser,
    z: jax.Array,
    ladder,
    k: jax.Array,
    key: jax.Array,
    *,
    noise_type: str = "fresh",
) -> jax.Array:
    """The step-k output x̂_0^{(k)} (k a traced int in [1, K]); only step k carries gradient."""
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type={noise_type!r} is unknown; expected one of {NOISE_TYPES}.")
    ladder = check_ladder(ladder)
    if ladder.shape[0] == 1:
        return _step(denoiser, jnp.zeros_like(z), 0, ladder, key, z, noise_type)

    def body(i, x0):
        return jax.lax.stop_gradient(_step(denoiser, x0, i, ladder, key, z, noise_type))

    x0_prev = jax.lax.fori_loop(0, k - 1, body, jnp.zeros_like(z))
    return _step(denoiser, jax.lax.stop_gradient(x0_prev), k - 1, ladder, key, z, noise_type)


def generate(
    denoiser: Denoiser,
    z: jax.Array,
    ladder,
    key: jax.Array | None = None,
    *,
    num_steps: int | None = None,
    noise_type: str = "fresh",
) -> jax.Array:
    """Inference: run the first `num_steps` (default all K) steps of the ladder."""
    ladder = check_ladder(ladder)
    n = ladder.shape[0] if num_steps is None else num_steps
    if not 1 <= n <= ladder.shape[0]:
        raise ValueError(f"num_steps must be in [1, K={ladder.shape[0]}]; got {num_steps}.")
    if n > 1 and noise_type == "fresh" and key is None:
        raise ValueError("multi-step generation with fresh noise needs `key`.")
    key = jax.random.key(0) if key is None else key
    x0 = jnp.zeros_like(z)
    for i in range(n):
        x0 = _step(denoiser, x0, i, ladder, key, z, noise_type)
    return x0
