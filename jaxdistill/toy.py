"""Distilling an analytic Gaussian-mixture teacher into a one- or few-step MLP generator.

The exact world of design §8: the teacher's denoiser is exact, so a method's result can be
checked against the true distribution (mode weights, MMD against fresh exact samples). Used by
the convergence tests, `experiments/mixture_table.py` and the demo.

`TOY_SETTINGS` holds, per method, the hyper-parameters that make a 2-D ring distil in seconds
on a CPU: the spec's defaults (`jaxdistill.methods`) with learning rates raised for MLPs
(1e-5 is tuned for UNets) and the generator and critic built as residuals on the teacher (the
toy stand-in for initialising them from the teacher's weights, see `Networks`).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.methods import MethodSpec, get_method
from jaxdistill.models import DiscriminatorHead, MLPDenoiser
from jaxdistill.teachers.gaussian_mixture import GaussianMixture, mixture_problem
from jaxdistill.train import Distiller

_COMMON = dict(gen_lr=2e-4, critic_lr=2e-3, ema_decay=0.99)

TOY_SETTINGS = {
    "sid": dict(_COMMON, n_critic=3),
    "sim": dict(_COMMON, n_critic=3),
    "diff_instruct": dict(_COMMON, n_critic=3),
    "dmd2": dict(_COMMON),
    # σ_init 2.5 (SiD's) instead of DMD2's 80: the residual generator then starts from the
    # teacher's one-step denoiser rather than from the mixture mean.
    "fdistill": dict(_COMMON, n_critic=2, disc_weight=1.0, gen_adv_weight=1e-3, sigma_ladder=(2.5,)),
    "sid_fewstep": dict(_COMMON, n_critic=3, gen_noise=("sid_karras", {"t_max": 800.0}),
                        critic_noise=("edm_lognormal", {}), dsm_weighting="edm"),
}


@dataclasses.dataclass
class ToyRun:
    distiller: Distiller
    teacher: GaussianMixture
    train_seconds: float
    history: list

    def sample(self, n: int, label: int | None = None, *, seed: int = 1, num_steps: int | None = None,
               use_ema: bool = True) -> jax.Array:
        cond = jnp.full((n,), 0 if label is None else label, jnp.int32)
        return self.distiller.sample(jax.random.key(seed), cond, self.teacher, num_steps=num_steps, use_ema=use_ema)


def toy_spec(method: str, **overrides) -> MethodSpec:
    """The method's spec with the toy settings, then `overrides`, applied."""
    settings = dict(TOY_SETTINGS.get(method, _COMMON))
    settings.update(overrides)
    return get_method(method, **settings)


def toy_distiller(
    gm: GaussianMixture,
    spec: MethodSpec,
    *,
    batch_size: int = 256,
    microbatches: int = 1,
    hidden: int = 128,
    depth: int = 3,
    seed: int = 0,
    mesh=None,
    abstract: bool = False,
) -> Distiller:
    """MLP generator/critic (/head) residuals on the mixture teacher, wrapped in a `Distiller`
    (`abstract`: shapes only, see `Distiller`)."""
    classes = gm.num_classes if gm.num_classes > 1 else 0
    with nnx.use_eager_sharding(False):
        gen = MLPDenoiser(gm.event_shape, hidden=hidden, depth=depth, num_classes=classes, residual=True,
                          rngs=nnx.Rngs(seed))
        critic = MLPDenoiser(gm.event_shape, hidden=hidden, depth=depth, num_classes=classes, residual=True,
                             rngs=nnx.Rngs(seed + 1))
        head = DiscriminatorHead(hidden, hidden, rngs=nnx.Rngs(seed + 2)) if spec.discriminator else None
    return Distiller(spec, mixture_problem(gm), gen, critic, head, batch_size=batch_size, microbatches=microbatches,
                     mesh=mesh, seed=seed, on_teacher=True, abstract=abstract)


def distill_mixture(gm: GaussianMixture, spec: MethodSpec, *, steps: int, log_every: int = 0, **kwargs) -> ToyRun:
    """Build a `toy_distiller` (keyword arguments as there) and train it `steps` iterations."""
    d = toy_distiller(gm, spec, **kwargs)
    d.compile(gm)
    start = time.perf_counter()
    history = d.run(gm, steps, log_every=log_every)
    jax.block_until_ready(d.state)
    return ToyRun(d, gm, time.perf_counter() - start, history)
