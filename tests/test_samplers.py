"""Teacher samplers: EDM Heun reproduces the analytic mixture; Euler and DDIM equal diffusers'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.diffusion import (
    ddim,
    edm_heun,
    euler,
    get_sampler,
    karras_sigmas,
    make_denoiser,
    stable_diffusion_schedule,
)
from jaxdistill.teachers import image_mixture, ring_mixture

N_SAMPLES = 50_000


def _moment_errors(x, gm):
    """|sample mean − exact| and |sample cov − exact| in units of their standard errors."""
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    n = x.shape[0]
    mean, cov = np.asarray(gm.mean(), np.float64), np.asarray(gm.covariance(), np.float64)
    se_mean = np.sqrt(np.diag(cov) / n)
    c = x - mean
    prod = c[:, :, None] * c[:, None, :]
    se_cov = prod.std(0) / np.sqrt(n)
    return np.abs(x.mean(0) - mean) / se_mean, np.abs(np.cov(x.T) - cov) / se_cov


@pytest.mark.parametrize("gm", [ring_mixture(), image_mixture(seed=4, shape=(2, 2, 2), num_components=4)])
def test_edm_heun_35_steps_matches_mixture_moments(gm):
    noise = jax.random.normal(jax.random.key(0), (N_SAMPLES,) + gm.event_shape)
    x = jax.jit(lambda n: edm_heun(gm.denoiser(), n, karras_sigmas(35)))(noise)
    z_mean, z_cov = _moment_errors(x, gm)
    # 5 standard errors: with ≤ 36 statistics, a false alarm has probability < 1e-4.
    assert z_mean.max() < 5 and z_cov.max() < 5, (z_mean.max(), z_cov.max())
    # Mode weights: assign each sample to its most responsible component.
    comp = np.asarray(jnp.argmax(gm.responsibilities(x, jnp.zeros(N_SAMPLES)), axis=1))
    freq = np.bincount(comp, minlength=gm.num_components) / N_SAMPLES
    np.testing.assert_allclose(freq, np.asarray(gm.weights), atol=0.01)


def test_edm_heun_costs_two_calls_per_step_but_one_on_the_last():
    calls = []

    def den(x, s):
        calls.append(1)
        return jnp.zeros_like(x)

    # lax.scan traces the body once; count calls with an unrolled Python-level ladder instead.
    with jax.disable_jit():
        edm_heun(den, jnp.ones((2, 3)), karras_sigmas(5))
    assert len(calls) == 2 * 5 - 1


def _diffusers_loop(scheduler, eps_fn, latents):
    import torch

    # np.array, not np.asarray: torch.from_numpy warns on the read-only views of jax arrays.
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(latents, t)
        eps = torch.from_numpy(np.array(eps_fn(inp.numpy(), np.full(inp.shape[0], float(t), np.float32))))
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents.numpy()


@pytest.fixture(scope="module")
def sd_mixture_and_eps():
    gm = image_mixture(seed=5, shape=(4, 4, 4), num_components=3)
    sd = stable_diffusion_schedule()

    def eps_net(x_vp, t):  # the mixture's exact ε-prediction in SD's VP frame
        x_vp, t = jnp.asarray(x_vp), jnp.asarray(t)
        sigma = sd.timestep_to_sigma(t)
        s = sigma.reshape(-1, 1, 1, 1)
        x = x_vp * jnp.sqrt(1 + s**2)
        return (x - gm.denoise(x, sigma)) / s

    return gm, sd, eps_net


SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
            timestep_spacing="leading", num_train_timesteps=1000)


def test_euler_equals_diffusers_euler_discrete(sd_mixture_and_eps):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    gm, sd, eps_net = sd_mixture_and_eps
    sched = diffusers.EulerDiscreteScheduler(**SD15)
    sched.set_timesteps(20)
    noise = np.array(jax.random.normal(jax.random.key(3), (8, 4, 4, 4)))
    ref = _diffusers_loop(sched, eps_net, torch.from_numpy(noise) * sched.init_noise_sigma)
    den = make_denoiser(eps_net, "epsilon", sd)
    ladder = sched.sigmas.numpy()
    # diffusers starts "leading" Euler from noise·√(σ_0²+1) (its init_noise_sigma), not σ_0·noise.
    start = float(sched.init_noise_sigma) / ladder[0]
    assert start == pytest.approx(np.sqrt(ladder[0] ** 2 + 1) / ladder[0])
    ours = euler(den, jnp.asarray(noise) * start, ladder)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)


def test_ddim_equals_diffusers_ddim(sd_mixture_and_eps):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    gm, sd, eps_net = sd_mixture_and_eps
    sched = diffusers.DDIMScheduler(**SD15, set_alpha_to_one=False, clip_sample=False)
    sched.set_timesteps(25)
    noise = np.array(jax.random.normal(jax.random.key(4), (8, 4, 4, 4)))
    ref = _diffusers_loop(sched, eps_net, torch.from_numpy(noise))  # DDIM starts from unit noise in VP scale
    ladder = sd.sampling_sigmas(25, "leading", steps_offset=1, set_alpha_to_one=False)
    np.testing.assert_array_equal(sd.timesteps(25, "leading", 1), sched.timesteps.numpy())
    den = make_denoiser(eps_net, "epsilon", sd)
    # Our sampler starts from σ_0·noise in σ-space; DDIM's VP latent is that times √ᾱ = 1/√(1+σ_0²).
    x = ddim(den, jnp.asarray(noise) * np.sqrt(1 + ladder[0] ** 2) / ladder[0], ladder)
    ours_vp = np.asarray(x) / np.sqrt(1 + ladder[-1] ** 2)
    np.testing.assert_allclose(ours_vp, ref, atol=1e-4)


@pytest.mark.parametrize("name, kwargs", [("edm_heun", dict(s_churn=10.0)), ("ddim", dict(eta=1.0))])
def test_stochastic_samplers_are_deterministic_given_key(name, kwargs):
    gm = ring_mixture()
    sampler = get_sampler(name)
    noise = jax.random.normal(jax.random.key(0), (64, 2))
    run = jax.jit(lambda n, k: sampler(gm.denoiser(), n, karras_sigmas(10), key=k, **kwargs))
    a, b, c = run(noise, jax.random.key(1)), run(noise, jax.random.key(1)), run(noise, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    with pytest.raises(ValueError, match="pass `key`"):
        sampler(gm.denoiser(), noise, karras_sigmas(10), **kwargs)


def test_ddim_with_eta_one_matches_mixture_moments():
    gm = ring_mixture()
    noise = jax.random.normal(jax.random.key(0), (N_SAMPLES, 2))
    x = jax.jit(lambda n: ddim(gm.denoiser(), n, karras_sigmas(100), eta=1.0, key=jax.random.key(9)))(noise)
    z_mean, z_cov = _moment_errors(x, gm)
    assert z_mean.max() < 5 and z_cov.max() < 5, (z_mean.max(), z_cov.max())


def test_bad_input_raises_value_error():
    gm = ring_mixture()
    noise = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="strictly decreasing"):
        euler(gm.denoiser(), noise, np.array([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2"):
        euler(gm.denoiser(), noise, np.array([1.0]))
    with pytest.raises(ValueError, match="sampler='heun'"):
        get_sampler("heun")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim(gm.denoiser(), noise, karras_sigmas(4), eta=-1.0)
