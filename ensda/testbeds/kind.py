"""What a testbed kind provides (``TestbedKind``, see ``ensda.testbeds``), and the plain
records it answers with for learned models (``TrainingGeometry``, ``TruthWindow``)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol


@dataclasses.dataclass(frozen=True)
class TrainingGeometry:
    """What a learned model of a testbed's states needs to know of their layout."""

    n_state: int  # elements of a (flat) state
    channel_r_std: tuple[float, ...]  # observation error std of each channel (one on a ring)
    lat_lon: tuple[int, int] | None  # (n_lon, n_lat) of the grid for a mesh GNN; None: a ring
    loss_weights: Any = None  # (n_state,) training-loss weights of mean 1; None: uniform
    groups: Any = None  # (n_state,) pooling groups of the normalisation; None: one group


@dataclasses.dataclass(frozen=True)
class TruthWindow:
    """Where the training truths of a store-backed testbed come from: store times
    [first, stop), spanning ``n_cycles`` cycles from ``first``."""

    first: int
    stop: int
    n_cycles: int


class TestbedKind(Protocol):
    kind: ClassVar[str]  # the ``testbed.kind`` value
    config: ClassVar[type]  # the ``testbed:`` section (a ``Strict`` model with ``kind``)
    obs_config: ClassVar[type]  # the ``obs:`` section
    obs_tag: ClassVar[str]  # the obs section's tag in the config's union
    unsupported: ClassVar[dict[str, str]]  # method -> why it cannot run here
    lost_track: ClassVar[bool]  # whether summaries report ``lost_track_a``
    lat_lon_stores: ClassVar[bool]  # states are lat-lon fields (zarr stores, ``ensda assimilate``)

    def owns_obs(self, value: Any) -> bool: ...  # an ``obs`` value (dict or model) is of this kind
    def default_obs(self, obs: dict | None) -> dict | None: ...  # the raw obs section, completed
    def check(self, cfg) -> None: ...  # cross-section checks, ``ValueError`` naming the key
    def check_source_obs(self, cfg, obs, where: str) -> None: ...  # a training source's network
    def max_radius(self, cfg) -> float | None: ...  # the largest meaningful localisation radius
    def hours_per_cycle(self, cfg) -> float: ...
    def perfect_model(self, cfg) -> bool: ...
    def model(self, cfg): ...  # the nature run's model
    def forecast_model(self, cfg): ...
    def network(self, cfg, obs): ...  # an observation network from an obs section
    def dense_network(self, cfg, network): ...  # every site / column observed
    def truth_and_climatology(
        self, cfg, model, truth_key, clim_key
    ): ...  # (truth, climatology, store start)
    def channel_std(self, climatology, model): ...  # (C,) metric scales, or None
    def run_info(self, cfg, osse): ...  # per-channel info of a run (``SphereRun``), or None
    def training_geometry(self, cfg) -> TrainingGeometry: ...
    def training_window(self, cfg) -> TruthWindow | None: ...  # None: free nature runs
