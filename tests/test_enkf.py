"""Stochastic (perturbed-observation) EnKF against the Kalman filter.

References: the textbook gain K = P Hᵀ (H P Hᵀ + R)⁻¹ computed in float64 NumPy from the
background ensemble covariance (the gain is read off the method as the response of the
analysis to a unit change of one observation, same key so the same perturbations); the
exact Kalman update with the true background covariance for a large ensemble (sampling
error O(N^-1/2)); perturbations ε_j ~ N(0, 1) recovered from the increments.
"""

import jax
import jax.numpy as jnp
import numpy as np

from baselines import StochasticEnKF
from ensda.observe import Observations


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
