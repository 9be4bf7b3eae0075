"""jaxdistill: data-free score distillation of diffusion models in JAX and Flax NNX.

Everything is written in EDM σ-space (x_t = x_0 + σ·ε); see `jaxdistill.diffusion`.
"""

__version__ = "0.1.0"
