"""Global observation networks on the sphere's lat–lon grid.

References: column counts round(density · n); observations index the flattened state
channel-major (channel · n_columns + column), so H(x) is the state at (channel, column);
errors y − Hx ~ N(0, r²) with r per variable (checked by sample moments); the station set
is denser in the northern hemisphere and clustered (nearest-neighbour distances against a
uniform draw); swath columns lie near the analytic ground track of a polar orbit and move.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensda.observe import Observations, ObsNetwork
from ensda.testbeds.sphere.grid import LatLonGrid
from ensda.testbeds.sphere.observe import GlobalObsNetwork
from ensda.testbeds.sphere.testbed import Channels

GRID = LatLonGrid(64, 32)
CH = Channels(levels=(250, 500, 850))  # 4 variables x 3 levels + surface pressure = 13 channels


def truth(seed=0, shape=(CH.n, 32, 64)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * 10.0, jnp.float32)


def col_latlon(cols):
    cols = np.asarray(cols)
    return GRID.latitudes[cols // 64], GRID.longitudes[cols % 64]


def test_random_columns_all_channels_and_per_variable_r():
    net = GlobalObsNetwork(GRID, CH, kind="random", density=0.01, redraw=True)
    assert net.n_columns == 20 and net.n_obs == 20 * 13 and net.fraction == pytest.approx(20 / 2048)
    assert net.n_state == 13 * 2048
    x = truth()
    obs = net.observe(x, jax.random.key(0), 3)
    cols = np.asarray(obs.site[:20])
    assert np.all(np.diff(cols) > 0)
    np.testing.assert_array_equal(np.asarray(obs.site), np.tile(cols, 13))
    # channel-major flat indices into the state, and H(x) reads them
    np.testing.assert_array_equal(
        np.asarray(obs.idx).reshape(13, 20), np.arange(13)[:, None] * 2048 + cols[None]
    )
    np.testing.assert_allclose(np.asarray(obs.h(x)), np.asarray(x).reshape(13, -1)[:, cols].ravel())
    np.testing.assert_allclose(
        np.asarray(obs.h(jnp.stack([x, 2 * x]))[1]), 2 * np.asarray(obs.h(x)), rtol=1e-6
    )
    r = np.asarray(obs.r_std).reshape(13, 20)[:, 0]
    np.testing.assert_allclose(r, [100.0] * 3 + [1.0] * 3 + [2.0] * 6 + [100.0])
    # a new set every cycle with redraw, the same without
    assert not np.array_equal(
        np.asarray(net.site_indices(jax.random.key(1), 0)),
        np.asarray(net.site_indices(jax.random.key(1), 1)),
    )
    fixed = GlobalObsNetwork(GRID, CH, kind="random", density=0.01, redraw=False)
    np.testing.assert_array_equal(
        np.asarray(fixed.site_indices(jax.random.key(1), 0)),
        np.asarray(fixed.site_indices(jax.random.key(1), 7)),
    )


def test_error_statistics_per_variable():
    net = GlobalObsNetwork(
        GRID,
        CH,
        kind="random",
        density=0.25,
        variables=("temperature", "surface_pressure"),
        levels=(850,),
    )
    assert net.observed_channels == (CH.index("temperature", 850), CH.index("surface_pressure"))
    xs = jnp.zeros((40, CH.n, 32, 64))
    obs = net.observe_run(xs, jax.random.key(5))
    assert obs.y.shape == (40, 2 * 512) and obs.idx.shape == (40, 1024)
    z = np.asarray(obs.y / obs.r_std).reshape(40, 2, 512)
    for k in range(2):  # 20,480 draws each: mean 0 ± 0.007, std 1 ± 0.005 (1 sigma)
        assert abs(z[:, k].mean()) < 0.04 and abs(z[:, k].std() - 1.0) < 0.03
    assert np.asarray(obs.r_std).reshape(40, 2, 512)[0, :, 0].tolist() == [1.0, 100.0]


def test_station_network_is_fixed_clustered_and_denser_in_the_north():
    net = GlobalObsNetwork(GRID, CH, kind="stations", density=0.05)
    key = jax.random.key(3)
    cols = np.asarray(net.site_indices(key, 0))
    assert cols.size == 102 and np.unique(cols).size == 102
    np.testing.assert_array_equal(cols, np.asarray(net.site_indices(key, 9)))
    # northern hemisphere: 75 % of the cluster centres (+ tropical ones); per draw it varies
    north = [(col_latlon(net.site_indices(jax.random.key(k), 0))[0] > 0).mean() for k in range(8)]
    assert np.mean(north) > 0.65 and min(north) > 0.4
    w = np.asarray(net.station_weights(key))
    assert w.sum() == pytest.approx(1.0, abs=1e-5)

    def mean_nn_km(c):
        d = np.array(GRID.distance(c[:, None], c[None, :]))
        np.fill_diagonal(d, np.inf)
        return d.min(axis=1).mean()

    uniform = np.asarray(
        GlobalObsNetwork(GRID, CH, kind="random", density=0.05, redraw=False).site_indices(key, 0)
    )
    assert mean_nn_km(cols) < 0.85 * mean_nn_km(uniform)  # clustered


def test_swaths_follow_polar_orbits_and_move():
    net = GlobalObsNetwork(GRID, CH, kind="swaths", density=0.08, n_satellites=2)
    key = jax.random.key(4)
    t_lat, t_lon = (np.asarray(a) for a in net.ground_track(key, 0))
    # a 6-hour window is 3.6 orbits of 101 min: the track reaches ±81.3° (180° − 98.7°)
    assert np.abs(t_lat).max() == pytest.approx(np.deg2rad(81.3), abs=np.deg2rad(0.5))
    cols = np.asarray(net.site_indices(key, 0))
    lat, lon = col_latlon(cols)
    d = np.asarray(GRID.distance(cols[:, None], np.arange(GRID.n)[None]))
    from ensda.testbeds.sphere.grid import great_circle_km

    glat, glon = np.deg2rad(lat), np.deg2rad(lon)
    to_track = great_circle_km(glat[:, None], glon[:, None], t_lat[None], t_lon[None]).min(axis=1)
    all_lat = np.deg2rad(np.repeat(GRID.latitudes, 64))
    all_lon = np.deg2rad(np.tile(GRID.longitudes, 32))
    all_to_track = great_circle_km(
        all_lat[:, None], all_lon[:, None], t_lat[None], t_lon[None]
    ).min(axis=1)
    assert to_track.max() <= np.sort(all_to_track)[cols.size - 1] + 1e-3  # the nearest columns
    assert to_track.max() < 1500.0 and d.shape[0] == 164
    assert lat.max() > 60 and lat.min() < -60  # pole to pole
    nxt = np.asarray(net.site_indices(key, 1))
    assert len(set(cols) & set(nxt)) < 0.5 * cols.size  # the Earth turned 90° under the orbits
    day = np.concatenate([np.asarray(net.site_indices(key, c)) for c in range(4)])
    assert np.unique(day % 64).size > 48  # a day of swaths sees most longitudes


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="obs.kind"):
        GlobalObsNetwork(GRID, CH, kind="radar")
    with pytest.raises(ValueError, match="obs.variables"):
        GlobalObsNetwork(GRID, CH, variables=("specific_humidity",))
    with pytest.raises(ValueError, match="obs.levels"):
        GlobalObsNetwork(GRID, CH, levels=(300,))
    with pytest.raises(ValueError, match="obs.r_std has no error"):
        GlobalObsNetwork(GRID, CH, r_std=(("temperature", 1.0),))


def test_lorenz96_observations_unchanged():
    net = ObsNetwork(n_state=40, every=2)
    x = jnp.arange(40.0)
    obs = net.observe(x, jax.random.key(0), 0)
    assert obs.site is None and obs.state_shape is None
    np.testing.assert_array_equal(np.asarray(obs.sites), np.arange(0, 40, 2))
    np.testing.assert_array_equal(np.asarray(obs.h(x)), np.arange(0, 40, 2))
    stacked = net.observe_run(jnp.stack([x, x]), jax.random.key(0))
    assert isinstance(stacked.at(1), Observations) and stacked.at(1).y.shape == (20,)


def test_observation_dataset_locates_every_value_and_round_trips_through_zarr(tmp_path):
    """The stored observations (``GlobalObsNetwork.dataset``) name where each value is: the
    truth at (channel, latitude, longitude) read back by name from the dataset's coordinates
    differs from the stored value by the noise alone (standardised std ≈ 1), and the zarr
    store reads back exactly."""
    import xarray as xr

    net = GlobalObsNetwork(GRID, CH, kind="swaths", density=0.02)  # columns move every cycle
    states = jnp.stack([truth(s) for s in range(4)])
    obs = net.observe_run(states, jax.random.key(5))
    ds = net.dataset(obs)
    assert ds.sizes == {"cycle": 4, "obs": net.n_obs} and list(ds["cycle"].values) == [1, 2, 3, 4]
    lat_i = np.searchsorted(GRID.latitudes, ds["latitude"].values)
    lon_i = np.searchsorted(GRID.longitudes, ds["longitude"].values)
    chan = [CH.names.index(c) for c in ds["channel"].values]
    clean = np.asarray(states)[np.arange(4)[:, None], np.asarray(chan)[None], lat_i, lon_i]
    z = (ds["value"].values - clean) / ds["r_std"].values
    assert abs(z.std() - 1.0) < 0.1 and abs(z.mean()) < 0.1
    assert not np.array_equal(ds["column"].values[0], ds["column"].values[1])  # swaths move
    levels = ds["level"].values
    assert np.isnan(levels[ds["variable"].values == "surface_pressure"]).all()
    assert set(levels[ds["channel"].values == "temperature_850"]) == {850.0}
    ds.to_zarr(tmp_path / "obs.zarr", consolidated=False, zarr_format=3)
    back = xr.open_zarr(tmp_path / "obs.zarr", consolidated=False).load()
    xr.testing.assert_identical(back, ds)
