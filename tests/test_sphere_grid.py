"""Sphere testbed geometry and regridding.

References: WeatherBench 2's equiangular convention (cell-centred latitudes, no poles,
longitudes from 0); great-circle distances from closed forms (meridian arcs, antipodes);
the Rossby–Haurwitz wave of Williamson et al. (1992, test case 6) whose vorticity and winds
are known in closed form; the hydrostatic isothermal atmosphere Φ(p) = R T ln(p_s / p).
"""

import numpy as np
import pytest

from ensda.testbeds.sphere.grid import EARTH_RADIUS_KM, LatLonGrid, great_circle_km

dinosaur = pytest.importorskip("dinosaur")


@pytest.mark.parametrize("n_lon,n_lat,first", [(64, 32, -87.1875), (128, 64, -88.59375)])
def test_wb2_equiangular_convention(n_lon, n_lat, first):
    g = LatLonGrid(n_lon, n_lat)
    d = 180.0 / n_lat
    assert g.shape == (n_lat, n_lon) and g.n == n_lat * n_lon
    np.testing.assert_allclose(g.latitudes[[0, -1]], [first, -first])
    np.testing.assert_allclose(np.diff(g.latitudes), d)
    np.testing.assert_allclose(
        g.longitudes[[0, 1, -1]], [0.0, 360.0 / n_lon, 360.0 - 360.0 / n_lon]
    )
    assert g.truncation == (n_lon - 1) // 3


def test_area_weights_mean_one_and_integrate():
    g = LatLonGrid(64, 32)
    w = np.asarray(g.weights, np.float64)
    assert w.shape == (32, 64)
    assert w.mean() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(w[:, 0], w[::-1, 0], rtol=1e-6)  # hemispheric symmetry
    lat = np.deg2rad(g.latitudes)[:, None]
    # area means on the sphere: <sin² φ> = 1/3, <cos² φ cos² λ> = 1/3
    assert (w * np.sin(lat) ** 2).mean() == pytest.approx(1 / 3, abs=1e-3)
    lon = np.deg2rad(g.longitudes)[None, :]
    assert (w * np.cos(lat) ** 2 * np.cos(lon) ** 2).mean() == pytest.approx(1 / 3, abs=1e-3)


def test_great_circle_distances():
    g = LatLonGrid(64, 32)
    n_lon = g.n_lon
    site = lambda j, i: j * n_lon + i
    r = EARTH_RADIUS_KM
    # along a meridian: R Δφ
    assert float(g.distance(site(0, 5), site(31, 5))) == pytest.approx(
        r * np.deg2rad(2 * 87.1875), rel=1e-5
    )
    # antipodes: half the circumference
    assert float(g.distance(site(3, 0), site(28, 32))) == pytest.approx(np.pi * r, rel=1e-5)
    # along the row next to the equator: 2R asin(cos φ sin(Δλ/2))
    phi = np.deg2rad(g.latitudes[16])
    expect = 2 * r * np.arcsin(np.cos(phi) * np.sin(np.deg2rad(5 * 5.625) / 2))
    assert float(g.distance(site(16, 60), site(16, 1))) == pytest.approx(
        expect, rel=1e-5
    )  # wraps at 0°
    sites = np.arange(g.n)
    d = np.asarray(g.distance(sites[:, None], sites[None, :]))
    assert np.all(np.diag(d) < 1e-2) and np.allclose(d, d.T, atol=1e-2)
    assert d.max() <= np.pi * r * (1 + 1e-6)
    # NumPy and JAX paths agree
    assert great_circle_km(0.1, 0.2, -0.3, 2.0) == pytest.approx(
        float(great_circle_km(*map(np.float32, (0.1, 0.2, -0.3, 2.0))))
    )


@pytest.mark.parametrize("radius", [500.0, 1500.0, 4000.0])
def test_max_sites_within_is_the_exact_maximum(radius):
    g = LatLonGrid(32, 16)
    sites = np.arange(g.n)
    d = np.asarray(g.distance(sites[:, None], sites[None, :]))
    assert g.max_sites_within(radius) == int((d <= radius).sum(axis=1).max())


def _rossby_haurwitz(lon, lat, omega=7.848e-6 * 6.857e3, k=7.848e-6 * 6.857e3, r=4):
    """Williamson et al. (1992) case 6 on the unit sphere (a = 1): ζ, u, v."""
    c, s = np.cos(lat), np.sin(lat)
    zeta = 2 * omega * s - k * s * c**r * (r**2 + 3 * r + 2) * np.cos(r * lon)
    u = omega * c + k * c ** (r - 1) * (r * s**2 - c**2) * np.cos(r * lon)
    v = -k * r * c ** (r - 1) * s * np.sin(r * lon)
    return zeta, u, v


def test_winds_of_a_rossby_haurwitz_wave_are_exact_on_the_latlon_grid():
    """ζ on the T42 Gaussian grid → spectral → u, v evaluated on 64x32 match the closed form."""
    from ensda.testbeds.sphere import spectral

    t42 = dinosaur.spherical_harmonic.Grid.T42()
    lon, sin_lat = t42.nodal_mesh
    zeta, _, _ = _rossby_haurwitz(lon, np.arcsin(sin_lat))
    vort = t42.to_modal(zeta[None].astype(np.float32))
    g = LatLonGrid(64, 32)
    u, v = spectral.evaluate_winds(vort, np.zeros_like(vort), g, g.truncation)
    glat, glon = np.meshgrid(np.deg2rad(g.latitudes), np.deg2rad(g.longitudes), indexing="ij")
    zeta_ref, u_ref, v_ref = _rossby_haurwitz(glon, glat)
    scale = np.abs(u_ref).max()
    np.testing.assert_allclose(np.asarray(u[0]), u_ref, atol=2e-5 * scale)
    np.testing.assert_allclose(np.asarray(v[0]), v_ref, atol=2e-5 * scale)
    # the scalar evaluation gives ζ itself at the grid points
    np.testing.assert_allclose(
        np.asarray(spectral.evaluate(vort, g, g.truncation)[0]),
        zeta_ref,
        atol=2e-5 * np.abs(zeta_ref).max(),
    )


def test_truncation_removes_unresolved_scales_and_keeps_the_global_mean():
    """A T42 field: degrees > T21 vanish on 64x32, the l = 0 coefficient (global mean) is kept."""
    from ensda.testbeds.sphere import spectral

    t42 = dinosaur.spherical_harmonic.Grid.T42()
    lon, sin_lat = t42.nodal_mesh
    lat = np.arcsin(sin_lat)
    smooth = (
        280.0 + 30.0 * np.cos(lat) ** 2 + 5.0 * np.cos(lat) ** 3 * np.sin(3 * lon)
    )  # degree ≤ 3
    fine = np.cos(lat) ** 30 * np.cos(30 * lon)  # zonal wavenumber 30 > 21
    coeffs = t42.to_modal(np.stack([smooth, fine]).astype(np.float32))
    g = LatLonGrid(64, 32)
    out = np.asarray(spectral.evaluate(coeffs, g, g.truncation), np.float64)
    glat, glon = np.meshgrid(np.deg2rad(g.latitudes), np.deg2rad(g.longitudes), indexing="ij")
    expect = 280.0 + 30.0 * np.cos(glat) ** 2 + 5.0 * np.cos(glat) ** 3 * np.sin(3 * glon)
    np.testing.assert_allclose(out[0], expect, rtol=2e-6)
    assert np.abs(out[1]).max() < 1e-6
    # global mean: exact quadrature on the T42 grid vs the 64x32 grid
    true_mean = float(t42.integrate(smooth) / (4 * np.pi))  # 280 + 30·2/3
    assert true_mean == pytest.approx(300.0, rel=1e-6)
    h = spectral.harmonics(g, g.truncation)
    exact_w = np.asarray(h.quadrature_weights).T / (4 * np.pi)  # (lat, lon), exact for degree < 32
    assert (exact_w * out[0]).sum() == pytest.approx(true_mean, rel=1e-6)
    # with the cos-lat metric weights (docs/design.md §5) the mean is kept within 0.01 %
    assert (np.asarray(g.weights) * out[0]).mean() == pytest.approx(true_mean, rel=1e-4)


def test_isothermal_rest_atmosphere_on_pressure_levels():
    """Held–Suarez initial state: 288 K at rest, p_s = 1000 hPa; Φ(p) = R T ln(p_s/p)."""
    import jax

    from ensda.testbeds.sphere.dycore import HeldSuarez, Output

    model = HeldSuarez(resolution="T21", layers=8, dt_minutes=30.0, init_noise_k=0.0)
    levels = (50, 100, 300, 500, 850, 925, 1000)
    f = jax.jit(model.fields, static_argnums=1)(
        model.initial_state(jax.random.key(0)), Output(LatLonGrid(64, 32), levels)
    )
    assert set(f) == {
        "geopotential",
        "temperature",
        "u_component_of_wind",
        "v_component_of_wind",
        "surface_pressure",
    }
    assert f["temperature"].shape == (7, 32, 64) and f["surface_pressure"].shape == (32, 64)
    np.testing.assert_allclose(
        np.asarray(f["surface_pressure"]), 1e5, rtol=1e-4
    )  # float32 spectral round-off (< 10 Pa)
    np.testing.assert_allclose(np.asarray(f["temperature"]), 288.0, rtol=1e-5)
    assert np.abs(np.asarray(f["u_component_of_wind"])).max() < 1e-3
    assert np.abs(np.asarray(f["v_component_of_wind"])).max() < 1e-3
    r_dry = 287.0
    expect = r_dry * 288.0 * np.log(1000.0 / np.asarray(levels, np.float64))
    phi = np.asarray(f["geopotential"], np.float64).mean(axis=(1, 2))
    # dinosaur's σ-level hydrostatic integral is exact at the layer centres to ~1 %
    np.testing.assert_allclose(phi, expect, rtol=0.015, atol=30.0)
    assert (
        np.ptp(np.asarray(f["geopotential"]), axis=(1, 2)).max() < 10.0
    )  # uniform to 1 m (p_s round-off)


def test_vertical_interpolation_columns():
    from ensda.testbeds.sphere.dycore import geopotential_to_pressure, interp_columns

    rng = np.random.default_rng(0)
    knots = np.log(np.array([0.1, 0.3, 0.5, 0.7, 0.9]))
    f = rng.normal(size=(5, 3, 4)).astype(np.float32)
    x = np.log(rng.uniform(0.02, 1.2, size=(6, 3, 4))).astype(np.float32)
    got = np.asarray(interp_columns(x, knots, f))
    for j in range(3):
        for i in range(4):
            np.testing.assert_allclose(
                got[:, j, i], np.interp(x[:, j, i], knots, f[:, j, i]), rtol=1e-5, atol=1e-5
            )
    # isothermal column: Φ = −R T ln σ at the knots → the same law everywhere, extrapolation
    # included
    r, t = 287.0, 250.0
    phi = (-r * t * knots)[:, None, None] * np.ones((1, 3, 4))
    temp = np.full((5, 3, 4), t)
    got = np.asarray(geopotential_to_pressure(x, knots, phi, temp, r))
    np.testing.assert_allclose(got, -r * t * x, rtol=1e-4, atol=0.5)
