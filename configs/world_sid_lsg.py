"""One-step SiD-LSG distillation of the embedded world's shipped teacher (what `make demo` runs).

    jaxdistill train --config configs/world_sid_lsg.py --workdir runs/world_sid_lsg [--config.method.kappa=3]

SiD with α=1 and the SiD-LSG guidance scale κ=2 in all three knobs (Zhou et al. 2024,
mingyuanzhou/SiD-LSG), generator and critic initialised from the teacher's UNet, σ_init=2.5,
prompt dropout 0.1, Adam β=(0, 0.999) at lr 1e-4 for both (the SD recipe's 1e-6 is for 860M
parameters; this UNet has about 1M), batch 8, 225 iterations (CPU-sized; see README), EMA 0.99
(`jaxdistill.recipes.world_sid_lsg`).
Cost: on a 2-core CPU, train-step compile about 70 s, 1.4 s per iteration, 396 s of training in
all (README, "What `make demo` printed").
Tiny variant (tests, seconds): --config configs/world_sid_lsg.py:tiny
"""

from jaxdistill.recipes import world_sid_lsg


def get_config(variant: str = ""):
    return world_sid_lsg(variant)
