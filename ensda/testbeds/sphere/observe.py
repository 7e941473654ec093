"""Observation networks of the sphere testbed: columns of the lat–lon grid (random by
density, a fixed station set denser in the northern hemisphere, or polar-orbit swaths), in
chosen variables and levels, with R per variable (``GlobalObsNetwork``). Its observations
are ``ensda.observe.Observations`` with ``site`` (the column) and ``state_shape`` set.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ensda.observe import Observations
from ensda.testbeds.sphere.grid import LatLonGrid, great_circle_km
from ensda.testbeds.sphere.testbed import Channels

#: default observation error std per variable (SI): ~10 m of height, 1 K, 2 m/s, 1 hPa
GLOBAL_R_STD = (
    ("geopotential", 100.0),
    ("temperature", 1.0),
    ("u_component_of_wind", 2.0),
    ("v_component_of_wind", 2.0),
    ("surface_pressure", 100.0),
)
EARTH_DAY_HOURS = 23.9345  # sidereal day: the Earth turns 2π under an orbit in this time


@dataclasses.dataclass(frozen=True)
class GlobalObsNetwork:
    r"""Observed columns of a lat–lon grid, the variables × levels observed in each, and R.

    A state is ``(n_var, n_lat, n_lon)`` with channels ``channels`` (see
    ``ensda.testbeds.sphere.testbed``). Each cycle ``n_columns = max(1, round(density · n))``
    columns are observed, every one in the same channels (``variables`` × ``levels``, plus
    the surface variables listed in ``variables``; None: all); the observations are ordered
    channel-major (all columns of the first observed channel, then the next, ...), with
    Gaussian errors of std ``r_std[variable]``. Where the columns are (``kind``):

    - ``random``: a uniformly random set of columns, drawn once (``redraw=False``) or anew
      each cycle (``redraw=True``, key ``fold_in(key, cycle)``);
    - ``stations``: a fixed set, drawn once with probability ∝ cos φ × a clustered density:
      ``n_clusters`` Gaussian blobs (e-folding 1000 km) whose centres fall 75 % in 20–65° N,
      15 % in the tropics and 10 % in 20–60° S (land-like, denser in the northern hemisphere);
    - ``swaths``: the columns nearest to the ground tracks of ``n_satellites`` polar orbits
      (inclination ``inclination_deg``, period ``period_minutes``, ascending nodes spread
      evenly in longitude) during the cycle's window ±``cycle_hours``/2 around its analysis
      time t_k = k · ``cycle_hours``: latitude asin(sin i sin u), longitude
      Ω₀ + atan2(cos i sin u, cos u) − 2π t / (sidereal day), u = u₀ + 2π t / period. The
      swaths move every cycle as the Earth turns under the orbits.
    """

    layout: ClassVar[str] = "columns"  # as ``ensda.observe.ObsNetwork.layout``

    grid: LatLonGrid
    channels: Channels
    kind: str = "random"
    density: float = 0.01
    redraw: bool = True
    variables: tuple[str, ...] | None = None
    levels: tuple[int, ...] | None = None
    r_std: tuple[tuple[str, float], ...] = GLOBAL_R_STD
    cycle_hours: float = 6.0
    n_clusters: int = 12
    n_satellites: int = 2
    inclination_deg: float = 98.7
    period_minutes: float = 101.0

    def __post_init__(self):
        if self.kind not in ("random", "stations", "swaths"):
            raise ValueError(f"obs.kind must be random, stations or swaths, got {self.kind!r}")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"obs.density must be in (0, 1], got {self.density}")
        known = set(self.channels.variables) | set(self.channels.surface)
        bad = sorted(set(self.variables or ()) - known)
        if bad:
            raise ValueError(f"obs.variables {bad} are not in the state (it has {sorted(known)})")
        bad_levels = sorted(set(self.levels or ()) - set(self.channels.levels))
        if bad_levels:
            raise ValueError(
                f"obs.levels {bad_levels} are not levels of the state {list(self.channels.levels)}"
            )
        missing = sorted(
            {self.channels.variable(c) for c in self.observed_channels} - set(dict(self.r_std))
        )
        if missing:
            raise ValueError(f"obs.r_std has no error for {missing}")

    @property
    def observed_channels(self) -> tuple[int, ...]:
        """State channels observed in every observed column, in observation order."""
        ch = self.channels
        variables = self.variables or (ch.variables + ch.surface)
        levels = self.levels or ch.levels
        out = [ch.index(v, lv) for v in ch.variables if v in variables for lv in levels]
        return tuple(out + [ch.index(s) for s in ch.surface if s in variables])

    @property
    def n_state(self) -> int:
        return self.channels.n * self.grid.n

    @property
    def n_columns(self) -> int:
        return max(1, round(self.density * self.grid.n))

    @property
    def n_obs(self) -> int:
        return self.n_columns * len(self.observed_channels)

    @property
    def fraction(self) -> float:
        """Fraction of columns observed per cycle."""
        return self.n_columns / self.grid.n

    def channel_r_std(self) -> jax.Array:
        """Observation error std of each observed channel."""
        r = dict(self.r_std)
        return jnp.asarray(
            [r[self.channels.variable(c)] for c in self.observed_channels], jnp.float32
        )

    def _column_coords(self):
        lat = jnp.repeat(
            jnp.deg2rad(jnp.asarray(self.grid.latitudes, jnp.float32)), self.grid.n_lon
        )
        lon = jnp.tile(jnp.deg2rad(jnp.asarray(self.grid.longitudes, jnp.float32)), self.grid.n_lat)
        return lat, lon

    def station_weights(self, key: jax.Array) -> jax.Array:
        """Selection probability of each column for the station network (sums to 1)."""
        lat, lon = self._column_coords()
        k_band, k_lat, k_lon = jax.random.split(key, 3)
        band = jax.random.choice(k_band, 3, (self.n_clusters,), p=jnp.asarray([0.75, 0.15, 0.1]))
        lo = jnp.asarray([20.0, -20.0, -60.0])[band]
        hi = jnp.asarray([65.0, 20.0, -20.0])[band]
        c_lat = jnp.deg2rad(lo + (hi - lo) * jax.random.uniform(k_lat, (self.n_clusters,)))
        c_lon = jax.random.uniform(k_lon, (self.n_clusters,), maxval=2 * jnp.pi)
        d = great_circle_km(lat[:, None], lon[:, None], c_lat[None], c_lon[None])
        density = jnp.exp(-((d / 1000.0) ** 2)).sum(axis=1) + 0.005
        w = density * jnp.cos(lat)
        return w / w.sum()

    def ground_track(self, key: jax.Array, cycle) -> tuple[jax.Array, jax.Array]:
        """Latitudes and longitudes (radians) of the satellites' ground tracks in the cycle's
        window, sampled every 2 minutes: ``(n_satellites · n_times,)`` each."""
        minutes = self.cycle_hours * 60.0
        t_h = (
            cycle * self.cycle_hours
            + jnp.linspace(-0.5, 0.5, int(minutes // 2) + 1) * self.cycle_hours
        )
        k_u, k_node = jax.random.split(key)
        u0 = jax.random.uniform(k_u, (self.n_satellites, 1), maxval=2 * jnp.pi)
        node0 = (
            jax.random.uniform(k_node, ()) * 2 * jnp.pi
            + 2 * jnp.pi * jnp.arange(self.n_satellites)[:, None] / self.n_satellites
        )
        u = u0 + 2 * jnp.pi * t_h[None] * 60.0 / self.period_minutes
        inc = jnp.deg2rad(self.inclination_deg)
        lat = jnp.arcsin(jnp.sin(inc) * jnp.sin(u))
        lon = (
            node0
            + jnp.arctan2(jnp.cos(inc) * jnp.sin(u), jnp.cos(u))
            - 2 * jnp.pi * t_h[None] / EARTH_DAY_HOURS
        )
        return lat.ravel(), jnp.mod(lon, 2 * jnp.pi).ravel()

    def site_indices(self, key: jax.Array, cycle: jax.Array | int) -> jax.Array:
        """Observed columns at ``cycle``, sorted, shape ``(n_columns,)``."""
        n, p = self.grid.n, self.n_columns
        if self.kind == "random":
            k = jax.random.fold_in(key, cycle) if self.redraw else key
            cols = jax.random.permutation(k, n)[:p]
        elif self.kind == "stations":
            cols = jax.random.choice(
                jax.random.fold_in(key, 1), n, (p,), replace=False, p=self.station_weights(key)
            )
        else:
            lat, lon = self._column_coords()
            t_lat, t_lon = self.ground_track(key, cycle)
            d = great_circle_km(lat[:, None], lon[:, None], t_lat[None], t_lon[None]).min(axis=1)
            cols = jax.lax.top_k(-d, p)[1]
        return jnp.sort(cols).astype(jnp.int32)

    def observe(self, truth: jax.Array, key: jax.Array, cycle: jax.Array | int) -> Observations:
        """Draw the observations of one truth state ``(n_var, n_lat, n_lon)`` at ``cycle``."""
        site_key, noise_key = jax.random.split(jax.random.fold_in(key, 0x0B5))
        cols = self.site_indices(site_key, cycle)
        chans = jnp.asarray(self.observed_channels, jnp.int32)
        idx = (chans[:, None] * self.grid.n + cols[None, :]).ravel()
        r_std = jnp.repeat(self.channel_r_std(), self.n_columns)
        clean = truth.reshape(-1)[idx]
        eps = jax.random.normal(jax.random.fold_in(noise_key, cycle), clean.shape, clean.dtype)
        return Observations(
            y=clean + r_std * eps,
            idx=idx,
            r_std=r_std,
            site=jnp.tile(cols, chans.shape[0]),
            state_shape=(self.channels.n,) + self.grid.shape,
        )

    def observe_run(self, truths: jax.Array, key: jax.Array) -> Observations:
        """Observations of every cycle of a run: ``truths (K, n_var, n_lat, n_lon)`` -> stacked."""
        cycles = jnp.arange(truths.shape[0])
        return jax.vmap(lambda t, c: self.observe(t, key, c))(truths, cycles)

    def dataset(self, obs: Observations, times=None):
        """The stacked observations of a run (``observe_run``) as an ``xarray.Dataset`` with
        dims ``(cycle, obs)``: ``value`` and ``r_std`` (SI), each observation's grid column
        ``column`` and its ``latitude`` / ``longitude`` (degrees); per observation slot (fixed
        over cycles, channel-major) its ``channel`` name, ``variable`` and ``level`` (hPa,
        NaN for a surface variable). Cycle k is the analysis time k · ``cycle_hours`` after
        the start of the truth window (cycle 0, the initial state, is not observed); ``times``
        (datetime64, one per cycle), when given, are the cycles' valid times, a coordinate
        ``time`` on ``cycle`` (what ``ensda assimilate`` matches background times by)."""
        import xarray as xr

        idx, y = np.asarray(obs.idx), np.asarray(obs.y, np.float32)
        if idx.ndim != 2:
            raise ValueError(
                "expected observations stacked over cycles (cycles, p), got idx of shape "
                f"{idx.shape}"
            )
        ch = self.channels
        chan = idx[0] // self.grid.n
        if not (idx // self.grid.n == chan).all():
            raise ValueError(
                "observation slots change channel between cycles: not observations of this network"
            )
        col = idx % self.grid.n
        lat = np.asarray(self.grid.latitudes)[col // self.grid.n_lon]
        lon = np.asarray(self.grid.longitudes)[col % self.grid.n_lon]
        level = [
            float(ch.levels[c % len(ch.levels)]) if ch.variable(c) in ch.variables else np.nan
            for c in chan
        ]
        dims = ("cycle", "obs")

        def names(
            items,
        ):  # variable-length strings: zarr v3 has a spec for these (fixed-width: none)
            return np.asarray(items, dtype=object)

        coords = {}
        if times is not None:
            times = np.asarray(times, "datetime64[ns]")
            if times.shape != (y.shape[0],):
                raise ValueError(f"{times.shape[0]} times for {y.shape[0]} cycles of observations")
            coords["time"] = ("cycle", times)
        return xr.Dataset(
            {
                "value": (dims, y),
                "r_std": (dims, np.asarray(obs.r_std, np.float32)),
                "column": (dims, col.astype(np.int32)),
                "latitude": (dims, lat.astype(np.float32)),
                "longitude": (dims, lon.astype(np.float32)),
            },
            coords={
                "cycle": np.arange(1, y.shape[0] + 1),
                "channel": ("obs", names([ch.names[c] for c in chan])),
                "variable": ("obs", names([ch.variable(c) for c in chan])),
                "level": ("obs", np.asarray(level)),
            }
            | coords,
            attrs={
                "kind": self.kind,
                "density": self.density,
                "redraw": int(self.redraw),
                "cycle_hours": self.cycle_hours,
                "grid": self.grid.name,
                "n_columns": self.n_columns,
            },
        )
