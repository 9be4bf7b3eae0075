"""σ-space schedules against diffusers' schedulers, number for number."""

import numpy as np
import pytest

from jaxdistill.diffusion import (
    VPSchedule,
    flow_sigmas,
    flow_time_to_sigma,
    karras_sigmas,
    make_betas,
    sigma_to_flow_time,
    stable_diffusion_schedule,
)

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

# Stable Diffusion 1.5's scheduler/scheduler_config.json (PNDM in the hub folder; the fields that
# define the noise schedule are shared by every scheduler class).
SD15_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))


def test_sd_alphas_cumprod_and_sigmas_match_diffusers():
    ours = VPSchedule.from_config(SD15_SCHEDULER)
    ddpm = diffusers.DDPMScheduler.from_config(SD15_SCHEDULER)
    assert _rel(ours.alphas_cumprod, ddpm.alphas_cumprod.numpy()) < 1e-6
    assert _rel(ours.betas, ddpm.betas.numpy()) < 1e-6
    euler = diffusers.EulerDiscreteScheduler.from_config(SD15_SCHEDULER)
    ac = euler.alphas_cumprod.numpy().astype(np.float64)
    assert _rel(ours.sigmas, np.sqrt((1 - ac) / ac)) < 1e-6
    assert _rel(stable_diffusion_schedule().alphas_cumprod, ours.alphas_cumprod) == 0


@pytest.mark.parametrize("num_steps", [4, 25, 50])
def test_sd_sampling_sigmas_and_timesteps_match_euler_discrete(num_steps):
    ours = VPSchedule.from_config(SD15_SCHEDULER)
    euler = diffusers.EulerDiscreteScheduler.from_config(SD15_SCHEDULER)
    euler.set_timesteps(num_steps)
    ts = ours.timesteps(num_steps, "leading", steps_offset=1)
    np.testing.assert_array_equal(ts, euler.timesteps.numpy().astype(np.int64))
    assert _rel(ours.timestep_to_sigma(ts), euler.sigmas.numpy()[:-1]) < 1e-6
    assert euler.sigmas.numpy()[-1] == 0


def test_sigma_to_timestep_matches_diffusers_sigma_to_t():
    ours = stable_diffusion_schedule()
    euler = diffusers.EulerDiscreteScheduler.from_config(SD15_SCHEDULER)
    log_sigmas = np.log(ours.sigmas)
    rng = np.random.default_rng(0)
    sigmas = np.exp(rng.uniform(np.log(0.002), np.log(80.0), 200))
    ref = np.array([euler._sigma_to_t(np.array([s]), log_sigmas)[0] for s in sigmas])
    got = np.asarray(ours.sigma_to_timestep(sigmas.astype(np.float32)))
    # Absolute in t (a fraction of one step); at t near 0 a relative bound means nothing.
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=2e-4)
    # Round trip σ -> t -> σ inside the table's range.
    inside = sigmas[(sigmas > ours.sigma_min) & (sigmas < ours.sigma_max)].astype(np.float32)
    assert _rel(ours.timestep_to_sigma(ours.sigma_to_timestep(inside)), inside) < 2e-5


def test_karras_grid_matches_diffusers_and_edm_endpoints():
    grid = karras_sigmas(18)
    assert grid[0] == pytest.approx(80.0) and grid[-2] == pytest.approx(0.002) and grid[-1] == 0
    assert np.all(np.diff(grid) < 0) and grid.shape == (19,)
    euler = diffusers.EulerDiscreteScheduler.from_config({**SD15_SCHEDULER, "use_karras_sigmas": True})
    euler.set_timesteps(30)
    # diffusers takes the Karras range from the σ of its "leading" integer timesteps.
    sd = stable_diffusion_schedule()
    ts = sd.timesteps(30, "leading", steps_offset=1)
    ours = karras_sigmas(30, sd.sigmas[ts[-1]], sd.sigmas[ts[0]])
    assert _rel(ours[:-1], euler.sigmas.numpy()[:-1]) < 1e-5


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_sigmas_match_flow_match_euler(shift):
    fm = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    fm.set_timesteps(28)
    t_ref = fm.sigmas.numpy().astype(np.float64)  # diffusers calls flow time "sigma"
    ours = flow_sigmas(28, shift)
    t_ours = sigma_to_flow_time(ours[:-1])
    np.testing.assert_allclose(t_ours[1:], t_ref[1:-1], rtol=1e-6)
    assert t_ref[0] == 1.0 and t_ours[0] == pytest.approx(1 - 1e-4)
    assert ours[-1] == 0


def test_flow_time_sigma_roundtrip():
    t = np.linspace(0.01, 0.99, 50)
    np.testing.assert_allclose(sigma_to_flow_time(flow_time_to_sigma(t)), t, rtol=1e-12)


def test_other_beta_schedules_match_diffusers():
    for name in ("linear", "squaredcos_cap_v2"):
        ref = diffusers.DDPMScheduler(beta_schedule=name).betas.numpy()
        assert _rel(make_betas(name, 1000, 0.0001, 0.02), ref) < 1e-6


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_betas("cosine"), "beta_schedule='cosine'"),
        (lambda: karras_sigmas(10, sigma_min=0.0), "sigma_min"),
        (lambda: karras_sigmas(10, sigma_min=5, sigma_max=1), "sigma_min"),
        (lambda: stable_diffusion_schedule().sigma_to_timestep(np.array([1.0, -0.5])), "sigma"),
        (lambda: stable_diffusion_schedule().timesteps(10, "uniform"), "spacing='uniform'"),
        (lambda: stable_diffusion_schedule().timesteps(0), "num_steps"),
        (lambda: flow_sigmas(10, shift=0.0), "shift"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
