r"""The sphere testbed: states on the lat–lon grid, their forecasts, truth and climatology.

**State.** An array ``(..., n_var, n_lat, n_lon)`` (float32, SI units) on the analysis grid
whose channels are the variables × levels of the nature run, in this order (``Channels``):
each pressure-level variable present, in the order geopotential, temperature,
u_component_of_wind, v_component_of_wind, at each level from the top (increasing hPa);
then each surface variable (surface_pressure). With the 13 WeatherBench 2 levels:
channels 0–12 geopotential at 50…1000 hPa, 13–25 temperature, 26–38 u, 39–51 v,
52 surface pressure. Channel names are ``"<variable>_<level>"`` (``"temperature_850"``)
and the bare name for surface variables. An ensemble adds a leading ``N`` axis.

**Forecast.** ``cycle_forecast`` maps a state (any leading axes) to the state one cycle
later with a dycore: ``from_fields`` (pressure → σ levels, least-squares spectral fit on the
grid), the dycore's steps, ``fields`` (truncation and evaluation on the grid, σ → pressure
levels). With the nature run's dycore and resolution this is the *perfect* model (its only
errors are the scales the grid cannot hold and the σ ↔ p interpolation); a lower
resolution (``resolution: T21`` under a T42 truth) is an imperfect model. With an
``emulator`` (``testbeds.sphere.emulator.Emulator``, config ``forecast.emulator: PATH``)
the learned model makes the forecasts instead of the dycore.

**Grid.** ``LatLonGrid``: cos-latitude area weights normalised to mean 1, great-circle
distances in km between columns (flat index ``lat · n_lon + lon``) for localisation.

**Flat states.** ``FlatSphere`` wraps the testbed for the cycler: states ``(..., n_state)``
(the C-order flattening of ``(..., n_var, n_lat, n_lon)``) and one cos-latitude weight per
element, so the cycler, the metrics and the ensemble methods run as on Lorenz-96.

**Truth and climatology** come from a nature-run store (``ensda data nature``) or any store
in the ERA5 / WeatherBench 2 layout (``store.normalise``: either latitude order, either
dim order, extra variables ignored; a finer grid is regridded conservatively to the analysis
grid): ``truth`` reads a window of states one cycle apart, ``climatology_samples`` draws
states at random times, optionally outside a window (independent of the truth). A store
that lacks a channel, is coarser than the grid or holds NaNs is refused with the reason.
The reading is ``StoreReader``'s, which also reads ensemble stores (a ``member`` dim after
``time``: ``analyses.py``, ``ensda assimilate``).
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ensda.testbeds.sphere.channels import SURFACE_HPA, Channels  # noqa: F401  (re-exported)
from ensda.testbeds.sphere.config import MODEL_VARIABLES, checkpoint_record
from ensda.testbeds.sphere.dycore import (
    Output,
    _Dycore,
)
from ensda.testbeds.sphere.grid import LatLonGrid, conservative_weights
from ensda.testbeds.sphere.nature import build
from ensda.testbeds.sphere.store import open_store


def store_stride(times: np.ndarray, hours_per_cycle: float) -> int:
    """Store times per cycle of ``hours_per_cycle`` for a store with valid ``times``."""
    out_h = (times[1] - times[0]) / np.timedelta64(1, "h") if times.size > 1 else hours_per_cycle
    stride = hours_per_cycle / out_h
    if abs(stride - round(stride)) > 1e-9:
        raise ValueError(
            f"cycle of {hours_per_cycle} h is not a multiple of the store's {out_h} h output"
        )
    return round(stride)


@dataclasses.dataclass(frozen=True)
class SphereTestbed:
    """Forecasts of lat–lon states with a dycore, the grid and the nature-run store."""

    model: _Dycore
    grid: LatLonGrid
    channels: Channels
    hours_per_cycle: int = 6
    #: the nature-run store for ``truth`` and ``climatology_samples`` (None: forecasts only)
    store: str | None = None
    #: a learned forecast model (``emulator.Emulator``) used by ``forecast`` instead of the dycore
    emulator: object | None = None

    def __post_init__(self):
        self.model.steps_per(self.hours_per_cycle)  # a whole number of model steps, or raise

    @property
    def steps_per_cycle(self) -> int:
        return self.model.steps_per(self.hours_per_cycle)

    @property
    def output(self) -> Output:
        return Output(self.grid, self.channels.levels)

    @property
    def n_state(self) -> int:
        return self.channels.n * self.grid.n

    def forecast(self, x: jax.Array, n_cycles: int) -> jax.Array:
        """The states ``n_cycles`` cycles after ``x`` ``(..., n, lat, lon)`` (leading axes
        batched)."""
        if self.emulator is not None:
            return self.emulator.forecast(x, n_cycles)
        return _forecast(self, x, n_cycles)

    def cycle_forecast(self, x: jax.Array) -> jax.Array:
        """Forecast over one assimilation cycle."""
        return self.forecast(x, 1)

    # --- truth and climatology from the nature-run store ---------------------------------

    @functools.cached_property
    def _reader(self) -> StoreReader:
        if self.store is None:
            raise ValueError("this sphere testbed has no nature-run store (store=None)")
        return StoreReader(str(self.store), self.grid, self.channels)

    @property
    def dataset(self):
        """The nature-run store, opened (``store.open_store``)."""
        return self._reader.dataset

    @property
    def _regrid(self):
        return self._reader.regrid

    @property
    def stride(self) -> int:
        """Store times per cycle (the cycle length over the store's output interval)."""
        return store_stride(self.dataset["time"].values, self.hours_per_cycle)

    def _read(self, index) -> np.ndarray:
        return self._reader.read(index)

    def times(self, start: int, n_cycles: int) -> np.ndarray:
        """The store's times (datetime64[ns]) of ``truth(start, n_cycles)``: ``(n_cycles + 1,)``."""
        index = start + self.stride * np.arange(n_cycles + 1)
        return self.dataset["time"].values[index]

    def truth(self, start: int, n_cycles: int) -> jax.Array:
        """States at cycles 0..n_cycles, one cycle apart from store time index ``start``:
        shape ``(n_cycles + 1, n, lat, lon)``."""
        index = start + self.stride * np.arange(n_cycles + 1)
        if index[-1] >= self.dataset.sizes["time"]:
            raise ValueError(
                f"{self.store} holds {self.dataset.sizes['time']} times; "
                f"{n_cycles} cycles from index {start} need {index[-1] + 1}"
            )
        return jnp.asarray(self._read(index))

    def climatology_samples(
        self, key: jax.Array, n_samples: int, exclude: tuple[int, int] | None = None
    ) -> jax.Array:
        """``n_samples`` states at distinct random store times, outside ``exclude = (first, last)``
        time indices (inclusive) when given; sorted in time, shape ``(n_samples, n, lat, lon)``."""
        times = np.arange(self.dataset.sizes["time"])
        if exclude is not None:
            times = times[(times < exclude[0]) | (times > exclude[1])]
        if n_samples > times.size:
            raise ValueError(
                f"{n_samples} climatology samples asked, {times.size} store times available"
            )
        pick = np.sort(np.asarray(jax.random.choice(key, times.size, (n_samples,), replace=False)))
        return jnp.asarray(self._read(times[pick]))

    def climatology(self, key: jax.Array, n_samples: int, exclude: tuple[int, int] | None = None):
        """Climatological mean and standard deviation per channel and grid point."""
        xs = self.climatology_samples(key, n_samples, exclude)
        return xs.mean(0), xs.std(0)


@dataclasses.dataclass(frozen=True)
class StoreReader:
    """States of ``channels`` on ``grid`` from a zarr store in the ERA5 / WeatherBench 2
    layout (``store.open_store``: either latitude order, either dim order, extra variables
    ignored), conservatively regridded when the store is finer than the grid. A store with
    a ``member`` dim (an ensemble) gives states ``(time, member, n, lat, lon)``. A store that
    lacks a channel, is coarser than the grid or holds NaNs is refused with the reason."""

    path: str
    grid: LatLonGrid
    channels: Channels

    @functools.cached_property
    def dataset(self):
        ds = open_store(self.path)
        have = Channels.of_dataset(ds)
        missing = [n for n in self.channels.names if n not in have.names]
        if missing:
            variables = sorted(
                {self.channels.variable(self.channels.names.index(n)) for n in missing}
            )
            raise ValueError(
                f"{self.path}: the store lacks channels "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''} "
                f"(variables {variables}; it has {sorted(ds.data_vars)})"
            )
        return ds

    @property
    def members(self) -> int | None:
        """Ensemble size of a store with a ``member`` dim, None for a deterministic store."""
        return int(self.dataset.sizes["member"]) if "member" in self.dataset.dims else None

    @functools.cached_property
    def regrid(self):
        """None when the store is on the analysis grid, else conservative weights
        (``conservative_weights``)."""
        lat, lon = self.dataset["latitude"].values, self.dataset["longitude"].values
        same = lat.shape == self.grid.latitudes.shape and lon.shape == self.grid.longitudes.shape
        if (
            same
            and np.allclose(lat, self.grid.latitudes, atol=1e-3)
            and np.allclose(lon, self.grid.longitudes, atol=1e-3)
        ):
            return None
        if lat.size < self.grid.n_lat or lon.size < self.grid.n_lon:
            raise ValueError(
                f"{self.path}: grid {lon.size}x{lat.size} is coarser than the analysis grid "
                f"{self.grid.name}: regridding only coarsens"
            )
        return conservative_weights(lat, lon, self.grid)

    def read(self, index) -> np.ndarray:
        """States at store time indices ``index``: ``(len(index), [member,] n, lat, lon)``
        float32."""
        ds = self.dataset.isel(time=index)
        if self.channels.levels:
            ds = ds.sel(level=list(self.channels.levels))
        states = self.channels.states(ds)
        if self.regrid is not None:
            w_lat, w_lon = self.regrid
            states = np.einsum("ts,...sl,ul->...tu", w_lat, states, w_lon).astype(np.float32)
        bad = ~np.isfinite(states)
        if bad.any():
            at = np.argwhere(bad)[0]
            member = f" member {at[1]}" if states.ndim == 5 else ""
            raise ValueError(
                f"{self.path}: non-finite values (NaN/Inf) in {self.channels.names[at[-3]]} at "
                f"time {str(ds['time'].values[at[0]])[:19]}{member} ({int(bad.sum())} values in "
                f"the {len(index)} times read)"
            )
        return states


@partial(jax.jit, static_argnums=(0, 2))
def _forecast(testbed: SphereTestbed, x: jax.Array, n_cycles: int) -> jax.Array:
    model, out, ch = testbed.model, testbed.output, testbed.channels

    def one(xi):
        state = model.from_fields(ch.unstack(xi), out)
        state = jax.lax.fori_loop(
            0, n_cycles * testbed.steps_per_cycle, lambda _, s: model.step(s), state
        )
        return ch.stack(model.fields(state, out))

    lead = x.shape[:-3]
    flat = x.reshape((-1,) + x.shape[-3:])
    # members one after another on CPU (lax.map: 17 % faster than vmap there, measured at
    # N = 8 and 16 on 2 cores, T42), all at once (vmap) on an accelerator
    batch = 1 if jax.default_backend() == "cpu" else flat.shape[0]
    return jax.lax.map(one, flat, batch_size=batch).reshape(lead + x.shape[-3:])


@dataclasses.dataclass(frozen=True)
class FlatGrid:
    """The lat–lon grid as the cycler sees flat states: one area weight per state element
    (cos φ normalised to mean 1, the same for every channel of a column)."""

    grid: LatLonGrid
    n_channels: int

    @property
    def weights(self) -> jax.Array:
        return jnp.broadcast_to(self.grid.weights, (self.n_channels,) + self.grid.shape).reshape(-1)


def channel_std(states: jax.Array, grid: LatLonGrid, by_latitude: bool) -> jax.Array:
    """Standard deviation over samples of states ``(S, n_var, n_lat, n_lon)`` (sample mean
    removed), its variance averaged over longitude and, unless ``by_latitude``, over latitude
    with cos φ weights: ``(n_var, n_lat, 1)``."""
    var = jnp.var(states, axis=0, ddof=1).mean(axis=-1, keepdims=True)  # (n_var, n_lat, 1)
    if not by_latitude:
        w = jnp.asarray(np.cos(np.deg2rad(grid.latitudes)), var.dtype)[:, None]
        var = jnp.broadcast_to((var * w).sum(axis=-2, keepdims=True) / w.sum(), var.shape)
    return jnp.sqrt(var)


@dataclasses.dataclass(frozen=True)
class FlatSphere:
    """A ``SphereTestbed`` on flat states ``(..., n_state)``, n_state = n_var · n_lat · n_lon
    (C order), the form of the cycler, the metrics and every assimilator (as on Lorenz-96)."""

    testbed: SphereTestbed

    @property
    def state_shape(self) -> tuple[int, int, int]:
        return (self.testbed.channels.n,) + self.testbed.grid.shape

    @property
    def n_state(self) -> int:
        return self.testbed.n_state

    @property
    def grid(self) -> FlatGrid:
        return FlatGrid(self.testbed.grid, self.testbed.channels.n)

    @property
    def hours_per_cycle(self) -> float:
        return float(self.testbed.hours_per_cycle)

    def checkpoint_record(self) -> dict:
        """As ``SphereTestbedConfig.checkpoint_record``, of the model."""
        tb = self.testbed
        return checkpoint_record(tb.grid, tb.channels.names, tb.hours_per_cycle)

    def unflatten(self, x: jax.Array) -> jax.Array:
        """``(..., n_state)`` → ``(..., n_var, n_lat, n_lon)``."""
        return x.reshape(x.shape[:-1] + self.state_shape)

    def forecast(self, x: jax.Array, n_cycles: int) -> jax.Array:
        return self.testbed.forecast(self.unflatten(x), n_cycles).reshape(x.shape)

    def cycle_forecast(self, x: jax.Array) -> jax.Array:
        return self.forecast(x, 1)

    def truth_start(self, key: jax.Array, n_cycles: int, start: int | None = None) -> int:
        """Store time index of the truth window's first state: ``start``, or (None) drawn
        with ``key`` among the starts whose ``n_cycles`` cycles fit in the store."""
        if start is not None:
            return int(start)
        tb = self.testbed
        span, n_times = n_cycles * tb.stride, tb.dataset.sizes["time"]
        if span >= n_times:
            raise ValueError(
                f"{tb.store} holds {n_times} times, too few for {n_cycles} cycles of "
                f"{tb.hours_per_cycle} h"
            )
        return int(jax.random.randint(key, (), 0, n_times - span))

    def truth_times(self, start: int, n_cycles: int) -> np.ndarray:
        """Valid times (datetime64[ns]) of the truth at cycles 0..n_cycles from store time
        ``start``."""
        return self.testbed.times(start, n_cycles)

    def truth_and_climatology(
        self,
        key: jax.Array,
        n_cycles: int,
        clim_key: jax.Array,
        n_samples: int,
        start: int | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Flat truth at cycles 0..n_cycles from the store, ``(n_cycles + 1, n_state)``, from
        store time ``start`` (None: drawn with ``key`` among the starts that fit), and
        ``n_samples`` flat store states outside that window (key ``clim_key``)."""
        tb = self.testbed
        span = n_cycles * tb.stride
        start = self.truth_start(key, n_cycles, start)
        truth = tb.truth(start, n_cycles)
        clim = tb.climatology_samples(clim_key, n_samples, exclude=(start, start + span))
        return truth.reshape(truth.shape[0], -1), clim.reshape(n_samples, -1)


def from_config(cfg, store: str | None = None, perfect: bool = True) -> SphereTestbed:
    """The testbed of a ``SphereTestbedConfig``: the nature run's dycore (``perfect``) or the
    forecast model of ``cfg.forecast`` (resolution and time step, unset values as the nature
    run's; or the emulator checkpoint ``forecast.emulator``, checked against the state and
    cycle), the analysis grid, the channels of the nature run's variables and levels."""
    model, out = build(cfg)
    channels, emulator = channels_of(cfg), None
    if not perfect:
        f = cfg.forecast
        model = dataclasses.replace(
            model,
            resolution=f.resolution or cfg.resolution,
            dt_minutes=f.dt_minutes or cfg.dt_minutes,
        )
        if f.emulator is not None:
            from ensda.testbeds.sphere.emulator import load_emulator

            emulator = load_emulator(f.emulator)
            emulator.check_matches(channels, out.grid, cfg.cycle_hours, where=f.emulator)
    return SphereTestbed(
        model,
        out.grid,
        channels,
        cfg.cycle_hours,
        store if store is not None else cfg.nature.store,
        emulator,
    )


def channels_of(cfg) -> Channels:
    """The state channels of a ``SphereTestbedConfig``: its model's variables on its levels."""
    variables, surface = MODEL_VARIABLES[cfg.model]
    return Channels(variables, tuple(int(v) for v in cfg.state_levels), surface)
