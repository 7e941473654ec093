"""Testbeds: a state space, its dynamics, its grid geometry, and how an experiment on it
is set up, each kind a plug-in in its own package.

A testbed kind (``TestbedKind``) owns its config sections (``testbed:`` and ``obs:``), the
checks across sections that only it can make, its models (nature run and forecast), its
observation networks, the truth and climatology of an OSSE and its per-channel metrics
scales. The experiment layer asks the kind of the config (``get(cfg.testbed.kind)``)
instead of branching on it, so a new testbed is a package here and one line in ``KINDS``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Protocol, Union

from pydantic import Discriminator, Tag

from ensda.testbeds.lorenz96 import LORENZ96, Lorenz96, RingGrid
from ensda.testbeds.sphere.plugin import SPHERE


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


#: every testbed kind by its ``testbed.kind`` (the first is the default)
KINDS: dict[str, TestbedKind] = {LORENZ96.kind: LORENZ96, SPHERE.kind: SPHERE}


def _section_kind(value: Any) -> Any:
    return (
        value.get("kind", next(iter(KINDS)))
        if isinstance(value, dict)
        else getattr(value, "kind", None)
    )


def _obs_tag(value: Any) -> str | None:
    return next((k.obs_tag for k in KINDS.values() if k.owns_obs(value)), None)


#: the ``testbed:`` section: the config model of its ``kind`` (default: the first kind)
TestbedSection = Annotated[
    Union[tuple(Annotated[k.config, Tag(k.kind)] for k in KINDS.values())],  # noqa: UP007 (built from KINDS)
    Discriminator(
        _section_kind,
        custom_error_type="testbed_kind",
        custom_error_message=f"testbed.kind must be {' or '.join(KINDS)}",
    ),
]
#: the ``obs:`` section: the network model of a testbed kind, told apart by its keys
ObsSection = Annotated[
    Union[tuple(Annotated[k.obs_config, Tag(k.obs_tag)] for k in KINDS.values())],  # noqa: UP007
    Discriminator(_obs_tag),
]
#: union tags per section: error messages leave them out of the field names
SECTION_TAGS = {"testbed": tuple(KINDS), "obs": tuple(k.obs_tag for k in KINDS.values())}


def get(kind: str) -> TestbedKind:
    """The plug-in of ``testbed.kind`` (``ValueError`` naming the known kinds)."""
    if kind not in KINDS:
        raise ValueError(f"testbed.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS[kind]


__all__ = [
    "KINDS",
    "SECTION_TAGS",
    "Lorenz96",
    "ObsSection",
    "RingGrid",
    "TestbedKind",
    "TestbedSection",
    "get",
]
