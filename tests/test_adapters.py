"""Every adapter turns the exact ε / v / x0 / EDM-F / flow-velocity network of an analytic mixture
into the exact σ-space mixture denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.diffusion import VPSchedule, make_betas, make_denoiser, stable_diffusion_schedule
from jaxdistill.teachers import image_mixture

SIGMAS = np.geomspace(0.002, 80.0, 20).astype(np.float32)
# A linear VP table wide enough to hold σ ∈ [0.002, 80] (σ_0 = 0.002, σ_999 ≈ 148), so a
# discrete-time network can be queried at every σ of the test without clipping.
WIDE_VP = VPSchedule(make_betas("linear", 1000, 4e-6, 0.02))
SIGMA_DATA = 0.5


def _vp_exact_network(gm, schedule, prediction):
    """net(x_vp, t) predicting the exact ε, v or x0 of the mixture, in the network's own VP frame."""

    def net(x_vp, t):
        sigma = schedule.timestep_to_sigma(t)
        s = sigma.reshape((-1,) + (1,) * (x_vp.ndim - 1))
        x = x_vp * jnp.sqrt(1 + s**2)
        x0 = gm.denoise(x, sigma)
        eps = (x - x0) / s
        if prediction == "epsilon":
            return eps
        if prediction == "v_prediction":  # v = √ᾱ·ε − √(1−ᾱ)·x0
            return (eps - s * x0) / jnp.sqrt(1 + s**2)
        return x0

    return net


def _edm_exact_network(gm):
    def net(x_in, c_noise):
        sigma = jnp.exp(4 * c_noise)
        s = sigma.reshape((-1,) + (1,) * (x_in.ndim - 1))
        x = x_in * jnp.sqrt(s**2 + SIGMA_DATA**2)
        c_skip = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)
        c_out = s * SIGMA_DATA / jnp.sqrt(s**2 + SIGMA_DATA**2)
        return (gm.denoise(x, sigma) - c_skip * x) / c_out

    return net


def _flow_exact_network(gm, timestep_scale):
    def net(x_flow, t_scaled):
        t = t_scaled / timestep_scale
        sigma = t / (1 - t)
        tt = t.reshape((-1,) + (1,) * (x_flow.ndim - 1))
        x0 = gm.denoise(x_flow / (1 - tt), sigma)
        return (x_flow - x0) / tt  # v = ε − x0

    return net


@pytest.fixture(scope="module")
def mixture():
    return image_mixture(seed=3, shape=(4, 4, 2), num_components=3)


def _errors(gm, denoiser, sigmas, dtype=jnp.float32):
    """Max |D_adapted − D_exact| at each σ, on 16 noised mixture samples per σ (one batch)."""
    n = 16
    x0 = gm.sample(jax.random.key(0), n * len(sigmas)).astype(dtype)
    sig = jnp.repeat(jnp.asarray(sigmas, dtype), n)
    x = x0 + sig.reshape(-1, 1, 1, 1) * jax.random.normal(jax.random.key(1), x0.shape, dtype)
    err = jnp.abs(jax.jit(denoiser)(x, sig) - jax.jit(gm.denoise)(x, sig)).reshape(len(sigmas), -1)
    return np.asarray(jnp.max(err, axis=1))


def _max_error(gm, denoiser, sigmas):
    """Float32 error in units of max(1, σ): 1e-5 absolute up to σ = 1; above that x = x0 + σε is
    itself only held to ~1 ulp ≈ 6e-8·|x| ≈ 1.5e-7·σ, so any adapter that rescales x (and the
    network that inverts the scaling) carries an absolute error proportional to σ."""
    return float(np.max(_errors(gm, denoiser, sigmas) / np.maximum(1.0, np.asarray(sigmas))))


def _max_error_float64(gm, denoiser, sigmas):
    with jax.enable_x64(True):
        return float(np.max(_errors(gm, denoiser, sigmas, jnp.float64)))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_vp_adapters_are_exact_over_edm_range(mixture, prediction):
    den = make_denoiser(_vp_exact_network(mixture, WIDE_VP, prediction), prediction, WIDE_VP)
    assert _max_error(mixture, den, SIGMAS) < 1e-5
    assert _max_error_float64(mixture, den, SIGMAS) < 1e-10


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_vp_adapters_are_exact_on_stable_diffusion_table(mixture, prediction):
    sd = stable_diffusion_schedule()
    sigmas = np.geomspace(sd.sigma_min * 1.001, sd.sigma_max * 0.999, 20).astype(np.float32)
    den = make_denoiser(_vp_exact_network(mixture, sd, prediction), prediction, sd)
    assert _max_error(mixture, den, sigmas) < 1e-5


def test_edm_adapter_is_exact(mixture):
    den = make_denoiser(_edm_exact_network(mixture), "edm", sigma_data=SIGMA_DATA)
    assert _max_error(mixture, den, SIGMAS) < 1e-5
    assert _max_error_float64(mixture, den, SIGMAS) < 1e-10


@pytest.mark.parametrize("timestep_scale", [1.0, 1000.0])
def test_flow_adapter_is_exact(mixture, timestep_scale):
    den = make_denoiser(_flow_exact_network(mixture, timestep_scale), "flow", timestep_scale=timestep_scale)
    assert _max_error(mixture, den, SIGMAS) < 1e-5
    assert _max_error_float64(mixture, den, SIGMAS) < 1e-10


def test_discrete_model_outside_its_table_is_queried_at_the_nearest_time():
    sd = stable_diffusion_schedule()
    t = sd.sigma_to_timestep(jnp.array([0.002, 80.0, sd.sigma_min, sd.sigma_max]))
    np.testing.assert_allclose(np.asarray(t), [0.0, 999.0, 0.0, 999.0], atol=1e-3)


def test_adapter_works_under_vmap_and_grad(mixture):
    den = make_denoiser(_vp_exact_network(mixture, WIDE_VP, "epsilon"), "epsilon", WIDE_VP)
    x = mixture.sample(jax.random.key(0), 6).reshape(2, 3, 4, 4, 2)
    sig = jnp.full((2, 3), 0.7)
    out = jax.vmap(den)(x, sig)
    assert out.shape == x.shape
    g = jax.grad(lambda x: jnp.sum(den(x, sig[0])))(x[0])
    g_ref = jax.grad(lambda x: jnp.sum(mixture.denoise(x, sig[0])))(x[0])
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-4)


def test_bad_input_raises_value_error(mixture):
    net = _vp_exact_network(mixture, WIDE_VP, "epsilon")
    with pytest.raises(ValueError, match="prediction='noise'.*expected one of"):
        make_denoiser(net, "noise", WIDE_VP)
    with pytest.raises(ValueError, match="schedule"):
        make_denoiser(net, "epsilon")
    den = make_denoiser(net, "epsilon", WIDE_VP)
    x = jnp.zeros((4, 4, 4, 2))
    with pytest.raises(ValueError, match=r"sigma must have shape \[B\] = \[4\]"):
        den(x, jnp.ones((3,)))
    with pytest.raises(ValueError, match="sigma must be a noise level"):
        den(x, jnp.array([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="x must have shape"):
        mixture.denoise(jnp.zeros((4, 3)), jnp.ones((4,)))
