"""The Lorenz-96 testbed kind: what the experiment layer asks of a testbed (see
``ensda.testbeds``): its config sections, the nature run and forecast models built from
them, the ring network, the truth and climatology of an OSSE.

States are vectors of the ``n`` ring sites; the truth is a nature run from a spun-up state
and the climatology attractor samples independent of it; the forecast model may differ
from the nature run's in ``forecast_model.forcing`` (an imperfect-model experiment).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax

from ensda.observe import ObsNetwork
from ensda.testbeds.kind import TrainingGeometry, TruthWindow
from ensda.testbeds.lorenz96.config import ObsConfig, TestbedConfig
from ensda.testbeds.lorenz96.model import HOURS_PER_TIME_UNIT, Lorenz96


@dataclasses.dataclass(frozen=True)
class Lorenz96Kind:
    """The ``testbed.kind: lorenz96`` plug-in (``ensda.testbeds.TestbedKind``)."""

    kind: ClassVar[str] = "lorenz96"
    config: ClassVar[type] = TestbedConfig
    obs_config: ClassVar[type] = ObsConfig
    #: the tag of its obs section in the config's union (error messages leave it out)
    obs_tag: ClassVar[str] = "sites"
    #: methods that cannot run on this testbed, and why
    unsupported: ClassVar[dict[str, str]] = {}
    #: the summary reports ``lost_track_a`` (cycles with the analysis further off than climatology)
    lost_track: ClassVar[bool] = True
    #: states are lat-lon fields, as zarr stores in the WeatherBench 2 layout hold them
    lat_lon_stores: ClassVar[bool] = False

    def owns_obs(self, value: Any) -> bool:
        """A ring network has no ``kind`` (a global one has)."""
        return isinstance(value, ObsConfig) or (isinstance(value, dict) and "kind" not in value)

    def default_obs(self, obs: dict | None) -> dict | None:
        return obs

    def check(self, cfg) -> None:
        """Cross-section checks of an experiment on this testbed (``ValueError`` naming the key)."""
        if not isinstance(cfg.obs, ObsConfig):
            raise ValueError(
                f"obs.kind: global networks ({cfg.obs.kind}) need testbed.kind: sphere"
            )
        if cfg.emulator is not None:
            raise ValueError(
                "emulator: the forecast emulator is trained on a sphere nature run "
                "(testbed.kind: sphere)"
            )

    def check_source_obs(self, cfg, obs, where: str) -> None:
        """A training source's network (``train.sources[i].obs``) fits this testbed."""
        if not isinstance(obs, ObsConfig):
            raise ValueError(f"{where}: global networks ({obs.kind}) need testbed.kind: sphere")
        if obs.sites and max(obs.sites) >= cfg.testbed.n:
            raise ValueError(f"{where}: obs.sites out of range for testbed.n = {cfg.testbed.n}")

    def max_radius(self, cfg) -> float | None:
        """The largest localisation radius that means something (half the ring)."""
        return cfg.testbed.n / 2

    def hours_per_cycle(self, cfg) -> float:
        """0.05 model time units = 6 h."""
        return cfg.testbed.steps_per_cycle * cfg.testbed.dt * HOURS_PER_TIME_UNIT

    def perfect_model(self, cfg) -> bool:
        return cfg.forecast_model.forcing in (None, cfg.testbed.forcing)

    def model(self, cfg) -> Lorenz96:
        t = cfg.testbed
        return Lorenz96(
            n=t.n,
            forcing=t.forcing,
            dt=t.dt,
            steps_per_cycle=t.steps_per_cycle,
            spinup_steps=t.spinup_steps,
        )

    def forecast_model(self, cfg) -> Lorenz96:
        """The nature-run model with the ``forecast_model`` values that are set."""
        changes = {k: v for k, v in cfg.forecast_model.model_dump().items() if v is not None}
        return dataclasses.replace(self.model(cfg), **changes)

    def network(self, cfg, obs: ObsConfig) -> ObsNetwork:
        return ObsNetwork(
            n_state=cfg.testbed.n,
            every=obs.every,
            density=obs.density,
            sites=tuple(obs.sites) if obs.sites is not None else None,
            redraw=obs.redraw,
            r_std=obs.r_std,
            operator=obs.operator,
        )

    def dense_network(self, cfg, network: ObsNetwork) -> ObsNetwork:
        """Every site observed, with the network's error std and operator."""
        return ObsNetwork(
            n_state=cfg.testbed.n, every=1, r_std=network.r_std, operator=network.operator
        )

    def truth_and_climatology(
        self, cfg, model: Lorenz96, truth_key, clim_key
    ) -> tuple[jax.Array, jax.Array, None]:
        """A nature run of ``cycles`` cycles and independent attractor samples (no store start)."""
        truth = model.nature_run(truth_key, cfg.cycles)
        return truth, model.climatology_samples(clim_key, cfg.testbed.climatology_samples), None

    def channel_std(self, climatology: jax.Array, model: Lorenz96) -> None:
        """One variable: the metrics are in state units."""
        return None

    def run_info(self, cfg, osse) -> None:
        """No per-channel tables or maps."""
        return None

    def training_geometry(self, cfg) -> TrainingGeometry:
        """A ring of ``n`` sites, one channel, uniform loss weights and one normalisation group."""
        return TrainingGeometry(n_state=cfg.testbed.n, channel_r_std=(cfg.obs.r_std,), lat_lon=None)

    def training_window(self, cfg) -> TruthWindow | None:
        """None: training truths are nature runs of their own (seeded by ``train.seed``)."""
        return None


LORENZ96 = Lorenz96Kind()
