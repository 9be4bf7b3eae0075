"""Distil a class-conditional 4-mode ring (2 classes; exact teacher) with SiD and SiD-LSG guidance.

    jaxdistill train --config configs/mixture_sid_lsg.py --workdir runs/mixture_sid_lsg \
        [--config.method.kappa=3.0]

LSG uses the same κ in the critic's training and in both generator-loss evaluations (SiD-LSG;
released κ ∈ {1.5, 2, 3, 4.5}). On the mixture the SiD noise levels stay in EDM σ-space; the
registry's `sid_lsg` method carries SD's DDPM t-grid instead (configs/sid_lsg_sd15.py).
Cost: about 30 s of training (3,000 iterations, batch 256) on a 2-core CPU.
Tiny variant (tests, seconds): --config configs/mixture_sid_lsg.py:tiny
"""

from jaxdistill.recipes import mixture_config


def get_config(variant: str = ""):
    return mixture_config("sid", variant, num_classes=2, guidance="sid_lsg", kappa=1.5)
