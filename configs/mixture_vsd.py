"""Distil the analytic 4-mode ring (exact teacher) into a one-step MLP generator with VSD
(SwiftBrush's variational score distillation: pure-noise student at σ=80, DDPM t-grid).

    jaxdistill train --config configs/mixture_vsd.py --workdir runs/mixture_vsd

Cost: about 30 s of training (3,000 iterations, batch 256) on a 2-core CPU.
Tiny variant (tests, seconds): --config configs/mixture_vsd.py:tiny
"""

from jaxdistill.recipes import mixture_config


def get_config(variant: str = ""):
    return mixture_config("vsd", variant)
