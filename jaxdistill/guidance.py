"""Classifier-free guidance as three independent knobs (design §3).

A conditional network is used through `apply(x, σ, cond) -> x̂_0`, with `cond` any pytree whose
leaves are batch-first (labels, text embeddings, pooled embeddings, size ids …) and `uncond` the
null condition of the same structure. CFG with scale κ combines x0-predictions:

    f^κ = f(∅) + κ·(f(c) − f(∅))

which equals CFG on ε or v at fixed (x_t, σ) because those maps are affine in the output.
κ = 1 is one conditional call, κ = 0 one unconditional call; any other κ is ONE network call on
the batch [x; x] with conditions [c; ∅] (a fused cond+uncond batch, as SD pipelines do).

| knob             | used in                                  |
|------------------|------------------------------------------|
| `cfg_teacher`    | teacher, in the generator loss (κ4)      |
| `cfg_fake_eval`  | critic, in the generator loss (κ2 = κ3)  |
| `cfg_fake_train` | critic, in its own score-matching loss, combined before the error (κ1) |

Presets (`guidance_preset`): SiD-LSG (κ, κ, κ; mingyuanzhou/SiD-LSG, arXiv 2406.01561), DMD2
(κ, 1, 1; tianweiy/DMD2 asserts fake κ = 1), Zero-CFG (1, 0, 0) and Anti-CFG (1, κ<0, κ<0) from
few-step SiD (arXiv 2505.12674). Prompt dropout in the critic's step (SiD-LSG: p = 0.1 whenever
the critic uses CFG) keeps its unconditional branch trained.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdistill.diffusion.adapters import Denoiser

ConditionalApply = Callable[[jax.Array, jax.Array, Any], jax.Array]

PRESETS = ("none", "sid_lsg", "dmd2", "zero_cfg", "anti_cfg")


@dataclasses.dataclass(frozen=True)
class Guidance:
    """The three CFG scales and the critic's prompt-dropout probability."""

    cfg_teacher: float = 1.0
    cfg_fake_eval: float = 1.0
    cfg_fake_train: float = 1.0
    prompt_dropout: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1); got {self.prompt_dropout}.")

    @property
    def fake_uses_cfg(self) -> bool:
        return self.cfg_fake_eval != 1.0 or self.cfg_fake_train != 1.0


def guidance_preset(name: str, kappa: float = 1.0, prompt_dropout: float | None = None) -> Guidance:
    """The knob values of a named preset at scale `kappa`."""
    if name == "none":
        knobs = (1.0, 1.0, 1.0)
    elif name == "sid_lsg":
        knobs = (kappa, kappa, kappa)
    elif name == "dmd2":
        knobs = (kappa, 1.0, 1.0)
    elif name == "zero_cfg":
        knobs = (1.0, 0.0, 0.0)
    elif name == "anti_cfg":
        if kappa >= 0:
            raise ValueError(f"anti_cfg applies a negative scale to the critic; got kappa={kappa}, use e.g. -1.0.")
        knobs = (1.0, kappa, kappa)
    else:
        raise ValueError(f"guidance preset {name!r} is unknown; expected one of {PRESETS}.")
    if prompt_dropout is None:
        prompt_dropout = 0.1 if (knobs[1] != 1.0 or knobs[2] != 1.0) else 0.0
    return Guidance(*knobs, prompt_dropout=prompt_dropout)


def _concat(a, b):
    return jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


def guided(apply: ConditionalApply, cond: Any, uncond: Any, scale: float) -> Denoiser:
    """The σ-space denoiser `(x, σ) -> x̂_0` of `apply` under CFG scale `scale` (a Python float)."""
    scale = float(scale)
    if scale == 1.0:
        return lambda x, sigma: apply(x, sigma, cond)
    if scale == 0.0:
        return lambda x, sigma: apply(x, sigma, uncond)

    def denoise(x, sigma):
        both = apply(jnp.concatenate([x, x], 0), jnp.concatenate([sigma, sigma], 0), _concat(cond, uncond))
        f_cond, f_uncond = jnp.split(both, 2, axis=0)
        return f_uncond + scale * (f_cond - f_uncond)

    return denoise


def drop_conditions(key: jax.Array, cond: Any, uncond: Any, p: float) -> Any:
    """Replace each sample's condition by the null one with probability `p` (prompt dropout)."""
    if p <= 0.0:
        return cond
    leaves = jax.tree.leaves(cond)
    drop = jax.random.bernoulli(key, p, (leaves[0].shape[0],))

    def pick(c, u):
        return jnp.where(drop.reshape((-1,) + (1,) * (c.ndim - 1)), u, c)

    return jax.tree.map(pick, cond, uncond)
