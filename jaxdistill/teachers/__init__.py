"""Teachers: analytic Gaussian mixtures (exact denoisers); SD and the embedded world come later."""

from jaxdistill.teachers.gaussian_mixture import (
    NULL_LABEL,
    GaussianMixture,
    gaussian_mixture,
    image_mixture,
    mixture_problem,
    ring_mixture,
)

__all__ = ["NULL_LABEL", "GaussianMixture", "gaussian_mixture", "image_mixture", "mixture_problem",
           "ring_mixture"]
