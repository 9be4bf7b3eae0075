"""Pure score-distillation loss kernels in EDM σ-space (design §2, spec loss-kernels.md).

Generator kernels take ``(x_g, noise, sigma, real, fake, *, hyper-params)``, where ``real`` and
``fake`` are denoiser closures ``(x_t, sigma) -> x0_hat``, and return ``(loss [B], aux)``: a
per-sample loss (summed over non-batch elements) and a dict of per-sample diagnostics.
"""

from jaxdistill.losses.adversarial import discriminator_loss, generator_adversarial_loss
from jaxdistill.losses.diff_instruct import diff_instruct, vsd
from jaxdistill.losses.dmd import dmd
from jaxdistill.losses.fdistill import F_DIVERGENCES, fdistill
from jaxdistill.losses.score_matching import DSM_WEIGHTINGS, score_matching
from jaxdistill.losses.sid import SID_WEIGHTINGS, sid
from jaxdistill.losses.sim import SIM_DISTANCES, sim

__all__ = [
    "sid",
    "sim",
    "dmd",
    "diff_instruct",
    "vsd",
    "fdistill",
    "score_matching",
    "discriminator_loss",
    "generator_adversarial_loss",
    "SID_WEIGHTINGS",
    "SIM_DISTANCES",
    "F_DIVERGENCES",
    "DSM_WEIGHTINGS",
]
