"""The generator rollout (`jaxdistill.generator`) and classifier-free guidance (`jaxdistill.guidance`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.generator import check_ladder, generate, generate_train
from jaxdistill.guidance import Guidance, drop_conditions, guidance_preset, guided

sg = jax.lax.stop_gradient

LADDER = (80.0, 10.0, 2.0, 0.5)
B, D = 6, 3


def _params(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {"w": jax.random.normal(k1, (D, D)) / np.sqrt(D), "b": jax.random.normal(k2, (D,)),
            "s": jax.random.normal(k3, (D,))}


def _net(params, x, sigma):
    """A small nonlinear σ-dependent denoiser (so every step's gradient differs)."""
    c = 1.0 / jnp.sqrt(sigma[:, None] ** 2 + 1.0)
    return jnp.tanh((c * x) @ params["w"] + params["b"] + jnp.log(sigma)[:, None] * params["s"])


def _z_key():
    return jax.random.normal(jax.random.key(1), (B, D)), jax.random.key(2)


def _manual(params, z, key, k, *, detach_earlier=True):
    """Steps 1..k by hand: n_1 = z, n_i = normal(fold_in(key, i−1)) (fresh noise); steps < k use
    stop_gradient'ed params when `detach_earlier`."""
    early = jax.tree.map(sg, params) if detach_earlier else params
    x0 = jnp.zeros_like(z)
    for i in range(k):
        n = z if i == 0 else jax.random.normal(jax.random.fold_in(key, i), z.shape, z.dtype)
        x = x0 + LADDER[i] * n
        x0 = _net(params if i == k - 1 else early, x, jnp.full((B,), LADDER[i]))
    return x0


# ---------------------------------------------------------------------------------------------
# 6. Generator rollout
# ---------------------------------------------------------------------------------------------

def _loss_train(p, z, key, w, k):
    return jnp.sum(w * generate_train(lambda x, s: _net(p, x, s), z, LADDER, k, key))


def _loss_manual(p, z, key, w, k, detach):
    return jnp.sum(w * _manual(p, z, key, k, detach_earlier=detach))


_train_value_and_grad = jax.jit(jax.value_and_grad(_loss_train))  # k traced, as in the train step: one compile
_manual_value_and_grad = jax.value_and_grad(_loss_manual)  # eager, k a Python int


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_train_rollout_gradient_only_from_step_k(k):
    params = _params()
    z, key = _z_key()
    w = jax.random.normal(jax.random.key(3), (B, D))
    v_train, g_train = _train_value_and_grad(params, z, key, w, jnp.int32(k))
    v_manual, g_manual = _manual_value_and_grad(params, z, key, w, k, True)
    np.testing.assert_allclose(v_train, v_manual, rtol=1e-5, atol=1e-6)
    for name in params:
        np.testing.assert_allclose(g_train[name], g_manual[name], rtol=1e-4, atol=1e-6, err_msg=name)
        assert np.any(np.abs(g_train[name]) > 1e-4), name
    if k > 1:  # without the stop_gradient the gradient is different: the check above can fail
        _, g_full = _manual_value_and_grad(params, z, key, w, k, False)
        diff = max(float(np.max(np.abs(g_full[n] - g_manual[n]))) for n in params)
        assert diff > 1e-3, diff


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_generate_equals_train_rollout_forward(n):
    params = _params()
    z, key = _z_key()
    den = lambda x, s: _net(params, x, s)  # noqa: E731
    out = generate(den, z, LADDER, key, num_steps=n)
    np.testing.assert_allclose(out, generate_train(den, z, LADDER, jnp.int32(n), key), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, _manual(params, z, key, n), rtol=1e-5, atol=1e-6)
    if n == len(LADDER):
        np.testing.assert_allclose(generate(den, z, LADDER, key), out, rtol=0, atol=0)
    if n > 1:  # the rollout really depends on the earlier steps and on the fresh noise
        assert not np.allclose(out, generate(den, z, LADDER, key, num_steps=n - 1), atol=1e-3)
        assert not np.allclose(out, generate(den, z, LADDER, jax.random.key(7), num_steps=n), atol=1e-3)


def test_one_step_generator_is_denoiser_at_sigma_init():
    params = _params()
    z, key = _z_key()
    den = lambda x, s: _net(params, x, s)  # noqa: E731
    want = _net(params, 2.5 * z, jnp.full((B,), 2.5))
    np.testing.assert_allclose(generate(den, z, (2.5,)), want, rtol=1e-6)
    np.testing.assert_allclose(generate_train(den, z, (2.5,), jnp.int32(1), key), want, rtol=1e-6)


def test_fixed_noise_reuses_z():
    params = _params()
    z, key = _z_key()
    den = lambda x, s: _net(params, x, s)  # noqa: E731
    x0 = _net(params, LADDER[0] * z, jnp.full((B,), LADDER[0]))
    want = _net(params, x0 + LADDER[1] * z, jnp.full((B,), LADDER[1]))
    np.testing.assert_allclose(generate(den, z, LADDER, num_steps=2, noise_type="fixed"), want, rtol=1e-5)
    np.testing.assert_allclose(generate_train(den, z, LADDER, 2, key, noise_type="fixed"), want, rtol=1e-5)


@pytest.mark.parametrize("ladder", [(), (1.0, 2.0), (2.0, 2.0), (2.0, 0.0), (2.0, -1.0), (-1.0,), (80.0, 10.0, 20.0)])
def test_bad_ladders_raise(ladder):
    z, key = _z_key()
    den = lambda x, s: x  # noqa: E731
    with pytest.raises(ValueError, match="ladder"):
        check_ladder(ladder)
    with pytest.raises(ValueError, match="ladder"):
        generate(den, z, ladder, key)
    with pytest.raises(ValueError, match="ladder"):
        generate_train(den, z, ladder, 1, key)


@pytest.mark.parametrize("n", [0, 5, -1])
def test_generate_num_steps_out_of_range(n):
    z, key = _z_key()
    with pytest.raises(ValueError, match=rf"num_steps must be in \[1, K=4\]; got {n}"):
        generate(lambda x, s: x, z, LADDER, key, num_steps=n)


def test_generate_bad_noise_type_and_missing_key():
    z, key = _z_key()
    with pytest.raises(ValueError, match="noise_type='gaussian'"):
        generate_train(lambda x, s: x, z, LADDER, 2, key, noise_type="gaussian")
    with pytest.raises(ValueError, match="needs `key`"):
        generate(lambda x, s: x, z, LADDER, None, num_steps=2)


# ---------------------------------------------------------------------------------------------
# 7. Guidance
# ---------------------------------------------------------------------------------------------

class CountingNet:
    """A conditional network that records each call's batch size and conditions."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, cond):
        self.calls.append((x.shape[0], cond))
        c = (cond["label"].astype(x.dtype) + jnp.mean(cond["emb"], axis=-1))[:, None]
        return jnp.tanh(x * (1.0 + c)) + sigma[:, None] * c


def _cond_batch(n=5):
    cond = {"label": jnp.arange(n, dtype=jnp.int32) % 3, "emb": jnp.linspace(-1, 1, n * 4).reshape(n, 4)}
    uncond = {"label": jnp.full((n,), -1, jnp.int32), "emb": jnp.zeros((n, 4))}
    x = jax.random.normal(jax.random.key(0), (n, 2))
    sigma = jnp.linspace(0.5, 3.0, n)
    return x, sigma, cond, uncond


def _tree_equal(a, b):
    return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))) and (
        jax.tree.structure(a) == jax.tree.structure(b))


@pytest.mark.parametrize("scale, which", [(1.0, "cond"), (0.0, "uncond")])
def test_guided_unit_and_zero_scale_make_one_call(scale, which):
    x, sigma, cond, uncond = _cond_batch()
    net = CountingNet()
    out = guided(net, cond, uncond, scale)(x, sigma)
    assert len(net.calls) == 1
    n, used = net.calls[0]
    assert n == x.shape[0]
    assert _tree_equal(used, cond if which == "cond" else uncond)
    np.testing.assert_allclose(out, CountingNet()(x, sigma, cond if which == "cond" else uncond))


@pytest.mark.parametrize("scale", [2.5, -1.0, 0.5])
def test_guided_other_scale_one_call_on_doubled_batch(scale):
    x, sigma, cond, uncond = _cond_batch()
    net = CountingNet()
    out = guided(net, cond, uncond, scale)(x, sigma)
    assert len(net.calls) == 1
    n, used = net.calls[0]
    assert n == 2 * x.shape[0]
    assert _tree_equal(used, jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond))
    ref = CountingNet()
    f_c, f_u = ref(x, sigma, cond), ref(x, sigma, uncond)
    np.testing.assert_allclose(out, f_u + scale * (f_c - f_u), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, f_c, atol=1e-3)


def test_guided_under_jit():
    x, sigma, cond, uncond = _cond_batch()
    f = jax.jit(lambda x, s: guided(CountingNet(), cond, uncond, 2.5)(x, s))
    ref = CountingNet()
    f_c, f_u = ref(x, sigma, cond), ref(x, sigma, uncond)
    np.testing.assert_allclose(f(x, sigma), f_u + 2.5 * (f_c - f_u), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, kappa, knobs, dropout", [
    ("none", 3.0, (1.0, 1.0, 1.0), 0.0),
    ("sid_lsg", 2.0, (2.0, 2.0, 2.0), 0.1),
    ("sid_lsg", 4.5, (4.5, 4.5, 4.5), 0.1),
    ("dmd2", 3.0, (3.0, 1.0, 1.0), 0.0),
    ("zero_cfg", 3.0, (1.0, 0.0, 0.0), 0.1),
    ("anti_cfg", -1.0, (1.0, -1.0, -1.0), 0.1),
    ("anti_cfg", -0.5, (1.0, -0.5, -0.5), 0.1),
])
def test_guidance_presets(name, kappa, knobs, dropout):
    g = guidance_preset(name, kappa)
    assert (g.cfg_teacher, g.cfg_fake_eval, g.cfg_fake_train) == knobs
    assert g.prompt_dropout == dropout
    assert g.fake_uses_cfg == (knobs[1:] != (1.0, 1.0))
    assert guidance_preset(name, kappa, prompt_dropout=0.3).prompt_dropout == 0.3


@pytest.mark.parametrize("kappa", [0.0, 1.0, 2.0])
def test_anti_cfg_needs_negative_kappa(kappa):
    with pytest.raises(ValueError, match=rf"anti_cfg.*kappa={kappa}"):
        guidance_preset("anti_cfg", kappa)


def test_guidance_bad_input():
    with pytest.raises(ValueError, match=r"'lsg'.*unknown.*sid_lsg"):
        guidance_preset("lsg", 2.0)
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match="prompt_dropout"):
            Guidance(prompt_dropout=p)


def test_drop_conditions_p0_is_identity():
    _, _, cond, uncond = _cond_batch()
    out = drop_conditions(jax.random.key(0), cond, uncond, 0.0)
    assert _tree_equal(out, cond)


def test_drop_conditions_drops_about_p_per_sample_over_a_pytree():
    n = 20_000
    cond = {"label": jnp.arange(n, dtype=jnp.int32) % 7, "emb": jnp.ones((n, 2, 3))}
    uncond = {"label": jnp.full((n,), -1, jnp.int32), "emb": jnp.zeros((n, 2, 3))}
    out = drop_conditions(jax.random.key(0), cond, uncond, 0.5)
    assert jax.tree.structure(out) == jax.tree.structure(cond)
    assert out["emb"].shape == (n, 2, 3)
    dropped_label = np.asarray(out["label"] == -1)
    emb = np.asarray(out["emb"]).reshape(n, -1)
    dropped_emb = np.all(emb == 0, axis=1)
    assert np.all(np.all(emb == 0, axis=1) | np.all(emb == 1, axis=1))  # whole samples swapped
    np.testing.assert_array_equal(dropped_label, dropped_emb)  # one decision per sample, all leaves
    np.testing.assert_array_equal(np.asarray(out["label"])[~dropped_label], np.asarray(cond["label"])[~dropped_label])
    assert abs(dropped_label.mean() - 0.5) < 0.02  # 5.7 standard errors
    out_01 = drop_conditions(jax.random.key(0), cond, uncond, 0.1)
    assert abs(np.mean(np.asarray(out_01["label"]) == -1) - 0.1) < 0.012
    other = drop_conditions(jax.random.key(1), cond, uncond, 0.5)
    assert not np.array_equal(np.asarray(other["label"] == -1), dropped_label)
