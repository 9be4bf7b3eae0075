"""Distil a class-conditional 4-mode ring (2 classes; exact teacher) with SiD and Zero-CFG.

    jaxdistill train --config configs/mixture_zero_cfg.py --workdir runs/mixture_zero_cfg

Zero-CFG: the teacher is evaluated conditionally (κ=1) and the critic with the null condition
in its training and evaluation (κ=0), which moves samples the way CFG does without a guided
teacher (tests/test_guidance_distillation.py checks the direction).
Cost: about 30 s of training (3,000 iterations, batch 256) on a 2-core CPU.
Tiny variant (tests, seconds): --config configs/mixture_zero_cfg.py:tiny
"""

from jaxdistill.recipes import mixture_config


def get_config(variant: str = ""):
    return mixture_config("sid", variant, num_classes=2, guidance="zero_cfg")
