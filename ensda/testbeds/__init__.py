"""Testbeds: a state space, its dynamics, its grid geometry, and how an experiment on it
is set up, each kind a plug-in in its own package.

A testbed kind (``TestbedKind``) owns its config sections (``testbed:`` and ``obs:``), the
checks across sections that only it can make, its models (nature run and forecast), its
observation networks, the truth and climatology of an OSSE and its per-channel metrics
scales. The experiment layer asks the kind of the config (``get(cfg.testbed.kind)``)
instead of branching on it, so a new testbed is a package here and one line in ``KINDS``.
Its ``testbed:`` config and its model each say what a trained model is specific to
(``checkpoint_record()``, a plain dict kept in checkpoints and compared on load).
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from ensda.testbeds.kind import TestbedKind, TrainingGeometry, TruthWindow
from ensda.testbeds.lorenz96 import LORENZ96, Lorenz96, RingGrid
from ensda.testbeds.sphere.plugin import SPHERE

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
    "TrainingGeometry",
    "TruthWindow",
    "get",
]
