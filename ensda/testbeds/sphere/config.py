"""Config models of the sphere testbed (the ``testbed:`` section with ``kind: sphere``).

Pydantic only (no JAX, no dinosaur), so loading a config stays cheap. Like every config
model these forbid unknown keys and check ranges on load, naming the field.

Example (``experiments/configs/sphere.yaml``)::

    testbed:
      kind: sphere
      model: held_suarez        # or shallow_water (barotropic instability, cheap)
      resolution: T42           # dycore truncation (T42 = 128x64 Gaussian grid)
      layers: 8                 # sigma levels
      dt_minutes: 20
      spinup_days: 200
      grid: {n_lon: 64, n_lat: 32}
      levels: [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
      nature: {store: data/sphere/nature.zarr, days: 365, output_hours: 6}
    obs: {kind: random, density: 0.01}   # SphereObsConfig: observed columns, variables, R

``SphereObsConfig`` is the ``obs:`` section of an experiment on this testbed
(``ensda.testbeds.sphere.observe.GlobalObsNetwork``).
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Annotated, Literal

import pydantic
from pydantic import Field

from ensda.schema import ConfigError, Strict, apply_overrides, format_errors, read_yaml

#: dycore truncations known to dinosaur's ``spherical_harmonic.Grid`` constructors
RESOLUTIONS = ("T21", "T31", "T42", "T63", "T85")
#: the 13 pressure levels (hPa) of WeatherBench 2's ERA5 stores
WB2_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
#: ERA5 names of the state variables of each model: (on pressure levels, at the surface)
MODEL_VARIABLES = {
    "held_suarez": (
        ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"),
        ("surface_pressure",),
    ),
    "shallow_water": (("geopotential", "u_component_of_wind", "v_component_of_wind"), ()),
}
Variable = Literal[
    "geopotential", "temperature", "u_component_of_wind", "v_component_of_wind", "surface_pressure"
]


class SphereGridConfig(Strict):
    """The equiangular analysis grid (WeatherBench 2 convention, no poles)."""

    n_lon: int = Field(64, ge=8)
    n_lat: int = Field(32, ge=4)

    @pydantic.model_validator(mode="after")
    def _check(self):
        if self.n_lon != 2 * self.n_lat:
            raise ValueError(
                f"grid: n_lon must be 2 * n_lat (equal spacing), got {self.n_lon}x{self.n_lat}"
            )
        return self


class NatureConfig(Strict):
    """The nature run written by ``ensda data nature``."""

    store: str = "data/sphere/nature.zarr"
    #: model days written after the spin-up
    days: float = Field(365.0, gt=0)
    output_hours: int = Field(6, ge=1)
    #: date of the first output (the model has no calendar: a label for the time axis)
    start: dt.datetime = dt.datetime(2000, 1, 1)
    #: seed of the initial perturbation of the rest state
    seed: int = 0
    #: output times per zarr chunk and per jitted call
    time_chunk: int = Field(4, ge=1)


class SphereForecastConfig(Strict):
    """The forecast model of the experiments (backgrounds): the nature run's dycore at this
    resolution and time step; unset values are the nature run's (a perfect model). Or,
    with ``emulator``, a learned forecast model: the checkpoint directory of a
    ``testbeds.sphere.emulator`` (``ensda train-emulator``)."""

    resolution: Literal[RESOLUTIONS] | None = None
    dt_minutes: float | None = Field(None, gt=0)
    emulator: str | None = None

    @pydantic.model_validator(mode="after")
    def _check(self):
        if self.emulator is not None and (
            self.resolution is not None or self.dt_minutes is not None
        ):
            raise ValueError(
                "forecast.emulator replaces the dycore: leave forecast.resolution and dt_minutes "
                "unset"
            )
        return self


def checkpoint_record(grid, channel_names, cycle_hours) -> dict:
    """The record of a sphere testbed (its config or its model) that a checkpoint keeps."""
    return {
        "kind": "sphere",
        "grid": [grid.n_lon, grid.n_lat],
        "channels": list(channel_names),
        "cycle_hours": cycle_hours,
    }


class SphereTestbedConfig(Strict):
    kind: Literal["sphere"] = "sphere"
    model: Literal["held_suarez", "shallow_water"] = "held_suarez"
    resolution: Literal[RESOLUTIONS] = "T42"
    #: sigma levels (Held–Suarez only; the shallow-water model has one layer)
    layers: int = Field(8, ge=2, le=64)
    dt_minutes: float = Field(20.0, gt=0)
    spinup_days: float = Field(200.0, ge=0)
    grid: SphereGridConfig = SphereGridConfig()
    #: pressure levels (hPa) written for the 3-D variables (Held–Suarez)
    levels: tuple[int, ...] = WB2_LEVELS
    #: nominal level (hPa) of the shallow-water layer in the store
    shallow_water_level: int = Field(500, gt=0, lt=1100)
    nature: NatureConfig = NatureConfig()
    #: hours between analyses (a multiple of nature.output_hours)
    cycle_hours: int = Field(6, ge=1)
    forecast: SphereForecastConfig = SphereForecastConfig()
    #: store time index of the experiment's cycle 0; null: drawn from ``seeds.truth``
    #: uniformly among the starts whose ``cycles`` fit in the store
    truth_start: int | None = Field(None, ge=0)
    #: store states (outside the truth window) for climatology and climatological ensembles
    climatology_samples: int = Field(200, ge=2)
    #: channels whose metrics the run summary reports one by one (``rmse_a.<channel>``, ...),
    #: named ``<variable>_<level>`` or a surface variable; null: geopotential_500 and
    #: temperature_850, those the state has
    headline_channels: tuple[str, ...] | None = None

    @property
    def state_levels(self) -> tuple[int, ...]:
        """Pressure levels (hPa) of the state's 3-D variables."""
        return self.levels if self.model == "held_suarez" else (self.shallow_water_level,)

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Names of the state's channels in state order (as ``testbed.Channels.names``)."""
        variables, surface = MODEL_VARIABLES[self.model]
        return tuple(f"{v}_{lv}" for v in variables for lv in self.state_levels) + surface

    def checkpoint_record(self) -> dict:
        """What a trained model is specific to (``ensda.diffusion.checkpoint``): the grid, the
        channels and the cycle length."""
        return checkpoint_record(self.grid, self.channel_names, self.cycle_hours)

    @property
    def headline(self) -> tuple[str, ...]:
        """The channels reported one by one (``headline_channels`` or its default)."""
        if self.headline_channels is not None:
            return self.headline_channels
        return tuple(c for c in ("geopotential_500", "temperature_850") if c in self.channel_names)

    @property
    def state_variables(self) -> tuple[str, ...]:
        """Every variable of the state (pressure-level ones, then surface ones)."""
        return sum(MODEL_VARIABLES[self.model], ())

    @pydantic.model_validator(mode="after")
    def _check(self):
        lv = list(self.levels)
        if not lv:
            raise ValueError("levels must not be empty")
        if any(b <= a for a, b in itertools.pairwise(lv)):
            raise ValueError(f"levels must be strictly increasing (hPa, top first), got {lv}")
        unknown = [c for c in self.headline_channels or () if c not in self.channel_names]
        if unknown:
            raise ValueError(
                f"headline_channels: {unknown} are not channels of the state "
                f"(e.g. {list(self.channel_names[:3])} ... {self.channel_names[-1]!r})"
            )
        if lv[0] <= 0 or lv[-1] >= 1100:
            raise ValueError(f"levels must lie in (0, 1100) hPa, got {lv}")
        steps = self.nature.output_hours * 60 / self.dt_minutes
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(
                f"nature.output_hours ({self.nature.output_hours} h) must be a whole number "
                f"of model steps (dt_minutes = {self.dt_minutes})"
            )
        if self.cycle_hours % self.nature.output_hours:
            raise ValueError(
                f"cycle_hours ({self.cycle_hours}) must be a multiple of nature.output_hours "
                f"({self.nature.output_hours})"
            )
        for name, dt_min in (
            ("dt_minutes", self.dt_minutes),
            ("forecast.dt_minutes", self.forecast.dt_minutes),
        ):
            if (
                dt_min is not None
                and abs(self.cycle_hours * 60 / dt_min - round(self.cycle_hours * 60 / dt_min))
                > 1e-9
            ):
                raise ValueError(
                    f"cycle_hours ({self.cycle_hours} h) must be a whole number of {name} "
                    f"({dt_min}) steps"
                )
        return self


class SphereObsConfig(Strict):
    """A global observation network on the analysis grid
    (``ensda.testbeds.sphere.observe.GlobalObsNetwork``):
    where the observed columns are (``kind``: random, stations, swaths), the fraction of
    columns observed each cycle, which variables and levels each column observes (null: all
    of the state's) and the error std per variable (SI; variables not listed keep
    ``ensda.testbeds.sphere.observe.GLOBAL_R_STD``: 100 m²/s², 1 K, 2 m/s, 2 m/s, 100 Pa)."""

    kind: Literal["random", "stations", "swaths"] = "random"
    density: float = Field(0.01, gt=0, le=1)
    #: random columns only: a new set every cycle (else one set for the whole run)
    redraw: bool = False
    variables: tuple[Variable, ...] | None = Field(None, min_length=1)
    levels: tuple[int, ...] | None = Field(None, min_length=1)
    r_std: dict[Variable, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    #: station clusters (``stations``)
    n_clusters: int = Field(12, ge=1)
    #: polar orbits (``swaths``)
    n_satellites: int = Field(2, ge=1)
    inclination_deg: float = Field(98.7, gt=0, lt=180)
    period_minutes: float = Field(101.0, gt=0)

    @pydantic.model_validator(mode="after")
    def _check(self):
        if self.redraw and self.kind != "random":
            raise ValueError(f"obs.redraw applies to random columns only (obs.kind is {self.kind})")
        return self

    def check_state(self, testbed: SphereTestbedConfig) -> None:
        """Raise ``ValueError`` naming the field if this network observes what ``testbed``'s
        state does not hold."""
        bad = sorted(set(self.variables or ()) - set(testbed.state_variables))
        if bad:
            raise ValueError(
                f"obs.variables: {bad} not in the {testbed.model} state "
                f"({list(testbed.state_variables)})"
            )
        bad = sorted(set(self.levels or ()) - set(testbed.state_levels))
        if bad:
            raise ValueError(
                f"obs.levels: {bad} are not levels of the state ({list(testbed.state_levels)})"
            )


def load_testbed(path, overrides: list[str] | None = None) -> SphereTestbedConfig:
    """The ``testbed:`` section of an experiment YAML as a sphere testbed config.

    ``overrides`` are ``--set`` items on the whole file (e.g. ``testbed.nature.days=30``).
    Raises ``ensda.schema.ConfigError`` naming the offending fields.
    """
    section = apply_overrides(read_yaml(path), overrides or []).get("testbed") or {}
    if not isinstance(section, dict) or section.get("kind") != "sphere":
        raise ConfigError(
            f"{path}: testbed.kind must be 'sphere' for a sphere nature run, got "
            f"{section.get('kind') if isinstance(section, dict) else section!r}"
        )
    try:
        return SphereTestbedConfig.model_validate(section)
    except pydantic.ValidationError as err:
        raise ConfigError(format_errors("invalid config", err, prefix=("testbed",))) from None
