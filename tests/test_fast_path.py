"""Numerical sanity of the fast configuration (issue 7): on a tiny SD folder, the generator's
and critic's losses and gradients with bfloat16 compute, the cuDNN attention choice (XLA on a
CPU) and `dots_saveable` rematerialisation match the float32 XLA path within bfloat16
tolerance, and the gradients of the float32 master weights stay float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.recipes import sd_config
from jaxdistill.train.program import build_run
from sd_folder import make_tiny_sd, write_prompts
from xla_options import FAST_COMPILE

pytest.importorskip("torch")
pytest.importorskip("diffusers")

PATHS = {"float32": dict(compute_dtype="float32", attention="xla", remat="none"),
         "fast": dict(compute_dtype="bfloat16", attention="cudnn", remat="dots_saveable")}


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(tree)])


def _cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _losses_and_grads(run, critic, key):
    """(generator loss, its gradient, critic loss, its gradient) at the run's initial generator
    and the given critic, every random draw fixed by `key`."""
    obj, state, teacher = run.distiller.objectives, run.distiller.state, run.teacher
    k_gen, k_sample, k_critic = jax.random.split(key, 3)
    gen = jax.jit(jax.value_and_grad(lambda g, c, t: obj.gen_loss(g, c, t, k_gen, 1), has_aux=True))
    (gen_loss, _), gen_grad = gen.lower(state.gen, critic, teacher).compile(FAST_COMPILE)(state.gen, critic, teacher)
    sample = jax.jit(lambda g, t: obj.sample_generator(g, t, k_sample, 1))
    x_g, cond, uncond = sample.lower(state.gen, teacher).compile(FAST_COMPILE)(state.gen, teacher)
    crit = jax.jit(jax.value_and_grad(lambda c, t, x, cd, u: obj.critic_loss(c, t, x, cd, u, k_critic), has_aux=True))
    args = (critic, teacher, x_g.astype(jnp.float32), cond, uncond)
    (critic_loss, _), critic_grad = crit.lower(*args).compile(FAST_COMPILE)(*args)
    return float(gen_loss), gen_grad, float(critic_loss), critic_grad


@pytest.mark.heavy  # 124-132 s measured on the 2-core machine while it trained a teacher: four gradient compiles
def test_bfloat16_fast_path_matches_float32_losses_and_gradients(tmp_path):
    folder = make_tiny_sd(str(tmp_path / "sd15"))
    prompts = write_prompts(str(tmp_path / "prompts.txt"))
    results = {}
    for name, model in PATHS.items():
        config = sd_config("sid", "tiny", resolution=32, guidance="sid_lsg", kappa=4.5,
                           optim=dict(gen_lr=1e-5, critic_lr=1e-5), batch_size=4, steps=1)
        config.teacher.update(path=folder, prompts=prompts)
        config.model.update(model)
        run = build_run(config)
        # A critic that differs from the teacher (at initialisation both are the teacher), the same
        # perturbation in both paths, so the SiD difference term is not a cancellation of equals.
        leaves, treedef = jax.tree.flatten(run.distiller.state.critic)
        keys = jax.random.split(jax.random.key(7), len(leaves))
        critic = treedef.unflatten([p + 0.3 * jnp.std(p) * jax.random.normal(k, p.shape, p.dtype)
                                    for p, k in zip(leaves, keys)])
        results[name] = _losses_and_grads(run, critic, jax.random.key(11))
    ref, fast = results["float32"], results["fast"]
    # Measured (2-core CPU): generator loss -0.9207 vs -0.9256, gradient cosine 0.9970, norm ratio
    # 1.012; critic loss 1656.5 vs 1657.2, cosine 0.9998, norm ratio 0.998. With a critic within
    # 0.02 std of the teacher the generator loss is a cancellation of near-equal UNet outputs and
    # bfloat16 rounding dominates it (0.0071 vs -0.0028): the bound is for a trained critic.
    for i, what in ((0, "generator"), (2, "critic")):
        a, b = _flat(fast[i + 1]), _flat(ref[i + 1])
        cosine, ratio = _cosine(a, b), float(np.linalg.norm(a) / np.linalg.norm(b))
        assert abs(fast[i] - ref[i]) <= 0.02 * abs(ref[i]), (what, "loss", fast[i], ref[i])
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(fast[i + 1])), what
        assert cosine > 0.99 and abs(ratio - 1) < 0.05, (what, "gradient cosine", cosine, "norm ratio", ratio)
