"""The sphere testbed kind: what the experiment layer asks of a testbed (see
``ensda.testbeds``), for ``testbed.kind: sphere``.

The model is a ``FlatSphere``: states are flat vectors ``(..., n_var·n_lat·n_lon)`` with
cos-latitude weights per element, so the cycler, the metrics and the methods work on both
testbeds alike. The truth is a window of the nature-run store (its start
``testbed.truth_start`` or drawn from ``seeds.truth``) and the climatology store states
outside that window; the network is a ``GlobalObsNetwork`` of columns. The metrics are
normalised per channel by its climatological σ_c (``channel_std``), and the headline
channels are reported one by one (``SphereRun``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ensda.testbeds.kind import TrainingGeometry, TruthWindow
from ensda.testbeds.sphere.config import MODEL_VARIABLES, SphereObsConfig, SphereTestbedConfig
from ensda.testbeds.sphere.grid import LatLonGrid
from ensda.testbeds.sphere.observe import GLOBAL_R_STD, GlobalObsNetwork
from ensda.testbeds.sphere.store import open_store
from ensda.testbeds.sphere.testbed import (
    FlatGrid,
    FlatSphere,
    channels_of,
    from_config,
    store_stride,
)
from ensda.testbeds.sphere.testbed import channel_std as sphere_channel_std


@dataclasses.dataclass(frozen=True)
class SphereRun:
    """What per-channel tables and maps of a sphere run need besides its ``CycleResult``."""

    grid: LatLonGrid
    names: tuple[str, ...]  # every channel, in state order
    headline: tuple[str, ...]  # channels reported one by one (summary keys, maps)
    channel_std: np.ndarray  # (C,) climatological σ_c
    truth_last: np.ndarray  # (C, n_lat, n_lon) truth at the last cycle

    @property
    def headline_index(self) -> dict[str, int]:
        """Headline channel name → its channel index (state order)."""
        return {name: self.names.index(name) for name in self.headline}


def channel_std(samples: jax.Array, testbed: FlatSphere) -> jax.Array:
    r"""Climatological standard deviation of each channel from flat samples ``(S, n)``:

    .. math:: \sigma_c = \sqrt{\sum_i w_i \,\mathrm{var}_s(x_{s,c,i}) / \sum_i w_i}

    (unbiased sample variance at each grid point i, cos-latitude weights w_i;
    ``testbed.channel_std``, the same σ as 3D-Var's climatological B): about the RMSE of a
    climatological forecast.
    """
    std = sphere_channel_std(testbed.unflatten(samples), testbed.testbed.grid, by_latitude=False)[
        :, 0, 0
    ]
    flat = np.flatnonzero(~(np.asarray(std) > 0))
    if flat.size:
        names = [testbed.testbed.channels.names[i] for i in flat]
        raise ValueError(
            f"channels {names} have no climatological variance in the {samples.shape[0]} samples: "
            "cannot normalise the metrics by them"
        )
    return std


@dataclasses.dataclass(frozen=True)
class SphereKind:
    """The ``testbed.kind: sphere`` plug-in (``ensda.testbeds.TestbedKind``)."""

    kind: ClassVar[str] = "sphere"
    config: ClassVar[type] = SphereTestbedConfig
    obs_config: ClassVar[type] = SphereObsConfig
    obs_tag: ClassVar[str] = "columns"
    unsupported: ClassVar[dict[str, str]] = {
        "oi": "oi builds a dense n_state × n_state climatological B, far too large on the sphere",
    }
    lost_track: ClassVar[bool] = False
    #: states are lat-lon fields, as zarr stores in the WeatherBench 2 layout hold them
    lat_lon_stores: ClassVar[bool] = True

    def owns_obs(self, value: Any) -> bool:
        """A global network has a ``kind`` (random, stations, swaths)."""
        return isinstance(value, SphereObsConfig) or (isinstance(value, dict) and "kind" in value)

    def default_obs(self, obs: dict | None) -> dict | None:
        """The ``obs`` section is a global network: random columns unless ``obs.kind`` says
        otherwise."""
        if obs is None or (isinstance(obs, dict) and "kind" not in obs):
            return {"kind": "random", **(obs or {})}
        return obs

    def check(self, cfg) -> None:
        """Cross-section checks of an experiment on the sphere (``ValueError`` naming the key)."""
        cfg.obs.check_state(cfg.testbed)
        if cfg.forecast_model.forcing is not None:
            raise ValueError(
                "forecast_model.forcing is a Lorenz-96 setting; on the sphere set testbed.forecast "
                "(resolution, dt_minutes) for an imperfect model"
            )
        if (
            cfg.ensemble.init == "climatology"
            and cfg.testbed.climatology_samples < cfg.ensemble.size
        ):
            raise ValueError(
                f"testbed.climatology_samples ({cfg.testbed.climatology_samples}) must be at least "
                f"ensemble.size ({cfg.ensemble.size}) for ensemble.init: climatology"
            )
        if cfg.train is not None:
            t = cfg.train
            if t.store_times is not None and t.store_times[0] + 2 > t.store_times[1]:
                raise ValueError(f"train.store_times {list(t.store_times)}: need first + 2 <= stop")
            known = set(MODEL_VARIABLES[cfg.testbed.model][0]) | set(
                MODEL_VARIABLES[cfg.testbed.model][1]
            )
            bad = sorted(set(t.variable_weights) - known)
            if bad:
                raise ValueError(
                    f"train.variable_weights: {bad} are not variables of the state "
                    f"({sorted(known)})"
                )
            if t.target == "anchored":
                raise ValueError(
                    "train.target anchored (ens-diffusion) runs on Lorenz-96 only for now"
                )

    def check_source_obs(self, cfg, obs, where: str) -> None:
        """A training source's network (``train.sources[i].obs``) is a column network of the
        state."""
        if not isinstance(obs, SphereObsConfig):
            raise ValueError(
                f"{where}: on the sphere a source needs a column network (kind: random, stations "
                "or swaths)"
            )
        obs.check_state(cfg.testbed)

    def max_radius(self, cfg) -> float | None:
        """No bound: radii are great-circle km."""
        return None

    def hours_per_cycle(self, cfg) -> float:
        return float(cfg.testbed.cycle_hours)

    def perfect_model(self, cfg) -> bool:
        f, t = cfg.testbed.forecast, cfg.testbed
        return (
            f.emulator is None
            and f.resolution in (None, t.resolution)
            and f.dt_minutes in (None, t.dt_minutes)
        )

    def model(self, cfg) -> FlatSphere:
        return FlatSphere(from_config(cfg.testbed))

    def forecast_model(self, cfg) -> FlatSphere:
        """The dycore at ``testbed.forecast``'s resolution and time step, or the emulator."""
        return FlatSphere(from_config(cfg.testbed, perfect=False))

    def network(self, cfg, obs: SphereObsConfig) -> GlobalObsNetwork:
        t = cfg.testbed
        return GlobalObsNetwork(
            LatLonGrid(t.grid.n_lon, t.grid.n_lat),
            channels_of(t),
            kind=obs.kind,
            density=obs.density,
            redraw=obs.redraw,
            variables=obs.variables,
            levels=obs.levels,
            r_std=tuple((dict(GLOBAL_R_STD) | obs.r_std).items()),
            cycle_hours=t.cycle_hours,
            n_clusters=obs.n_clusters,
            n_satellites=obs.n_satellites,
            inclination_deg=obs.inclination_deg,
            period_minutes=obs.period_minutes,
        )

    def dense_network(self, cfg, network: GlobalObsNetwork) -> GlobalObsNetwork:
        """Every column observed, in the network's channels."""
        return dataclasses.replace(network, kind="random", density=1.0, redraw=False)

    def truth_and_climatology(
        self, cfg, model: FlatSphere, truth_key, clim_key
    ) -> tuple[jax.Array, jax.Array, int]:
        """A window of the store (and its first store time); the climatology from outside it."""
        start = model.truth_start(truth_key, cfg.cycles, cfg.testbed.truth_start)
        truth, clim = model.truth_and_climatology(
            truth_key, cfg.cycles, clim_key, cfg.testbed.climatology_samples, start
        )
        return truth, clim, start

    def channel_std(self, climatology: jax.Array, model: FlatSphere) -> jax.Array:
        return channel_std(climatology, model)

    def run_info(self, cfg, osse) -> SphereRun:
        """The channels, headline channels, grid, σ_c and last truth of a sphere OSSE."""
        tb = osse.testbed
        return SphereRun(
            tb.testbed.grid,
            tb.testbed.channels.names,
            cfg.testbed.headline,
            np.asarray(osse.channel_std),
            np.asarray(tb.unflatten(osse.truth[-1])),
        )

    def training_geometry(self, cfg) -> TrainingGeometry:
        """The channels × lat-lon grid (a mesh GNN's), R per channel (``obs.r_std`` over
        ``GLOBAL_R_STD``), loss weights cos φ (mean 1) × ``train.variable_weights`` (mean 1
        over channels), and a normalisation group per channel × latitude."""
        channels, grid = channels_of(cfg.testbed), cfg.testbed.grid
        r_std = dict(GLOBAL_R_STD) | cfg.obs.r_std
        variable_weights = {} if cfg.train is None else cfg.train.variable_weights
        w_var = np.asarray(
            [variable_weights.get(channels.variable(c), 1.0) for c in range(channels.n)]
        )
        cos = FlatGrid(LatLonGrid(grid.n_lon, grid.n_lat), channels.n).weights
        weights = (
            jnp.repeat(jnp.asarray(w_var / w_var.mean(), jnp.float32), grid.n_lon * grid.n_lat)
            * cos
        )
        return TrainingGeometry(
            n_state=channels.n * grid.n_lon * grid.n_lat,
            channel_r_std=tuple(float(r_std[channels.variable(c)]) for c in range(channels.n)),
            lat_lon=(grid.n_lon, grid.n_lat),
            loss_weights=weights,
            groups=np.repeat(np.arange(channels.n * grid.n_lat), grid.n_lon),
        )

    def training_window(self, cfg) -> TruthWindow:
        """The store times of the training truths: ``train.store_times``, default the first
        80 % of the nature-run store (the emulator's training window), and the cycles
        (``testbed.cycle_hours``) they span."""
        times = open_store(cfg.testbed.nature.store)["time"].values
        first, stop = cfg.train.store_times or (0, int(0.8 * times.size))
        if stop > times.size:
            raise ValueError(
                f"train.store_times stops at {stop}, the store holds {times.size} times"
            )
        return TruthWindow(
            first, stop, (stop - 1 - first) // store_stride(times, cfg.testbed.cycle_hours)
        )


SPHERE = SphereKind()
