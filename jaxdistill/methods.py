"""The method registry: a method name gives its kernel, noise levels, guidance, update order and
defaults, taken from ../shared/spec/loss-kernels.md (each row cites its source there).

`get_method("sid")` returns a frozen `MethodSpec`; any field can be overridden by keyword
(`get_method("sid", alpha=1.0)` sets a kernel argument, `get_method("dmd2", n_critic=10)` a
field). The σ-space defaults are those of EDM-style teachers (the analytic mixtures, EDM pixel
models); SD recipes override the noise levels to DDPM integer timesteps in their configs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jaxdistill import losses
from jaxdistill.guidance import Guidance, guidance_preset

KERNELS = {
    "sid": losses.sid,
    "sim": losses.sim,
    "dmd": losses.dmd,
    "diff_instruct": losses.diff_instruct,
    "vsd": losses.vsd,
    "fdistill": losses.fdistill,
}
ORDERS = ("critic_first", "generator_first")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """Everything that distinguishes one distillation method from another."""

    name: str
    kernel: str
    kernel_kwargs: Mapping[str, Any]
    gen_noise: tuple  # (noise-level name, kwargs) for the generator loss
    critic_noise: tuple  # (noise-level name, kwargs) for the critic's score matching
    guidance: Guidance
    order: str  # "critic_first" (SiD) or "generator_first" (DMD2: critic trains on the same batch)
    n_critic: int  # critic updates per generator update
    dsm_weighting: str  # score_matching weighting of the critic loss
    sigma_ladder: tuple  # generator σ ladder: (σ_init,) one-step, K values few-step
    discriminator: bool = False  # train a discriminator head on the critic's features
    gen_adv_weight: float = 0.0  # weight of the generator's adversarial term
    disc_weight: float = 0.0  # weight of the discriminator loss in the critic objective
    gen_lr: float = 1e-5
    critic_lr: float = 1e-5
    adam_b1: float = 0.0
    adam_b2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # global-norm clip, 0 = off
    ema_decay: float = 0.0  # 0 = no EMA (the EMA tree then equals the generator)

    @property
    def num_steps(self) -> int:
        return len(self.sigma_ladder)

    @property
    def kernel_fn(self):
        return KERNELS[self.kernel]


def _few_step_ladder(k: int, sigma_max: float = 80.0) -> tuple:
    """ml-sid-dit's t_i = 1 − i/K (i = 0..K−1) mapped to σ = t/(1−t), t = 1 capped at σ_max."""
    ladder = []
    for i in range(k):
        t = 1.0 - i / k
        ladder.append(sigma_max if t >= 1.0 else min(t / (1 - t), sigma_max))
    return tuple(ladder)


def ladder_within(ladder: tuple, sigma_max: float) -> tuple:
    """`ladder` with every σ above `sigma_max` lowered to it: an EDM or flow ladder (σ_init 80)
    for a VP teacher, whose largest σ (its last timestep) is pure noise to it."""
    return tuple(min(float(s), sigma_max) for s in ladder)


_SID_NOISE = ("sid_karras", {"t_max": 800.0})
_EDM_NOISE = ("edm_lognormal", {})
_DMD2_EDM_NOISE = ("sid_karras", {"t_max": 980.0})

_DEFAULTS = {
    # mingyuanzhou/SiD run_sid.sh: α=1.2, Adam β=(0, 0.999), lr 1e-5, σ_init 2.5, EMA 0.5 Mimg.
    "sid": dict(kernel="sid", kernel_kwargs={"alpha": 1.2}, gen_noise=_SID_NOISE, critic_noise=_EDM_NOISE,
                guidance=guidance_preset("none"), order="critic_first", n_critic=1, dsm_weighting="edm",
                sigma_ladder=(2.5,), gen_lr=1e-5, critic_lr=1e-5, ema_decay=0.999),
    # mingyuanzhou/SiD-LSG: α=1, κ=1.5..4.5 in all three knobs, prompt dropout 0.1, lr 1e-6.
    "sid_lsg": dict(kernel="sid", kernel_kwargs={"alpha": 1.0}, gen_noise=("ddpm", {}), critic_noise=("ddpm", {}),
                    guidance=guidance_preset("sid_lsg", 1.5), order="critic_first", n_critic=1,
                    dsm_weighting="eps", sigma_ladder=(2.5,), gen_lr=1e-6, critic_lr=1e-6),
    # apple/ml-sid-dit: K=4, α=1, weighting 1−t, logit-normal t, lr 1e-6, no EMA.
    "sid_fewstep": dict(kernel="sid", kernel_kwargs={"alpha": 1.0, "weighting": "one_minus_t"},
                        gen_noise=("logit_normal", {}), critic_noise=("logit_normal", {}),
                        guidance=guidance_preset("none"), order="critic_first", n_critic=1,
                        dsm_weighting="flow", sigma_ladder=_few_step_ladder(4), gen_lr=1e-6, critic_lr=1e-6),
    # tianweiy/DMD2 (EDM): σ_init 80, 5 critic updates per G update, generator first, AdamW
    # (0.9, 0.999, wd 0.01), grad-norm clip 10, κ=1 for the fake, no EMA.
    "dmd2": dict(kernel="dmd", kernel_kwargs={}, gen_noise=_DMD2_EDM_NOISE, critic_noise=_DMD2_EDM_NOISE,
                 guidance=guidance_preset("dmd2", 1.0), order="generator_first", n_critic=5, dsm_weighting="edm",
                 sigma_ladder=(80.0,), gen_lr=2e-6, critic_lr=2e-6, adam_b1=0.9, weight_decay=0.01, grad_clip=10.0),
    # pkulwj1994/diff_instruct: IKL gradient, EDM log-normal σ, Adam, 1:1.
    "diff_instruct": dict(kernel="diff_instruct", kernel_kwargs={}, gen_noise=_EDM_NOISE, critic_noise=_EDM_NOISE,
                          guidance=guidance_preset("none"), order="critic_first", n_critic=1, dsm_weighting="edm",
                          sigma_ladder=(2.5,), gen_lr=1e-5, critic_lr=1e-5),
    # VinAIResearch/SwiftBrush: pure-noise student, same CFG on teacher and fake, 1:1, grad clip 1.
    "vsd": dict(kernel="vsd", kernel_kwargs={}, gen_noise=("ddpm", {"t_min": 20, "t_max": 981}),
                critic_noise=("ddpm", {"t_min": 0, "t_max": 1000}), guidance=guidance_preset("none"),
                order="critic_first", n_critic=1, dsm_weighting="eps", sigma_ladder=(80.0,),
                gen_lr=1e-5, critic_lr=1e-4, grad_clip=1.0),
    # SIM (arXiv 2410.16794): pseudo-Huber distance, SiD-style σ and update schedule.
    "sim": dict(kernel="sim", kernel_kwargs={"distance": "pseudo_huber"}, gen_noise=_SID_NOISE,
                critic_noise=_EDM_NOISE, guidance=guidance_preset("none"), order="critic_first", n_critic=1,
                dsm_weighting="edm", sigma_ladder=(2.5,), gen_lr=1e-5, critic_lr=1e-5),
    # NVlabs/FastGen f_distill: DMD2 + h(r) from a discriminator on the critic's features, JS
    # default, GAN term required (gen 3e-3 IN64), discriminator weight 1e-2.
    "fdistill": dict(kernel="fdistill", kernel_kwargs={"divergence": "js"}, gen_noise=_DMD2_EDM_NOISE,
                     critic_noise=_DMD2_EDM_NOISE, guidance=guidance_preset("dmd2", 1.0), order="generator_first",
                     n_critic=5, dsm_weighting="edm", sigma_ladder=(80.0,), discriminator=True,
                     gen_adv_weight=3e-3, disc_weight=1e-2, gen_lr=2e-6, critic_lr=2e-6, adam_b1=0.9,
                     weight_decay=0.01, grad_clip=10.0),
}
METHODS = tuple(_DEFAULTS)
_FIELDS = {f.name for f in dataclasses.fields(MethodSpec)}


def get_method(name: str, *, allow_fake_cfg: bool = False, **overrides) -> MethodSpec:
    """The spec of method `name`, with `overrides` applied (fields, or the kernel's keyword args).

    Raises ValueError for an unknown method or override, K < 1 (an empty `sigma_ladder`), a bad
    order, or a DMD-family method with critic CFG ≠ 1 (DMD2 asserts fake_guidance_scale == 1)
    unless `allow_fake_cfg=True`.
    """
    if name not in _DEFAULTS:
        raise ValueError(f"method {name!r} is unknown; expected one of {METHODS}.")
    fields = dict(_DEFAULTS[name], name=name)
    kernel_kwargs = dict(fields["kernel_kwargs"])
    for key, value in overrides.items():
        if key in _FIELDS:
            fields[key] = value
        elif key in _kernel_params(fields["kernel"]):
            kernel_kwargs[key] = value
        else:
            raise ValueError(
                f"{key!r} is neither a MethodSpec field nor an argument of kernel {fields['kernel']!r}; "
                f"fields: {sorted(_FIELDS)}; kernel arguments: {sorted(_kernel_params(fields['kernel']))}."
            )
    fields["kernel_kwargs"] = kernel_kwargs
    fields["sigma_ladder"] = tuple(float(s) for s in fields["sigma_ladder"])
    spec = MethodSpec(**fields)
    if spec.num_steps < 1:
        raise ValueError("sigma_ladder must hold K >= 1 noise levels (K = number of generator steps); got ().")
    if spec.order not in ORDERS:
        raise ValueError(f"order={spec.order!r} is unknown; expected one of {ORDERS}.")
    if spec.n_critic < 1:
        raise ValueError(f"n_critic must be >= 1; got {spec.n_critic}.")
    if spec.kernel in ("dmd", "fdistill") and spec.guidance.fake_uses_cfg and not allow_fake_cfg:
        raise ValueError(
            f"method {name!r} evaluates and trains the critic without CFG (DMD2 asserts fake κ = 1); got "
            f"cfg_fake_eval={spec.guidance.cfg_fake_eval}, cfg_fake_train={spec.guidance.cfg_fake_train}. "
            "Use the 'dmd2' guidance preset, or pass allow_fake_cfg=True to override."
        )
    if spec.kernel == "fdistill" and not spec.discriminator:
        raise ValueError("fdistill needs discriminator=True: its density ratio comes from discriminator logits.")
    return spec


def _kernel_params(kernel: str) -> set:
    import inspect

    params = inspect.signature(KERNELS[kernel]).parameters.values()
    return {p.name for p in params if p.kind == p.KEYWORD_ONLY}
