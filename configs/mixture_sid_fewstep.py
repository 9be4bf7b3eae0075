"""Distil the analytic 4-mode ring into a 4-step MLP generator with few-step SiD (k ~ U{1..4}).

    jaxdistill train --config configs/mixture_sid_fewstep.py --workdir runs/mixture_sid_fewstep

Cost: about 35 s of training (3,000 iterations, batch 256) on a 2-core CPU.
Tiny variant (tests, seconds): --config configs/mixture_sid_fewstep.py:tiny
"""

from jaxdistill.recipes import mixture_config


def get_config(variant: str = ""):
    return mixture_config("sid_fewstep", variant, sigma_ladder=(2.5, 1.0, 0.5, 0.25))
