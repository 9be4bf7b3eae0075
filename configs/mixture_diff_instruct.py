"""Distil the analytic 4-mode ring (exact teacher) into a one-step MLP generator with diff_instruct.

    jaxdistill train --config configs/mixture_diff_instruct.py --workdir runs/mixture_diff_instruct

Cost: about 30 s of training (3,000 iterations, batch 256) on a 2-core CPU.
Tiny variant (tests, seconds): --config configs/mixture_diff_instruct.py:tiny
"""

from jaxdistill.recipes import mixture_config


def get_config(variant: str = ""):
    return mixture_config("diff_instruct", variant)
