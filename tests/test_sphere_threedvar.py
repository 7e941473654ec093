"""3D-Var on the sphere: B = Σ (V ⊗ C_h) Σ as an operator, solved by CG.

References (float64 NumPy): B formed densely by applying the operator to unit vectors;
the analysis x_b + B Hᵀ (H B Hᵀ + R)⁻¹ d (H selects the observed elements); the
horizontal correlation from the addition theorem, C_h(θ) = Σ_l λ_l (2l + 1)/(4π) P_l(cos θ)
with λ_l ∝ exp(−l(l + 1) L²/(2a²)) normalised to C_h(0) = 1 and θ the great-circle angle
between grid points; V = exp(−|Δ ln p| / vertical_length) within a variable, 0 across;
Σ² = scale × the cos-latitude weighted variance of the climatological samples per channel
(per channel and latitude with ``sigma_by_latitude``); with ``b_source: nmc`` and a model
that halves the state each cycle, Σ² = scale × (0.3 σ_clim)² (1/16 + 1/4). The cycled run uses the
tiny shallow-water store of ``test_sphere_cycle`` and must beat the free run.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sphere_cycle import (
    sw_experiment,
    sw_store,  # noqa: F401  (the tiny shallow-water store fixture)
)

from baselines import ThreeDVar
from baselines.threedvar_sphere import SphereThreeDVar
from ensda.assimilator import SetupContext, build
from ensda.observe import Observations, ObsNetwork
from ensda.testbeds.sphere.grid import LatLonGrid
from ensda.testbeds.sphere.observe import GlobalObsNetwork
from ensda.testbeds.sphere.testbed import Channels

pytest.importorskip("dinosaur")

GRID = LatLonGrid(32, 16)  # T10
CHANNELS = Channels(("geopotential", "temperature"), (250, 850), ("surface_pressure",))
STD = np.repeat([300.0, 2.0, 200.0], [2, 2, 1])  # climatological std per channel
N = CHANNELS.n * GRID.n


def context(samples=24, seed=0):
    rng = np.random.default_rng(seed)
    lat_profile = (
        1.0 + 0.5 * np.sin(np.deg2rad(GRID.latitudes))[:, None]
    )  # variance varies with latitude
    clim = rng.normal(size=(samples, CHANNELS.n) + GRID.shape) * STD[:, None, None] * lat_profile
    network = GlobalObsNetwork(GRID, CHANNELS, density=0.05)
    ctx = SetupContext(
        testbed=None,
        network=network,
        climatology=jnp.asarray(clim.reshape(samples, -1), jnp.float32),
        key=jax.random.key(0),
    )
    return ctx, clim


def dense(op) -> np.ndarray:
    """The matrix of a linear function of flat states, column by column."""
    return np.asarray(jax.jit(jax.vmap(op))(jnp.eye(N, dtype=jnp.float32)), np.float64).T


def cos_lat_variance(clim, by_latitude):
    var = clim.var(axis=0, ddof=1).mean(axis=-1)  # (channel, lat)
    if by_latitude:
        return var
    w = np.cos(np.deg2rad(GRID.latitudes))
    return np.broadcast_to(((var * w).sum(-1) / w.sum())[:, None], var.shape)


def legendre_correlation(theta, length_km, truncation):
    l = np.arange(truncation + 1)
    lam = np.exp(-l * (l + 1) * (length_km / 6371.0) ** 2 / 2)
    lam /= np.sum(lam * (2 * l + 1) / (4 * np.pi))
    return np.polynomial.legendre.legval(np.cos(theta), lam * (2 * l + 1) / (4 * np.pi))


@pytest.mark.parametrize("by_latitude", [False, True])
def test_b_is_symmetric_with_the_scaled_climatological_variance(by_latitude):
    ctx, clim = context()
    assim = ThreeDVar.build(
        ctx, scale=0.5, length_km=1500.0, vertical_length=0.6, sigma_by_latitude=by_latitude
    )
    assert isinstance(assim, SphereThreeDVar)
    some = np.random.default_rng(3).choice(N, 300, replace=False)
    b = np.asarray(
        jax.jit(jax.vmap(assim.covariance))(jnp.eye(N, dtype=jnp.float32)[some]), np.float64
    )[:, some]
    np.testing.assert_allclose(b, b.T, atol=1e-6 * np.abs(b).max())
    var = 0.5 * cos_lat_variance(clim, by_latitude)  # (channel, lat)
    np.testing.assert_allclose(
        np.diag(b), var[some // GRID.n, some % GRID.n // GRID.n_lon], rtol=1e-4
    )


def test_correlation_is_psd_unit_variance_levels_times_isotropic_horizontal():
    ctx, _ = context()
    assim = ThreeDVar.build(ctx, length_km=1500.0, vertical_length=0.6)
    corr = dense(dataclasses.replace(assim, sigma=jnp.ones_like(assim.sigma)).covariance)  # Σ = 1
    np.testing.assert_allclose(np.diag(corr), 1.0, atol=1e-5)
    lat = np.deg2rad(np.repeat(GRID.latitudes, GRID.n_lon))
    lon = np.deg2rad(np.tile(GRID.longitudes, GRID.n_lat))
    cos_theta = np.sin(lat[:, None]) * np.sin(lat) + np.cos(lat[:, None]) * np.cos(lat) * np.cos(
        lon[:, None] - lon
    )
    ref_h = legendre_correlation(np.arccos(np.clip(cos_theta, -1, 1)), 1500.0, GRID.truncation)
    assert ref_h[0, 1] > 0.9 and ref_h.min() < 0.1  # neighbours correlated, far points not
    p = np.log([250.0, 850.0])
    v = np.zeros((CHANNELS.n, CHANNELS.n))
    v[:2, :2] = v[2:4, 2:4] = np.exp(-np.abs(p[:, None] - p) / 0.6)
    v[4, 4] = 1.0  # surface pressure; no correlation across variables
    np.testing.assert_allclose(
        corr.reshape(CHANNELS.n, GRID.n, CHANNELS.n, GRID.n),
        v[:, None, :, None] * ref_h[None, :, None, :],
        atol=2e-5,
    )
    # C = V ⊗ C_h (to 2e-5) with both factors positive semi-definite, C_h measured
    assert (
        np.linalg.eigvalsh(corr[: GRID.n, : GRID.n]).min() > -1e-5
        and np.linalg.eigvalsh(v).min() > 0
    )


def test_balance_takes_the_climatological_channel_correlation_and_couples_variables():
    """With ``balance``, V is the cos φ-pooled correlation of the channels' anomalies (NumPy,
    from the samples), and a single observation of temperature at 850 hPa moves the
    correlated geopotential at the observed point by σ_z V_zt / σ_t times its own increment
    (C_h(0) = 1), where without balance it leaves geopotential alone."""
    ctx, clim = context(samples=40)
    rng = np.random.default_rng(7)
    shared = rng.normal(
        size=(40, 1) + GRID.shape
    )  # make z850 and t850 correlated (coefficient 0.8)
    clim[:, 1] = 0.6 * clim[:, 1] + 0.8 * STD[1] * shared[:, 0]
    clim[:, 3] = 0.6 * clim[:, 3] + 0.8 * STD[3] * shared[:, 0]
    ctx = dataclasses.replace(ctx, climatology=jnp.asarray(clim.reshape(40, -1), jnp.float32))
    assim = ThreeDVar.build(ctx, length_km=1500.0, balance=True)
    a = clim - clim.mean(0)
    w = np.cos(np.deg2rad(GRID.latitudes))[:, None]
    k = np.einsum("scij,sdij,ij->cd", a, a, w * np.ones(GRID.shape))
    v_ref = k / np.sqrt(np.outer(np.diag(k), np.diag(k)))
    assert v_ref[1, 3] > 0.5  # geopotential_850 with temperature_850
    np.testing.assert_allclose(
        np.asarray(assim.vertical_sqrt @ assim.vertical_sqrt), v_ref, atol=2e-5
    )
    col = 5 * GRID.n_lon + 9
    t850 = 3 * GRID.n + col
    obs = Observations(
        y=jnp.asarray([1.0]),
        idx=jnp.asarray([t850]),
        r_std=jnp.asarray([1.0]),
        site=jnp.asarray([col]),
        state_shape=(CHANNELS.n,) + GRID.shape,
    )
    sigma = np.asarray(assim.sigma)[:, 0, 0]
    for balanced, settings in ((True, {"balance": True}), (False, {})):
        dx, _ = ThreeDVar.build(ctx, length_km=1500.0, **settings).increment(
            jnp.zeros(N, jnp.float32), obs
        )
        dx = np.asarray(dx).reshape(CHANNELS.n, GRID.n)
        expected = sigma[1] * v_ref[1, 3] / sigma[3] * dx[3, col] if balanced else 0.0
        np.testing.assert_allclose(
            dx[1, col], expected, atol=1e-4 * abs(dx[3, col]) * sigma[1] / sigma[3]
        )
        assert dx[3, col] > 0


class Halving:
    """A stand-in forecast model: each cycle halves the state."""

    def forecast(self, x, n_cycles):
        return x * 0.5**n_cycles

    def cycle_forecast(self, x):
        return self.forecast(x, 1)


def test_nmc_sigma_is_the_std_of_two_minus_one_cycle_forecast_differences():
    # f₂ − f₁ = ¼(x + ε) − ½(½x + ε') = ¼ε − ½ε', ε, ε' ~ N(0, (0.3 σ_clim)²):
    # std 0.3 σ_clim √(1/16 + 1/4)
    ctx, clim = context()
    assim = ThreeDVar.build(
        dataclasses.replace(ctx, testbed=Halving()), b_source="nmc", scale=2.0, nmc_init_std=0.3
    )
    sigma_clim = np.sqrt(cos_lat_variance(clim, False)[:, 0])
    expected = np.sqrt(2.0) * 0.3 * sigma_clim * np.sqrt(1 / 16 + 1 / 4)
    np.testing.assert_allclose(np.asarray(assim.sigma)[:, 0, 0], expected, rtol=0.03)


def test_cg_analysis_equals_dense_observation_space_solution():
    ctx, _ = context()
    assim = ThreeDVar.build(
        ctx, scale=0.3, length_km=1200.0, vertical_length=0.5, cg_tol=1e-6, cg_maxiter=300
    )
    rng = np.random.default_rng(1)
    xb = (rng.normal(size=(CHANNELS.n, GRID.n)) * STD[:, None]).ravel()
    v = rng.normal(size=(CHANNELS.n,) + assim.spectrum_sqrt.shape)
    truth = xb + np.asarray(assim.sqrt(jnp.asarray(v, jnp.float32)))
    obs = ctx.network.observe(
        jnp.asarray(truth.reshape(CHANNELS.n, *GRID.shape), jnp.float32), jax.random.key(2), 0
    )
    dx, iterations = jax.jit(assim.increment)(jnp.asarray(xb, jnp.float32), obs)
    assert 0 < int(iterations) < 300
    b = dense(assim.covariance)
    idx, r = np.asarray(obs.idx), np.asarray(obs.r_std, np.float64)
    d = np.asarray(obs.y, np.float64) - xb[idx]
    ref = b[:, idx] @ np.linalg.solve(b[np.ix_(idx, idx)] + np.diag(r**2), d)
    np.testing.assert_allclose(np.asarray(dx, np.float64), ref, atol=1e-3 * np.abs(ref).max())
    got = jax.jit(assim.analyse)(jnp.asarray(xb, jnp.float32)[None], obs, jax.random.key(0))
    np.testing.assert_allclose(
        np.asarray(got[0], np.float64), xb + ref, atol=1e-3 * np.abs(ref).max()
    )


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"length_km": -100.0}, "length_km"),
        ({"vertical_length": 0.0}, "vertical_length"),
        ({"cg_tol": 0.0}, "cg_tol"),
        ({"cg_maxiter": 0}, "cg_maxiter"),
        ({"scale": -1.0}, "scale"),
        ({"b_source": "ensemble"}, "b_source"),
        ({"sigma_by_latitude": "sometimes"}, "sigma_by_latitude"),
        ({"solver": "exact"}, "solver 'exact'"),
        ({"balance": True, "vertical_length": 0.5}, "balance takes V"),
    ],
)
def test_bad_sphere_settings_are_named(settings, field):
    ctx, _ = context()
    with pytest.raises(ValueError, match=field):
        build("3dvar", settings, ctx)


@pytest.mark.parametrize(
    "setting",
    [
        {"length_km": 500.0},
        {"vertical_length": 1.0},
        {"sigma_by_latitude": True},
        {"balance": True},
    ],
)
def test_sphere_settings_are_refused_on_lorenz96(setting):
    ctx = SetupContext(
        testbed=None,
        network=ObsNetwork(n_state=8),
        climatology=jnp.ones((4, 8)),
        key=jax.random.key(0),
    )
    with pytest.raises(ValueError, match=f"{next(iter(setting))} apply to the sphere testbed only"):
        build("3dvar", setting, ctx)


def test_cycled_3dvar_beats_the_free_run(sw_store):  # noqa: F811
    from ensda.config import validate
    from ensda.experiment import make_osse, run_method

    cfg = validate(sw_experiment(sw_store, cycles=8, burn_in=3))
    osse = make_osse(cfg)
    rmse = {}
    for method, settings in (("none", {}), ("3dvar", {"scale": 0.2, "length_km": 1000.0})):
        run = run_method(cfg, osse, method, settings)
        assert np.isfinite(np.asarray(run.result.final_ensemble)).all()
        rmse[method] = run.summary["rmse_a"]
    # free run ~0.88, 3D-Var ~0.40 (normalised aggregate over channels)
    assert rmse["3dvar"] < 0.75 * rmse["none"], rmse
