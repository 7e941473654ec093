"""The sphere testbed: state channels, the grid → spectral fit, forecasts, truth, climatology.

References: the evaluation of a spherical-harmonic series (exact) and its least-squares
inverse must round-trip degree-T fields to float32 round-off; the Rossby–Haurwitz wave
(Williamson et al. 1992) gives ζ from analytic winds; a perfect-model forecast from the
nature run's own states (T21 truth on the 64x32 grid, which holds T21 exactly) must
reproduce the next stored state far better than persistence; Gaspari–Cohn weights on
great-circle distances vanish beyond twice the radius.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensda.testbeds.sphere.grid import LatLonGrid
from ensda.testbeds.sphere.testbed import Channels

dinosaur = pytest.importorskip("dinosaur")

SAMPLE = Path(__file__).parent / "data" / "sphere_t21_sample.zarr"
needs_sample = pytest.mark.skipif(
    not SAMPLE.exists(), reason="sample store not made (experiments/sphere_sample.py)"
)
WB2 = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)


def test_channel_order_and_stacking():
    ch = Channels(levels=WB2)
    assert ch.n == 53
    assert ch.names[:2] == ("geopotential_50", "geopotential_100")
    assert ch.index("temperature", 50) == 13 and ch.index("u_component_of_wind", 1000) == 38
    assert ch.index("v_component_of_wind", 50) == 39 and ch.index("surface_pressure") == 52
    assert ch.names[ch.index("temperature", 850)] == "temperature_850"
    with pytest.raises(KeyError):
        ch.index("temperature", 875)
    rng = np.random.default_rng(0)
    fields = {v: rng.normal(size=(2, 13, 4, 8)) for v in ch.variables} | {
        "surface_pressure": rng.normal(size=(2, 4, 8))
    }
    x = np.asarray(ch.stack(fields))
    assert x.shape == (2, 53, 4, 8)
    np.testing.assert_allclose(
        x[:, ch.index("temperature", 300)], fields["temperature"][:, 5], rtol=1e-6
    )
    back = ch.unstack(x)
    for k, v in fields.items():
        np.testing.assert_allclose(np.asarray(back[k]), v, rtol=1e-6)


@pytest.mark.parametrize("n_lon,n_lat", [(64, 32), (32, 16)])
def test_grid_to_spectral_fit_inverts_evaluation(n_lon, n_lat):
    from ensda.testbeds.sphere import spectral

    g = LatLonGrid(n_lon, n_lat)
    t = g.truncation
    h = spectral.harmonics(g, t)
    rng = np.random.default_rng(1)
    mask = h.mask & (np.arange(t + 2) <= t)
    c = (rng.normal(size=(2,) + h.modal_shape) * mask).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(spectral.analyse(spectral.evaluate(c, g, t), g, t)), c, atol=2e-5
    )
    c[:, 0, 0] = 0.0  # ζ and δ have no global mean
    u, v = spectral.evaluate_winds(c[0], c[1], g, t)
    z, d = spectral.analyse_winds(u, v, g, t)
    np.testing.assert_allclose(np.asarray(z), c[0], atol=5e-5)
    np.testing.assert_allclose(np.asarray(d), c[1], atol=5e-5)


def test_vorticity_of_analytic_rossby_haurwitz_winds():
    from ensda.testbeds.sphere import spectral

    g = LatLonGrid(64, 32)
    lat, lon = np.meshgrid(np.deg2rad(g.latitudes), np.deg2rad(g.longitudes), indexing="ij")
    w = k = 0.05
    c, s = np.cos(lat), np.sin(lat)
    u = w * c + k * c**3 * (4 * s**2 - c**2) * np.cos(4 * lon)
    v = -k * 4 * c**3 * s * np.sin(4 * lon)
    zeta = 2 * w * s - k * s * c**4 * 30 * np.cos(4 * lon)
    vort, div = spectral.analyse_winds(u.astype(np.float32), v.astype(np.float32), g, g.truncation)
    np.testing.assert_allclose(
        np.asarray(spectral.evaluate(vort, g, g.truncation)), zeta, atol=1e-5
    )
    assert np.abs(np.asarray(div)).max() < 1e-5


def test_sigma_values_recovered_from_pressure_levels():
    from ensda.testbeds.sphere.dycore import interp_columns, invert_columns

    rng = np.random.default_rng(2)
    sigma = (np.arange(8) + 0.5) / 8
    ps = rng.uniform(960e2, 1040e2, size=(3, 5)).astype(np.float32)
    x = np.log(np.asarray(WB2, np.float32)[:, None, None] * 100.0 / ps)
    f = rng.normal(size=(8, 3, 5)).astype(np.float32)
    y = interp_columns(x, np.log(sigma), f)
    np.testing.assert_allclose(np.asarray(invert_columns(x, np.log(sigma), y)), f, atol=2e-3)


@needs_sample
def test_perfect_model_forecast_reproduces_the_nature_run():
    from ensda.testbeds.sphere import store as zstore
    from ensda.testbeds.sphere.config import SphereTestbedConfig
    from ensda.testbeds.sphere.testbed import from_config

    cfg = SphereTestbedConfig.model_validate(zstore.read_restart(SAMPLE).config)
    tb = from_config(cfg, store=str(SAMPLE))
    assert (
        tb.channels == Channels(levels=WB2)
        and tb.grid == LatLonGrid(64, 32)
        and tb.steps_per_cycle == 12
    )
    truth = tb.truth(0, 3)
    assert truth.shape == (4, 53, 32, 64)
    fc = np.asarray(tb.cycle_forecast(truth[:2]))  # two members at once
    assert fc.shape == (2, 53, 32, 64)
    w = np.asarray(tb.grid.weights)
    rms = lambda a, b: np.sqrt((w * (a - b) ** 2).mean(axis=(-2, -1)))
    for name in (
        "geopotential_500",
        "temperature_850",
        "u_component_of_wind_250",
        "v_component_of_wind_700",
        "surface_pressure",
    ):
        c = tb.channels.names.index(name)
        err = rms(fc[:, c], np.asarray(truth[1:3, c]))
        persistence = rms(np.asarray(truth[:2, c]), np.asarray(truth[1:3, c]))
        assert np.all(err < 0.02 * persistence), (name, err, persistence)
    # imperfect model: the forecast section picks another resolution of the same dycore
    cfg2 = SphereTestbedConfig.model_validate(
        cfg.model_dump() | {"forecast": {"resolution": "T31", "dt_minutes": 20.0}}
    )
    imperfect = from_config(cfg2, perfect=False)
    assert imperfect.model.resolution == "T31" and imperfect.steps_per_cycle == 18
    assert imperfect.channels == tb.channels


@needs_sample
def test_truth_windows_and_climatology_samples():
    from ensda.testbeds.sphere import store as zstore
    from ensda.testbeds.sphere.config import SphereTestbedConfig
    from ensda.testbeds.sphere.testbed import from_config

    cfg = SphereTestbedConfig.model_validate(zstore.read_restart(SAMPLE).config)
    tb = from_config(cfg.model_copy(update={"cycle_hours": 12}), store=str(SAMPLE))
    ds = zstore.open_store(SAMPLE)
    t = tb.truth(1, 1)  # store times 1 and 3
    np.testing.assert_array_equal(
        np.asarray(t[1, tb.channels.index("temperature", 850)]),
        ds["temperature"].sel(level=850).values[3],
    )
    with pytest.raises(ValueError, match="need 5"):
        tb.truth(0, 2)
    clim = np.asarray(tb.climatology_samples(jax.random.key(0), 2, exclude=(1, 2)))
    states = Channels(levels=WB2).states(ds)
    assert {int(np.flatnonzero([np.array_equal(c, s) for s in states])[0]) for c in clim} == {0, 3}
    mean, std = tb.climatology(jax.random.key(0), 4)
    assert mean.shape == std.shape == (53, 32, 64)


def test_gaspari_cohn_on_great_circle_distances_vanishes_beyond_twice_the_radius():
    from baselines.localization import gaspari_cohn

    g = LatLonGrid(64, 32)
    sites = np.arange(g.n)
    radius = 1000.0  # km
    for site in (0, 16 * 64 + 10, 31 * 64 + 63):
        d = np.asarray(g.distance(site, sites))
        rho = np.asarray(gaspari_cohn(d, radius))
        assert rho[site] == pytest.approx(1.0)
        assert np.all(rho[d >= 2 * radius] == 0.0) and np.all(rho[d < 1.9 * radius] > 0.0)
        assert (rho > 0).sum() <= g.max_sites_within(2 * radius)


def test_spd_solve_equals_a_float64_solve():
    """The elementwise Cholesky solve of ``invert_columns`` (not LAPACK: see its docstring)
    against NumPy's float64 solve on a batch of random SPD systems."""
    from ensda.testbeds.sphere.dycore import spd_solve

    rng = np.random.default_rng(0)
    m = rng.normal(size=(5, 7, 9, 9))
    a = m @ np.swapaxes(m, -1, -2) + 0.5 * np.eye(9)
    b = rng.normal(size=(5, 7, 9))
    x = np.asarray(spd_solve(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    np.testing.assert_allclose(
        x, np.linalg.solve(a, b[..., None])[..., 0], rtol=0, atol=1e-4 * np.abs(x).max()
    )
