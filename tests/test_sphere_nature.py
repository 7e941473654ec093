"""Sphere nature runs: the zarr layout, resumable generation, the CLI, shallow-water physics.

The cheap shallow-water model (T21, dt 30 min) writes the stores; the Held–Suarez sample
store shipped in tests/data (made by experiments/sphere_sample.py) is checked for layout
and a plausible climate. References: ERA5 / WeatherBench 2 names, units and dims; a
resumed generation equals one uninterrupted run bit for bit; mass (the global mean of the
geopotential g·h) is conserved by the shallow-water equations.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from ensda.config import ConfigError
from ensda.testbeds.sphere import store as zstore
from ensda.testbeds.sphere.config import SphereTestbedConfig, load_testbed

pytest.importorskip("dinosaur")

SAMPLE = Path(__file__).parent / "data" / "sphere_t21_sample.zarr"
ERA5_3D = ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind")


def sw_config(path, days=2.0, **nature) -> SphereTestbedConfig:
    return SphereTestbedConfig(
        model="shallow_water",
        resolution="T21",
        dt_minutes=30.0,
        spinup_days=1.0,
        nature={"store": str(path), "days": days, "time_chunk": 2, **nature},
    )


def _assert_same_data(a, b):
    """Bitwise-equal values, coordinates and attributes (but the store path in the config)."""
    import xarray as xr

    xr.testing.assert_identical(a.load().drop_attrs(), b.load().drop_attrs())
    strip = lambda ds: {k: v for k, v in ds.attrs.items() if k != "ensda_testbed"}
    assert strip(a) == strip(b)


@pytest.fixture(scope="module")
def one_shot(tmp_path_factory):
    from ensda.testbeds.sphere.nature import generate

    path = tmp_path_factory.mktemp("sw") / "one_shot.zarr"
    summary = generate(sw_config(path), progress=False)
    return path, summary


def test_store_layout_is_wb2_like(one_shot):
    path, summary = one_shot
    assert summary["n_times"] == 8 and summary["complete"]
    ds = zstore.open_store(path)
    assert dict(ds.sizes) == {"time": 8, "level": 1, "latitude": 32, "longitude": 64}
    assert list(ds.data_vars) == ["geopotential", "u_component_of_wind", "v_component_of_wind"]
    for name in ds.data_vars:
        assert ds[name].dims == ("time", "level", "latitude", "longitude")
        assert ds[name].dtype == np.float32
        assert ds[name].attrs["units"] == zstore.VARIABLE_ATTRS[name]["units"]
    assert ds["level"].values.tolist() == [500] and ds["level"].attrs["units"] == "hPa"
    np.testing.assert_allclose(ds["latitude"].values[[0, -1]], [-87.1875, 87.1875])
    np.testing.assert_allclose(ds["longitude"].values[[0, -1]], [0.0, 354.375])
    times = ds["time"].values
    assert str(times[0])[:19] == "2000-01-01T00:00:00"
    assert np.all(np.diff(times) == np.timedelta64(6, "h"))
    assert ds.attrs["truncation"] == "T21"
    assert json.loads(ds.attrs["ensda_testbed"])["model"] == "shallow_water"
    # zarr format 3, not consolidated, chunked by time_chunk
    meta = json.loads(Path(path, "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta.get("consolidated_metadata") is None
    root = zarr.open_group(str(path), mode="r")
    assert root["geopotential"].chunks == (2, 1, 32, 64)
    # values: depth ~10 km (Φ = g h ≈ 9.8e4), jet ≤ 80 m/s
    phi = ds["geopotential"].values
    assert 8e4 < phi.min() and phi.max() < 1.1e5
    assert 40 < ds["u_component_of_wind"].values.max() < 90


def test_shallow_water_conserves_mass(one_shot):
    ds = zstore.open_store(one_shot[0])
    w = np.cos(np.deg2rad(ds["latitude"].values))[:, None]
    mean_phi = (ds["geopotential"].values[:, 0] * w).sum(axis=(1, 2)) / (w.sum() * 64)
    assert np.ptp(mean_phi) / mean_phi.mean() < 1e-5


def test_resume_after_interruption_equals_one_shot(one_shot, tmp_path):
    from ensda.testbeds.sphere.nature import generate

    path = tmp_path / "resumed.zarr"
    cfg = sw_config(path)
    first = generate(cfg, progress=False, max_blocks=2)
    assert first["n_times"] == 4 and not first["complete"]
    assert zstore.read_restart(path).n_written == 4
    # a block whose data landed but whose restart state did not (killed in between):
    # the resumed run drops it and recomputes it
    extra = zstore.open_store(path).isel(time=slice(0, 2)).load()
    extra = extra.assign_coords(time=extra.time + np.timedelta64(24, "h"))
    zstore.append(path, extra, 2)
    assert zstore.n_times(path) == 6
    second = generate(cfg, progress=False)
    assert second["n_times"] == 8 and second["complete"] and second["spinup_s"] < 1.0
    _assert_same_data(zstore.open_store(one_shot[0]), zstore.open_store(path))


def test_resume_refuses_another_config_and_extends_days(one_shot, tmp_path):
    import shutil

    from ensda.testbeds.sphere.nature import generate

    path = tmp_path / "s.zarr"
    shutil.copytree(one_shot[0], path)
    with pytest.raises(ValueError, match="dt_minutes"):
        generate(sw_config(path).model_copy(update={"dt_minutes": 20.0}), progress=False)
    longer = generate(
        sw_config(path, days=2.5).model_copy(update={"cycle_hours": 12}), progress=False
    )
    assert longer["n_times"] == 10 and zstore.n_times(path) == 10
    ds = zstore.open_store(path)
    assert str(ds["time"].values[-1])[:19] == "2000-01-03T06:00:00"
    # the first 8 times are untouched
    _assert_same_data(zstore.open_store(one_shot[0]), ds.isel(time=slice(0, 8)))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not an ensda nature store"):
        generate(sw_config(junk), progress=False)


def test_cli_nature_and_info(tmp_path):
    from ensda.cli import app

    cfg = {
        "name": "sw",
        "testbed": {
            "kind": "sphere",
            "model": "shallow_water",
            "resolution": "T21",
            "dt_minutes": 30,
            "spinup_days": 0,
            "nature": {"store": str(tmp_path / "cli.zarr"), "days": 1, "time_chunk": 4},
        },
    }
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "data",
            "nature",
            str(path),
            "--no-progress",
            "--json",
            "--set",
            "testbed.nature.days=0.5",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["n_times"] == 2 and summary["complete"]
    res = runner.invoke(app, ["data", "info", str(tmp_path / "cli.zarr"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["dims"] == {"time": 2, "level": 1, "latitude": 32, "longitude": 64}
    assert info["time"]["step_hours"] == 6.0 and info["restart"]["n_written"] == 2
    res = runner.invoke(app, ["data", "info", str(tmp_path / "cli.zarr")])
    assert res.exit_code == 0 and "geopotential" in res.output and "64x32" in res.output
    # clear errors
    res = runner.invoke(app, ["data", "nature", str(path), "--set", "testbed.grid.n_lat=20"])
    assert res.exit_code == 2 and "testbed.grid" in res.output and "2 * n_lat" in res.output
    res = runner.invoke(app, ["data", "info", str(tmp_path / "missing.zarr")])
    assert res.exit_code == 2 and "no store" in res.output


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "testbed": {
                    "kind": "sphere",
                    "levels": [500, 300],
                    "dt_minutes": 40,
                    "nature": {"output_hours": 5},
                }
            }
        )
    )
    with pytest.raises(ConfigError) as err:
        load_testbed(path)
    assert "strictly increasing" in str(err.value) and "whole number of model steps" not in str(
        err.value
    )
    with pytest.raises(ConfigError, match="testbed.resolution"):
        load_testbed(path, ["testbed.levels=[300, 500]", "testbed.resolution=T50"])
    with pytest.raises(ConfigError, match="whole number of model steps"):
        load_testbed(path, ["testbed.levels=[300, 500]"])
    path.write_text(yaml.safe_dump({"testbed": {"kind": "lorenz96"}}))
    with pytest.raises(ConfigError, match="kind must be 'sphere'"):
        load_testbed(path)
    shipped = load_testbed(Path(__file__).parents[1] / "experiments" / "configs" / "sphere.yaml")
    assert shipped.resolution == "T42" and shipped.layers == 8 and shipped.spinup_days >= 200
    assert (shipped.grid.n_lon, shipped.grid.n_lat) == (64, 32) and shipped.nature.output_hours == 6


@pytest.mark.skipif(
    not SAMPLE.exists(), reason="sample store not made (experiments/sphere_sample.py)"
)
def test_held_suarez_sample_store_layout_and_climate():
    ds = zstore.open_store(SAMPLE)
    levels = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
    assert dict(ds.sizes) == {"time": 4, "level": 13, "latitude": 32, "longitude": 64}
    assert list(ds.data_vars) == [*ERA5_3D, "surface_pressure"]
    assert ds["level"].values.tolist() == levels
    assert ds["surface_pressure"].dims == ("time", "latitude", "longitude")
    lat = ds["latitude"].values
    t = ds["temperature"].mean(("time", "longitude")).values  # (level, lat)
    u = ds["u_component_of_wind"].mean(("time", "longitude")).values
    z = ds["geopotential"].mean(("time", "longitude", "latitude")).values
    ps = ds["surface_pressure"].values
    i850, i250 = levels.index(850), levels.index(250)
    eq, pole_n, pole_s = np.abs(lat).argmin(), lat.argmax(), lat.argmin()
    # Held–Suarez climate: warm tropics (T850 ≈ 290–305 K), cold poles, westerly jets
    # of 20–40 m/s near 250 hPa in both hemispheres, mean p_s ≈ 1000 hPa, Φ increasing upward
    assert (
        285 < t[i850, eq] < 310
        and t[i850, pole_n] < t[i850, eq] - 25
        and t[i850, pole_s] < t[i850, eq] - 25
    )
    for hemi in (lat > 20, lat < -20):
        jet = u[i250][hemi].max()
        assert 15 < jet < 50 and 25 < abs(lat[hemi][u[i250][hemi].argmax()]) < 60
    assert abs(u[i250, eq]) < 15
    assert (
        99_000
        < (ps * np.cos(np.deg2rad(lat))[:, None]).sum(axis=(1, 2)).mean()
        / np.cos(np.deg2rad(lat)).sum()
        / 64
        < 101_000
    )
    assert np.all(np.diff(z) < 0)  # levels go down: geopotential decreases
    assert zstore.read_restart(SAMPLE).spinup_steps == 200 * 48
