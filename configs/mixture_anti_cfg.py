"""Distil a class-conditional 4-mode ring (2 classes; exact teacher) with SiD and Anti-CFG.

    jaxdistill train --config configs/mixture_anti_cfg.py --workdir runs/mixture_anti_cfg \
        [--config.method.kappa=-2.0]

Anti-CFG: a negative scale κ < 0 on the critic (its training and evaluation), the teacher
unguided. The paper's κ is unverified (../shared/spec/loss-kernels.md); −1 is the default here.
Cost: about 30 s of training (3,000 iterations, batch 256) on a 2-core CPU.
Tiny variant (tests, seconds): --config configs/mixture_anti_cfg.py:tiny
"""

from jaxdistill.recipes import mixture_config


def get_config(variant: str = ""):
    return mixture_config("sid", variant, num_classes=2, guidance="anti_cfg", kappa=-1.0)
