"""Tests of the pure loss kernels in jaxdistill.losses (CPU, small arrays, analytic denoisers)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import losses as L

SHAPE = (4, 3, 5, 5)
SIGMA = np.array([0.3, 1.0, 2.5, 7.0], np.float32)
sg = jax.lax.stop_gradient


def _b(v, x):
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def make_params(seed, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 3)
    p = {
        "a": 1.0 + 0.3 * jax.random.normal(k[0], SHAPE[1:]),
        "m": jnp.eye(5) + 0.3 * jax.random.normal(k[1], (5, 5)),
        "b": 0.2 * jax.random.normal(k[2], SHAPE[1:]),
    }
    return jax.tree.map(lambda a: a.astype(dtype), p)


def net(p, x, s):
    """A nonlinear EDM-preconditioned denoiser; its Jacobian mixes elements within a sample."""
    s = _b(s.astype(x.dtype), x)
    c_in = 1.0 / jnp.sqrt(1.0 + s**2)
    h = jnp.tanh(p["a"] * x * c_in) @ p["m"] + p["b"]
    return x / (1.0 + s**2) + s * c_in * h


def gauss(mu, var):
    """Exact denoiser of N(mu, var) data: (x·v + μσ²)/(v + σ²)."""

    def d(x, s):
        s2 = _b(s, x) ** 2
        return (x * var + mu * s2) / (var + s2)

    return d


P_REAL, P_FAKE = make_params(1), make_params(2)
REAL = functools.partial(net, P_REAL)
FAKE = functools.partial(net, P_FAKE)


def data(seed=0, shape=SHAPE, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 2)
    x = jax.random.normal(k[0], shape, dtype)
    n = jax.random.normal(k[1], shape, dtype)
    return x, n, jnp.asarray(SIGMA[: shape[0]])


def fs(x, n, s, real=REAL, fake=FAKE):
    x_t = x + _b(s, x) * n
    return real(x_t, s), fake(x_t, s)


def grad_x(kernel, x, *args, **kw):
    return jax.grad(lambda x: kernel(x, *args, **kw)[0].sum())(x)


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


LOGITS = jnp.array([[-1.0, -0.5], [0.0, 0.4], [0.7, 1.7], [15.0, 14.0]], jnp.float32)

# Every kernel as f(x, noise, sigma, real, fake) -> (loss, aux).
KERNELS = {
    "sid": L.sid,
    "sid_snr": functools.partial(L.sid, alpha=1.0, weighting="snr"),
    "sim": L.sim,
    "sim_huber": functools.partial(L.sim, distance="pseudo_huber", huber_c=0.5, time_weight="one_minus_t"),
    "dmd": L.dmd,
    "diff_instruct": L.diff_instruct,
    "vsd": L.vsd,
    "fdistill": lambda x, n, s, r, f, **kw: L.fdistill(x, n, s, r, f, LOGITS, **kw),
    "fdistill_pearson": lambda x, n, s, r, f: L.fdistill(x, n, s, r, f, LOGITS, divergence="pearson"),
    "score_matching": lambda x, n, s, r, f: L.score_matching(x, n, s, f, weighting="flow"),
}
GENERATOR_KERNELS = [k for k in KERNELS if k != "score_matching"]


def test_exports():
    for name in ["sid", "sim", "dmd", "diff_instruct", "vsd", "fdistill", "score_matching",
                 "discriminator_loss", "generator_adversarial_loss"]:
        assert name in L.__all__ and callable(getattr(L, name))


# ----------------------------------------------------------------------------------------- DMD


def test_dmd_gradient_is_minus_delta_over_weight():
    x, n, s = data()
    f_r, f_f = fs(x, n, s)
    w = jnp.mean(jnp.abs(x - f_r), axis=(1, 2, 3))
    expected = -(f_r - f_f) / _b(w, x)
    close(grad_x(L.dmd, x, n, s, REAL, FAKE), expected, rtol=1e-4, atol=1e-6)
    loss, aux = L.dmd(x, n, s, REAL, FAKE)
    assert loss.shape == (4,) and loss.dtype == jnp.float32
    close(loss, 0.5 * jnp.sum(expected**2, axis=(1, 2, 3)), rtol=1e-4)
    close(aux["scale"], 1.0 / w)
    close(aux["delta_abs"], jnp.mean(jnp.abs(f_r - f_f), axis=(1, 2, 3)))


def test_dmd_blocks_gradient_into_denoisers():
    x, n, s = data()
    g = jax.grad(lambda p: L.dmd(x, n, s, functools.partial(net, p), FAKE)[0].sum())(P_REAL)
    assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(g))


# ----------------------------------------------------------------------------------------- SiD


def test_sid_value_matches_formula():
    x, n, s = data()
    f_r, f_f = fs(x, n, s)
    d = f_r - f_f
    w = jnp.maximum(jnp.mean(jnp.abs(x - f_r), axis=(1, 2, 3)), 1e-5)
    expected = jnp.sum(d * ((f_r - x) - 1.2 * d), axis=(1, 2, 3)) / w
    loss, aux = L.sid(x, n, s, REAL, FAKE)
    close(loss, expected, rtol=1e-5)
    close(aux["scale"], 1.0 / w)


@pytest.mark.parametrize(
    "name,fn",
    [
        ("one_minus_t", lambda s: 1 - s / (1 + s)),
        ("one_minus_t_squared", lambda s: (1 - s / (1 + s)) ** 2),
        ("snr_sqrt", lambda s: (1 - s / (1 + s)) / (s / (1 + s))),
        ("snr", lambda s: ((1 - s / (1 + s)) / (s / (1 + s))) ** 2),
        ("one_over_t", lambda s: (1 + s) / s),
        ("one_over_t_squared", lambda s: ((1 + s) / s) ** 2),
    ],
)
def test_sid_time_weightings_in_flow_time(name, fn):
    x, n, s = data()
    base, _ = L.sid(x, n, s, REAL, FAKE, alpha=1.0, weighting="snr")  # scale 1/σ²
    loss, aux = L.sid(x, n, s, REAL, FAKE, alpha=1.0, weighting=name)
    close(aux["scale"], fn(SIGMA.astype(np.float64)), rtol=1e-5)
    close(loss, base * SIGMA**2 * fn(SIGMA.astype(np.float64)), rtol=1e-4)


def test_sid_gradient_flows_through_both_denoisers():
    x, n, s = data()
    g = grad_x(L.sid, x, n, s, REAL, FAKE)
    g_detached = grad_x(L.sid, x, n, s, lambda a, b: sg(REAL(a, b)), lambda a, b: sg(FAKE(a, b)))
    f_r, f_f = fs(x, n, s)
    _, aux = L.sid(x, n, s, REAL, FAKE)
    # With detached nets only the explicit -x_g term remains: -scale·Δ.
    close(g_detached, -_b(aux["scale"], x) * (f_r - f_f), rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(g - g_detached))) > 1e-2 * float(jnp.max(jnp.abs(g)))
    # Only real detached, only fake detached: both differ from the full gradient too.
    for r, f in [(lambda a, b: sg(REAL(a, b)), FAKE), (REAL, lambda a, b: sg(FAKE(a, b)))]:
        assert float(jnp.max(jnp.abs(g - grad_x(L.sid, x, n, s, r, f)))) > 1e-3


def test_sid_gradient_matches_closed_form_with_jacobians():
    x, n, s = data()
    alpha = 1.2
    x_t = x + _b(s, x) * n
    f_r, vjp_r = jax.vjp(lambda z: REAL(z, s), x_t)
    f_f, vjp_f = jax.vjp(lambda z: FAKE(z, s), x_t)
    d = f_r - f_f
    _, aux = L.sid(x, n, s, REAL, FAKE, alpha=alpha)
    u = (f_r - x) - 2 * alpha * d
    expected = vjp_r(u)[0] - vjp_f(u)[0] + vjp_r(d)[0] - d
    close(grad_x(L.sid, x, n, s, REAL, FAKE, alpha=alpha), _b(aux["scale"], x) * expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["sid_snr", "sim_huber"])  # σ-only weights: FD sees no weight change
def test_gradient_matches_finite_differences_x64(kernel):
    x, n, _ = data()
    v = np.random.default_rng(7).normal(size=SHAPE)
    with jax.enable_x64(True):
        f64 = lambda a: jnp.asarray(np.asarray(a), jnp.float64)  # noqa: E731
        real, fake = (functools.partial(net, jax.tree.map(f64, p)) for p in (P_REAL, P_FAKE))
        x, n, s, v = f64(x), f64(n), f64(SIGMA), f64(v)

        def f(x):
            return KERNELS[kernel](x, n, s, real, fake)[0].sum()

        f = jax.jit(f)
        g = jax.jit(jax.grad(f))(x)
        eps = 1e-6
        fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.vdot(g, v)), float(fd), rtol=1e-6)


# ----------------------------------------------------------------------------------------- SIM


def test_sim_l2_equals_sid_alpha1_up_to_time_weight():
    x, n, s = data()
    sid_snr, _ = L.sid(x, n, s, REAL, FAKE, alpha=1.0, weighting="snr")
    sim_l2, aux = L.sim(x, n, s, REAL, FAKE)
    close(aux["scale"], np.ones(4))
    close(sim_l2 / SIGMA**2, sid_snr, rtol=1e-5)
    close(L.sim(x, n, s, REAL, FAKE, time_weight="snr")[0], sid_snr, rtol=1e-5)
    # Gradients (w.r.t. x_g, through both nets), with SiD's data-dependent weight made equal.
    w = L.sid(x, n, s, REAL, FAKE)[1]["scale"]
    g_sim = jax.grad(lambda x: (L.sim(x, n, s, REAL, FAKE)[0] * sg(jnp.asarray(SIGMA) ** -2)).sum())(x)
    close(g_sim, grad_x(L.sid, x, n, s, REAL, FAKE, alpha=1.0, weighting="snr"), rtol=1e-4, atol=1e-6)
    g_sim_w = jax.grad(lambda x: (L.sim(x, n, s, REAL, FAKE)[0] * sg(w)).sum())(x)
    close(g_sim_w, grad_x(L.sid, x, n, s, REAL, FAKE, alpha=1.0), rtol=1e-4, atol=1e-6)


def test_sim_pseudo_huber_value_and_undetached_normaliser():
    x, n, s = data()
    c = 0.7
    f_r, f_f = fs(x, n, s)
    d = f_r - f_f
    inner = jnp.sum(d * (f_f - x), axis=(1, 2, 3))
    norm = jnp.sqrt(jnp.sum(d**2, axis=(1, 2, 3)) + c**2)
    close(L.sim(x, n, s, REAL, FAKE, distance="pseudo_huber", huber_c=c)[0], inner / norm, rtol=1e-5)
    # The normaliser is differentiated: gradient ≠ gradient of (L2 loss)·sg(1/norm).
    g = grad_x(L.sim, x, n, s, REAL, FAKE, distance="pseudo_huber", huber_c=c)
    g_det = jax.grad(lambda x: (L.sim(x, n, s, REAL, FAKE)[0] * sg(1.0 / norm)).sum())(x)
    assert float(jnp.max(jnp.abs(g - g_det))) > 1e-3 * float(jnp.max(jnp.abs(g)))
    # For c >> ‖Δ‖ pseudo-Huber·c tends to L2.
    big = 1e4
    close(L.sim(x, n, s, REAL, FAKE, distance="pseudo_huber", huber_c=big)[0] * big, L.sim(x, n, s, REAL, FAKE)[0],
          rtol=1e-3)


# ----------------------------------------------------------------------------------------- f-distill


H_CLOSED = {
    "rkl": lambda r: np.ones_like(r),
    "kl": lambda r: r,
    "js": lambda r: r / (1 + r),
    "sh": lambda r: np.sqrt(r),
    "jeffreys": lambda r: 1 + r,
    "pearson": lambda r: r**2,
    "neyman": lambda r: 1 / r,
    "sf": lambda r: 1 / (1 + r),
}


def test_fdistill_rkl_equals_dmd_exactly():
    x, n, s = data()
    l_f, aux = L.fdistill(x, n, s, REAL, FAKE, LOGITS, divergence="rkl")
    l_d, _ = L.dmd(x, n, s, REAL, FAKE)
    np.testing.assert_array_equal(np.asarray(l_f), np.asarray(l_d))
    np.testing.assert_array_equal(np.asarray(aux["h"]), np.ones(4, np.float32))
    g_f = jax.grad(lambda x: L.fdistill(x, n, s, REAL, FAKE, LOGITS, divergence="rkl")[0].sum())(x)
    np.testing.assert_array_equal(np.asarray(g_f), np.asarray(grad_x(L.dmd, x, n, s, REAL, FAKE)))


@pytest.mark.parametrize("div", sorted(H_CLOSED))
def test_fdistill_h_closed_forms_and_normalisation(div):
    assert set(H_CLOSED) == set(L.F_DIVERGENCES)
    x, n, s = data()
    _, aux = L.fdistill(x, n, s, REAL, FAKE, LOGITS, divergence=div)
    # mean logits -0.75, 0.2, 1.2 and 14.5 -> clipped to 10 -> r = e^10 clipped to 20.
    r = np.array([np.exp(-0.75), np.exp(0.2), np.exp(1.2), 20.0])
    close(aux["ratio"], r, rtol=1e-5)
    h = H_CLOSED[div](r)
    close(aux["h"], h / h.mean(), rtol=1e-5)
    close(jnp.mean(aux["h"]), 1.0, rtol=1e-6)
    # Gradient: -h_i·Δ_i/w_i.
    f_r, f_f = fs(x, n, s)
    w = jnp.mean(jnp.abs(x - f_r), axis=(1, 2, 3))
    g = jax.grad(lambda x: L.fdistill(x, n, s, REAL, FAKE, LOGITS, divergence=div)[0].sum())(x)
    close(g, -_b(aux["h"] / w, x) * (f_r - f_f), rtol=1e-4, atol=1e-6)


def test_fdistill_ratio_clip_low_and_logit_clip():
    x, n, s = data()
    logits = jnp.array([[-30.0], [-1.5], [0.0], [3.0]])
    _, aux = L.fdistill(x, n, s, REAL, FAKE, logits, divergence="kl", logit_clip=2.0, ratio_clip=(0.2, 10.0))
    # -30 -> -2 -> e^-2 < 0.2 -> 0.2 (ratio clip); 3 -> 2 (logit clip) -> e^2 < 10.
    close(aux["ratio"], [0.2, np.exp(-1.5), 1.0, np.exp(2.0)], rtol=1e-5)


def test_fdistill_logits_carry_no_gradient():
    x, n, s = data()
    g = jax.grad(lambda lg: L.fdistill(x, n, s, REAL, FAKE, lg)[0].sum())(LOGITS)
    assert float(jnp.abs(g).max()) == 0.0


# ----------------------------------------------------------------------------------------- DI / VSD


def test_diff_instruct_gradient_is_minus_delta():
    x, n, s = data()
    f_r, f_f = fs(x, n, s)
    close(grad_x(L.diff_instruct, x, n, s, REAL, FAKE), -(f_r - f_f), rtol=1e-5, atol=1e-6)
    close(L.diff_instruct(x, n, s, REAL, FAKE)[0], jnp.sum((f_f - f_r) * x, axis=(1, 2, 3)), rtol=1e-5)


def test_vsd_gradient_is_minus_omega_delta():
    x, n, s = data()
    f_r, f_f = fs(x, n, s)
    omega = SIGMA / (1 + SIGMA**2)
    # ω = a·s of the VP schedule with ᾱ = 1/(1+σ²).
    abar = 1 / (1 + SIGMA.astype(np.float64) ** 2)
    close(omega, np.sqrt(abar) * np.sqrt(1 - abar), rtol=1e-6)
    expected = -_b(jnp.asarray(omega), x) * (f_r - f_f)
    close(grad_x(L.vsd, x, n, s, REAL, FAKE), expected, rtol=1e-4, atol=1e-6)
    loss, aux = L.vsd(x, n, s, REAL, FAKE)
    close(aux["scale"], omega)
    close(loss, 0.5 * jnp.sum(expected**2, axis=(1, 2, 3)), rtol=1e-4)


# ----------------------------------------------------------------------------------------- fixed point


@pytest.mark.parametrize("name", GENERATOR_KERNELS)
def test_zero_gradient_when_fake_equals_real(name):
    x, n, s = data()
    kernel = KERNELS[name]
    # Sanity: with different nets the gradient is not zero.
    assert float(jnp.abs(grad_x(kernel, x, n, s, REAL, FAKE)).max()) > 1e-3
    g = grad_x(kernel, x, n, s, REAL, REAL)
    # Exactly zero up to float32 round-off of the two (cancelling) backward paths through the nets.
    assert float(jnp.abs(g).max()) < 1e-6
    close(kernel(x, n, s, REAL, REAL)[0], np.zeros(4), atol=0)


def test_sid_zero_gradient_through_shared_net_params():
    x, n, s = data()

    def loss(p):
        d = functools.partial(net, p)
        return L.sid(x, n, s, d, d)[0].sum()

    for leaf in jax.tree.leaves(jax.grad(loss)(P_REAL)):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)


# ----------------------------------------------------------------------------------------- score matching


def test_score_matching_perfect_denoiser_on_point_mass_is_zero():
    x0, n, s = data()
    for wt in L.DSM_WEIGHTINGS:
        loss, _ = L.score_matching(x0, n, s, lambda x_t, sig: x0, weighting=wt)
        np.testing.assert_array_equal(np.asarray(loss), 0.0)


def test_score_matching_closed_form_for_identity_denoiser():
    # D(x_t) = x_t is wrong by σ·ε, so loss = λ(σ)·σ²·‖ε‖².
    x0, n, s = data()
    e2 = np.sum(np.asarray(n, np.float64) ** 2, axis=(1, 2, 3))
    s64, sd = SIGMA.astype(np.float64), 0.5
    expected = {
        "edm": (s64**2 + sd**2) / sd**2 * e2,
        "eps": e2,
        "flow": (1 + s64) ** 2 * e2,
        "x0": s64**2 * e2,
        "none": s64**2 * e2,
    }
    for wt, val in expected.items():
        close(L.score_matching(x0, n, s, lambda x_t, sig: x_t, weighting=wt, sigma_data=sd)[0], val, rtol=1e-5)


def test_score_matching_weightings_equal_parameterisation_errors():
    x0, n, s = data()
    x_t = x0 + _b(s, x0) * n
    d = FAKE(x_t, s)
    sb = _b(s, x0)
    eps_hat = (x_t - d) / sb
    close(L.score_matching(x0, n, s, FAKE, weighting="eps")[0], jnp.sum((eps_hat - n) ** 2, axis=(1, 2, 3)), rtol=1e-4)
    t = sb / (1 + sb)
    x_flow = x_t / (1 + sb)
    v_hat = (x_flow - d) / t
    close(L.score_matching(x0, n, s, FAKE, weighting="flow")[0], jnp.sum((v_hat - (n - x0)) ** 2, axis=(1, 2, 3)),
          rtol=1e-4)
    lam = (s**2 + 0.25) / (s * 0.5) ** 2
    close(L.score_matching(x0, n, s, FAKE)[0], lam * jnp.sum((d - x0) ** 2, axis=(1, 2, 3)), rtol=1e-5)
    close(L.score_matching(x0, n, s, FAKE, weighting="x0")[0], jnp.sum((d - x0) ** 2, axis=(1, 2, 3)), rtol=1e-5)


def test_score_matching_cfg_before_the_error_via_guided_closure():
    # CFG on x0 equals CFG on ε: the ε-loss of the guided x0 closure equals ‖ε̂^κ - ε‖².
    x0, n, s = data()
    kappa = 2.5
    cond, uncond = REAL, FAKE
    guided = lambda x, sig: uncond(x, sig) + kappa * (cond(x, sig) - uncond(x, sig))  # noqa: E731
    x_t = x0 + _b(s, x0) * n
    eps = lambda d: (x_t - d) / _b(s, x0)  # noqa: E731
    eps_k = eps(uncond(x_t, s)) + kappa * (eps(cond(x_t, s)) - eps(uncond(x_t, s)))
    close(L.score_matching(x0, n, s, guided, weighting="eps")[0], jnp.sum((eps_k - n) ** 2, axis=(1, 2, 3)),
          rtol=1e-4)


def test_score_matching_trains_the_denoiser():
    x0, n, s = data()
    g = jax.grad(lambda p: L.score_matching(x0, n, s, functools.partial(net, p))[0].sum())(P_FAKE)
    assert all(float(jnp.abs(v).max()) > 0 for v in jax.tree.leaves(g))
    # With the analytic Gaussian denoiser of the right (μ, v), the loss is the EDM weighted error.
    mu, var = jnp.zeros(SHAPE[1:]), jnp.ones(SHAPE[1:])
    loss, _ = L.score_matching(x0, n, s, gauss(mu, var), weighting="x0")
    x_t = x0 + _b(s, x0) * n
    close(loss, jnp.sum((x_t / (1 + _b(s, x0) ** 2) - x0) ** 2, axis=(1, 2, 3)), rtol=1e-5)


# ----------------------------------------------------------------------------------------- adversarial


def test_adversarial_losses_match_torch_bce_with_logits():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    rng = np.random.default_rng(0)
    real = (rng.normal(size=(4, 1, 2, 3)) * 8).astype(np.float32)
    fake = (rng.normal(size=(4, 1, 2, 3)) * 8).astype(np.float32)
    real[0, 0, 0, 0], fake[1, 0, 1, 2] = 25.0, -30.0  # beyond the ±10 clamp
    for clamp in [10.0, None]:
        tr = torch.tensor(real, requires_grad=True)
        tfk = torch.tensor(fake, requires_grad=True)
        cr = tr if clamp is None else torch.clamp(tr, -clamp, clamp)
        cf = tfk if clamp is None else torch.clamp(tfk, -clamp, clamp)
        d_ref = (tf.binary_cross_entropy_with_logits(cr, torch.ones_like(cr), reduction="none").mean((1, 2, 3))
                 + tf.binary_cross_entropy_with_logits(cf, torch.zeros_like(cf), reduction="none").mean((1, 2, 3)))
        g_ref = tf.binary_cross_entropy_with_logits(cf, torch.ones_like(cf), reduction="none").mean((1, 2, 3))
        d_ref.sum().backward()
        d = L.discriminator_loss(jnp.asarray(real), jnp.asarray(fake), clamp=clamp)
        g = L.generator_adversarial_loss(jnp.asarray(fake), clamp=clamp)
        assert d.shape == (4,) and g.shape == (4,)
        close(d, d_ref.detach().numpy(), rtol=1e-5)
        close(g, g_ref.detach().numpy(), rtol=1e-5)
        gd_r, gd_f = jax.grad(lambda a, b: L.discriminator_loss(a, b, clamp=clamp).sum(), argnums=(0, 1))(
            jnp.asarray(real), jnp.asarray(fake))
        close(gd_r, tr.grad.numpy(), rtol=1e-5, atol=1e-7)
        close(gd_f, tfk.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_adversarial_batch_mismatch_raises():
    with pytest.raises(ValueError, match="real_logits"):
        L.discriminator_loss(jnp.zeros((4, 1)), jnp.zeros((3, 1)))


# ----------------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_jit_vmap_grad(name):
    kernel = KERNELS[name]
    x, n, s = data()
    x2, n2, _ = data(seed=3)
    xs, ns, ss = jnp.stack([x, x2]), jnp.stack([n, n2]), jnp.stack([s, s[::-1]])

    @jax.jit
    def transformed(xs, ns, ss):
        # vmap over an extra leading axis of 2 "replicas", and grad, both under jit.
        vm, _ = jax.vmap(lambda x, n, s: kernel(x, n, s, REAL, FAKE))(xs, ns, ss)
        g = jax.grad(lambda x: kernel(x, ns[0], ss[0], REAL, FAKE)[0].sum())(xs[0])
        return vm, g

    vm, g = transformed(xs, ns, ss)
    assert vm.shape == (2, 4)
    for i in range(2):
        eager, _ = kernel(xs[i], ns[i], ss[i], REAL, FAKE)
        assert eager.shape == (4,) and bool(jnp.all(jnp.isfinite(eager)))
        close(vm[i], eager, rtol=1e-5, atol=1e-6)
    close(g, grad_x(kernel, x, n, s, REAL, FAKE), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_bad_sample_does_not_poison_the_others(name):
    x, n, s = data()
    x = x.at[0, 0, 0, 0].set(jnp.nan)
    loss, _ = KERNELS[name](x, n, s, REAL, FAKE)
    assert bool(jnp.all(jnp.isfinite(loss[1:])))


def test_fdistill_nan_logit_does_not_poison_the_batch():
    x, n, s = data()
    loss, aux = L.fdistill(x, n, s, REAL, FAKE, LOGITS.at[0, 0].set(jnp.nan))
    assert bool(jnp.all(jnp.isfinite(loss))) and bool(jnp.all(jnp.isfinite(aux["h"])))


@pytest.mark.parametrize("name", ["sid", "fdistill"])
def test_bf16_inputs_use_float32_normalisers(name):
    x, n, s = data()
    ref, aux_ref = KERNELS[name](x, n, s, REAL, FAKE)
    params = [jax.tree.map(lambda a: a.astype(jnp.bfloat16), p) for p in (P_REAL, P_FAKE)]
    real, fake = (functools.partial(net, p) for p in params)
    xb, nb = x.astype(jnp.bfloat16), n.astype(jnp.bfloat16)
    loss, aux = jax.jit(lambda x: KERNELS[name](x, nb, s, real, fake))(xb)
    assert loss.dtype == jnp.float32 and aux["scale"].dtype == jnp.float32
    close(aux["scale"], aux_ref["scale"], rtol=0.1)
    assert jax.jit(lambda x: grad_x(KERNELS[name], x, nb, s, real, fake))(xb).dtype == jnp.bfloat16


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,arg,valid",
    [
        (lambda x, n, s: L.sid(x, n, s, REAL, FAKE, weighting="nope"), "weighting", "mean_abs"),
        (lambda x, n, s: L.sim(x, n, s, REAL, FAKE, distance="l1"), "distance", "pseudo_huber"),
        (lambda x, n, s: L.sim(x, n, s, REAL, FAKE, time_weight="mean_abs"), "time_weight", "one_minus_t"),
        (lambda x, n, s: L.fdistill(x, n, s, REAL, FAKE, LOGITS, divergence="tv"), "divergence", "jeffreys"),
        (lambda x, n, s: L.score_matching(x, n, s, FAKE, weighting="v"), "weighting", "flow"),
    ],
)
def test_unknown_names_raise(call, arg, valid):
    x, n, s = data()
    with pytest.raises(ValueError, match=arg) as e:
        call(x, n, s)
    assert valid in str(e.value) and "valid choices" in str(e.value)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_shape_mismatch_raises(name):
    kernel = KERNELS[name]
    x, n, s = data()
    with pytest.raises(ValueError, match="noise"):
        kernel(x, n[:, :2], s, REAL, FAKE)
    with pytest.raises(ValueError, match="sigma"):
        kernel(x, n, s[:3], REAL, FAKE)
    with pytest.raises(ValueError, match="sigma"):
        jax.jit(lambda x, n, s: kernel(x, n, s, REAL, FAKE))(x, n, s[:, None])


def test_denoiser_output_shape_and_logit_batch_checked():
    x, n, s = data()
    with pytest.raises(ValueError, match="fake denoiser"):
        L.sid(x, n, s, REAL, lambda a, b: a[:, :1])
    with pytest.raises(ValueError, match="logits"):
        L.fdistill(x, n, s, REAL, FAKE, LOGITS[:3])
