"""LETKF on the sphere (``ColumnLETKF``) against independent NumPy references.

References: great-circle distances by the haversine formula in float64 (the code uses
Vincenty's atan2 form in float32) and along a meridian R·Δφ exactly; the published
Gaspari–Cohn polynomial (``reference.gc_ref``); a brute-force float64 LETKF that solves,
for every grid point (channel, column), the full ETKF with all p observations and
r⁻¹ · GC(d_h / c_h) · GC(|ln p − ln p_obs| / c_v) (surface pressure at 1000 hPa), with no
neighbour selection; and with infinite radii the global ETKF of the flattened problem.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import gc_ref, haversine_km

from baselines.letkf import LETKF, ColumnLETKF, column_taper
from baselines.localization import log_pressure_taper
from ensda import assimilator as registry
from ensda.testbeds.sphere.grid import EARTH_RADIUS_KM, LatLonGrid
from ensda.testbeds.sphere.observe import GlobalObsNetwork
from ensda.testbeds.sphere.testbed import Channels

GRID = LatLonGrid(16, 8)
CH = Channels(levels=(250, 850))  # z, t, u, v at 2 levels + surface pressure = 9 channels
SCALE = np.repeat([300.0, 300.0, 2.0, 2.0, 5.0, 5.0, 5.0, 5.0, 200.0], GRID.n)


def problem(seed, n_members=8, density=0.1, cycle=0):
    """A correlated background ensemble (flat) and one cycle of a redrawn random network."""
    rng = np.random.default_rng(seed)
    net = GlobalObsNetwork(GRID, CH, density=density, redraw=True)
    noise = rng.normal(size=(n_members, CH.n, GRID.n_lat, GRID.n_lon))
    smooth = (noise + np.roll(noise, 1, -1) + np.roll(noise, -1, -1) + np.roll(noise, 1, -2)) / 2.0
    bg = (smooth.reshape(n_members, -1) + rng.normal(size=CH.n * GRID.n)) * SCALE
    truth = jnp.asarray(rng.normal(size=CH.n * GRID.n) * SCALE, jnp.float32).reshape(
        CH.n, *GRID.shape
    )
    return net, jnp.asarray(bg, jnp.float32), net.observe(truth, jax.random.key(seed), cycle)


def letkf_ref(bg, obs, radius, vertical_radius):
    """Brute force: a full ETKF with every observation, tapered, at every grid point."""
    bg = np.asarray(bg, np.float64)
    n_mem = bg.shape[0]
    idx, sites = np.asarray(obs.idx), np.asarray(obs.sites)
    rinv = 1.0 / np.asarray(obs.r_std, np.float64) ** 2
    level = lambda c: 1000.0 if c == CH.n - 1 else float(CH.levels[c % len(CH.levels)])
    p_obs = np.array([level(i // GRID.n) for i in idx])
    xm, a = bg.mean(0), bg - bg.mean(0)
    hx = bg[:, idx]
    ya, d = hx - hx.mean(0), np.asarray(obs.y, np.float64) - hx.mean(0)
    out = np.empty_like(bg)
    for col in range(GRID.n):
        rho_h = np.array([gc_ref(x / radius) for x in haversine_km(col, sites, GRID)])
        for c in range(CH.n):
            rho_v = np.array([gc_ref(np.log(level(c) / p) / vertical_radius) for p in p_obs])
            rl = rinv * rho_h * rho_v
            m = (n_mem - 1) * np.eye(n_mem) + (ya * rl) @ ya.T
            lam, v = np.linalg.eigh(m)
            w = (v @ ((v.T @ ((ya * rl) @ d)) / lam))[:, None] + v @ np.diag(
                np.sqrt((n_mem - 1) / lam)
            ) @ v.T
            i = c * GRID.n + col
            out[:, i] = xm[i] + w.T @ a[:, i]
    return out


def etkf_ref(bg, obs):
    """The global ETKF (Hunt et al. 2007, eqs. 21–24) in float64."""
    bg = np.asarray(bg, np.float64)
    n_mem = bg.shape[0]
    rinv = 1.0 / np.asarray(obs.r_std, np.float64) ** 2
    hx = bg[:, np.asarray(obs.idx)]
    ya, d = hx - hx.mean(0), np.asarray(obs.y, np.float64) - hx.mean(0)
    lam, v = np.linalg.eigh((n_mem - 1) * np.eye(n_mem) + (ya * rinv) @ ya.T)
    w = (v @ ((v.T @ ((ya * rinv) @ d)) / lam))[:, None] + v @ np.diag(
        np.sqrt((n_mem - 1) / lam)
    ) @ v.T
    return bg.mean(0) + w.T @ (bg - bg.mean(0))


def test_horizontal_taper_is_gaspari_cohn_of_great_circle_distance_and_zero_beyond_2_radii():
    g = LatLonGrid(64, 32)
    radius = 700.0
    k = g.max_sites_within(2 * radius)
    everywhere = jnp.arange(g.n)
    for col in (
        16 * 64 + 10,
        31 * 64 + 5,
        0,
    ):  # equator, next to the north pole, next to the south pole
        near, taper = (
            np.asarray(a) for a in column_taper(g, jnp.int32(col), everywhere, radius, k)
        )
        d = haversine_km(col, near, g)
        np.testing.assert_allclose(taper, [gc_ref(x / radius) for x in d], atol=2e-4)
        # every column within 2c is among the k selected; the others are at ≥ 2c
        others = np.setdiff1d(np.arange(g.n), near)
        assert haversine_km(col, others, g).min() >= 2 * radius - 1e-3
    # along a meridian the distance is R·Δφ: 625.4 km per row of 5.625°
    col = 16 * 64 + 10
    step = EARTH_RADIUS_KM * np.deg2rad(5.625)
    near, taper = column_taper(
        g, jnp.int32(col), jnp.asarray([col, col + 64, col - 128, col + 192]), radius, 4
    )
    got = dict(zip(np.asarray(near).tolist(), np.asarray(taper).tolist()))
    for pos, rows in enumerate((0, 1, 2, 3)):
        assert got[pos] == pytest.approx(gc_ref(rows * step / radius), abs=2e-5)
    assert got[3] == 0.0 and got[2] > 0.0  # 1876 km ≥ 2c = 1400 km; 1251 km < 2c


def test_vertical_taper_in_log_pressure():
    got = np.asarray(
        log_pressure_taper(np.array([500.0, 500.0, 1000.0]), np.array([850.0, 50.0, 1000.0]), 1.0)
    )
    np.testing.assert_allclose(got, [gc_ref(np.log(850 / 500)), 0.0, 1.0], atol=1e-6)
    assert np.all(np.asarray(log_pressure_taper(50.0, np.array([100.0, 1000.0]), None)) == 1.0)


@pytest.mark.parametrize("seed,cycle", [(0, 0), (1, 5)])
def test_infinite_radii_equal_the_global_etkf(seed, cycle):
    net, bg, obs = problem(seed, cycle=cycle)
    got = ColumnLETKF.build(net, float("inf"), None).analyse(bg, obs, jax.random.key(0))
    ref = etkf_ref(bg, obs)
    np.testing.assert_allclose(np.asarray(got, np.float64) / SCALE, ref / SCALE, atol=2e-4)
    assert np.abs(ref - np.asarray(bg)).max() / SCALE.max() > 0.05  # the analysis moved


@pytest.mark.parametrize("radius,vertical_radius", [(1500.0, 1.0), (3000.0, 0.5)])
def test_local_analyses_equal_brute_force(radius, vertical_radius):
    net, bg, obs = problem(2, n_members=6, density=0.2, cycle=3)  # 26 observed columns x 9 channels
    assim = ColumnLETKF.build(net, radius, vertical_radius)
    analyse = jax.jit(lambda x: assim.analyse(x, obs, jax.random.key(0)))
    got = analyse(bg)
    ref = letkf_ref(bg, obs, radius, vertical_radius)
    np.testing.assert_allclose(np.asarray(got, np.float64) / SCALE, ref / SCALE, atol=2e-4)
    # states as (N, n_var, n_lat, n_lon) give the same analysis in that shape
    shaped = analyse(bg.reshape(bg.shape[0], CH.n, *GRID.shape))
    assert shaped.shape == (bg.shape[0], CH.n, *GRID.shape)
    np.testing.assert_allclose(
        np.asarray(shaped).reshape(bg.shape) / SCALE, np.asarray(got) / SCALE, atol=1e-5
    )
    # columns with no observation within 2c keep their background
    untouched = np.array(
        [haversine_km(c, np.asarray(obs.sites), GRID).min() >= 2 * radius for c in range(GRID.n)]
    )
    assert untouched.any() or radius > 2000.0  # 12 such columns at 1500 km
    if untouched.any():
        cols = np.tile(untouched, CH.n)
        np.testing.assert_allclose(
            (np.asarray(got) / SCALE)[:, cols], (np.asarray(bg) / SCALE)[:, cols], atol=1e-5
        )


def test_registry_builds_the_column_letkf_for_global_networks_and_checks_settings():
    net, bg, obs = problem(3)
    ctx = registry.SetupContext(testbed=None, network=net, climatology=None, key=jax.random.key(0))
    assim = registry.build(
        "letkf", {"radius": 800.0, "vertical_radius": 1.5, "inflation": 1.1}, ctx
    )
    assert isinstance(assim.inner, ColumnLETKF) and assim.inner.radius == 800.0
    with pytest.raises(ValueError, match="vertical_radius"):
        registry.validate_settings("letkf", {"vertical_radius": 0.0})
    from ensda.observe import ObsNetwork
    from ensda.testbeds import Lorenz96

    ring = registry.SetupContext(
        testbed=Lorenz96(), network=ObsNetwork(40), climatology=None, key=jax.random.key(0)
    )
    with pytest.raises(ValueError, match="vertical_radius applies to the sphere"):
        registry.build("letkf", {"vertical_radius": 1.0}, ring)
    assert isinstance(registry.build("letkf", {"radius": 3.0}, ring), LETKF)
    with pytest.raises(ValueError, match="observations per cycle"):
        ColumnLETKF.build(net, 800.0, None).analyse(bg, obs.at(slice(0, 10)), jax.random.key(0))
