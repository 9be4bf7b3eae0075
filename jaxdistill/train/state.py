"""The train state: a plain pytree of arrays (design §5). The frozen teacher is never in it."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Generator, critic (network and optional discriminator head), EMA of the generator, both
    optimizer states, the step counter and the raw uint32 RNG key (`jax.random.key_data`)."""

    gen: Any
    critic: Any
    ema: Any
    gen_opt: Any
    critic_opt: Any
    step: jax.Array
    key: jax.Array


def make_optimizer(
    lr: float | optax.Schedule,
    *,
    b1: float = 0.0,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_clip: float = 0.0,
) -> optax.GradientTransformation:
    """Adam(W) with optional global-norm clipping; β1 = 0 is the SiD family's default."""
    adam = (optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
            if weight_decay > 0 else optax.adam(lr, b1=b1, b2=b2, eps=eps))
    return optax.chain(optax.clip_by_global_norm(grad_clip), adam) if grad_clip > 0 else adam


def init_state(gen_params, critic_params, gen_tx, critic_tx, seed: int) -> TrainState:
    """A fresh state; the EMA starts as a copy of the generator."""
    return TrainState(
        gen=gen_params,
        critic=critic_params,
        ema=jax.tree.map(jnp.copy, gen_params),
        gen_opt=gen_tx.init(gen_params),
        critic_opt=critic_tx.init(critic_params),
        step=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(jax.random.key(seed)),
    )
