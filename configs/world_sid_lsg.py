"""One-step SiD-LSG distillation of the embedded world's shipped teacher (what `make demo` runs).

    jaxdistill train --config configs/world_sid_lsg.py --workdir runs/world_sid_lsg [--config.method.kappa=3]

SiD with α=1 and the SiD-LSG guidance scale κ in all three knobs (Zhou et al. 2024,
mingyuanzhou/SiD-LSG), generator and critic initialised from the teacher's UNet, σ_init=2.5,
prompt dropout 0.1, Adam β=(0, 0.999) at lr 5e-5 for both (the SD recipe's 1e-6 is for 860M
parameters; this UNet has 1.0M), batch 8, 40 iterations (CPU-sized; see README), EMA 0.99.
Cost: train-step compile about 70 s and several seconds per iteration on a 2-core CPU (README, "What `make demo` does").
Tiny variant (tests, seconds): --config configs/world_sid_lsg.py:tiny
"""

from jaxdistill.recipes import world_config


def get_config(variant: str = ""):
    return world_config("sid_lsg", variant, guidance="sid_lsg", kappa=1.5)
