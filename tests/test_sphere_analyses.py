"""Analysis ensembles as zarr (WeatherBench 2 layout + ``member``), ``ensda run --analyses``
and ``ensda assimilate``.

References: (a) the stored ensembles are the written ones bit for bit, and a store made by
hand with xarray (latitude north to south, dims in another order, an extra variable) reads
as its arrays flipped and stacked in NumPy; (b) the ensemble mean of the stored analyses of
``ensda run --analyses`` equals the run's own ``mean_a`` (the cycler's), at the nature
store's times of the truth window read with xarray; (c) ``ensda assimilate`` with the LETKF
gives what ``ColumnLETKF.analyse`` gives called directly on the arrays the stores were made
from (observations drawn by ``GlobalObsNetwork.observe_run``, not read back from the file).
"""

import json

import jax
import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

pytest.importorskip("dinosaur")

from test_sphere_cycle import sw_experiment, sw_store  # noqa: E402,F401  (the tiny nature-run store)

from ensda.cli import app  # noqa: E402
from ensda.testbeds.sphere import analyses as an  # noqa: E402
from ensda.testbeds.sphere.grid import LatLonGrid  # noqa: E402
from ensda.testbeds.sphere.testbed import Channels  # noqa: E402

runner = CliRunner()
VARS3D = ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind")
T0 = np.datetime64("2020-01-01T00", "ns")
SIX_H = np.timedelta64(6, "h")


def test_round_trip_is_exact_and_a_hand_made_north_to_south_store_reads_right(tmp_path):
    ch, grid = Channels(VARS3D, (500, 850), ("surface_pressure",)), LatLonGrid(8, 4)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3, ch.n * grid.n)).astype(np.float32) * 100.0
    times = T0 + np.arange(5) * SIX_H
    path = tmp_path / "an.zarr"
    an.write(path, x[:2], times[:2], ch, grid, info={"method": "test"})
    an.write(path, x[2:], times[2:], ch, grid)  # appended by time
    assert an.n_written(path) == 5 and json.loads(
        xr.open_zarr(path, consolidated=False).attrs[an.ATTR]
    ) == {"method": "test"}
    with pytest.raises(ValueError, match="times must increase"):
        an.write(path, x[:1], times[:1], ch, grid)
    back = an.read(path)
    assert back.channels == ch and back.grid == grid and back.members == 3
    np.testing.assert_array_equal(back.times, times)
    np.testing.assert_array_equal(back.states, x)
    ds = xr.open_zarr(path, consolidated=False)
    assert ds["temperature"].dims == ("time", "member", "level", "latitude", "longitude")
    assert ds["surface_pressure"].dims == ("time", "member", "latitude", "longitude")
    assert list(ds["level"].values) == [500, 850] and list(ds["member"].values) == [0, 1, 2]
    np.testing.assert_array_equal(ds["latitude"].values, grid.latitudes)

    # by hand: (member, time, level, longitude, latitude), latitude north to south, an extra
    # variable
    lat = grid.latitudes[::-1]
    shape = (3, 2, 2, grid.n_lon, grid.n_lat)
    data = {
        v: (
            ("member", "time", "level", "longitude", "latitude"),
            rng.normal(size=shape).astype(np.float32),
        )
        for v in VARS3D + ("specific_humidity",)
    }
    data["surface_pressure"] = (
        ("member", "time", "longitude", "latitude"),
        rng.normal(size=(3, 2, grid.n_lon, grid.n_lat)).astype(np.float32),
    )
    hand = xr.Dataset(
        data,
        coords={
            "time": times[:2],
            "member": [0, 1, 2],
            "level": [850.0, 500.0],
            "latitude": lat,
            "longitude": grid.longitudes,
        },
    )
    hand.to_zarr(tmp_path / "hand.zarr", zarr_format=3, consolidated=False)
    got = an.read(tmp_path / "hand.zarr", ch, grid)
    states = got.states.reshape(2, 3, ch.n, grid.n_lat, grid.n_lon)
    for t in range(2):
        for m in range(3):
            for v in VARS3D:
                for lev in (500, 850):
                    src = hand[v].sel(level=float(lev)).values[m, t]  # (lon, lat N->S)
                    np.testing.assert_array_equal(states[t, m, ch.index(v, lev)], src.T[::-1])
            np.testing.assert_array_equal(
                states[t, m, ch.index("surface_pressure")],
                hand["surface_pressure"].values[m, t].T[::-1],
            )


# ----------------------------------------------------------------------------- ensda run --analyses


def test_a_write_killed_mid_append_leaves_the_committed_times(tmp_path):
    """A writer killed while appending leaves arrays of different lengths (here: the time
    slice written to some arrays only, as xarray appends them one by one) and no commit
    record for it; the store then reads as the committed times and the next write goes on."""
    import zarr

    from ensda.testbeds.sphere import store as zstore

    ch, grid = Channels(VARS3D[:2], (500,), ()), LatLonGrid(8, 4)
    x = np.random.default_rng(2).normal(size=(4, 2, ch.n * grid.n)).astype(np.float32)
    times = T0 + np.arange(4) * SIX_H
    path = tmp_path / "an.zarr"
    an.start(path, {"method": "test"})
    an.write(path, x[:2], times[:2], ch, grid)
    # the kill: time 2 reaches the time and geopotential arrays, not temperature, no commit
    root = zarr.open_group(str(path), mode="a")
    for name in ("time", "geopotential"):
        arr = root[name]
        arr.resize((3,) + arr.shape[1:])
    assert root["temperature"].shape[0] == 2 and an.n_written(path) == 2
    back = an.read(path)
    np.testing.assert_array_equal(back.times, times[:2])
    np.testing.assert_array_equal(back.states, x[:2])
    assert {zarr.open_group(str(path))[n].shape[0] for n in ("time", "temperature")} == {2}
    an.write(path, x[2:], times[2:], ch, grid)  # the resumed writer goes on
    assert an.n_written(path) == 4 and zstore.n_times(path) == 4
    np.testing.assert_array_equal(an.read(path).states, x)
    # killed during the very first write: nothing committed, nothing kept
    first = tmp_path / "first.zarr"
    an.start(first, {})
    an.write(first, x[:1], times[:1], ch, grid)
    zarr.open_group(str(first), mode="a").attrs[an.COMMITTED] = 0  # the commit never came
    an.write(first, x[:2], times[:2], ch, grid)
    np.testing.assert_array_equal(an.read(first).states, x[:2])


def test_run_writes_every_cycles_analysis_ensemble(sw_store, tmp_path, monkeypatch):  # noqa: F811
    from ensda import experiment

    store = sw_store
    data = sw_experiment(store, cycles=4, burn_in=1)
    config = tmp_path / "sw.yaml"
    config.write_text(yaml.safe_dump(data))

    runs = []
    real = experiment.run_method

    def keep(*args, **kwargs):
        runs.append(real(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(experiment, "run_method", keep)
    out = tmp_path / "an.zarr"
    result = runner.invoke(
        app, ["run", str(config), "--method", "letkf", "--no-track", "--analyses", str(out)]
    )
    assert result.exit_code == 0, result.output
    (run,) = runs
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["geopotential"].dims == ("time", "member", "level", "latitude", "longitude")
    assert ds.sizes == {"time": 4, "member": 12, "level": 1, "latitude": 16, "longitude": 32}
    assert list(ds["level"].values) == [500]
    np.testing.assert_array_equal(ds["latitude"].values, LatLonGrid(32, 16).latitudes)
    nature_times = xr.open_zarr(store, consolidated=False)["time"].values
    stride = round(SIX_H / (nature_times[1] - nature_times[0]))
    np.testing.assert_array_equal(
        ds["time"].values, nature_times[4 + stride * np.arange(1, 5)]
    )  # truth_start 4
    back = an.read(out)
    np.testing.assert_allclose(
        back.states[-1].mean(0), np.asarray(run.result.mean_a[-1]), rtol=1e-5, atol=1e-3
    )
    np.testing.assert_allclose(
        back.states.mean(1), np.asarray(run.result.mean_a), rtol=1e-5, atol=1e-3
    )
    assert run.result.analyses is None  # handed to the writer chunk by chunk, not kept

    l96 = tmp_path / "l96.yaml"
    l96.write_text(
        yaml.safe_dump(
            {
                "name": "l96",
                "cycles": 4,
                "burn_in": 1,
                "lead_time": {"enabled": False},
                "tracking": {"enabled": False},
            }
        )
    )
    result = runner.invoke(
        app, ["run", str(l96), "--no-track", "--analyses", str(tmp_path / "x.zarr")]
    )
    assert result.exit_code == 2 and "needs a sphere config" in result.output


# ----------------------------------------------------------------------------- ensda assimilate


@pytest.fixture
def hs(tmp_path):
    """A Held–Suarez sphere config on 32x16 (9 channels), its network's observations of a
    random truth at 3 cycles, and a WeatherBench 2-layout background ensemble (N = 6) at the
    times of cycles 2 and 3 written with xarray (latitude north to south, an extra variable)."""
    from ensda.config import validate
    from ensda.experiment import make_network

    data = {
        "name": "hs",
        "testbed": {
            "kind": "sphere",
            "model": "held_suarez",
            "resolution": "T21",
            "dt_minutes": 30.0,
            "levels": [500, 850],
            "grid": {"n_lon": 32, "n_lat": 16},
            "nature": {"store": str(tmp_path / "absent.zarr")},
        },
        "obs": {"kind": "random", "density": 0.1},
        "ensemble": {"size": 6},
        "method": "letkf",
        "methods": {"letkf": {"radius": 2000.0}},
        "tracking": {"enabled": False},
    }
    cfg = validate(data)
    network = make_network(cfg)
    ch, grid = network.channels, network.grid
    rng = np.random.default_rng(7)
    scale = np.asarray(
        [
            5e4
            if ch.variable(c) == "geopotential"
            else 250.0
            if ch.variable(c) == "temperature"
            else 1e5
            if ch.variable(c) == "surface_pressure"
            else 10.0
            for c in range(ch.n)
        ],
        np.float32,
    )
    spread = scale * np.asarray(
        [
            0.01 if ch.variable(c) in ("geopotential", "temperature", "surface_pressure") else 0.5
            for c in range(ch.n)
        ],
        np.float32,
    )
    shape = (ch.n,) + grid.shape
    truth = scale[:, None, None] + spread[:, None, None] * rng.normal(size=(3,) + shape).astype(
        np.float32
    )
    obs = network.observe_run(jax.numpy.asarray(truth), jax.random.key(3))
    times = T0 + np.arange(1, 4) * SIX_H  # cycles 1..3
    network.dataset(obs, times).to_zarr(tmp_path / "obs.zarr", zarr_format=3, consolidated=False)
    xb = scale[:, None, None] + spread[:, None, None] * rng.normal(size=(2, 6) + shape).astype(
        np.float32
    )

    def background(path, drop=(), members=True):
        fields = {}
        for v in VARS3D:
            fields[v] = np.stack([xb[:, :, ch.index(v, lev)] for lev in (500, 850)], axis=2)[
                ..., ::-1, :
            ]
        fields["surface_pressure"] = xb[:, :, ch.index("surface_pressure")][..., ::-1, :]
        dims = ("time", "member", "level", "latitude", "longitude")
        ds = xr.Dataset(
            {
                k: (dims if v.ndim == 5 else dims[:2] + dims[3:], v)
                for k, v in fields.items()
                if k not in drop
            }
            | {"specific_humidity": (dims, np.ones_like(fields["temperature"]))},
            coords={
                "time": times[1:],
                "member": np.arange(6),
                "level": [500, 850],
                "latitude": grid.latitudes[::-1],
                "longitude": grid.longitudes,
            },
        )
        if not members:
            ds = ds.isel(member=0)
        ds.to_zarr(path, zarr_format=3, consolidated=False, mode="w")
        return path

    config = tmp_path / "hs.yaml"
    config.write_text(yaml.safe_dump(data))
    return {
        "cfg": cfg,
        "config": str(config),
        "network": network,
        "obs": obs,
        "xb": xb,
        "spread": spread,
        "times": times,
        "background": background,
        "tmp": tmp_path,
    }


def test_assimilate_equals_the_letkf_called_directly(hs):
    from baselines.letkf import ColumnLETKF

    tmp = hs["tmp"]
    bg = hs["background"](tmp / "bg.zarr")
    args = [
        "assimilate",
        hs["config"],
        "--background",
        str(bg),
        "--observations",
        str(tmp / "obs.zarr"),
        "--out",
        str(tmp / "an.zarr"),
        "--method",
        "letkf",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert (
        summary["n_written"] == 2
        and summary["n_members"] == 6
        and summary["oma_rms"] < summary["omb_rms"]
    )
    got = an.read(tmp / "an.zarr")
    np.testing.assert_array_equal(got.times, hs["times"][1:])
    letkf = ColumnLETKF.build(hs["network"], radius=2000.0, vertical_radius=None)
    xb = hs["xb"].reshape(2, 6, -1)
    for t in range(2):  # background times are cycles 2 and 3 of the observations
        ref = letkf.analyse(jax.numpy.asarray(xb[t]), hs["obs"].at(t + 1), jax.random.key(0))
        spread = np.repeat(
            hs["spread"], hs["network"].grid.n
        )  # float32 round-off: small against the spread
        np.testing.assert_allclose(
            got.states[t] / spread, np.asarray(ref) / spread, rtol=0, atol=1e-3
        )
        assert np.abs(got.states[t] - xb[t]).max() > 0  # the analysis moved the background
    # run again: everything there already, nothing redone
    again = runner.invoke(app, args)
    assert (
        again.exit_code == 0 and json.loads(again.output.strip().splitlines()[-1])["n_skipped"] == 2
    )


def test_assimilate_refuses_wrong_stores_with_the_reason(hs):
    tmp = hs["tmp"]

    def run(bg, method="letkf", obs=tmp / "obs.zarr"):
        result = runner.invoke(
            app,
            [
                "assimilate",
                hs["config"],
                "--background",
                str(bg),
                "--observations",
                str(obs),
                "--out",
                str(tmp / "an.zarr"),
                "--method",
                method,
            ],
        )
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    assert "temperature" in run(hs["background"](tmp / "no_t.zarr", drop=("temperature",)))
    assert "no 'member' dim" in run(hs["background"](tmp / "det.zarr", members=False))
    # observations only at other times
    other = hs["network"].dataset(hs["obs"], hs["times"] + 24 * SIX_H)
    other.to_zarr(tmp / "other.zarr", zarr_format=3, consolidated=False)
    message = run(hs["background"](tmp / "bg.zarr"), obs=tmp / "other.zarr")
    assert (
        "no observations at the background time(s) 2020-01-01 12:00:00, 2020-01-01 18:00:00"
        in message
    )
