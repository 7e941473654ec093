"""ETKF (symmetric square root) against the Kalman filter.

Reference: on a linear-Gaussian problem the ETKF analysis mean and covariance equal the
Kalman update x_a = x_b + K (y − H x_b), P_a = (I − K H) P_b, K = P_b Hᵀ (H P_b Hᵀ + R)⁻¹,
computed in float64 NumPy from the background's sample mean and covariance; the
symmetric square root transform is W = [(N−1) M⁻¹]^{1/2} with M = (N−1)I + Y R⁻¹ Yᵀ
(Hunt et al. 2007, eq. 24), computed here by eigen-decomposition in NumPy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from baselines import ETKF
from baselines.transform import etkf_weights
from ensda.observe import Observations


def problem(seed, n, n_mem, idx, operator="identity"):
    rng = np.random.default_rng(seed)
    p = len(idx)
    a = rng.normal(size=(n, n))
    cov = a @ a.T / n + 0.5 * np.eye(n)
    bg = rng.multivariate_normal(rng.normal(0, 2, n), cov, n_mem).astype(np.float32)
    y = rng.normal(0, 2, p).astype(np.float32)
    r = rng.uniform(0.5, 1.5, p).astype(np.float32)
    obs = Observations(
        y=jnp.asarray(y), idx=jnp.asarray(idx, jnp.int32), r_std=jnp.asarray(r), operator=operator
    )
    return bg, obs


def kalman(bg, obs):
    bg = bg.astype(np.float64)
    idx = np.asarray(obs.idx)
    y, r = np.asarray(obs.y, np.float64), np.asarray(obs.r_std, np.float64)
    n = bg.shape[1]
    xb = bg.mean(0)
    pb = np.cov(bg, rowvar=False, ddof=1)
    h = np.zeros((len(idx), n))
    h[np.arange(len(idx)), idx] = 1.0
    s = h @ pb @ h.T + np.diag(r**2)
    k = pb @ h.T @ np.linalg.inv(s)
    return xb + k @ (y - h @ xb), (np.eye(n) - k @ h) @ pb


@pytest.mark.parametrize(
    "seed,n,n_mem,idx",
    [
        (0, 5, 12, [0, 1, 2, 3, 4]),  # identity H, N > n
        (1, 8, 6, [1, 4, 6]),  # random subset, N < n (rank-deficient P_b)
        (2, 6, 20, [5, 0, 3]),  # unsorted subset
    ],
)
def test_etkf_equals_kalman_update_from_sample_statistics(seed, n, n_mem, idx):
    bg, obs = problem(seed, n, n_mem, idx)
    xa = np.asarray(jax.jit(ETKF().analyse)(jnp.asarray(bg), obs, jax.random.key(0)), np.float64)
    mean_ref, cov_ref = kalman(bg, obs)
    assert xa.shape == bg.shape
    np.testing.assert_allclose(xa.mean(0), mean_ref, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(np.cov(xa, rowvar=False, ddof=1), cov_ref, rtol=1e-3, atol=2e-4)


def test_etkf_ignores_uninformative_observations():
    bg, obs = problem(3, 6, 10, [0, 2, 4])
    vague = Observations(y=obs.y, idx=obs.idx, r_std=jnp.full((3,), 1e4, jnp.float32))
    xa = np.asarray(jax.jit(ETKF().analyse)(jnp.asarray(bg), vague, jax.random.key(0)))
    np.testing.assert_allclose(xa, bg, rtol=1e-4, atol=1e-4)


def test_symmetric_square_root_weights():
    rng = np.random.default_rng(4)
    n_mem, p = 7, 5
    hx = rng.normal(size=(n_mem, p))
    y_anom = hx - hx.mean(0)
    d = rng.normal(size=p)
    rinv = rng.uniform(0.3, 3.0, p)
    got = np.asarray(
        etkf_weights(*(jnp.asarray(a, jnp.float32) for a in (y_anom, d, rinv))), np.float64
    )
    m = (n_mem - 1) * np.eye(n_mem) + y_anom @ np.diag(rinv) @ y_anom.T
    w_mean = np.linalg.solve(m, y_anom @ (rinv * d))
    lam, v = np.linalg.eigh(m)
    w_sqrt = v @ np.diag(np.sqrt((n_mem - 1) / lam)) @ v.T
    np.testing.assert_allclose(got, w_mean[:, None] + w_sqrt, rtol=1e-4, atol=1e-5)
    # properties of the symmetric root: symmetric, and it keeps the mean (W 1 = 1)
    sq = got - w_mean[:, None]
    np.testing.assert_allclose(sq, sq.T, atol=1e-5)
    np.testing.assert_allclose(sq.sum(1), np.ones(n_mem), atol=1e-5)


def test_etkf_with_nonlinear_operator_uses_ensemble_covariances():
    # For H(x) = x² the ETKF mean update is x̄ + Cov(x, H)(Cov(H, H) + R)⁻¹ (y − mean H(x)),
    # with the covariances taken over the background members.
    bg, obs = problem(6, 5, 15, [1, 3], operator="square")
    xa = np.asarray(jax.jit(ETKF().analyse)(jnp.asarray(bg), obs, jax.random.key(0)), np.float64)
    x = bg.astype(np.float64)
    hx = x[:, [1, 3]] ** 2
    a, yy = x - x.mean(0), hx - hx.mean(0)
    n_mem = x.shape[0]
    pxy = a.T @ yy / (n_mem - 1)
    pyy = yy.T @ yy / (n_mem - 1)
    r = np.asarray(obs.r_std, np.float64)
    k = pxy @ np.linalg.inv(pyy + np.diag(r**2))
    mean_ref = x.mean(0) + k @ (np.asarray(obs.y, np.float64) - hx.mean(0))
    np.testing.assert_allclose(xa.mean(0), mean_ref, rtol=1e-3, atol=1e-3)
    cov_ref = np.cov(x, rowvar=False) - k @ pxy.T
    np.testing.assert_allclose(np.cov(xa, rowvar=False), cov_ref, rtol=1e-3, atol=1e-3)


def test_etkf_is_jittable_and_deterministic():
    bg, obs = problem(7, 6, 8, [0, 5])
    f = jax.jit(ETKF().analyse)
    a1 = np.asarray(f(jnp.asarray(bg), obs, jax.random.key(0)))
    a2 = np.asarray(f(jnp.asarray(bg), obs, jax.random.key(99)))
    np.testing.assert_array_equal(a1, a2)
    mean_ref, _ = kalman(bg, obs)
    np.testing.assert_allclose(a1.mean(0), mean_ref, rtol=1e-4, atol=2e-4)
