"""The ``sweep:`` section of an experiment: an Optuna sweep (``ensda sweep``) over config
values, what it optimises and how it samples. Every swept value is checked on load by
applying it to the experiment config (``ensda.config.ExperimentConfig``)."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Discriminator, Field, Tag

from ensda.schema import Strict

#: summary metrics a sweep can optimise; ``ssr_*`` objectives are |SSR − 1| (1 = reliable)
OBJECTIVES = (
    "crps_a",
    "rmse_a",
    "ssr_a",
    "spread_a",
    "crps_f",
    "rmse_f",
    "ssr_f",
    "energy_a",
    "rank_flatness_a",
    "lead_time_loss_h",
)
#: values a categorical sweep parameter may take (what Optuna stores)
SWEEP_VALUE_TYPES = (bool, int, float, str, type(None))


def _space_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "values"
    if isinstance(value, SweepValues) or (isinstance(value, dict) and "values" in value):
        return "choice"
    return "range" if isinstance(value, (dict, SweepRange)) else None


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


class SweepRange(Strict):
    """A numeric search range for the ``tpe`` and ``random`` samplers."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True
    )

    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)
    #: integers (``int: true`` in YAML)
    integer: bool = Field(False, alias="int")
    #: swept only in trials whose other swept values match (see ``SweepValues.when``)
    when: dict[str, Any] | None = None

    @pydantic.model_validator(mode="after")
    def _check(self):
        if not self.low < self.high:
            raise ValueError(
                f"empty range: low ({self.low}) must be smaller than high ({self.high})"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("give either log or step, not both")
        if self.integer and (
            self.low != round(self.low)
            or self.high != round(self.high)
            or (self.step or 1) != round(self.step or 1)
        ):
            raise ValueError("an int range needs whole low, high and step")
        return self

    def candidates(self) -> list:
        """The values checked against the config on load: both ends."""
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]


class SweepValues(Strict):
    """Categorical values swept only where ``when`` holds: ``{method: diffusion}`` or
    ``{method: [diffusion, etkf]}`` (other swept keys -> a value or a list of values).
    E.g. the guidance strength is swept for the diffusion trials only, so a grid over
    ``method`` × ``obs.density`` × it runs each baseline once per density."""

    values: list[Any] = Field(min_length=1)
    when: dict[str, Any] | None = None


class SweepConfig(Strict):
    """``ensda sweep``: what to optimise, how to sample, over which config keys."""

    objective: Literal[OBJECTIVES] = "crps_a"
    direction: Literal["minimize", "maximize"] = "minimize"
    sampler: Literal["grid", "tpe", "random"] = "grid"
    seed: int = 0
    #: number of trials when ``--trials`` is not given (the grid sampler runs its whole grid)
    trials: int | None = Field(None, ge=1)
    #: dotted config key -> list of values (categorical), a range (tpe, random), or either
    #: with a condition: ``{values: [...], when: {method: diffusion}}``, ``{low, high, when}``
    params: dict[
        str,
        Annotated[
            Annotated[list[Any], Tag("values")]
            | Annotated[SweepValues, Tag("choice")]
            | Annotated[SweepRange, Tag("range")],
            Discriminator(
                _space_kind,
                custom_error_type="sweep_space",
                custom_error_message="expected a list of values, {values, when} or a range {low, "
                "high, log, step, int, when}",
            ),
        ],
    ] = Field(min_length=1)
    #: run every trial once per replicate (dotted key -> value overrides set after the
    #: trial's values, e.g. ``{seeds.truth: 100}``) and score it by the mean objective;
    #: empty: one run per trial (``ensda tune`` uses this for its tuning seeds)
    replicates: list[dict[str, Any]] = Field(default_factory=list)
    #: Optuna heartbeats: a RUNNING trial silent for ``grace_period`` s is failed and retried
    heartbeat_interval: int = Field(10, ge=1)
    grace_period: int = Field(60, ge=2)

    @pydantic.model_validator(mode="after")
    def _check(self):
        for key in self.params:
            values = self.values_of(key)
            if values is not None and not values:
                raise ValueError(f"sweep.params.{key}: empty list of values")
            if values is not None and not all(isinstance(v, SWEEP_VALUE_TYPES) for v in values):
                raise ValueError(
                    f"sweep.params.{key}: values must be numbers, strings, booleans or null, got "
                    f"{values}"
                )
            if self.sampler == "grid" and values is None:
                raise ValueError(
                    f"sweep.params.{key}: the grid sampler needs a list of values, not a range"
                )
            if key.split(".")[0] == "sweep":
                raise ValueError(f"sweep.params.{key}: the sweep section itself cannot be swept")
            for other, wanted in (self.condition(key) or {}).items():
                if other not in self.params or self.condition(other) is not None:
                    raise ValueError(
                        f"sweep.params.{key}.when: {other!r} is not an unconditional swept key"
                    )
                allowed = self.values_of(other)
                missing = [v for v in as_list(wanted) if allowed is not None and v not in allowed]
                if missing:
                    raise ValueError(
                        f"sweep.params.{key}.when: {other} never takes {missing} (its values: "
                        f"{allowed})"
                    )
        for i, replicate in enumerate(self.replicates):
            clash = sorted(set(replicate) & set(self.params))
            if clash or not replicate:
                raise ValueError(
                    f"sweep.replicates[{i}]: "
                    + (f"{', '.join(clash)} is swept" if clash else "empty")
                )
        if self.objective.startswith("ssr") and self.direction != "minimize":
            raise ValueError(
                f"sweep.objective {self.objective} is |SSR - 1|: use direction minimize"
            )
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("sweep.grace_period must be longer than sweep.heartbeat_interval")
        return self

    def values_of(self, key: str) -> list | None:
        """The categorical values of a swept key (None for a range)."""
        space = self.params[key]
        return (
            space
            if isinstance(space, list)
            else space.values
            if isinstance(space, SweepValues)
            else None
        )

    def condition(self, key: str) -> dict[str, Any] | None:
        space = self.params[key]
        return None if isinstance(space, list) else space.when

    def active(self, key: str, values: dict[str, Any]) -> bool:
        """Whether ``key`` is swept in a trial with these (unconditional) ``values``."""
        return all(values.get(k) in as_list(v) for k, v in (self.condition(key) or {}).items())

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point: the product of the unconditional keys' values, each point
        extended by the product of the conditional keys that are active at it."""
        keys = [k for k in self.params if self.condition(k) is None]
        points = []
        for combo in itertools.product(*(self.values_of(k) for k in keys)):
            point = dict(zip(keys, combo))
            extra = [
                k for k in self.params if self.condition(k) is not None and self.active(k, point)
            ]
            points += [
                point | dict(zip(extra, more))
                for more in itertools.product(*(self.values_of(k) for k in extra))
            ]
        return points

    def grid_size(self) -> int:
        return len(self.grid_points())
