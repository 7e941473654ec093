"""Experiment configuration: pydantic models, YAML loading and ``--set`` overrides.

One YAML file is one experiment. Every model forbids unknown keys and checks types and
ranges, so a bad config fails on load with the offending field named, e.g.
``obs.density: Input should be less than or equal to 1``.

Method settings: ``methods.<name>`` holds tuned defaults per method for this experiment;
``assimilator`` holds overrides for the method being run (``method``), e.g.
``--set assimilator.inflation=1.05``. Both are validated against the method's settings.

Testbeds: ``testbed.kind`` picks the model of the section, ``lorenz96`` (the default;
``TestbedConfig``) or ``sphere`` (``ensda.testbeds.sphere.config.SphereTestbedConfig``). The
``obs`` section follows the testbed: on Lorenz-96 an ``ObsConfig`` (sites of a ring), on the
sphere a global network of columns, ``SphereObsConfig`` (``kind: random | stations | swaths``,
the default ``random``).

``sweep`` (optional) describes an Optuna sweep over config values (``ensda sweep``); every
swept key is checked on load by applying its values to the config as overrides.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from ensda import assimilator as registry
from ensda.testbeds.lorenz96 import HOURS_PER_TIME_UNIT
from ensda.testbeds.sphere.config import MODEL_VARIABLES, SphereObsConfig, SphereTestbedConfig


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
    operator: Literal["identity", "square", "abs", "arctan"] = "identity"

    @pydantic.model_validator(mode="after")
    def _one_network(self):
        chosen = [n for n, on in (("every", self.every != 1), ("density", self.density is not None), ("sites", self.sites is not None)) if on]
        if len(chosen) > 1:
            raise ValueError(f"give only one of obs.every, obs.density, obs.sites (got {', '.join(chosen)})")
        if self.redraw and self.density is None:
            raise ValueError("obs.redraw needs obs.density (only random networks are redrawn)")
        return self


def _testbed_kind(value: Any) -> Any:
    return value.get("kind", "lorenz96") if isinstance(value, dict) else getattr(value, "kind", None)


def _obs_kind(value: Any) -> str:
    """A global network has a ``kind`` (random, stations, swaths); a ring network has none."""
    has_kind = "kind" in value if isinstance(value, dict) else isinstance(value, SphereObsConfig)
    return "columns" if has_kind else "sites"


#: union tags: ``validate`` leaves them out of the field names in error messages
_TAGS = {"testbed": ("lorenz96", "sphere"), "obs": ("sites", "columns")}
Testbed = Annotated[
    Annotated[TestbedConfig, Tag("lorenz96")] | Annotated[SphereTestbedConfig, Tag("sphere")],
    Discriminator(_testbed_kind, custom_error_type="testbed_kind",
                  custom_error_message="testbed.kind must be lorenz96 or sphere"),
]
Obs = Annotated[Annotated[ObsConfig, Tag("sites")] | Annotated[SphereObsConfig, Tag("columns")], Discriminator(_obs_kind)]


class ForecastModelConfig(_Strict):
    """The forecast model: it makes the cycle's backgrounds, the lead-time forecasts and the
    3D-Var NMC statistics. ``null`` fields take the testbed's value (a perfect model); e.g.
    ``forcing: 8.5`` on an F = 8 nature run makes an imperfect-model experiment. The nature
    run (truth) and the climatology always use ``testbed``."""

    forcing: float | None = None


class LeadTimeConfig(_Strict):
    """Lead-time loss (DiffDA; DESIGN §5, ``ensda.metrics.lead_time``) of every run.

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
            raise ValueError(f"lead_time.{key} ({hours:g} h) is not a whole number of cycles of {hours_per_cycle:g} h")
        return n

    def leads(self, hours_per_cycle: float, cycles: int, burn_in: int) -> tuple[int, int]:
        """(lead, max lead) in cycles for a run of ``cycles`` cycles after ``burn_in``;
        raises ``ValueError`` naming the key when they do not fit."""
        lead = self.cycles_of(self.lead_h, hours_per_cycle, "lead_h")
        room = cycles - burn_in - 1  # the first start is cycle burn_in + 1
        if lead > room:
            raise ValueError(
                f"lead_time.lead_h ({self.lead_h:g} h = {lead} cycles) is longer than the run after burn-in allows "
                f"({room} cycles: cycles {cycles} - burn_in {burn_in} - 1); shorten it, run longer, or set lead_time.enabled=false")
        if self.max_lead_h is None:
            return lead, min(room, max(round(240.0 / hours_per_cycle), 2 * lead))
        top = self.cycles_of(self.max_lead_h, hours_per_cycle, "max_lead_h")
        if top < lead:
            raise ValueError(f"lead_time.max_lead_h ({self.max_lead_h:g} h) is shorter than lead_time.lead_h ({self.lead_h:g} h)")
        if top > room:
            raise ValueError(
                f"lead_time.max_lead_h ({self.max_lead_h:g} h = {top} cycles) is longer than the run after burn-in allows "
                f"({room} cycles: cycles {cycles} - burn_in {burn_in} - 1)")
        return lead, top


class EnsembleConfig(_Strict):
    size: int = Field(40, ge=1)
    #: perturbed_truth: truth(0) + init_std · noise; climatology: random climatological
    #: states (a deterministic method, one member: the climatological mean)
    init: Literal["perturbed_truth", "climatology"] = "perturbed_truth"
    init_std: float = Field(1.0, ge=0)


class SeedConfig(_Strict):
    truth: int = 0
    obs: int = 1
    ensemble: int = 2
    assimilator: int = 3
    #: noise of the ``truth_noise`` lead-time reference states
    lead_time: int = 4


class TrackingConfig(_Strict):
    enabled: bool = True
    experiment: str = "ensda"
    #: None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    uri: str | None = None
    figures: bool = True


#: summary metrics a sweep can optimise; ``ssr_*`` objectives are |SSR − 1| (1 = reliable)
OBJECTIVES = ("crps_a", "rmse_a", "ssr_a", "spread_a", "crps_f", "rmse_f", "ssr_f", "energy_a", "rank_flatness_a", "lead_time_loss_h")
#: values a categorical sweep parameter may take (what Optuna stores)
SWEEP_VALUE_TYPES = (bool, int, float, str, type(None))


def _space_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "values"
    if isinstance(value, SweepValues) or (isinstance(value, dict) and "values" in value):
        return "choice"
    return "range" if isinstance(value, (dict, SweepRange)) else None


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


class SweepRange(_Strict):
    """A numeric search range for the ``tpe`` and ``random`` samplers."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

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
            raise ValueError(f"empty range: low ({self.low}) must be smaller than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("give either log or step, not both")
        if self.integer and (self.low != round(self.low) or self.high != round(self.high) or (self.step or 1) != round(self.step or 1)):
            raise ValueError("an int range needs whole low, high and step")
        return self

    def candidates(self) -> list:
        """The values checked against the config on load: both ends."""
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]


class SweepValues(_Strict):
    """Categorical values swept only where ``when`` holds: ``{method: diffusion}`` or
    ``{method: [diffusion, etkf]}`` (other swept keys -> a value or a list of values).
    E.g. the guidance strength is swept for the diffusion trials only, so a grid over
    ``method`` × ``obs.density`` × it runs each baseline once per density."""

    values: list[Any] = Field(min_length=1)
    when: dict[str, Any] | None = None


class SweepConfig(_Strict):
    """``ensda sweep``: what to optimise, how to sample, over which config keys."""

    objective: Literal[OBJECTIVES] = "crps_a"
    direction: Literal["minimize", "maximize"] = "minimize"
    sampler: Literal["grid", "tpe", "random"] = "grid"
    seed: int = 0
    #: number of trials when ``--trials`` is not given (the grid sampler runs its whole grid)
    trials: int | None = Field(None, ge=1)
    #: dotted config key -> list of values (categorical), a range (tpe, random), or either
    #: with a condition: ``{values: [...], when: {method: diffusion}}``, ``{low, high, when}``
    params: dict[str, Annotated[
        Annotated[list[Any], Tag("values")] | Annotated[SweepValues, Tag("choice")] | Annotated[SweepRange, Tag("range")],
        Discriminator(_space_kind, custom_error_type="sweep_space",
                      custom_error_message="expected a list of values, {values, when} or a range {low, high, log, step, int, when}"),
    ]] = Field(min_length=1)
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
                raise ValueError(f"sweep.params.{key}: values must be numbers, strings, booleans or null, got {values}")
            if self.sampler == "grid" and values is None:
                raise ValueError(f"sweep.params.{key}: the grid sampler needs a list of values, not a range")
            if key.split(".")[0] == "sweep":
                raise ValueError(f"sweep.params.{key}: the sweep section itself cannot be swept")
            for other, wanted in (self.condition(key) or {}).items():
                if other not in self.params or self.condition(other) is not None:
                    raise ValueError(f"sweep.params.{key}.when: {other!r} is not an unconditional swept key")
                allowed = self.values_of(other)
                missing = [v for v in _as_list(wanted) if allowed is not None and v not in allowed]
                if missing:
                    raise ValueError(f"sweep.params.{key}.when: {other} never takes {missing} (its values: {allowed})")
        for i, replicate in enumerate(self.replicates):
            clash = sorted(set(replicate) & set(self.params))
            if clash or not replicate:
                raise ValueError(f"sweep.replicates[{i}]: " + (f"{', '.join(clash)} is swept" if clash else "empty"))
        if self.objective.startswith("ssr") and self.direction != "minimize":
            raise ValueError(f"sweep.objective {self.objective} is |SSR - 1|: use direction minimize")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("sweep.grace_period must be longer than sweep.heartbeat_interval")
        return self

    def values_of(self, key: str) -> list | None:
        """The categorical values of a swept key (None for a range)."""
        space = self.params[key]
        return space if isinstance(space, list) else space.values if isinstance(space, SweepValues) else None

    def condition(self, key: str) -> dict[str, Any] | None:
        space = self.params[key]
        return None if isinstance(space, list) else space.when

    def active(self, key: str, values: dict[str, Any]) -> bool:
        """Whether ``key`` is swept in a trial with these (unconditional) ``values``."""
        return all(values.get(k) in _as_list(v) for k, v in (self.condition(key) or {}).items())

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point: the product of the unconditional keys' values, each point
        extended by the product of the conditional keys that are active at it."""
        keys = [k for k in self.params if self.condition(k) is None]
        points = []
        for combo in itertools.product(*(self.values_of(k) for k in keys)):
            point = dict(zip(keys, combo))
            extra = [k for k in self.params if self.condition(k) is not None and self.active(k, point)]
            points += [point | dict(zip(extra, more)) for more in itertools.product(*(self.values_of(k) for k in extra))]
        return points

    def grid_size(self) -> int:
        return len(self.grid_points())


class TrainSource(_Strict):
    """A cycled classic method whose forecast ensembles become training backgrounds."""

    #: its observation network: sites on Lorenz-96, a column network (``kind``) on the sphere
    obs: Obs
    method: str = "letkf"
    #: the method's settings for this network (validated); empty: the method's defaults
    settings: dict[str, Any] = Field(default_factory=dict)
    cycles: int = Field(5000, ge=10)
    #: ``train.target: anchored`` only: this network's range of anchor radii (default train.anchor_radius)
    anchor_radius: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None

    @pydantic.model_validator(mode="after")
    def _check(self):
        registry.validate_settings(self.method, self.settings)
        if self.anchor_radius is not None and self.anchor_radius[0] > self.anchor_radius[1]:
            raise ValueError(f"anchor_radius: low ({self.anchor_radius[0]}) must not exceed high ({self.anchor_radius[1]})")
        return self


class TrainConfig(_Strict):
    """``ensda train``: training data, network, EDM noise and optimisation (DESIGN §4)."""

    #: output directory of the checkpoint (weights, normalisation, this config)
    checkpoint: str = "checkpoints/l96"
    #: seed of the training truth runs, observation draws and initialisation; it must
    #: differ from the evaluation seeds so the model never sees the evaluation truth
    seed: int = 100
    #: members of the background ensembles made for training
    members: int = Field(20, ge=2)
    #: examples from one-cycle forecasts of perturbed truths (0: none)
    perturbed_samples: int = Field(20000, ge=0)
    error_min: float = Field(0.05, gt=0)
    error_max: float = Field(2.0, gt=0)
    #: cycled classic methods whose forecast ensembles are training backgrounds
    sources: list[TrainSource] = Field(default_factory=list)
    validation: int = Field(2000, ge=1)
    # network (ensda.nn.GNNConfig)
    latent: int = Field(64, ge=4)
    message_steps: int = Field(4, ge=1)
    hidden_layers: int = Field(1, ge=0)
    frequencies: int = Field(16, ge=1)
    #: width of the per-element path beside the GNN (``ensda.diffusion.model``, 0: none): an
    #: MLP of each state element's own 5 features and the noise level, shared by all
    #: elements, so an observed element's value need not pass the GNN's latent bottleneck
    elementwise: int = Field(0, ge=0)
    #: the per-element path acts only at observed elements (× the observation mask); false:
    #: at every element, also as a function of the background alone where nothing is observed
    elementwise_observed_only: bool = True
    # EDM noise levels (Karras et al. 2022)
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    p_mean: float = -1.2
    p_std: float = Field(1.2, gt=0)
    # random observation networks for the observation channels (amortised conditioning)
    density_min: float = Field(0.05, gt=0, le=1)
    density_max: float = Field(1.0, gt=0, le=1)
    every_choices: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 2, 4, 5, 8], min_length=1)
    #: probability of a regular every-k network (else a random density)
    p_regular: float = Field(0.5, ge=0, le=1)
    #: probability of no observation channels (the model then also serves as prior for guidance)
    p_uncond: float = Field(0.2, ge=0, le=1)
    #: the scale s of the target z = (t − x̄_b)/s: the climatological increment std, or
    #: ``spread``: the background's member spread times a fitted gain (``Normalisation``)
    target_scale: Literal["climatological", "spread"] = "climatological"
    #: remove the training set's mean increment β from the targets (``Normalisation``)
    debias: bool = False
    # the sphere: truths from the store, the mesh, loss weights
    #: store time indices [first, stop) of the training truths (None: the first 80 % of the
    #: store, the emulator's training window); the evaluation truth must lie outside
    store_times: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=2)]] | None = None
    #: icosahedral multi-mesh refinement of the sphere denoiser (``ensda.nn.mesh``)
    refinement: int = Field(3, ge=0, le=6)
    #: per-variable loss weights on the sphere (ERA5 names; unset: 1), times cos-latitude
    variable_weights: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    # optimisation: AdamW, linear warm-up then cosine decay, EMA of weights
    steps: int = Field(20000, ge=1)
    batch: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(500, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    ema: float = Field(0.999, ge=0, lt=1)
    clip: float = Field(1.0, gt=0)
    log_every: int = Field(200, ge=1)
    # ``target: anchored``: the LETKF-anchored residual model of ``ens-diffusion``
    # (ensda.diffusion.anchored_train); the sources are networks cycled by randomised LETKFs
    #: ``increment``: the denoiser of the increment from the background (method ``diffusion``);
    #: ``anchored``: of the residual t − x̄_a of an LETKF analysis (method ``ens-diffusion``)
    target: Literal["increment", "anchored"] = "increment"
    #: anchored: cycled runs per source network and round (one vmapped scan)
    runs: int = Field(16, ge=1)
    #: anchored: ranges [low, high] of each run's anchor LETKF inflation, RTPS and radius (sites)
    anchor_inflation: tuple[Annotated[float, Field(ge=1)], Annotated[float, Field(ge=1)]] = (1.0, 1.04)
    anchor_rtps: tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]] = (0.0, 0.4)
    anchor_radius: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (4.0, 14.0)
    #: anchored: self-cycled (DAgger) rounds after the first model, their runs per source and cycles
    #: per run, fine-tune steps, and the sampler the rounds cycle with
    rounds: int = Field(0, ge=0)
    round_runs: int = Field(4, ge=1)
    #: anchored: leave out cycles whose anchor analysis error (RMSE of x̄_a, state units) exceeds
    #: this (a filter that has lost track); None: keep them
    max_anchor_rmse: float | None = Field(None, gt=0)
    #: anchored: start from this checkpoint's weights and normalisation (its round-0 training is
    #: skipped; the round-0 data are remade for the rounds); None: train from scratch
    init: str | None = None
    round_cycles: int = Field(500, ge=2 * 50 + 10)
    round_steps: int = Field(1000, ge=1)
    round_sampler: Literal["heun", "dpm2s"] = "heun"
    round_sampler_steps: int = Field(20, ge=1)

    @pydantic.model_validator(mode="after")
    def _check(self):
        if self.error_min > self.error_max:
            raise ValueError(f"train.error_min ({self.error_min}) must not exceed train.error_max ({self.error_max})")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"train.sigma_min ({self.sigma_min}) must be below train.sigma_max ({self.sigma_max})")
        if self.density_min > self.density_max:
            raise ValueError(f"train.density_min ({self.density_min}) must not exceed train.density_max ({self.density_max})")
        if self.perturbed_samples == 0 and not self.sources:
            raise ValueError("train: no training data (perturbed_samples is 0 and no sources)")
        for name in ("anchor_inflation", "anchor_rtps", "anchor_radius"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"train.{name}: low ({low}) must not exceed high ({high})")
        if self.init is not None and (self.target != "anchored" or self.rounds < 1):
            raise ValueError("train.init needs train.target anchored and train.rounds >= 1 (it skips round 0's training)")
        if self.target == "anchored":
            if not self.sources:
                raise ValueError("train.target anchored needs train.sources (the networks its LETKF runs cycle on)")
            bad = [i for i, src in enumerate(self.sources) if src.method != "letkf" or src.settings]
            if bad:
                raise ValueError(f"train.target anchored: sources {bad} must be method letkf without settings "
                                 "(each run draws its LETKF settings from train.anchor_*)")
            short = [i for i, src in enumerate(self.sources) if src.cycles <= 50 + 10]
            if short:
                raise ValueError(f"train.target anchored: sources {short} need more than 60 cycles (50 are spin-up)")
        return self


class ExperimentConfig(_Strict):
    name: str = "experiment"
    testbed: Testbed = TestbedConfig()
    obs: Obs = ObsConfig()
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

    @pydantic.model_validator(mode="before")
    @classmethod
    def _sphere_obs_default(cls, data: Any) -> Any:
        """On a sphere testbed the ``obs`` section is a global network (random columns unless
        ``obs.kind`` says otherwise)."""
        if isinstance(data, dict) and _testbed_kind(data.get("testbed") or {}) == "sphere":
            obs = data.get("obs")
            if obs is None or (isinstance(obs, dict) and "kind" not in obs):
                data = {**data, "obs": {"kind": "random", **(obs or {})}}
        return data

    @pydantic.model_validator(mode="after")
    def _check(self):
        if self.burn_in >= self.cycles:
            raise ValueError(f"burn_in ({self.burn_in}) must be smaller than cycles ({self.cycles})")
        self._check_testbed()
        for name in self.methods:
            registry.validate_settings(name, self.methods[name])
        self.method_settings(self.method)  # validates method name and overrides
        if self.train is not None:
            if self.train.seed in (self.seeds.truth, self.seeds.obs):
                raise ValueError(f"train.seed ({self.train.seed}) must differ from seeds.truth and seeds.obs: the model must not see the evaluation truth")
            if self.sphere:
                self._check_sphere_train()
            if self.sphere and self.train.target == "anchored":
                raise ValueError("train.target anchored (ens-diffusion) runs on Lorenz-96 only for now")
            self._check_train_sources()
        if self.lead_time.enabled:
            self._check_lead_time()
        if self.sweep is not None:
            if self.sweep.objective == "lead_time_loss_h" and not self.lead_time.enabled:
                raise ValueError("sweep.objective lead_time_loss_h needs lead_time.enabled: true")
            self._check_sweep_keys()
        return self

    @property
    def sphere(self) -> bool:
        return self.testbed.kind == "sphere"

    def _check_train_sources(self) -> None:
        for i, src in enumerate(self.train.sources):
            where = f"train.sources[{i}].obs"
            if self.sphere and not isinstance(src.obs, SphereObsConfig):
                raise ValueError(f"{where}: on the sphere a source needs a column network (kind: random, stations or swaths)")
            if self.sphere:
                src.obs.check_state(self.testbed)
            elif isinstance(src.obs, SphereObsConfig):
                raise ValueError(f"{where}: global networks ({src.obs.kind}) need testbed.kind: sphere")
            elif src.obs.sites and max(src.obs.sites) >= self.testbed.n:
                raise ValueError(f"{where}: obs.sites out of range for testbed.n = {self.testbed.n}")

    def _check_sphere_train(self) -> None:
        t = self.train
        if t.store_times is not None and t.store_times[0] + 2 > t.store_times[1]:
            raise ValueError(f"train.store_times {list(t.store_times)}: need first + 2 <= stop")
        known = set(MODEL_VARIABLES[self.testbed.model][0]) | set(MODEL_VARIABLES[self.testbed.model][1])
        bad = sorted(set(t.variable_weights) - known)
        if bad:
            raise ValueError(f"train.variable_weights: {bad} are not variables of the state ({sorted(known)})")

    @property
    def hours_per_cycle(self) -> float:
        """Length of one cycle in hours (0.05 model time units = 6 h on Lorenz-96)."""
        if self.sphere:
            return float(self.testbed.cycle_hours)
        return self.testbed.steps_per_cycle * self.testbed.dt * HOURS_PER_TIME_UNIT

    @property
    def perfect_model(self) -> bool:
        """Whether the forecast model is the nature run's model."""
        if self.sphere:
            f, t = self.testbed.forecast, self.testbed
            return f.emulator is None and f.resolution in (None, t.resolution) and f.dt_minutes in (None, t.dt_minutes)
        return self.forecast_model.forcing in (None, self.testbed.forcing)

    def _check_testbed(self) -> None:
        """The obs section matches the testbed; sphere-only and Lorenz-96-only settings."""
        if not self.sphere:
            if isinstance(self.obs, SphereObsConfig):
                raise ValueError(f"obs.kind: global networks ({self.obs.kind}) need testbed.kind: sphere")
            return
        self.obs.check_state(self.testbed)
        if self.forecast_model.forcing is not None:
            raise ValueError("forecast_model.forcing is a Lorenz-96 setting; on the sphere set testbed.forecast "
                             "(resolution, dt_minutes) for an imperfect model")
        if self.ensemble.init == "climatology" and self.testbed.climatology_samples < self.ensemble.size:
            raise ValueError(f"testbed.climatology_samples ({self.testbed.climatology_samples}) must be at least "
                             f"ensemble.size ({self.ensemble.size}) for ensemble.init: climatology")

    def lead_cycles(self) -> tuple[int, int]:
        """(lead, max lead) of the lead-time loss in cycles (``LeadTimeConfig.leads``)."""
        return self.lead_time.leads(self.hours_per_cycle, self.cycles, self.burn_in)

    def _check_lead_time(self) -> None:
        lt = self.lead_time
        self.lead_cycles()
        if lt.reference == "truth_noise" and lt.noise_std == 0 and self.perfect_model:
            raise ValueError("lead_time.noise_std must be > 0 with a perfect forecast model: the truth_noise reference "
                             "curve would be 0 at every lead (or set forecast_model.forcing for an imperfect model)")
        if lt.reference == "dense_reference":
            try:
                registry.validate_settings(lt.dense_method, lt.dense_settings)
            except ValueError as err:
                raise ValueError(f"lead_time.dense_method/dense_settings: {err}") from None
            if registry.get(lt.dense_method).ensemble and self.ensemble.size < 2:
                raise ValueError(f"lead_time.dense_method {lt.dense_method!r} is an ensemble method: ensemble.size must be >= 2")

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
                key_methods = _as_list(sweep.condition(key)["method"])
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
                    raise ValueError(f"sweep.params.{key}: value {value!r} does not make a valid config: {errors[0]}")
        for i, replicate in enumerate(self.sweep.replicates):
            try:
                validate(set_values(base, replicate))
            except ConfigError as err:
                raise ValueError(f"sweep.replicates[{i}]: {str(err).removeprefix('invalid config:').strip()}") from None

    def trial_config(self, values: dict[str, Any]) -> ExperimentConfig:
        """This config without its sweep section, with ``values`` (dotted key -> value) set."""
        return validate(set_values(self.model_dump(exclude={"sweep"}), values))

    def trial_configs(self, values: dict[str, Any]) -> list[ExperimentConfig]:
        """The configs a trial runs: ``trial_config`` once per ``sweep.replicates`` entry
        (its values set after the trial's), or once without replicates."""
        return [self.trial_config(values | replicate) for replicate in self.sweep.replicates or [{}]]

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


def set_value(data: dict, key: str, value: Any) -> dict:
    """A copy of the nested dict ``data`` with the dotted ``key`` set (sub-dicts created)."""
    out = copy.deepcopy(data)
    path = key.split(".")
    if not all(path):
        raise ConfigError(f"empty key part in {key!r}")
    node = out
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{key}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value
    return out


def set_values(data: dict, values: dict[str, Any]) -> dict:
    """``set_value`` for every dotted key of ``values``, in order."""
    for key, value in values.items():
        data = set_value(data, key, value)
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a nested dict (creating sub-dicts); returns a new dict."""
    out = data
    for item in overrides:
        path, value = parse_override(item)
        try:
            out = set_value(out, ".".join(path), value)
        except ConfigError as err:
            raise ConfigError(f"--set {item!r}: {err}") from None
    return out


def validate(data: dict) -> ExperimentConfig:
    """Validate a config dict; errors name every offending field."""
    try:
        return ExperimentConfig.model_validate(data)
    except pydantic.ValidationError as err:
        lines = ["invalid config:"]
        for e in err.errors():
            parts = [str(p) for p in e["loc"]]
            if len(parts) > 1 and parts[1] in _TAGS.get(parts[0], ()):
                del parts[1]  # the union tag (testbed.sphere.levels -> testbed.levels)
            loc = ".".join(parts)
            msg = e["msg"].removeprefix("Value error, ")
            named = not loc or msg.startswith(loc + ".")  # the message names its own field
            lines.append(f"  {msg}" if named else f"  {loc}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    except ValueError as err:  # raised by method-settings validation outside pydantic
        raise ConfigError(str(err)) from None


def load(path: str | Path, overrides: list[str] | None = None, presets: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load a YAML config, set ``presets`` (dotted key -> value, e.g. tuned method settings),
    apply ``--set`` overrides (they win), validate."""
    data = read_yaml(path)
    return validate(apply_overrides(set_values(data, presets or {}), overrides or []))


def read_yaml(path: str | Path) -> dict:
    """The top-level mapping of a YAML config file (``ConfigError`` if missing or not a mapping)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


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
