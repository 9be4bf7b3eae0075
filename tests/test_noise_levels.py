"""Noise-level distributions (`jaxdistill.noise_levels`) against their published definitions."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from jaxdistill.diffusion.schedules import stable_diffusion_schedule
from jaxdistill.noise_levels import NOISE_LEVELS, distribution_quantiles, get_noise_level

N = 200_000


def _draw(name, seed=0, n=N, **kw):
    return np.asarray(get_noise_level(name, **kw)(jax.random.key(seed), n), np.float64)


def _karras(u, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """SiD's σ(u) in float64 (u = 0 → σ_min, u = 1 → σ_max)."""
    a, b = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (b + (1 - np.asarray(u, np.float64)) * (a - b)) ** rho


def test_karras_reference_values():
    """The spec's numbers (loss-kernels.md): u = 0.5 → σ ≈ 2.52, u = 0.8 → σ ≈ 24.4, u = 1 → 80."""
    assert _karras(0.0) == pytest.approx(0.002)
    assert _karras(0.5) == pytest.approx(2.52, abs=0.005)
    assert _karras(0.8) == pytest.approx(24.4, abs=0.05)
    assert _karras(1.0) == pytest.approx(80.0)


def test_sid_karras_support_and_quantiles():
    s = _draw("sid_karras", t_max=800.0)
    lo, hi = 0.002, _karras(0.8)
    assert s.shape == (N,)
    assert s.min() >= lo * (1 - 1e-5) and s.min() < lo * 1.01
    assert s.max() <= hi * (1 + 1e-5) and s.max() > hi * 0.99
    # σ(u) is increasing, u ~ U[0, 0.8]: the q-quantile of σ is σ(0.8·q)
    qs = np.array([0.05, 0.25, 0.5, 0.625, 0.75, 0.95])
    np.testing.assert_allclose(np.quantile(s, qs), _karras(0.8 * qs), rtol=0.03)
    # median u = 0.4 → σ ≈ 0.965; the 62.5% quantile is u = 0.5, σ ≈ 2.52 (SiD's σ_init)
    assert np.median(s) == pytest.approx(_karras(0.4), rel=0.03)
    assert np.quantile(s, 0.625) == pytest.approx(2.52, rel=0.03)


def test_sid_karras_t_max_1000_reaches_sigma_max():
    s = _draw("sid_karras", t_max=1000.0)
    assert s.max() > 70.0 and s.max() <= 80.0 * (1 + 1e-5)
    assert np.median(s) == pytest.approx(_karras(0.5), rel=0.03)


def test_edm_lognormal():
    s = _draw("edm_lognormal")
    assert np.all(s > 0)
    assert np.log(s).mean() == pytest.approx(-1.2, abs=0.015)  # standard error 0.0027
    assert np.log(s).std() == pytest.approx(1.2, abs=0.015)
    s2 = _draw("edm_lognormal", p_mean=0.5, p_std=0.3)
    assert np.log(s2).mean() == pytest.approx(0.5, abs=0.01)
    assert np.log(s2).std() == pytest.approx(0.3, abs=0.01)


def test_ddpm_sigmas_are_sd_table_entries():
    table = np.asarray(stable_diffusion_schedule().sigmas, np.float32)
    assert np.all(np.diff(table) > 0)  # distinct entries: a σ identifies its t
    s = np.asarray(get_noise_level("ddpm")(jax.random.key(0), 100_000))
    t = np.searchsorted(table, s)
    np.testing.assert_array_equal(table[np.minimum(t, 999)], s)  # exactly table entries
    assert t.min() == 20 and t.max() == 979  # t ∈ [20, 980), both ends reached
    assert len(np.unique(t)) == 960
    counts = np.bincount(t, minlength=1000)[20:980]
    assert counts.min() > 50 and counts.max() < 170  # ~104 each: uniform over t
    s_full = np.asarray(get_noise_level("ddpm", t_min=0, t_max=1000)(jax.random.key(1), 50_000))
    assert s_full.min() == table[0] and s_full.max() == table[999]


def test_logit_normal_median_t_is_two_thirds():
    s = _draw("logit_normal")
    t = s / (1 + s)
    assert np.median(t) == pytest.approx(2 / 3, abs=0.005)
    assert np.median(s) == pytest.approx(2.0, rel=0.02)
    logit = np.log(t / (1 - t))
    assert logit.mean() == pytest.approx(math.log(2.0), abs=0.02)
    assert logit.std() == pytest.approx(1.6, abs=0.02)
    assert t.min() >= 1e-4 * (1 - 1e-3) and t.max() <= (1 - 1e-4) * (1 + 1e-6)


def test_distribution_quantiles_helper():
    q = distribution_quantiles(get_noise_level("edm_lognormal"), qs=(0.5,), n=50_000)
    assert q[0] == pytest.approx(math.exp(-1.2), rel=0.03)


@pytest.mark.parametrize("name", sorted(NOISE_LEVELS))
def test_deterministic_and_key_dependent(name):
    fn = get_noise_level(name)
    a, b = fn(jax.random.key(3), 64), fn(jax.random.key(3), 64)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64,) and np.all(np.asarray(a) > 0)
    assert not np.array_equal(a, fn(jax.random.key(4), 64))


def test_unknown_name():
    with pytest.raises(ValueError, match=r"'karras'.*unknown.*sid_karras"):
        get_noise_level("karras")


@pytest.mark.parametrize("name, kwargs, pattern", [
    ("edm_lognormal", {"mean": -1.2}, r"bad parameters \['mean'\].*'edm_lognormal'"),
    ("sid_karras", {"tmax": 800}, r"bad parameters \['tmax'\]"),
    ("logit_normal", {"p_std": 1.0}, r"bad parameters \['p_std'\]"),
    ("sid_karras", {"t_max": 0.0}, r"t_max must be in \(0, 1000\]; got 0.0"),
    ("sid_karras", {"t_max": 1200.0}, r"t_max must be in \(0, 1000\]; got 1200.0"),
    ("ddpm", {"t_min": 500, "t_max": 500}, r"0 <= t_min < t_max <= 1000; got t_min=500, t_max=500"),
    ("ddpm", {"t_min": 20, "t_max": 1001}, r"t_max=1001"),
    ("ddpm", {"t_min": -1}, r"t_min=-1"),
])
def test_bad_kwargs(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_noise_level(name, **kwargs)
