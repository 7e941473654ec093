"""Stochastic (perturbed-observation) EnKF against the Kalman filter.

References: the textbook gain K = P Hᵀ (H P Hᵀ + R)⁻¹ computed in float64 NumPy from the
background ensemble covariance (the gain is read off the method as the response of the
analysis to a unit change of one observation, same key so the same perturbations); the
exact Kalman update with the true background covariance for a large ensemble (sampling
error O(N^-1/2)); perturbations ε_j ~ N(0, 1) recovered from the increments. Localised:
the Schur-product gain (Houtekamer & Mitchell 2001) in float64 with Gaspari–Cohn tapers
from ``reference`` (cyclic distance; haversine km and Δ ln p on the sphere), and the
global filter for a radius beyond the domain.
"""

import dataclasses
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import ring_taper_ref, sphere_taper_ref

from baselines import StochasticEnKF
from ensda.observe import Observations, ObsNetwork
from ensda.testbeds.lorenz96.model import RingGrid
from ensda.testbeds.sphere.grid import LatLonGrid
from ensda.testbeds.sphere.observe import GlobalObsNetwork
from ensda.testbeds.sphere.testbed import Channels


@jax.jit
def _analyse(assim, bg, obs, key):
    return assim.analyse(bg, obs, key)


def analyse(assim, bg, obs, key=0):
    return np.asarray(
        _analyse(assim, jnp.asarray(bg, jnp.float32), obs, jax.random.key(key)), np.float64
    )


def make_obs(y, idx, r):
    return Observations(
        y=jnp.asarray(y, jnp.float32),
        idx=jnp.asarray(idx, jnp.int32),
        r_std=jnp.asarray(r, jnp.float32),
    )


def textbook(bg, idx, r):
    bg = bg.astype(np.float64)
    n = bg.shape[1]
    pb = np.cov(bg, rowvar=False, ddof=1)
    h = np.zeros((len(idx), n))
    h[np.arange(len(idx)), idx] = 1.0
    k = pb @ h.T @ np.linalg.inv(h @ pb @ h.T + np.diag(np.asarray(r, np.float64) ** 2))
    return k, h, pb


def test_gain_equals_textbook_formula_from_ensemble_covariance():
    rng = np.random.default_rng(0)
    n, n_mem, idx = 7, 12, [0, 2, 3, 6]
    p = len(idx)
    bg = rng.normal(1.0, 2.0, (n_mem, n)).astype(np.float32)
    bg[:, 1] += bg[:, 0]  # some correlation between observed and unobserved sites
    y = rng.normal(0.0, 2.0, p)
    r = rng.uniform(0.5, 1.5, p)
    assim = StochasticEnKF()
    base = analyse(assim, bg, make_obs(y, idx, r))
    gain = np.empty((n, p))
    for m in range(p):
        bumped = y.copy()
        bumped[m] += 1.0
        xa = analyse(assim, bg, make_obs(bumped, idx, r))
        diff = xa - base  # (N, n): K e_m for every member
        np.testing.assert_allclose(diff, np.broadcast_to(diff.mean(0), diff.shape), atol=2e-4)
        gain[:, m] = diff.mean(0)
    k_ref, h, _ = textbook(bg, idx, r)
    np.testing.assert_allclose(gain, k_ref, rtol=2e-3, atol=5e-4)
    # with centred perturbations the analysis mean is exactly the Kalman mean update
    xb = bg.astype(np.float64).mean(0)
    np.testing.assert_allclose(base.mean(0), xb + k_ref @ (y - h @ xb), rtol=1e-4, atol=5e-4)


def test_perturbations_have_unit_variance_in_units_of_r():
    # increments_j = K (y + r ε_j − H x_j); recover ε_j (K has full column rank) and check N(0, 1)
    rng = np.random.default_rng(1)
    n, n_mem, idx = 6, 300, [1, 2, 4]
    bg = rng.normal(0.0, 1.5, (n_mem, n)).astype(np.float32)
    y = rng.normal(size=3)
    r = np.array([0.5, 1.0, 2.0])
    xa = analyse(StochasticEnKF(), bg, make_obs(y, idx, r), key=7)
    k, h, _ = textbook(bg, idx, r)
    inc = xa - bg.astype(np.float64)
    d = np.linalg.lstsq(k, inc.T, rcond=None)[0].T  # (N, p) = y + r ε_j − H x_j
    eps = (d - y + bg.astype(np.float64) @ h.T) / r
    np.testing.assert_allclose(eps.mean(0), 0.0, atol=1e-3)  # centred
    np.testing.assert_allclose(
        eps.std(0, ddof=1), 1.0, atol=0.15
    )  # sd of sd ≈ 1/sqrt(2·300) = 0.04
    # independent across observations and members
    c = np.corrcoef(eps.T)
    assert np.abs(c - np.eye(3)).max() < 0.2  # sd of a correlation ≈ 0.06


def test_uncentred_perturbations_differ_but_have_the_same_scale():
    rng = np.random.default_rng(2)
    bg = rng.normal(0.0, 1.0, (400, 4)).astype(np.float32)
    obs = make_obs([0.3, -0.2], [0, 3], [1.0, 1.0])
    a = analyse(StochasticEnKF(center_perturbations=True), bg, obs, key=3)
    b = analyse(StochasticEnKF(center_perturbations=False), bg, obs, key=3)
    assert np.abs(a - b).max() > 1e-4
    np.testing.assert_allclose(a.std(0), b.std(0), rtol=0.05)


def test_large_ensemble_approaches_the_kalman_filter():
    rng = np.random.default_rng(3)
    n, n_mem, idx = 5, 2000, [0, 2, 4]
    a = rng.normal(size=(n, n))
    b_true = a @ a.T / n + 0.5 * np.eye(n)
    m_true = rng.normal(0.0, 1.0, n)
    r = np.array([0.6, 1.0, 0.8])
    y = rng.normal(0.0, 1.5, 3)
    bg = rng.multivariate_normal(m_true, b_true, n_mem).astype(np.float32)
    xa = analyse(StochasticEnKF(), bg, make_obs(y, idx, r), key=4)
    h = np.zeros((3, n))
    h[np.arange(3), idx] = 1.0
    k = b_true @ h.T @ np.linalg.inv(h @ b_true @ h.T + np.diag(r**2))
    mean_ref = m_true + k @ (y - h @ m_true)
    cov_ref = (np.eye(n) - k @ h) @ b_true
    scale = np.sqrt(np.diag(b_true))
    # sampling error of a mean of 2000 ≈ 0.022 σ; of a covariance ≈ 0.03 σ_i σ_j
    np.testing.assert_allclose(xa.mean(0), mean_ref, atol=0.1 * scale.max())
    np.testing.assert_allclose(np.cov(xa, rowvar=False), cov_ref, atol=0.12 * scale.max() ** 2)
    # the analysis is tighter than the background where observed
    assert np.all(np.diag(np.cov(xa, rowvar=False))[idx] < np.diag(b_true)[idx])


def test_different_keys_give_different_perturbations():
    rng = np.random.default_rng(5)
    bg = rng.normal(size=(10, 4)).astype(np.float32)
    obs = make_obs([0.1, 0.2], [1, 2], [1.0, 1.0])
    a = analyse(StochasticEnKF(), bg, obs, key=1)
    b = analyse(StochasticEnKF(), bg, obs, key=2)
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(a, analyse(StochasticEnKF(), bg, obs, key=1))


# --- localised (Schur product on the gain, Houtekamer & Mitchell 2001) -----------------


def ring_ctx(n):
    return SimpleNamespace(network=ObsNetwork(n_state=n), testbed=SimpleNamespace(grid=RingGrid(n)))


def gain(assim, bg, obs):
    """The analysis is affine in y: its Jacobian (N, n, p) is each member's gain."""
    f = jax.jit(lambda y: assim.analyse(bg, dataclasses.replace(obs, y=y), jax.random.key(0)))
    return np.asarray(jax.jacfwd(f)(obs.y), np.float64).reshape(bg.shape[0], -1, obs.y.shape[-1])


def localised_gain_ref(bg, idx, r, rho_xy, rho_yy):
    """K = (ρ_xy ∘ P_b Hᵀ)(ρ_yy ∘ H P_b Hᵀ + R)⁻¹ in float64, P_b the ensemble covariance."""
    pb = np.cov(np.asarray(bg, np.float64), rowvar=False, ddof=1)
    idx = np.asarray(idx)
    s = rho_yy * pb[np.ix_(idx, idx)] + np.diag(np.asarray(r, np.float64) ** 2)
    return (rho_xy * pb[:, idx]) @ np.linalg.inv(s)


@pytest.mark.parametrize("radius", [1.5, 4.0])
def test_localised_gain_is_the_schur_product_gain_on_the_ring(radius):
    rng = np.random.default_rng(8)
    n, n_mem, idx = 24, 10, [0, 3, 4, 9, 15, 20]
    bg = rng.normal(0.0, 1.0, (n_mem, n))
    bg = (bg + np.roll(bg, 1, 1) + np.roll(bg, -1, 1)).astype(np.float32)  # correlated sites
    y, r = rng.normal(size=len(idx)), rng.uniform(0.5, 1.5, len(idx))
    obs = make_obs(y, idx, r)
    assim = StochasticEnKF.build(ring_ctx(n), radius=radius)
    k = gain(assim, jnp.asarray(bg), obs)
    np.testing.assert_allclose(k, np.broadcast_to(k[0], k.shape), atol=1e-5)  # one gain
    rho_xy, rho_yy = ring_taper_ref(n, idx, radius)
    ref = localised_gain_ref(bg, idx, r, rho_xy, rho_yy)
    np.testing.assert_allclose(k[0], ref, atol=2e-4)
    far = (rho_xy == 0.0).all(1)  # sites beyond 2c of every observation: not updated
    assert far.any() == (radius < 2.0) and np.all(k[0][far] == 0.0)
    # with centred perturbations the mean moves by the localised Kalman update
    xa = analyse(assim, bg, obs)
    xb = bg.astype(np.float64).mean(0)
    np.testing.assert_allclose(xa.mean(0), xb + ref @ (y - xb[idx]), atol=5e-4)


def test_a_radius_beyond_the_domain_gives_the_global_enkf():
    rng = np.random.default_rng(9)
    n, idx = 12, [1, 5, 6, 10]
    bg = rng.normal(0.0, 2.0, (8, n)).astype(np.float32)
    obs = make_obs(rng.normal(size=4), idx, [1.0, 0.5, 0.8, 1.2])
    far = analyse(StochasticEnKF.build(ring_ctx(n), radius=1e6), bg, obs, key=3)
    np.testing.assert_allclose(far, analyse(StochasticEnKF(), bg, obs, key=3), atol=2e-4)


def test_localised_enkf_on_the_sphere_tapers_great_circle_km_and_log_pressure():
    grid, ch = LatLonGrid(16, 8), Channels(levels=(250, 850))
    net = GlobalObsNetwork(grid, ch, density=0.05)
    rng = np.random.default_rng(10)
    bg = rng.normal(size=(8, ch.n * grid.n)).astype(np.float32)
    obs = net.observe(
        jnp.asarray(rng.normal(size=(ch.n, *grid.shape)), jnp.float32), jax.random.key(1), 0
    )
    radius, vertical = 2500.0, 1.0
    assim = StochasticEnKF.build(
        SimpleNamespace(network=net), radius=radius, vertical_radius=vertical
    )
    k = gain(assim, jnp.asarray(bg), obs)[0]
    hpa = [1000.0 if c == ch.n - 1 else float(ch.levels[c % len(ch.levels)]) for c in range(ch.n)]
    rho_xy, rho_yy = sphere_taper_ref(grid, hpa, obs.idx, radius, vertical)
    ref = localised_gain_ref(bg, obs.idx, obs.r_std, rho_xy, rho_yy)
    assert 0.05 < (rho_xy > 0).mean() < 0.9  # the taper does cut
    np.testing.assert_allclose(k, ref, atol=2e-4 * np.abs(ref).max())
