"""3D-Var and OI against the analytic BLUE.

Reference: δx = B Hᵀ (H B Hᵀ + R)⁻¹ (y − H(x_b)) computed in float64 NumPy (H the Jacobian
at x_b for a nonlinear operator: diag(2 x_b) on the observed sites for y = x²), which is
also the minimiser of J(x) = ½|x − x_b|²_B⁻¹ + ½|y − Hx|²_R⁻¹; B the sample covariance of
the climatological samples (np.cov), scaled, and for OI with a radius the Schur product with
a Gaspari–Cohn correlation (published polynomial, cyclic distance).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import gc_ref

from baselines import OptimalInterpolation, ThreeDVar
from baselines.variational import matrix_sqrt
from ensda.assimilator import SetupContext
from ensda.observe import Observations, ObsNetwork
from ensda.testbeds import Lorenz96


@jax.jit
def _analyse(assim, bg, obs):
    return assim.analyse(bg, obs, jax.random.key(0))


def analyse(assim, bg, obs):
    return np.asarray(_analyse(assim, jnp.asarray(bg, jnp.float32), obs), np.float64)


def spd(rng, n):
    a = rng.normal(size=(n, n))
    # smooth-ish covariance with a spread of scales
    return a @ a.T / n + 0.3 * np.eye(n)


def make_obs(y, idx, r, operator="identity"):
    return Observations(
        y=jnp.asarray(y, jnp.float32),
        idx=jnp.asarray(idx, jnp.int32),
        r_std=jnp.asarray(r, jnp.float32),
        operator=operator,
    )


def blue(b, xb, y, hjac, hx, r):
    s = hjac @ b @ hjac.T + np.diag(r**2)
    return xb + b @ hjac.T @ np.linalg.solve(s, y - hx)


def selection(idx, n):
    h = np.zeros((len(idx), n))
    h[np.arange(len(idx)), idx] = 1.0
    return h


@pytest.fixture
def linear_case():
    rng = np.random.default_rng(0)
    n, idx = 10, [0, 3, 4, 8]
    b = spd(rng, n)
    xb = rng.normal(2.0, 3.0, n)
    y = rng.normal(2.0, 3.0, len(idx))
    r = rng.uniform(0.5, 1.5, len(idx))
    return b, xb, y, idx, r


def test_exact_solver_equals_blue(linear_case):
    b, xb, y, idx, r = linear_case
    assim = ThreeDVar(b=jnp.asarray(b, jnp.float32), solver="exact")
    got = analyse(assim, xb[None], make_obs(y, idx, r))
    h = selection(idx, len(xb))
    ref = blue(b, xb, y, h, h @ xb, r)
    np.testing.assert_allclose(got[0], ref, rtol=1e-4, atol=1e-4)
    # and it minimises J: ∇J = B⁻¹(x − x_b) − Hᵀ R⁻¹ (y − H x) = 0
    x = ref
    grad = np.linalg.solve(b, x - xb) - h.T @ ((y - h @ x) / r**2)
    np.testing.assert_allclose(grad, 0.0, atol=1e-9)


def test_cg_solver_equals_exact_solver(linear_case):
    b, xb, y, idx, r = linear_case
    obs = make_obs(y, idx, r)
    exact = analyse(ThreeDVar(b=jnp.asarray(b, jnp.float32), solver="exact"), xb[None], obs)
    l_sqrt = matrix_sqrt(jnp.asarray(b, jnp.float32))
    cg = analyse(ThreeDVar(b_sqrt=l_sqrt, solver="cg", cg_tol=1e-6, cg_maxiter=100), xb[None], obs)
    np.testing.assert_allclose(cg, exact, atol=1e-4)


def test_matrix_sqrt_is_symmetric_root():
    b = spd(np.random.default_rng(1), 6)
    l_sqrt = np.asarray(matrix_sqrt(jnp.asarray(b, jnp.float32)), np.float64)
    np.testing.assert_allclose(l_sqrt, l_sqrt.T, atol=1e-5)
    np.testing.assert_allclose(l_sqrt @ l_sqrt.T, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_nonlinear_square_operator_uses_linearised_h(linear_case, solver):
    b, xb, y, idx, r = linear_case
    y = np.abs(y) ** 2
    obs = make_obs(y, idx, r, operator="square")
    if solver == "exact":
        assim = ThreeDVar(b=jnp.asarray(b, jnp.float32), solver="exact")
    else:
        assim = ThreeDVar(
            b_sqrt=matrix_sqrt(jnp.asarray(b, jnp.float32)),
            solver="cg",
            cg_tol=1e-7,
            cg_maxiter=200,
        )
    got = analyse(assim, xb[None], obs)
    hjac = selection(idx, len(xb)) * (2.0 * xb)[None, :]  # rows: 2 x_b,i at the observed site i
    ref = blue(b, xb, y, hjac, xb[idx] ** 2, r)
    np.testing.assert_allclose(got[0], ref, rtol=2e-4, atol=2e-3)


def test_members_move_alike_by_the_increment_of_the_mean(linear_case):
    b, xb, y, idx, r = linear_case
    rng = np.random.default_rng(2)
    ens = xb + rng.normal(0.0, 0.5, (3, len(xb)))
    got = analyse(
        ThreeDVar(b=jnp.asarray(b, jnp.float32), solver="exact"), ens, make_obs(y, idx, r)
    )
    h = selection(idx, len(xb))
    dx = blue(b, ens.mean(0), y, h, h @ ens.mean(0), r) - ens.mean(0)
    np.testing.assert_allclose(got, ens + dx, rtol=1e-4, atol=2e-4)


def context(n=12, samples=400, seed=3):
    rng = np.random.default_rng(seed)
    # correlated "climatology": a random walk smoothed on the ring
    z = rng.normal(size=(samples, n))
    clim = 2.0 + 3.0 * (z + np.roll(z, 1, 1) + 0.5 * np.roll(z, -2, 1)) / 1.5
    ctx = SetupContext(
        testbed=Lorenz96(n=n),
        network=ObsNetwork(n_state=n, every=3),
        climatology=jnp.asarray(clim, jnp.float32),
        key=jax.random.key(0),
    )
    return ctx, clim


@pytest.mark.parametrize("solver", ["auto", "cg"])
def test_built_3dvar_uses_scaled_climatological_covariance(solver):
    ctx, clim = context()
    assim = ThreeDVar.build(ctx, scale=0.2, solver=solver, cg_tol=1e-7)
    assert assim.solver == ("exact" if solver == "auto" else "cg")
    rng = np.random.default_rng(4)
    xb = rng.normal(2.0, 3.0, 12)
    idx = [0, 3, 6, 9]
    y, r = rng.normal(2.0, 3.0, 4), np.full(4, 1.0)
    got = analyse(assim, xb[None], make_obs(y, idx, r))
    b = 0.2 * np.cov(clim.astype(np.float32).astype(np.float64), rowvar=False)
    h = selection(idx, 12)
    np.testing.assert_allclose(got[0], blue(b, xb, y, h, h @ xb, r), rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize(
    "method, settings, field",
    [
        ("3dvar", {"scale": 0.0}, "scale"),
        ("3dvar", {"cg_maxiter": 0}, "cg_maxiter"),
        ("oi", {"radius": -1.0}, "radius"),
    ],
)
def test_bad_settings_are_named_on_validation(method, settings, field):
    from ensda.assimilator import validate_settings

    with pytest.raises(ValueError, match=field):
        validate_settings(method, settings)


@pytest.mark.parametrize("radius", [None, 2.0])
def test_oi_is_blue_with_climatological_b_and_optional_gc_schur_product(radius):
    n = 12
    ctx, clim = context(n)
    assim = OptimalInterpolation.build(ctx, radius=radius)
    assert assim.ensemble is False
    b = np.cov(clim.astype(np.float32).astype(np.float64), rowvar=False)
    if radius is not None:
        taper = np.array(
            [[gc_ref(min(abs(i - j), n - abs(i - j)) / radius) for j in range(n)] for i in range(n)]
        )
        b = b * taper
        assert taper[0, 6] == 0.0 and b[0, 6] == 0.0  # distance 6 ≥ 2c
    rng = np.random.default_rng(5)
    xb = rng.normal(2.0, 3.0, n)
    idx = [1, 2]
    y, r = rng.normal(2.0, 3.0, 2), np.array([0.5, 1.0])
    got = analyse(assim, xb[None], make_obs(y, idx, r))
    h = selection(idx, n)
    np.testing.assert_allclose(got[0], blue(b, xb, y, h, h @ xb, r), rtol=1e-4, atol=3e-4)
    if radius is not None:
        # beyond 2c of every observation the state is untouched
        far = [6, 7, 8, 9]  # distance ≥ 4 from sites 1 and 2
        np.testing.assert_allclose(got[0, far], xb[far], atol=1e-5)


class _LinearModel:
    """A linear forecast model x ↦ M x (the NMC statistics then have a closed form)."""

    def __init__(self, m):
        self.m = jnp.asarray(m, jnp.float32)

    def cycle_forecast(self, x):
        return x @ self.m.T


def test_nmc_covariance_is_the_two_minus_one_cycle_forecast_difference_covariance():
    """With samples on a trajectory of a linear model, s_{t+1} = M s_t, the NMC difference
    M²(s_t + ε) − M(s_{t+1} + ε') = M² ε − M ε' has covariance σ²(M² M²ᵀ + M Mᵀ) exactly
    (ε, ε' ~ N(0, σ² I) independent). A 1-cycle/1-cycle pair (σ²·2MMᵀ) or a shared ε
    (σ²(M² − M)(M² − M)ᵀ) differs from it by many standard errors."""
    from baselines.variational import nmc_covariance

    n, pairs, sigma = 6, 4000, 0.5
    rng = np.random.default_rng(4)
    m = 0.7 * np.eye(n) + 0.4 * np.roll(np.eye(n), 1, 1) - 0.2 * np.roll(np.eye(n), -1, 1)
    m /= np.abs(
        np.linalg.eigvals(m)
    ).max()  # spectral radius 1: the trajectory neither blows up nor dies
    s = np.empty((pairs + 2, n))
    s[0] = rng.normal(size=n)
    for t in range(pairs + 1):
        s[t + 1] = m @ s[t]
    b = np.asarray(
        nmc_covariance(_LinearModel(m), jnp.asarray(s, jnp.float32), jax.random.key(0), sigma),
        np.float64,
    )
    m2 = m @ m
    ref = sigma**2 * (m2 @ m2.T + m @ m.T)
    # standard error of a sample covariance of `pairs` Gaussian draws
    se = np.sqrt((ref**2 + np.outer(np.diag(ref), np.diag(ref))) / pairs)
    assert np.abs(b - ref).max() / se.max() < 5.0
    assert np.abs(b - ref).max() < 0.1 * np.abs(ref).max()
