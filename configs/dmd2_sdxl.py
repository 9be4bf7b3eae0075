"""One-step DMD2 distillation of SDXL (1024 px; 128×128×4 latents) at t=399.

    jaxdistill train --config configs/dmd2_sdxl.py --workdir runs/dmd2_sdxl \
        --config.teacher.path=/models/stable-diffusion-xl-base-1.0 --config.teacher.prompts=prompts.txt \
        [--config.mesh.shape='(1,8,1)']

Values from tianweiy/DMD2's SDXL 1-step recipe (../shared/spec/loss-kernels.md §4.6): real
guidance κ=8 (fake κ=1), 5 critic updates per generator update, generator first, lr 5e-7,
batch 128, no EMA, 24k iterations. Not included: DMD2's diffusion-GAN term (generator 5e-3 /
discriminator 1e-2), whose discriminator needs real images (LAION latents) while jaxdistill's
training is data-free today, and the ~3k-iteration ODE-pair regression that pre-trains DMD2's
1-step SDXL generator.
Cost: 57 hours on 64 A100s in the paper; measure yours with `jaxdistill info`.
Tiny variant (tests, seconds, on a tiny random SDXL-shaped folder): --config configs/dmd2_sdxl.py:tiny
"""

from jaxdistill.recipes import sd_config


def get_config(variant: str = ""):
    return sd_config("dmd2", variant, resolution=1024, guidance="dmd2", kappa=8.0,
                     optim=dict(gen_lr=5e-7, critic_lr=5e-7, n_critic=5, ema_decay=0.0),
                     batch_size=128, steps=24_000, architecture="sdxl",
                     # σ of t=399 in SDXL's scaled-linear table; DMD2 samples t ∈ [20, 980) for SD teachers.
                     sigma_ladder=(1.16058,), gen_noise=("ddpm", {"t_min": 20, "t_max": 980}),
                     critic_noise=("ddpm", {"t_min": 20, "t_max": 980}))
