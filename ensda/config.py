"""The experiment schema: one YAML file is one experiment (``ExperimentConfig``), loaded
with ``--set`` overrides and validated (``load``, ``validate``).

Every section forbids unknown keys and checks types and ranges, so a bad config fails on
load with the offending field named, e.g. ``obs.density: Input should be less than or
equal to 1``. The sections come from where their concept lives: ``testbed`` and ``obs``
from the testbed kind (``ensda.testbeds``: ``testbed.kind`` picks it, ``lorenz96`` by
default), ``sweep`` from ``ensda.sweep_config``, ``train`` from ``ensda.train_config``; the
building blocks (strict base, errors, YAML, overrides) from ``ensda.schema``.

Method settings: ``methods.<name>`` holds tuned defaults per method for this experiment;
``assimilator`` holds overrides for the method being run (``method``), e.g.
``--set assimilator.inflation=1.05``. Both are validated against the method's settings
(the registry of ``ensda.assimilator``; importing this module registers the built-in
methods, ``ensda.methods``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field

import ensda.methods  # noqa: F401  (registers the built-in methods)
from ensda import assimilator as registry
from ensda import testbeds
from ensda.schema import (  # noqa: F401  (re-exported: the config API in one place)
    ConfigError,
    Strict,
    apply_overrides,
    flatten,
    format_errors,
    parse_override,
    read_yaml,
    set_value,
    set_values,
)
from ensda.sweep_config import OBJECTIVES, SweepConfig, SweepRange, SweepValues, as_list  # noqa: F401
from ensda.testbeds import ObsSection, TestbedSection
from ensda.testbeds.lorenz96.config import ObsConfig, TestbedConfig  # noqa: F401  (the defaults)
from ensda.train_config import EmulatorConfig, TrainConfig, TrainSource  # noqa: F401


class ForecastModelConfig(Strict):
    """The forecast model: it makes the cycle's backgrounds, the lead-time forecasts and the
    3D-Var NMC statistics. ``null`` fields take the testbed's value (a perfect model); e.g.
    ``forcing: 8.5`` on an F = 8 nature run makes an imperfect-model experiment. The nature
    run (truth) and the climatology always use ``testbed``."""

    forcing: float | None = None


class LeadTimeConfig(Strict):
    """Lead-time loss (DiffDA; docs/design.md §5, ``ensda.metrics.lead_time``) of every run.

    Forecasts with the forecast model from the analysis means at cycles burn_in+1,
    burn_in+1+stride, ... reach RMSE r at ``lead_h``; the same forecasts from the reference
    states give RMSE_ref(ℓ) for ℓ = 0..``max_lead_h``; the loss is ℓ* − L with
    RMSE_ref(ℓ*) = r, in hours ("> max lead" when r is above the whole curve).
    Reference states: ``truth_noise`` = truth + N(0, ``noise_std``²) (key ``seeds.lead_time``;
    on the sphere ``noise_std`` is in units of each channel's climatological σ_c, and the
    RMSE is that of the standardised state, as ``rmse_a``);
    ``dense_reference`` = the analysis means of ``dense_method`` (settings ``dense_settings``)
    cycled on the same truth with every site observed (``obs.r_std``, ``obs.operator``, obs seed).
    """

    enabled: bool = True
    #: the lead L (hours; a whole number of cycles, 6 h each on Lorenz-96 with one step per cycle)
    lead_h: float = Field(48.0, ge=0)
    #: the reference curve's last lead; null: the longest the run allows after burn-in, at
    #: most max(240 h, 2 lead_h)
    max_lead_h: float | None = Field(None, gt=0)
    reference: Literal["truth_noise", "dense_reference"] = "truth_noise"
    noise_std: float = Field(0.05, ge=0)
    dense_method: str = "etkf"
    dense_settings: dict[str, Any] = Field(default_factory=lambda: {"inflation": 1.01})
    #: cycles between forecast starts
    stride: int = Field(1, ge=1)

    def cycles_of(self, hours: float, hours_per_cycle: float, key: str) -> int:
        """``hours`` as a whole number of cycles; a clear error naming ``key`` otherwise."""
        n = round(hours / hours_per_cycle)
        if abs(n * hours_per_cycle - hours) > 1e-6 * max(1.0, hours):
            raise ValueError(
                f"lead_time.{key} ({hours:g} h) is not a whole number of cycles of "
                f"{hours_per_cycle:g} h"
            )
        return n

    def leads(self, hours_per_cycle: float, cycles: int, burn_in: int) -> tuple[int, int]:
        """(lead, max lead) in cycles for a run of ``cycles`` cycles after ``burn_in``;
        raises ``ValueError`` naming the key when they do not fit."""
        lead = self.cycles_of(self.lead_h, hours_per_cycle, "lead_h")
        room = cycles - burn_in - 1  # the first start is cycle burn_in + 1
        if lead > room:
            raise ValueError(
                f"lead_time.lead_h ({self.lead_h:g} h = {lead} cycles) is longer than the run "
                f"after burn-in allows ({room} cycles: cycles {cycles} - burn_in {burn_in} - 1); "
                "shorten it, run longer, or set lead_time.enabled=false"
            )
        if self.max_lead_h is None:
            return lead, min(room, max(round(240.0 / hours_per_cycle), 2 * lead))
        top = self.cycles_of(self.max_lead_h, hours_per_cycle, "max_lead_h")
        if top < lead:
            raise ValueError(
                f"lead_time.max_lead_h ({self.max_lead_h:g} h) is shorter than lead_time.lead_h "
                f"({self.lead_h:g} h)"
            )
        if top > room:
            raise ValueError(
                f"lead_time.max_lead_h ({self.max_lead_h:g} h = {top} cycles) is longer than the "
                f"run after burn-in allows ({room} cycles: cycles {cycles} - burn_in {burn_in} - 1)"
            )
        return lead, top


class EnsembleConfig(Strict):
    size: int = Field(40, ge=1)
    #: perturbed_truth: truth(0) + init_std · noise; climatology: random climatological
    #: states (a deterministic method, one member: the climatological mean)
    init: Literal["perturbed_truth", "climatology"] = "perturbed_truth"
    init_std: float = Field(1.0, ge=0)


class SeedConfig(Strict):
    truth: int = 0
    obs: int = 1
    ensemble: int = 2
    assimilator: int = 3
    #: noise of the ``truth_noise`` lead-time reference states
    lead_time: int = 4


class TrackingConfig(Strict):
    enabled: bool = True
    experiment: str = "ensda"
    #: None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    uri: str | None = None
    figures: bool = True


class ExperimentConfig(Strict):
    name: str = "experiment"
    testbed: TestbedSection = TestbedConfig()
    obs: ObsSection = ObsConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    cycles: int = Field(1000, ge=1)
    burn_in: int = Field(100, ge=0)
    method: str = "letkf"
    assimilator: dict[str, Any] = Field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seeds: SeedConfig = SeedConfig()
    tracking: TrackingConfig = TrackingConfig()
    sweep: SweepConfig | None = None
    forecast_model: ForecastModelConfig = ForecastModelConfig()
    lead_time: LeadTimeConfig = LeadTimeConfig()
    train: TrainConfig | None = None
    emulator: EmulatorConfig | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _default_obs(cls, data: Any) -> Any:
        """The testbed kind completes the raw ``obs`` section (on the sphere: random columns
        unless ``obs.kind`` says otherwise)."""
        if isinstance(data, dict):
            section = data.get("testbed") or {}
            kind = testbeds.KINDS.get(
                section.get("kind", next(iter(testbeds.KINDS)))
                if isinstance(section, dict)
                else getattr(section, "kind", None)
            )
            if kind is not None and (obs := kind.default_obs(data.get("obs"))) is not None:
                data = {**data, "obs": obs}
        return data

    @pydantic.model_validator(mode="after")
    def _check(self):
        if self.burn_in >= self.cycles:
            raise ValueError(
                f"burn_in ({self.burn_in}) must be smaller than cycles ({self.cycles})"
            )
        self.testbed_kind.check(self)
        for name in self.methods:
            registry.validate_settings(name, self.methods[name])
        self.method_settings(self.method)  # validates method name and overrides
        if self.train is not None:
            if self.train.seed in (self.seeds.truth, self.seeds.obs):
                raise ValueError(
                    f"train.seed ({self.train.seed}) must differ from seeds.truth and seeds.obs: "
                    "the model must not see the evaluation truth"
                )
            for i, src in enumerate(self.train.sources):
                self.testbed_kind.check_source_obs(self, src.obs, f"train.sources[{i}].obs")
        if self.lead_time.enabled:
            self._check_lead_time()
        if self.sweep is not None:
            if self.sweep.objective == "lead_time_loss_h" and not self.lead_time.enabled:
                raise ValueError("sweep.objective lead_time_loss_h needs lead_time.enabled: true")
            self._check_sweep_keys()
        return self

    @property
    def testbed_kind(self) -> testbeds.TestbedKind:
        """The plug-in of ``testbed.kind``: what differs between testbeds is asked of it."""
        return testbeds.get(self.testbed.kind)

    @property
    def hours_per_cycle(self) -> float:
        """Length of one cycle in hours (0.05 model time units = 6 h on Lorenz-96)."""
        return self.testbed_kind.hours_per_cycle(self)

    @property
    def perfect_model(self) -> bool:
        """Whether the forecast model is the nature run's model."""
        return self.testbed_kind.perfect_model(self)

    def lead_cycles(self) -> tuple[int, int]:
        """(lead, max lead) of the lead-time loss in cycles (``LeadTimeConfig.leads``)."""
        return self.lead_time.leads(self.hours_per_cycle, self.cycles, self.burn_in)

    def _check_lead_time(self) -> None:
        lt = self.lead_time
        self.lead_cycles()
        if lt.reference == "truth_noise" and lt.noise_std == 0 and self.perfect_model:
            raise ValueError(
                "lead_time.noise_std must be > 0 with a perfect forecast model: the truth_noise "
                "reference curve would be 0 at every lead (or set forecast_model.forcing for an "
                "imperfect model)"
            )
        if lt.reference == "dense_reference":
            try:
                registry.validate_settings(lt.dense_method, lt.dense_settings)
            except ValueError as err:
                raise ValueError(f"lead_time.dense_method/dense_settings: {err}") from None
            if registry.get(lt.dense_method).ensemble and self.ensemble.size < 2:
                raise ValueError(
                    f"lead_time.dense_method {lt.dense_method!r} is an ensemble method: "
                    "ensemble.size must be >= 2"
                )

    def _check_sweep_keys(self) -> None:
        """Apply every swept value to the config as an override and validate it.

        A value that needs another method (``assimilator.radius`` with ``method: [letkf,
        3dvar]``) is accepted if it is valid with one of the swept methods.
        """
        base = self.model_dump(exclude={"sweep"})
        sweep = self.sweep
        swept_methods = sweep.values_of("method") if "method" in sweep.params else None
        methods = swept_methods or [self.method]
        for key, space in sweep.params.items():
            values = sweep.values_of(key) or space.candidates()
            if key != "method" and "method" in (sweep.condition(key) or {}):
                key_methods = as_list(sweep.condition(key)["method"])
            else:
                key_methods = [self.method] if key == "method" else methods
            for value in values:
                errors = []
                for method in key_methods:
                    try:
                        validate(set_value(set_value(base, "method", method), key, value))
                        break
                    except ConfigError as err:
                        errors.append(str(err).removeprefix("invalid config:").strip())
                else:
                    raise ValueError(
                        f"sweep.params.{key}: value {value!r} does not make a valid config: "
                        f"{errors[0]}"
                    )
        for i, replicate in enumerate(self.sweep.replicates):
            try:
                validate(set_values(base, replicate))
            except ConfigError as err:
                raise ValueError(
                    f"sweep.replicates[{i}]: {str(err).removeprefix('invalid config:').strip()}"
                ) from None

    def trial_config(self, values: dict[str, Any]) -> ExperimentConfig:
        """This config without its sweep section, with ``values`` (dotted key -> value) set."""
        return validate(set_values(self.model_dump(exclude={"sweep"}), values))

    def trial_configs(self, values: dict[str, Any]) -> list[ExperimentConfig]:
        """The configs a trial runs: ``trial_config`` once per ``sweep.replicates`` entry
        (its values set after the trial's), or once without replicates."""
        return [
            self.trial_config(values | replicate) for replicate in self.sweep.replicates or [{}]
        ]

    def method_settings(self, method: str) -> dict:
        """Validated settings for ``method``: tuned defaults, then overrides if it is ``method``."""
        settings = dict(self.methods.get(method, {}))
        if method == self.method:
            settings.update(self.assimilator)
        values = registry.validate_settings(method, settings)
        if registry.get(method).ensemble and self.ensemble.size < 2:
            raise ValueError(
                f"ensemble.size must be >= 2 for the ensemble method {method!r}, got "
                f"{self.ensemble.size}"
            )
        return values

    def members_for(self, method: str) -> int:
        """Ensemble size used by ``method`` (1 for deterministic methods)."""
        return self.ensemble.size if registry.get(method).ensemble else 1


def validate(data: dict) -> ExperimentConfig:
    """Validate a config dict; errors name every offending field."""
    try:
        return ExperimentConfig.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(
            format_errors("invalid config", err, tags=testbeds.SECTION_TAGS)
        ) from None
    except ValueError as err:  # raised by method-settings validation outside pydantic
        raise ConfigError(str(err)) from None


def load(
    path: str | Path, overrides: list[str] | None = None, presets: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Load a YAML config, set ``presets`` (dotted key -> value, e.g. tuned method settings),
    apply ``--set`` overrides (they win), validate."""
    data = read_yaml(path)
    return validate(apply_overrides(set_values(data, presets or {}), overrides or []))
