"""A small EDM-preconditioned MLP denoiser (generator, critic or toy teacher) in Flax NNX.

    D(x, σ, c) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ), c)

with EDM's preconditioning (Karras et al. 2022, Table 1), so an untrained network already is the
denoiser of N(0, σ_d²) and one-step generation from σ_init is well conditioned. Inputs of any
event shape are flattened. Class conditioning uses an embedding table with one extra row for the
null label (any negative label), so classifier-free guidance needs no separate network.
`forward` also returns the last hidden layer: the critic's "bottleneck" features for a
discriminator head (DMD2 §4.4, SiDA §1.6).

`residual=True` drops the skip term and returns only c_out·F (zero at initialisation): the
network is then a correction added to a base denoiser (see `Networks.on_teacher`), the toy
stand-in for initialising a generator or critic from the teacher's weights as SiD and DMD2 do.

Parameters carry logical axis names for sharding: ("embed", "mlp") on hidden kernels.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def _dense(n_in: int, n_out: int, axes, rngs: nnx.Rngs, zero: bool = False) -> nnx.Linear:
    kernel = nnx.initializers.zeros_init() if zero else nnx.initializers.lecun_normal()
    return nnx.Linear(
        n_in,
        n_out,
        kernel_init=nnx.with_partitioning(kernel, axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


class MLPDenoiser(nnx.Module):
    """EDM-preconditioned MLP; `__call__(x, σ[B], labels[B] | None) -> x̂_0`."""

    def __init__(
        self,
        event_shape: tuple,
        *,
        hidden: int = 128,
        depth: int = 3,
        num_classes: int = 0,
        sigma_data: float = 0.5,
        num_frequencies: int = 16,
        residual: bool = False,
        rngs: nnx.Rngs,
    ):
        if depth < 1 or hidden < 1:
            raise ValueError(f"depth and hidden must be >= 1; got depth={depth}, hidden={hidden}.")
        self.event_shape = tuple(event_shape)
        self.dim = int(math.prod(self.event_shape))
        self.sigma_data = sigma_data
        self.num_classes = num_classes
        self.residual = residual
        self.num_frequencies = num_frequencies
        self.inp = _dense(self.dim, hidden, (None, "mlp"), rngs)
        self.noise_emb = _dense(2 * num_frequencies, hidden, (None, "mlp"), rngs)
        self.label_emb = (
            nnx.Embed(num_classes + 1, hidden, embedding_init=nnx.with_partitioning(
                nnx.initializers.normal(0.02), (None, "mlp")), rngs=rngs)
            if num_classes > 0 else None
        )
        self.layers = nnx.List([_dense(hidden, hidden, ("embed", "mlp"), rngs) for _ in range(depth - 1)])
        self.out = _dense(hidden, self.dim, ("embed", None), rngs, zero=True)

    def forward(self, x: jax.Array, sigma: jax.Array, labels=None) -> tuple[jax.Array, jax.Array]:
        """(x̂_0 [B, *event], features [B, hidden])."""
        b = x.shape[0]
        s = sigma.reshape(b, 1).astype(jnp.float32)
        sd = self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / jnp.sqrt(s**2 + sd**2)
        c_in = 1 / jnp.sqrt(s**2 + sd**2)
        c_noise = jnp.log(s) / 4
        xf = x.reshape(b, self.dim).astype(jnp.float32)
        angles = c_noise * (jnp.arange(1, self.num_frequencies + 1, dtype=jnp.float32) * math.pi)
        h = self.inp(c_in * xf) + self.noise_emb(jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1))
        if self.label_emb is not None:
            if labels is None:
                raise ValueError("this MLPDenoiser is class-conditional: pass labels (negative = unconditional).")
            idx = jnp.where(labels < 0, self.num_classes, labels).astype(jnp.int32)
            h = h + self.label_emb(idx)
        h = jax.nn.silu(h)
        for layer in self.layers:
            h = jax.nn.silu(layer(h))
        x0 = c_out * self.out(h) if self.residual else c_skip * xf + c_out * self.out(h)
        return x0.reshape(x.shape).astype(x.dtype), h

    def __call__(self, x: jax.Array, sigma: jax.Array, labels=None) -> jax.Array:
        return self.forward(x, sigma, labels)[0]


class DiscriminatorHead(nnx.Module):
    """Logit head on a critic's features: Linear → SiLU → Linear(1); `__call__(h) -> [B, 1]`."""

    def __init__(self, features: int, hidden: int = 128, *, rngs: nnx.Rngs):
        self.hidden = _dense(features, hidden, ("embed", "mlp"), rngs)
        self.out = _dense(hidden, 1, ("embed", None), rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.out(jax.nn.silu(self.hidden(h)))
