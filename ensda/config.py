"""Experiment configuration: pydantic models, YAML loading and ``--set`` overrides.

One YAML file is one experiment. Every model forbids unknown keys and checks types and
ranges, so a bad config fails on load with the offending field named, e.g.
``obs.density: Input should be less than or equal to 1``.

Method settings: ``methods.<name>`` holds tuned defaults per method for this experiment;
``assimilator`` holds overrides for the method being run (``method``), e.g.
``--set assimilator.inflation=1.05``. Both are validated against the method's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from ensda import assimilator as registry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TestbedConfig(_Strict):
    kind: Literal["lorenz96"] = "lorenz96"
    n: int = Field(40, ge=4)
    forcing: float = 8.0
    dt: float = Field(0.05, gt=0)
    steps_per_cycle: int = Field(1, ge=1)
    spinup_steps: int = Field(1000, ge=0)
    #: attractor samples (independent of the truth) for climatology, B, initial ensembles
    climatology_samples: int = Field(5000, ge=100)


class ObsConfig(_Strict):
    every: int = Field(1, ge=1)
    density: float | None = Field(None, gt=0, le=1)
    sites: list[int] | None = None
    redraw: bool = False
    r_std: float = Field(1.0, gt=0)
    operator: Literal["identity", "square", "abs"] = "identity"

    @pydantic.model_validator(mode="after")
    def _one_network(self):
        chosen = [n for n, on in (("every", self.every != 1), ("density", self.density is not None), ("sites", self.sites is not None)) if on]
        if len(chosen) > 1:
            raise ValueError(f"give only one of obs.every, obs.density, obs.sites (got {', '.join(chosen)})")
        if self.redraw and self.density is None:
            raise ValueError("obs.redraw needs obs.density (only random networks are redrawn)")
        return self


class EnsembleConfig(_Strict):
    size: int = Field(40, ge=1)
    init: Literal["perturbed_truth", "climatology"] = "perturbed_truth"
    init_std: float = Field(1.0, ge=0)


class SeedConfig(_Strict):
    truth: int = 0
    obs: int = 1
    ensemble: int = 2
    assimilator: int = 3


class TrackingConfig(_Strict):
    enabled: bool = True
    experiment: str = "ensda"
    #: None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    uri: str | None = None
    figures: bool = True


class ExperimentConfig(_Strict):
    name: str = "experiment"
    testbed: TestbedConfig = TestbedConfig()
    obs: ObsConfig = ObsConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    cycles: int = Field(1000, ge=1)
    burn_in: int = Field(100, ge=0)
    method: str = "letkf"
    assimilator: dict[str, Any] = Field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seeds: SeedConfig = SeedConfig()
    tracking: TrackingConfig = TrackingConfig()

    @pydantic.model_validator(mode="after")
    def _check(self):
        if self.burn_in >= self.cycles:
            raise ValueError(f"burn_in ({self.burn_in}) must be smaller than cycles ({self.cycles})")
        for name in self.methods:
            registry.validate_settings(name, self.methods[name])
        self.method_settings(self.method)  # validates method name and overrides
        return self

    def method_settings(self, method: str) -> dict:
        """Validated settings for ``method``: tuned defaults, then overrides if it is ``method``."""
        settings = dict(self.methods.get(method, {}))
        if method == self.method:
            settings.update(self.assimilator)
        values = registry.validate_settings(method, settings)
        if registry.get(method).ensemble and self.ensemble.size < 2:
            raise ValueError(f"ensemble.size must be >= 2 for the ensemble method {method!r}, got {self.ensemble.size}")
        return values

    def members_for(self, method: str) -> int:
        """Ensemble size used by ``method`` (1 for deterministic methods)."""
        return self.ensemble.size if registry.get(method).ensemble else 1


class ConfigError(ValueError):
    """A config that failed to load or validate; the message names the fields."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set has an empty key part in {item!r}")
    return path, yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a nested dict (creating sub-dicts); returns a new dict."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[:-1])} is not a section")
            node = child
        node[path[-1]] = value
    return out


def validate(data: dict) -> ExperimentConfig:
    """Validate a config dict; errors name every offending field."""
    try:
        return ExperimentConfig.model_validate(data)
    except pydantic.ValidationError as err:
        lines = ["invalid config:"]
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
        raise ConfigError("\n".join(lines)) from None
    except ValueError as err:  # raised by method-settings validation outside pydantic
        raise ConfigError(str(err)) from None


def load(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config, apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return validate(apply_overrides(data, overrides or []))


def flatten(cfg: ExperimentConfig | dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"obs.density": 0.25, ...} (for MLflow params)."""
    data = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
