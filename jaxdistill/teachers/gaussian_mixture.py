"""An analytic teacher: a Gaussian mixture whose denoiser is exact at every noise level.

p(x_0) = Σ_k w_k · N(x_0; μ_k, diag(v_k)), for x_0 of any event shape (vectors or images).
Noising by σ keeps it a mixture, p_σ(x) = Σ_k w_k · N(x; μ_k, diag(v_k + σ²)), and the posterior
mean (the ideal denoiser, Tweedie's formula x + σ²·∇log p_σ(x)) is, in closed form,

    D(x, σ) = Σ_k r_k(x, σ) · [μ_k + v_k/(v_k + σ²) · (x − μ_k)],
    r_k ∝ w_k · N(x; μ_k, diag(v_k + σ²)).

Optional class conditioning: each component carries an integer label; conditioning on label c
restricts the sum to the components of class c, with their weights renormalised; the label
`NULL_LABEL` (−1) is the unconditional mixture, per sample, like an empty prompt. Guidance can
then be tested against the exact conditional and unconditional denoisers.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdistill.diffusion.adapters import expand_sigma
from jaxdistill.diffusion.schedules import check_positive


NULL_LABEL = -1


@struct.dataclass
class GaussianMixture:
    """A Gaussian mixture with diagonal covariances; a pytree (safe to pass through `jit`).

    Build with `gaussian_mixture(...)`, which validates. Fields: `means` [K, *event_shape],
    `log_weights` [K] (normalised), `variances` [K, *event_shape] (> 0), `labels` [K] int32.
    """

    means: jax.Array
    log_weights: jax.Array
    variances: jax.Array
    labels: jax.Array
    num_classes: int = struct.field(pytree_node=False, default=1)

    @property
    def event_shape(self) -> tuple:
        return tuple(self.means.shape[1:])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def weights(self) -> jax.Array:
        return jnp.exp(self.log_weights)

    def _check_x(self, x: jax.Array, name: str = "x") -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"{name} must have shape [B, *{self.event_shape}] for this mixture; got {tuple(x.shape)}."
            )

    def _class_log_weights(self, label: Optional[jax.Array], batch: int) -> jax.Array:
        """[B, K] log weights, renormalised within the class when `label` ([B] ints) is given.
        A negative label (`NULL_LABEL`) means "unconditional" for that sample (CFG's null prompt)."""
        lw = jnp.broadcast_to(self.log_weights, (batch, self.num_components))
        if label is None:
            return lw
        label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), (batch,))
        match = (label[:, None] == self.labels[None, :]) | (label[:, None] < 0)
        lw = jnp.where(match, lw, -jnp.inf)
        return lw - jax.nn.logsumexp(lw, axis=1, keepdims=True)

    def _component_terms(self, x: jax.Array, sigma):
        """Per-component log N(x; μ_k, v_k + σ²) [B, K] and the noised variances [B, K, D]."""
        b = x.shape[0]
        s2 = jnp.broadcast_to(jnp.asarray(sigma, x.dtype) ** 2, (b,))[:, None, None]
        xf = x.reshape(b, 1, -1)
        mu = self.means.reshape(1, self.num_components, -1)
        var = self.variances.reshape(1, self.num_components, -1) + s2
        logpdf = -0.5 * jnp.sum((xf - mu) ** 2 / var + jnp.log(2 * math.pi * var), axis=-1)
        return logpdf, var

    def log_prob(self, x: jax.Array, sigma=0.0, label: Optional[jax.Array] = None) -> jax.Array:
        """log p_σ(x) of the mixture noised by σ (scalar or [B]); conditional on `label` if given."""
        self._check_x(x)
        check_positive(sigma, "sigma", allow_zero=True)
        logpdf, _ = self._component_terms(x, sigma)
        return jax.nn.logsumexp(self._class_log_weights(label, x.shape[0]) + logpdf, axis=1)

    def responsibilities(self, x: jax.Array, sigma, label: Optional[jax.Array] = None) -> jax.Array:
        """Posterior component probabilities r_k(x, σ), shape [B, K]."""
        self._check_x(x)
        logpdf, _ = self._component_terms(x, sigma)
        return jax.nn.softmax(self._class_log_weights(label, x.shape[0]) + logpdf, axis=1)

    def denoise(self, x: jax.Array, sigma: jax.Array, label: Optional[jax.Array] = None) -> jax.Array:
        """The exact denoiser E[x_0 | x_0 + σ·ε = x] for σ of shape [B] (σ ≥ 0)."""
        self._check_x(x)
        expand_sigma(sigma, x)
        check_positive(sigma, "sigma", allow_zero=True)
        b = x.shape[0]
        logpdf, var = self._component_terms(x, sigma)
        r = jax.nn.softmax(self._class_log_weights(label, b) + logpdf, axis=1)  # [B, K]
        xf = x.reshape(b, 1, -1)
        mu = self.means.reshape(1, self.num_components, -1)
        post = mu + self.variances.reshape(1, self.num_components, -1) / var * (xf - mu)
        return jnp.einsum("bk,bkd->bd", r, post).reshape(x.shape)

    def score(self, x: jax.Array, sigma: jax.Array, label: Optional[jax.Array] = None) -> jax.Array:
        """∇_x log p_σ(x) = (D(x, σ) − x)/σ², for σ > 0."""
        check_positive(sigma, "sigma")
        return (self.denoise(x, sigma, label) - x) / expand_sigma(sigma, x) ** 2

    def denoiser(self, label: Optional[jax.Array] = None):
        """The closure `(x, σ) -> x̂_0` the loss kernels and samplers take."""
        return lambda x, sigma: self.denoise(x, sigma, label)

    def class_probs(self) -> jax.Array:
        """P(label = c) for c in 0..num_classes−1."""
        return jnp.zeros((self.num_classes,), self.log_weights.dtype).at[self.labels].add(self.weights)

    def sample(self, key: jax.Array, n: int, label: Optional[jax.Array] = None) -> jax.Array:
        """n exact samples [n, *event_shape]; from the class-conditional mixture if `label` ([n] or scalar)."""
        k_comp, k_noise = jax.random.split(key)
        lw = self._class_log_weights(label, n)
        comp = jax.random.categorical(k_comp, lw, axis=1)
        z = jax.random.normal(k_noise, (n,) + self.event_shape, self.means.dtype)
        return self.means[comp] + jnp.sqrt(self.variances[comp]) * z

    def sample_labels(self, key: jax.Array, n: int) -> jax.Array:
        """n labels drawn from the class marginal."""
        return jax.random.categorical(key, jnp.log(self.class_probs()), shape=(n,)).astype(jnp.int32)

    def mean(self, label: Optional[int] = None) -> jax.Array:
        """Exact mean, flattened to [D]."""
        w = jnp.exp(self._class_log_weights(None if label is None else jnp.int32(label), 1)[0])
        return w @ self.means.reshape(self.num_components, -1)

    def covariance(self, label: Optional[int] = None) -> jax.Array:
        """Exact covariance, flattened to [D, D]: Σ_k w_k (diag v_k + μ_k μ_kᵀ) − m mᵀ."""
        w = jnp.exp(self._class_log_weights(None if label is None else jnp.int32(label), 1)[0])
        mu = self.means.reshape(self.num_components, -1)
        var = self.variances.reshape(self.num_components, -1)
        m = w @ mu
        second = jnp.einsum("k,kd,ke->de", w, mu, mu) + jnp.diag(w @ var)
        return second - jnp.outer(m, m)


def gaussian_mixture(
    means,
    weights=None,
    variances=1.0,
    labels=None,
    dtype=jnp.float32,
) -> GaussianMixture:
    """Build a validated `GaussianMixture`.

    Args:
      means: [K, *event_shape] component means (event shape of any rank, e.g. [2] or [8, 8, 3]).
      weights: [K] positive mixture weights (normalised here); equal if None.
      variances: per-component variance: a scalar, [K] (isotropic per component) or
        [K, *event_shape] (diagonal); all > 0.
      labels: [K] integer class of each component (0..C−1), for class conditioning; None = one class.
    """
    means = np.asarray(means, np.float64)
    if means.ndim < 2:
        raise ValueError(f"means must have shape [K, *event_shape] with K >= 1; got shape {means.shape}.")
    k = means.shape[0]
    w = np.ones(k) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (k,) or not np.all(w > 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be {k} positive finite numbers (one per component); got {w!r}.")
    v = np.asarray(variances, np.float64)
    if v.ndim == 0:
        v = np.full(means.shape, float(v))
    elif v.shape == (k,):
        v = np.broadcast_to(v.reshape((k,) + (1,) * (means.ndim - 1)), means.shape).copy()
    elif v.shape != means.shape:
        raise ValueError(
            f"variances must be a scalar, shape [K]=({k},) or [K, *event_shape]={means.shape}; got {v.shape}."
        )
    if not np.all(v > 0) or not np.all(np.isfinite(v)):
        raise ValueError(f"variances must all be > 0 and finite; got min {v.min()!r}.")
    lab = np.zeros(k, np.int64) if labels is None else np.asarray(labels)
    if lab.shape != (k,) or not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0:
        raise ValueError(f"labels must be {k} non-negative integers (one per component); got {lab!r}.")
    num_classes = int(lab.max()) + 1
    missing = sorted(set(range(num_classes)) - set(lab.tolist()))
    if missing:
        raise ValueError(f"labels must use every class 0..{num_classes - 1}; classes {missing} have no component.")
    return GaussianMixture(
        means=jnp.asarray(means, dtype),
        log_weights=jnp.asarray(np.log(w / w.sum()), dtype),
        variances=jnp.asarray(v, dtype),
        labels=jnp.asarray(lab, jnp.int32),
        num_classes=num_classes,
    )


def ring_mixture(
    num_modes: int = 8,
    radius: float = 2.0,
    std: float = 0.15,
    unequal_weights: bool = True,
    num_classes: int = 1,
) -> GaussianMixture:
    """A 2-D ring of `num_modes` Gaussians, weights 1..num_modes (normalised) when `unequal_weights`;
    with `num_classes > 1`, component k has label k mod num_classes."""
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    weights = np.arange(1, num_modes + 1, dtype=np.float64) if unequal_weights else None
    labels = np.arange(num_modes) % num_classes if num_classes > 1 else None
    return gaussian_mixture(means, weights, std**2, labels)


def image_mixture(
    seed: int = 0,
    shape: tuple = (8, 8, 3),
    num_components: int = 4,
    num_classes: int = 1,
    scale: float = 1.0,
) -> GaussianMixture:
    """Image-shaped mixture with random means in [−scale, scale], random diagonal variances in
    [0.01, 0.1]·scale² and random unequal weights, from a numpy seed (host-side, deterministic)."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-scale, scale, (num_components,) + tuple(shape))
    variances = rng.uniform(0.01, 0.1, (num_components,) + tuple(shape)) * scale**2
    weights = rng.uniform(0.5, 2.0, num_components)
    labels = np.arange(num_components) % num_classes if num_classes > 1 else None
    return gaussian_mixture(means, weights, variances, labels)


def mixture_problem(gm: GaussianMixture):
    """The distillation `Problem` of an analytic mixture: the teacher params are the mixture
    itself; conditions are labels drawn from the class marginal (null label = −1); real data
    are exact mixture samples of those labels."""
    from jaxdistill.train.step import Problem

    def sample_conditions(teacher, key, n):
        cond = teacher.sample_labels(key, n) if gm.num_classes > 1 else jnp.zeros((n,), jnp.int32)
        return cond, jnp.full((n,), NULL_LABEL, jnp.int32)

    return Problem(
        event_shape=gm.event_shape,
        teacher_apply=lambda teacher, x, sigma, cond: teacher.denoise(x, sigma, cond),
        sample_conditions=sample_conditions,
        sample_real=lambda key, cond: gm.sample(key, cond.shape[0], label=cond),
    )
