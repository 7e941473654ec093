"""Nature-run climatology: the numbers recover an analytic zonal jet and poleward temperature
contrast in any latitude and dim order; the figure and ``ensda data info --climatology``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from ensda.cli import app
from ensda.testbeds.sphere.climate import climatology_numbers, format_numbers
from ensda.testbeds.sphere.figures import climatology_figure
from ensda.testbeds.sphere.store import open_store

SAMPLE = Path(__file__).parent / "data" / "sphere_t21_sample.zarr"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

LAT = np.arange(-85.0, 86.0, 5.0)  # 35 rows, the equator and ±45° among them
LON = np.arange(0.0, 360.0, 10.0)
LEVELS = np.array([50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000], np.int32)
U_NORTH, U_SOUTH = 30.0, 25.0  # jet speeds (m/s) at ±45°, 250 hPa
DU_T = np.array([-3.0, 0.0, 3.0])  # a jet-shaped change over the 3 times, zero in the mean
T0, DT_POLE, T_ASYM, LAPSE = 300.0, 40.0, 5.0, 50.0
PS0, DPS = 1.0e5, 800.0


def synthetic(lat: np.ndarray = LAT) -> xr.Dataset:
    """Three times of an analytic climate: u = A(φ) sin²(2φ) exp(−ln²(p/250)) plus a
    zonal wave and a time change that vanish in the zonal and time mean; T = T0 − 40 sin²φ
    − 5 sin φ − 50 ln(1000/p) plus a zonal wave; z = g (5800 − 600 sin²φ + 7000 ln(1000/p));
    p_s = 1e5 + 800 cos 2φ."""
    phi, lam = np.deg2rad(lat)[None, None, :, None], np.deg2rad(LON)[None, None, None, :]
    p = LEVELS.astype(np.float64)[None, :, None, None]
    shape = np.exp(-(np.log(p / 250.0) ** 2)) * np.sin(2 * phi) ** 2
    amp = np.where(phi > 0, U_NORTH, U_SOUTH)
    u = (amp + DU_T[:, None, None, None]) * shape + 5.0 * np.cos(3 * lam)
    t = (
        T0
        - DT_POLE * np.sin(phi) ** 2
        - T_ASYM * np.sin(phi)
        - LAPSE * np.log(1000.0 / p)
        + 3.0 * np.cos(2 * lam)
    )
    t = np.broadcast_to(t, (3, *t.shape[1:]))
    z = np.broadcast_to(
        9.80665 * (5800.0 - 600.0 * np.sin(phi) ** 2 + 7000.0 * np.log(1000.0 / p)), t.shape
    )
    ps = np.broadcast_to(PS0 + DPS * np.cos(2 * phi[:, 0]), (3, lat.size, LON.size))
    dims = ("time", "level", "latitude", "longitude")
    return xr.Dataset(
        {
            "u_component_of_wind": (dims, u.astype(np.float32)),
            "temperature": (dims, t.astype(np.float32)),
            "geopotential": (dims, z.astype(np.float32)),
            "surface_pressure": (("time", "latitude", "longitude"), ps.astype(np.float32)),
        },
        coords={
            "time": np.array(["2000-01-01T00", "2000-01-01T06", "2000-01-01T12"], "datetime64[ns]"),
            "level": LEVELS,
            "latitude": lat,
            "longitude": LON,
        },
    )


ORDERS = {
    "south-to-north": lambda ds: ds,
    "north-to-south": lambda ds: ds.isel(latitude=slice(None, None, -1)),
    "wb2 dims, north-to-south": lambda ds: ds.isel(latitude=slice(None, None, -1)).transpose(
        "time", "level", "longitude", "latitude"
    ),
    "latitude before level": lambda ds: ds.transpose("time", "latitude", "level", "longitude"),
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_numbers_recover_the_analytic_climate(order):
    n = climatology_numbers(ORDERS[order](synthetic()))
    assert (
        n["n_times"] == 3
        and n["first_time"] == "2000-01-01T00:00:00"
        and n["last_time"] == "2000-01-01T12:00:00"
    )
    north, south = n["jets"]["north"], n["jets"]["south"]
    assert (north["latitude"], north["level_hpa"]) == (45.0, 250.0)
    assert (south["latitude"], south["level_hpa"]) == (-45.0, 250.0)
    assert north["u_m_s"] == pytest.approx(U_NORTH, abs=1e-4)
    assert south["u_m_s"] == pytest.approx(U_SOUTH, abs=1e-4)

    t = n["temperature"]
    assert t["level_hpa"] == 850.0
    t_eq = T0 - LAPSE * np.log(1000.0 / 850.0)
    s85, c85 = np.sin(np.deg2rad(85.0)), np.sin(np.deg2rad(85.0)) ** 2
    for h, sign in (("north", 1.0), ("south", -1.0)):
        c = t[h]
        assert (c["equator_latitude"], c["pole_latitude"]) == (0.0, sign * 85.0)
        assert c["equator_K"] == pytest.approx(t_eq, abs=1e-3)
        assert c["pole_K"] == pytest.approx(t_eq - DT_POLE * c85 - sign * T_ASYM * s85, abs=1e-3)
        assert c["equator_minus_pole_K"] == pytest.approx(
            DT_POLE * c85 + sign * T_ASYM * s85, abs=1e-3
        )
    assert (
        t["north"]["equator_minus_pole_K"] > t["south"]["equator_minus_pole_K"]
    )  # the 5 sin φ asymmetry

    # cos-latitude weights: the area mean of cos 2φ is 1/3 (the plain row mean is ≈ 0)
    cos2 = np.cos(2 * np.deg2rad(LAT))
    assert n["surface_pressure_global_mean_pa"] == pytest.approx(
        PS0 + DPS * np.average(cos2, weights=np.cos(np.deg2rad(LAT))), abs=0.05
    )
    assert n["surface_pressure_global_mean_pa"] == pytest.approx(PS0 + DPS / 3.0, abs=3.0)
    assert abs(n["surface_pressure_global_mean_pa"] - (PS0 + DPS * cos2.mean())) > 200.0


def test_numbers_without_an_equator_row_and_over_the_last_times():
    lat = np.arange(-87.5, 88.0, 5.0)  # ±2.5°, ±47.5°, ±42.5° rows: the jet falls between two rows
    n = climatology_numbers(synthetic(lat).isel(latitude=slice(None, None, -1)), max_times=1)
    assert n["n_times"] == 1 and n["first_time"] == n["last_time"] == "2000-01-01T12:00:00"
    peak = np.sin(np.deg2rad(2 * 42.5)) ** 2  # sin²(85°) = sin²(95°): the 42.5° and 47.5° rows tie
    assert (
        n["jets"]["north"]["latitude"] in (42.5, 47.5) and n["jets"]["north"]["level_hpa"] == 250.0
    )
    assert n["jets"]["north"]["u_m_s"] == pytest.approx((U_NORTH + DU_T[-1]) * peak, abs=1e-4)
    assert n["jets"]["south"]["u_m_s"] == pytest.approx((U_SOUTH + DU_T[-1]) * peak, abs=1e-4)
    t = n["temperature"]
    assert (t["north"]["equator_latitude"], t["north"]["pole_latitude"]) == (2.5, 87.5)
    assert (t["south"]["equator_latitude"], t["south"]["pole_latitude"]) == (-2.5, -87.5)
    with pytest.raises(ValueError):
        climatology_numbers(synthetic(), max_times=0)


def test_figure_in_either_latitude_order():
    for order in ("south-to-north", "north-to-south"):
        fig = climatology_figure(ORDERS[order](synthetic()), title=order)
        titles = [ax.get_title() for ax in fig.axes]
        assert (
            "zonal- and time-mean u (× jet maxima)" in titles and "zonal- and time-mean T" in titles
        )
        assert (
            "time-mean geopotential height at 500 hPa" in titles
            and "time-mean temperature at 850 hPa" in titles
        )
        u_ax = fig.axes[0]
        assert u_ax.get_ylim()[0] > u_ax.get_ylim()[1]  # pressure increases downward
        assert u_ax.get_yscale() == "log"
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=60)
        assert buf.getvalue()[:8] == PNG_MAGIC


def test_cli_writes_the_figure_and_prints_the_numbers(tmp_path):
    runner = CliRunner()
    out = tmp_path / "clim.png"
    res = runner.invoke(app, ["data", "info", str(SAMPLE), "--climatology", str(out)])
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    expected = climatology_numbers(open_store(SAMPLE))
    for line in format_numbers(expected):
        assert line.strip() in res.output
    # a Held–Suarez climate: westerly jets in the subtropics/midlatitudes of both hemispheres
    # near the tropopause, T decreasing poleward, p_s near 1000 hPa
    for h, sign in (("north", 1.0), ("south", -1.0)):
        j = expected["jets"][h]
        assert (
            20.0 <= sign * j["latitude"] <= 60.0
            and 150.0 <= j["level_hpa"] <= 400.0
            and j["u_m_s"] > 15.0
        )
        assert expected["temperature"][h]["equator_minus_pole_K"] > 20.0
    assert expected["surface_pressure_global_mean_pa"] == pytest.approx(1.0e5, rel=0.01)

    res = runner.invoke(
        app, ["data", "info", str(SAMPLE), "--climatology", str(out), "--times", "2", "--json"]
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout.strip().splitlines()[-1])
    assert d["climatology"]["n_times"] == 2 and d["climatology"]["figure"] == str(out)
    assert d["climatology"]["jets"] == climatology_numbers(open_store(SAMPLE), max_times=2)["jets"]

    res = runner.invoke(app, ["data", "info", str(SAMPLE), "--times", "2"])
    assert res.exit_code == 2 and "--climatology" in res.output
