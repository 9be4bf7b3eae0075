"""Teachers: analytic Gaussian mixtures (exact denoisers); SD and the embedded world come later."""

from jaxdistill.teachers.gaussian_mixture import GaussianMixture, gaussian_mixture, image_mixture, ring_mixture

__all__ = ["GaussianMixture", "gaussian_mixture", "image_mixture", "ring_mixture"]
