"""One-step SiD-LSG distillation of Stable Diffusion 1.5 (512 px; 64×64×4 latents).

    jaxdistill train --config configs/sid_lsg_sd15.py --workdir runs/sid_lsg_sd15 \
        --config.teacher.path=/models/stable-diffusion-v1-5 --config.teacher.prompts=prompts.txt \
        [--config.method.kappa=4.5] [--config.mesh.shape='(1,8,1)']

Values from mingyuanzhou/SiD-LSG (../shared/spec/loss-kernels.md §2.4): α=1, κ=1.5 in all three
knobs (released κ ∈ {1.5, 2, 3, 4.5}), prompt dropout 0.1 in the critic step, Adam β=(0, 0.999),
lr 1e-6 for both nets, batch 512, EMA half-life 0.05 Mimg (decay 0.9929 at batch 512), about
20k iterations (10 Mimg). Generator and critic are initialised from the teacher's UNet.
Cost: the paper's runs take days on 4-8 A100s; measure yours with `jaxdistill info`.
Tiny variant (tests, seconds, on a tiny random SD folder): --config configs/sid_lsg_sd15.py:tiny
"""

from jaxdistill.recipes import sd_config


def get_config(variant: str = ""):
    return sd_config("sid_lsg", variant, resolution=512, guidance="sid_lsg", kappa=1.5,
                     optim=dict(gen_lr=1e-6, critic_lr=1e-6, n_critic=1, ema_decay=0.9929),
                     batch_size=512, steps=20_000, architecture="sd15")
