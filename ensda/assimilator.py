"""The Assimilator protocol, the method registry and the set-up context.

An assimilator is a frozen pytree dataclass: its settings are static fields, the arrays
it needs (a static B, climatological samples, ...) are data fields. It has one method,

    analyse(background (N, n), obs: Observations, key) -> analysis (N, n),

pure and jit-able. Deterministic methods (3D-Var, OI) work on an ensemble of one.

Methods register themselves by name (``@register``; the built-in ones when
``ensda.methods`` is imported, which the experiment layer does: this core module imports
no method); ``build(method, settings, context)`` validates the
settings (unknown keys, wrong types and impossible values are named in the error) and
returns the assimilator, wrapped in multiplicative inflation and RTPS when asked.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, ClassVar, Protocol

import jax
import pydantic

from ensda.inflation import wrap
from ensda.observe import Observations, ObsNetwork
from ensda.schema import format_errors


class Assimilator(Protocol):
    name: ClassVar[str]
    #: False for deterministic methods: the cycler runs them with one member.
    ensemble: ClassVar[bool]

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class SetupContext:
    """What a method may need to build itself: testbed, network, climatological samples."""

    testbed: Any
    network: ObsNetwork
    climatology: jax.Array  # (S, n) attractor samples, independent of the truth run
    key: jax.Array


REGISTRY: dict[str, type] = {}

#: Settings every ensemble method accepts; they become wrappers (see ensda.inflation).
#: Their ranges are part of the type, so a config with e.g. inflation < 1 fails on load.
WRAPPER_SETTINGS = {
    "inflation": (Annotated[float, pydantic.Field(ge=1.0)], 1.0),
    "rtps": (Annotated[float, pydantic.Field(ge=0.0, le=1.0)], 0.0),
}


class UnknownMethodError(ValueError):
    pass


def register(cls):
    """Class decorator: add an assimilator class to the registry under ``cls.name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get(method: str) -> type:
    if method not in REGISTRY:
        known = (
            ", ".join(sorted(REGISTRY))
            or "none registered (import ensda.methods for the built-in ones)"
        )
        raise UnknownMethodError(f"unknown method {method!r}; known methods: {known}")
    return REGISTRY[method]


def methods() -> list[str]:
    return sorted(REGISTRY)


def settings_fields(cls) -> dict[str, tuple[Any, Any]]:
    """The user-facing settings of a method: its static fields (+ wrappers for ensembles)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {
        f.name: (hints[f.name], f.default)
        for f in dataclasses.fields(cls)
        if f.metadata.get("static", False) and f.metadata.get("setting", False)
    }
    if cls.ensemble:
        fields.update(WRAPPER_SETTINGS)
    return fields


def settings_model(cls) -> type[pydantic.BaseModel]:
    """A strict pydantic model of a method's settings (extra keys forbidden)."""
    fields = {
        name: (typ, pydantic.Field() if default is dataclasses.MISSING else default)
        for name, (typ, default) in settings_fields(cls).items()
    }
    return pydantic.create_model(
        f"{cls.__name__}Settings",
        __config__=pydantic.ConfigDict(extra="forbid", strict=False, allow_inf_nan=False),
        **fields,
    )


def validate_settings(method: str, settings: dict) -> dict:
    """Validated settings of ``method`` as a plain dict (defaults filled in)."""
    cls = get(method)
    try:
        return settings_model(cls)(**settings).model_dump()
    except pydantic.ValidationError as err:
        raise ValueError(
            format_errors(f"invalid assimilator settings for {method!r}", err)
        ) from None


def build(method: str, settings: dict, ctx: SetupContext) -> Assimilator:
    """Validate ``settings`` and build the method, wrapped in inflation / RTPS if asked."""
    cls = get(method)
    values = validate_settings(method, settings)
    wrappers = {k: values.pop(k) for k in WRAPPER_SETTINGS if k in values}
    try:
        core = cls.build(ctx, **values) if hasattr(cls, "build") else cls(**values)
    except ValueError as err:
        raise ValueError(f"assimilator settings for {method!r}: {err}") from None
    return wrap(core, **wrappers) if wrappers else core


def network_calls(assim) -> int:
    """Network calls (NFE) per member and analysis of a method (0 for methods without a
    network), looking through wrappers such as inflation."""
    while not hasattr(assim, "nfe") and hasattr(assim, "inner"):
        assim = assim.inner
    return int(getattr(assim, "nfe", 0))
