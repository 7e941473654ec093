r"""Observation networks, operators and draws.

An observation network says *where* (which sites) and *how* (operator, error std) the
truth is observed each cycle. The number of observations ``p`` is the same every cycle,
so a whole run of observations stacks into arrays and scans.

Networks (``ObsNetwork``):
  - every ``every``-th site (``every=1``: all sites);
  - a random fraction ``density`` of the sites, ``round(density * n)`` of them, drawn once
    (``redraw=False``) or anew each cycle (``redraw=True``);
  - an explicit ``sites`` list.

Operators: ``identity`` (linear, H = index selection), ``square`` (y = x²), ``abs``
(y = |x|) and ``arctan`` (y = arctan x, the saturating operator of Bao, Zhang & Zhang 2024),
applied site-wise after selection. Errors are Gaussian with diagonal
R = diag(r_std²):  y = h(x[idx]) + r_std · ε,  ε ~ N(0, I).

On the sphere, ``GlobalObsNetwork`` observes columns of the lat–lon grid (random by density,
a fixed station set denser in the northern hemisphere, or polar-orbit swaths), in chosen
variables and levels, with R per variable; see its docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ensda.pytree import pytree_dataclass, static
from ensda.testbeds.sphere.grid import LatLonGrid, great_circle_km
from ensda.testbeds.sphere.testbed import Channels

OPERATORS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "square": jnp.square,
    "abs": jnp.abs,
    "arctan": jnp.arctan,
}


@pytree_dataclass
class Observations:
    """Observations of one cycle (or, with a leading axis, of many).

    y: values ``(p,)``; idx: observed state indices ``(p,)``; r_std: error std ``(p,)``;
    operator: name in ``OPERATORS`` (static).

    On a grid with several variables per site (the sphere: states ``(n_var, n_lat, n_lon)``),
    ``idx`` indexes the flattened state (C order: ``channel · n_columns + column``),
    ``site`` is each observation's grid column (for localisation) and ``state_shape`` the
    shape of one state; on a 1-D testbed both are None and ``idx`` is the site.
    """

    y: jax.Array
    idx: jax.Array
    r_std: jax.Array
    operator: str = static("identity")
    site: jax.Array | None = None
    state_shape: tuple[int, ...] | None = static(None)

    @property
    def linear(self) -> bool:
        return self.operator == "identity"

    @property
    def sites(self) -> jax.Array:
        """The grid site (column) of each observation."""
        return self.idx if self.site is None else self.site

    def flat(self, x: jax.Array) -> jax.Array:
        """States ``(..., *state_shape)`` as flat vectors ``(..., n)``; flat states and states
        of 1-D testbeds are returned unchanged."""
        lead = x.ndim - len(self.state_shape or ())
        if self.state_shape is None or lead < 0 or x.shape[lead:] != self.state_shape:
            return x
        return x.reshape(x.shape[:lead] + (-1,))

    def h(self, x: jax.Array) -> jax.Array:
        """Observation operator H(x): ``(..., n) -> (..., p)``, or ``(..., *state_shape) -> (..., p)``."""
        return OPERATORS[self.operator](jnp.take(self.flat(x), self.idx, axis=-1))

    def at(self, k) -> Observations:
        """Observations of cycle ``k`` from a stacked run."""
        return jax.tree_util.tree_map(lambda a: a[k], self)


@dataclasses.dataclass(frozen=True)
class ObsNetwork:
    """Where and how a state of ``n_state`` sites is observed. See the module docstring."""

    n_state: int
    every: int = 1
    density: float | None = None
    sites: tuple[int, ...] | None = None
    redraw: bool = False
    r_std: float = 1.0
    operator: str = "identity"

    def __post_init__(self):
        chosen = [self.every != 1, self.density is not None, self.sites is not None]
        if sum(chosen) > 1:
            raise ValueError("obs: give only one of 'every', 'density' or 'sites'")
        if self.every < 1:
            raise ValueError(f"obs.every must be >= 1, got {self.every}")
        if self.density is not None and not (0.0 < self.density <= 1.0):
            raise ValueError(f"obs.density must be in (0, 1], got {self.density}")
        if self.sites is not None:
            if len(self.sites) == 0:
                raise ValueError("obs.sites must not be empty")
            bad = [s for s in self.sites if not 0 <= s < self.n_state]
            if bad:
                raise ValueError(f"obs.sites out of range [0, {self.n_state}): {bad}")
        if not self.r_std > 0:
            raise ValueError(f"obs.r_std must be > 0, got {self.r_std}")
        if self.operator not in OPERATORS:
            raise ValueError(f"obs.operator must be one of {sorted(OPERATORS)}, got {self.operator!r}")
        if self.redraw and self.density is None:
            raise ValueError("obs.redraw needs obs.density (only random networks are redrawn)")

    @property
    def n_obs(self) -> int:
        """Number of observations per cycle, p."""
        if self.sites is not None:
            return len(self.sites)
        if self.density is not None:
            return max(1, round(self.density * self.n_state))
        return len(range(0, self.n_state, self.every))

    @property
    def fraction(self) -> float:
        """Fraction of sites observed per cycle."""
        return self.n_obs / self.n_state

    def site_indices(self, key: jax.Array, cycle: jax.Array | int) -> jax.Array:
        """Observed sites at ``cycle``, shape ``(p,)``: sorted, or as listed in ``sites``."""
        if self.sites is not None:
            return jnp.asarray(self.sites, jnp.int32)
        if self.density is None:
            return jnp.arange(0, self.n_state, self.every, dtype=jnp.int32)
        k = jax.random.fold_in(key, cycle) if self.redraw else key
        perm = jax.random.permutation(k, self.n_state)
        return jnp.sort(perm[: self.n_obs]).astype(jnp.int32)

    def observe(self, truth: jax.Array, key: jax.Array, cycle: jax.Array | int) -> Observations:
        """Draw the observations of one truth state ``(n,)`` at ``cycle``."""
        site_key, noise_key = jax.random.split(jax.random.fold_in(key, 0x0B5))
        idx = self.site_indices(site_key, cycle)
        r_std = jnp.full((self.n_obs,), self.r_std, jnp.float32)
        clean = OPERATORS[self.operator](truth[idx])
        eps = jax.random.normal(jax.random.fold_in(noise_key, cycle), clean.shape, clean.dtype)
        return Observations(y=clean + r_std * eps, idx=idx, r_std=r_std, operator=self.operator)

    def observe_run(self, truths: jax.Array, key: jax.Array) -> Observations:
        """Observations of every cycle of a run: ``truths (K, n)`` -> stacked ``Observations``."""
        cycles = jnp.arange(truths.shape[0])
        return jax.vmap(lambda t, c: self.observe(t, key, c))(truths, cycles)


# ---------------------------------------------------------------------------------------
# Global networks on the sphere's lat–lon grid
# ---------------------------------------------------------------------------------------

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
            raise ValueError(f"obs.levels {bad_levels} are not levels of the state {list(self.channels.levels)}")
        missing = sorted({self.channels.variable(c) for c in self.observed_channels} - set(dict(self.r_std)))
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
        return jnp.asarray([r[self.channels.variable(c)] for c in self.observed_channels], jnp.float32)

    def _column_coords(self):
        lat = jnp.repeat(jnp.deg2rad(jnp.asarray(self.grid.latitudes, jnp.float32)), self.grid.n_lon)
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
        t_h = cycle * self.cycle_hours + jnp.linspace(-0.5, 0.5, int(minutes // 2) + 1) * self.cycle_hours
        k_u, k_node = jax.random.split(key)
        u0 = jax.random.uniform(k_u, (self.n_satellites, 1), maxval=2 * jnp.pi)
        node0 = jax.random.uniform(k_node, ()) * 2 * jnp.pi + 2 * jnp.pi * jnp.arange(self.n_satellites)[:, None] / self.n_satellites
        u = u0 + 2 * jnp.pi * t_h[None] * 60.0 / self.period_minutes
        inc = jnp.deg2rad(self.inclination_deg)
        lat = jnp.arcsin(jnp.sin(inc) * jnp.sin(u))
        lon = node0 + jnp.arctan2(jnp.cos(inc) * jnp.sin(u), jnp.cos(u)) - 2 * jnp.pi * t_h[None] / EARTH_DAY_HOURS
        return lat.ravel(), jnp.mod(lon, 2 * jnp.pi).ravel()

    def site_indices(self, key: jax.Array, cycle: jax.Array | int) -> jax.Array:
        """Observed columns at ``cycle``, sorted, shape ``(n_columns,)``."""
        n, p = self.grid.n, self.n_columns
        if self.kind == "random":
            k = jax.random.fold_in(key, cycle) if self.redraw else key
            cols = jax.random.permutation(k, n)[:p]
        elif self.kind == "stations":
            cols = jax.random.choice(jax.random.fold_in(key, 1), n, (p,), replace=False, p=self.station_weights(key))
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
        return Observations(y=clean + r_std * eps, idx=idx, r_std=r_std, site=jnp.tile(cols, chans.shape[0]),
                            state_shape=(self.channels.n,) + self.grid.shape)

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
            raise ValueError(f"expected observations stacked over cycles (cycles, p), got idx of shape {idx.shape}")
        ch = self.channels
        chan = idx[0] // self.grid.n
        if not (idx // self.grid.n == chan).all():
            raise ValueError("observation slots change channel between cycles: not observations of this network")
        col = idx % self.grid.n
        lat = np.asarray(self.grid.latitudes)[col // self.grid.n_lon]
        lon = np.asarray(self.grid.longitudes)[col % self.grid.n_lon]
        level = [float(ch.levels[c % len(ch.levels)]) if ch.variable(c) in ch.variables else np.nan for c in chan]
        dims = ("cycle", "obs")

        def names(items):  # variable-length strings: zarr v3 has a spec for these (fixed-width: none)
            return np.asarray(items, dtype=object)

        coords = {}
        if times is not None:
            times = np.asarray(times, "datetime64[ns]")
            if times.shape != (y.shape[0],):
                raise ValueError(f"{times.shape[0]} times for {y.shape[0]} cycles of observations")
            coords["time"] = ("cycle", times)
        return xr.Dataset(
            {"value": (dims, y), "r_std": (dims, np.asarray(obs.r_std, np.float32)), "column": (dims, col.astype(np.int32)),
             "latitude": (dims, lat.astype(np.float32)), "longitude": (dims, lon.astype(np.float32))},
            coords={"cycle": np.arange(1, y.shape[0] + 1), "channel": ("obs", names([ch.names[c] for c in chan])),
                    "variable": ("obs", names([ch.variable(c) for c in chan])), "level": ("obs", np.asarray(level))}
            | coords,
            attrs={"kind": self.kind, "density": self.density, "redraw": int(self.redraw),
                   "cycle_hours": self.cycle_hours, "grid": self.grid.name, "n_columns": self.n_columns},
        )
