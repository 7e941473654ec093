"""Stores written by other tools in the ERA5 / WeatherBench 2 layout load, are checked, regrid.

References: WeatherBench 2's regridded stores are (time, level, longitude, latitude) with
zarr v2 consolidated metadata; its 0.25° ERA5 runs north to south with poles; the
conservative regridding keeps the area integral exactly and reproduces a smooth field at
cell centres to O(Δ²).
"""

import jax
import numpy as np
import pytest
import xarray as xr

from ensda.testbeds.sphere.dycore import HeldSuarez
from ensda.testbeds.sphere.grid import LatLonGrid, conservative_weights
from ensda.testbeds.sphere.testbed import Channels, SphereTestbed

GRID = LatLonGrid(64, 32)
CH = Channels(levels=(500, 850))
VARS = ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind")


def write_store(
    path,
    lat,
    lon,
    levels=(500.0, 850.0),
    n_time=3,
    dims_lon_first=True,
    drop=(),
    nan_at=None,
    extra=True,
):
    rng = np.random.default_rng(0)
    shape3 = (
        (n_time, len(levels), lon.size, lat.size)
        if dims_lon_first
        else (n_time, len(levels), lat.size, lon.size)
    )
    dims3 = (
        ("time", "level", "longitude", "latitude")
        if dims_lon_first
        else ("time", "level", "latitude", "longitude")
    )
    data = {v: (dims3, rng.normal(size=shape3).astype(np.float32)) for v in VARS if v not in drop}
    if "surface_pressure" not in drop:
        data["surface_pressure"] = (
            dims3[:1] + dims3[2:],
            (1e5 + rng.normal(size=(n_time,) + shape3[2:])).astype(np.float32),
        )
    if extra:
        data["specific_humidity"] = (dims3, rng.normal(size=shape3).astype(np.float32))
    if nan_at is not None:
        data["temperature"][1][nan_at] = np.nan
    times = np.datetime64("2020-01-01T00") + np.arange(n_time) * np.timedelta64(6, "h")
    ds = xr.Dataset(
        data, coords={"time": times, "level": np.asarray(levels), "latitude": lat, "longitude": lon}
    )
    ds.to_zarr(path, zarr_format=2, consolidated=True, mode="w")
    return ds


def sphere_testbed(path):
    return SphereTestbed(HeldSuarez(resolution="T21", dt_minutes=30.0), GRID, CH, 6, str(path))


def test_wb2_regridded_layout_north_to_south_with_extra_variables(tmp_path):
    lat = GRID.latitudes[::-1].copy()  # north to south
    ds = write_store(tmp_path / "wb2.zarr", lat, GRID.longitudes)
    tb = sphere_testbed(tmp_path / "wb2.zarr")
    x = np.asarray(tb.truth(0, 2))
    assert x.shape == (3, CH.n, 32, 64)
    expect = (
        ds["temperature"].sel(level=850.0).values[2].T[::-1]
    )  # (lon, lat N→S) -> (lat S→N, lon)
    np.testing.assert_array_equal(x[2, CH.index("temperature", 850)], expect)
    np.testing.assert_array_equal(
        x[0, CH.index("surface_pressure")], ds["surface_pressure"].values[0].T[::-1]
    )
    clim = np.asarray(tb.climatology_samples(jax.random.key(0), 2, exclude=(0, 0)))
    assert clim.shape == (2, CH.n, 32, 64)


def test_longitudes_from_minus_180_are_wrapped(tmp_path):
    lon = GRID.longitudes - 180.0
    ds = write_store(tmp_path / "w.zarr", GRID.latitudes, lon, dims_lon_first=False, extra=False)
    x = np.asarray(sphere_testbed(tmp_path / "w.zarr").truth(0, 0))
    src = ds["geopotential"].sel(level=500.0).values[0]  # (lat, lon) with lon -180..
    np.testing.assert_array_equal(x[0, CH.index("geopotential", 500)], np.roll(src, -32, axis=-1))


def test_finer_grid_with_poles_is_regridded_conservatively(tmp_path):
    lat = np.linspace(90.0, -90.0, 121)  # 1.5°, poles, north to south (ERA5 order)
    lon = np.arange(240) * 1.5
    glat, glon = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    field = (250.0 + 30.0 * np.cos(glat) ** 2 + 5.0 * np.cos(glat) * np.cos(glon)).astype(
        np.float32
    )
    ds = write_store(tmp_path / "fine.zarr", lat, lon, dims_lon_first=False, extra=False)
    ds["temperature"].values[:] = field
    ds.to_zarr(tmp_path / "fine.zarr", zarr_format=2, consolidated=True, mode="w")
    x = np.asarray(sphere_testbed(tmp_path / "fine.zarr").truth(0, 0))[
        0, CH.index("temperature", 500)
    ]
    # the exact area average over each target cell [φ₁, φ₂] × [λ₁, λ₂] (weight cos φ)
    edges = np.deg2rad(np.linspace(-90.0, 90.0, 33))
    lam = np.deg2rad(GRID.longitudes[None, :] + np.array([[-2.8125], [2.8125]]))
    ds_ = np.diff(np.sin(edges))
    cos3 = np.diff(np.sin(edges) - np.sin(edges) ** 3 / 3) / ds_
    cos2 = np.diff(edges / 2 + np.sin(2 * edges) / 4) / ds_
    coslam = (np.sin(lam[1]) - np.sin(lam[0])) / np.deg2rad(5.625)
    expect = 250.0 + 30.0 * cos3[:, None] + 5.0 * cos2[:, None] * coslam[None, :]
    np.testing.assert_allclose(
        x, expect, atol=0.03
    )  # the 1.5° point values stand for cell means to O(1.5°²)
    # the area integral is kept exactly
    w_lat, w_lon = conservative_weights(lat[::-1], lon, GRID)
    s_edges = np.sin(
        np.deg2rad(np.concatenate([[-90.0], (lat[::-1][1:] + lat[::-1][:-1]) / 2, [90.0]]))
    )
    src_area = np.diff(s_edges)[:, None] * np.full(240, 1.5)[None]
    t_area = (
        np.diff(np.sin(np.deg2rad(np.linspace(-90, 90, 33))))[:, None] * np.full(64, 5.625)[None]
    )
    src_mean = (src_area * field[::-1]).sum() / src_area.sum()
    assert (t_area * x).sum() / t_area.sum() == pytest.approx(src_mean, rel=1e-6)
    np.testing.assert_allclose(w_lat.sum(1), 1.0) and np.testing.assert_allclose(w_lon.sum(1), 1.0)


@pytest.mark.parametrize(
    "problem,match",
    [
        ("missing", "lacks channels .*temperature_500"),
        ("coarse", "coarser than the analysis grid"),
        ("nan", r"non-finite values \(NaN/Inf\) in temperature_850 at time 2020-01-01T06:00:00"),
    ],
)
def test_wrong_stores_get_clear_errors(tmp_path, problem, match):
    lat, lon = GRID.latitudes, GRID.longitudes
    if problem == "missing":
        write_store(tmp_path / "s.zarr", lat, lon, drop=("temperature",))
    elif problem == "coarse":
        write_store(
            tmp_path / "s.zarr", LatLonGrid(32, 16).latitudes, LatLonGrid(32, 16).longitudes
        )
    else:
        write_store(tmp_path / "s.zarr", lat, lon, dims_lon_first=False, nan_at=(1, 1, 5, 7))
    with pytest.raises(ValueError, match=match):
        sphere_testbed(tmp_path / "s.zarr").truth(0, 2)
