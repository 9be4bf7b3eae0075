"""The σ-space diffusion core: schedules, adapters to σ-space denoisers, teacher samplers."""

from jaxdistill.diffusion.adapters import PREDICTIONS, Denoiser, expand_sigma, make_denoiser
from jaxdistill.diffusion.samplers import SAMPLERS, ddim, edm_heun, euler, get_sampler
from jaxdistill.diffusion.schedules import (
    BETA_SCHEDULES,
    VPSchedule,
    flow_shift,
    flow_sigmas,
    flow_time_to_sigma,
    karras_sigmas,
    make_betas,
    sigma_to_flow_time,
    stable_diffusion_schedule,
)

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTIONS",
    "SAMPLERS",
    "Denoiser",
    "VPSchedule",
    "ddim",
    "edm_heun",
    "euler",
    "expand_sigma",
    "flow_shift",
    "flow_sigmas",
    "flow_time_to_sigma",
    "get_sampler",
    "karras_sigmas",
    "make_betas",
    "make_denoiser",
    "sigma_to_flow_time",
    "stable_diffusion_schedule",
]
