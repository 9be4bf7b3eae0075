"""Guidance through distillation, on a class-conditional mixture where exact CFG is computable.

Class 0 is an even mix of a left mode (−1.5, 0) and a right mode (1.5, 0); class 1 is the right
mode only, with twice the weight. Exact CFG (κ > 1) for class 0 moves mass to the left mode (the
one that tells class 0 from the unconditional distribution), so "the direction exact CFG moves
samples" is the class-0 left-mode fraction rising above 0.5. κ = 1 everywhere must reproduce the
conditional distribution; Zero-CFG (teacher conditional, critic unconditional) and Anti-CFG
(critic with κ < 0) must move the fraction the same way as exact CFG.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.diffusion import edm_heun, karras_sigmas
from jaxdistill.eval.mixture_metrics import mode_weights
from jaxdistill.guidance import guidance_preset, guided
from jaxdistill.teachers import gaussian_mixture
from jaxdistill.toy import distill_mixture, toy_spec

GM = gaussian_mixture([[-1.5, 0.0], [1.5, 0.0], [1.5, 0.0]], weights=[1, 1, 2], variances=0.25, labels=[0, 0, 1])
N = 2000


def _left_fraction(x):
    return float(np.mean(np.asarray(x)[:, 0] < 0))


def _exact_cfg_left_fraction(kappa):
    cond, uncond = jnp.zeros((N,), jnp.int32), jnp.full((N,), -1, jnp.int32)
    den = guided(lambda x, s, c: GM.denoise(x, s, c), cond, uncond, kappa)
    noise = jax.random.normal(jax.random.key(0), (N, 2))
    return _left_fraction(jax.jit(lambda n: edm_heun(den, n, karras_sigmas(35)))(noise))


def _distill(preset, kappa=1.0, steps=1500):
    spec = toy_spec("sid", guidance=guidance_preset(preset, kappa))
    return distill_mixture(GM, spec, steps=steps, hidden=64)


def test_exact_cfg_moves_class0_to_its_distinctive_mode():
    assert abs(_exact_cfg_left_fraction(1.0) - 0.5) < 0.05
    assert _exact_cfg_left_fraction(3.0) > 0.65


@pytest.mark.slow
@pytest.mark.heavy  # each guidance distillation takes 15-25 s: `make test-all`, not CI's `make test`
@pytest.mark.single_device
def test_no_guidance_reproduces_the_conditional_distribution():
    run = _distill("none")
    x0, x1 = run.sample(N, label=0), run.sample(N, label=1, seed=2)
    assert abs(_left_fraction(x0) - 0.5) < 0.1
    assert _left_fraction(x1) < 0.05
    w = mode_weights(x0, GM, jnp.zeros((N,), jnp.int32))
    np.testing.assert_allclose(w[:2], [0.5, 0.5], atol=0.1)


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.single_device
@pytest.mark.parametrize("preset, kappa", [("zero_cfg", 1.0), ("anti_cfg", -1.0)])
def test_zero_and_anti_cfg_move_samples_like_exact_cfg(preset, kappa):
    run = _distill(preset, kappa)
    frac = _left_fraction(run.sample(N, label=0))
    # Same direction as exact CFG (left fraction > 0.5), by a margin far above sampling noise
    # (the standard error of a fraction of 2,000 samples is ≈ 0.011; 0.54 is 3.5 of them).
    assert frac > 0.54, frac
    assert _left_fraction(run.sample(N, label=1, seed=3)) < 0.1
