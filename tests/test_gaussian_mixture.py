"""The analytic teacher: exact denoiser = Tweedie's formula, densities, moments, conditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.teachers import gaussian_mixture, image_mixture, ring_mixture

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("gm", [ring_mixture(), image_mixture(seed=1, shape=(3, 3, 2), num_components=5)])
def test_denoiser_equals_tweedie_with_autodiff_score(gm):
    """D(x, σ) = x + σ²·∇_x log p_σ(x), the gradient by jax.grad of the noised log-density."""
    sig = jnp.geomspace(0.002, 80.0, 20)
    x0 = gm.sample(jax.random.key(0), 20)
    x = x0 + sig.reshape((-1,) + (1,) * len(gm.event_shape)) * jax.random.normal(jax.random.key(1), x0.shape)

    @jax.jit  # one compiled program per dtype (op by op, the 8-device test client compiles each primitive)
    def denoiser_minus_tweedie(x, sig):
        score = jax.grad(lambda x: jnp.sum(gm.log_prob(x, sig)))(x)
        return gm.denoise(x, sig) - (x + sig.reshape(x.shape[:1] + (1,) * len(gm.event_shape)) ** 2 * score)

    with jax.enable_x64(True):
        err = np.max(np.abs(np.asarray(denoiser_minus_tweedie(x.astype(jnp.float64), sig.astype(jnp.float64)))))
    assert err < 1e-9
    # And in float32, relative to the scale of x.
    assert np.max(np.abs(np.asarray(denoiser_minus_tweedie(x, sig))) / np.maximum(1, np.asarray(sig)).max()) < 1e-4


def test_log_prob_matches_scipy():
    gm = gaussian_mixture([[0.0, 0.0], [2.0, -1.0]], weights=[1, 3], variances=[[0.5, 0.2], [1.0, 2.0]])
    x = np.array([[0.3, -0.2], [1.5, 1.0], [-2.0, 0.7]], np.float32)
    for sigma in (0.0, 0.7):
        ref = np.log(
            0.25 * scipy_stats.multivariate_normal([0, 0], np.diag([0.5, 0.2]) + sigma**2 * np.eye(2)).pdf(x)
            + 0.75 * scipy_stats.multivariate_normal([2, -1], np.diag([1.0, 2.0]) + sigma**2 * np.eye(2)).pdf(x)
        )
        np.testing.assert_allclose(np.asarray(gm.log_prob(x, sigma)), ref, rtol=1e-5)


def test_exact_moments_match_samples():
    gm = image_mixture(seed=2, shape=(2, 2, 1), num_components=3)
    x = np.asarray(gm.sample(jax.random.key(0), 200_000)).reshape(200_000, -1)
    np.testing.assert_allclose(x.mean(0), np.asarray(gm.mean()), atol=0.01)
    np.testing.assert_allclose(np.cov(x.T), np.asarray(gm.covariance()), atol=0.01)


def test_class_conditioning_restricts_components():
    gm = ring_mixture(num_modes=6, num_classes=2)  # labels 0,1,0,1,0,1
    assert gm.num_classes == 2
    np.testing.assert_allclose(np.asarray(gm.class_probs()), [9 / 21, 12 / 21], rtol=1e-6)
    x = gm.sample(jax.random.key(0), 5000, label=jnp.ones(5000, jnp.int32))
    comp = np.asarray(jnp.argmax(gm.responsibilities(x, 0.0), axis=1))
    assert set(np.unique(comp)) == {1, 3, 5}
    np.testing.assert_allclose(np.bincount(comp, minlength=6)[[1, 3, 5]] / 5000, np.array([2, 4, 6]) / 12, atol=0.02)
    # Conditional denoiser at large σ tends to the class mean; unconditional to the global mean.
    big = jnp.full((1,), 1e4)
    np.testing.assert_allclose(np.asarray(gm.denoise(jnp.zeros((1, 2)), big, label=jnp.array([1]))[0]),
                               np.asarray(gm.mean(label=1)), atol=1e-3)
    np.testing.assert_allclose(np.asarray(gm.denoise(jnp.zeros((1, 2)), big)[0]), np.asarray(gm.mean()), atol=1e-3)


def test_mixture_is_a_pytree_usable_under_jit():
    gm = ring_mixture()
    f = jax.jit(lambda m, x, s: m.denoise(x, s))
    x = jnp.ones((3, 2))
    np.testing.assert_allclose(np.asarray(f(gm, x, jnp.ones(3))), np.asarray(gm.denoise(x, jnp.ones(3))), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(means=[0.0, 1.0]), "means must have shape"),
        (dict(means=[[0.0], [1.0]], weights=[1.0]), "weights must be 2 positive"),
        (dict(means=[[0.0], [1.0]], weights=[1.0, -1.0]), "weights must be 2 positive"),
        (dict(means=[[0.0], [1.0]], variances=[[1.0, 1.0]]), "variances must be a scalar"),
        (dict(means=[[0.0], [1.0]], variances=0.0), "variances must all be > 0"),
        (dict(means=[[0.0], [1.0]], labels=[0, 2]), "classes \\[1\\] have no component"),
        (dict(means=[[0.0], [1.0]], labels=[0.5, 1]), "labels must be 2 non-negative integers"),
    ],
)
def test_bad_construction_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_mixture(**kwargs)


def test_negative_sigma_raises():
    gm = ring_mixture()
    with pytest.raises(ValueError, match="sigma must be a noise level"):
        gm.denoise(jnp.zeros((2, 2)), jnp.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="sigma must be a noise level σ > 0"):
        gm.score(jnp.zeros((2, 2)), jnp.array([1.0, 0.0]))
