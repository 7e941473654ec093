"""The ``train:`` section of an experiment: ``ensda train``'s training data (perturbed
truths, cycled sources), the denoiser network, EDM noise levels and optimisation, and the
LETKF-anchored residual model of ``ens-diffusion`` (``target: anchored``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field

from ensda import assimilator as registry
from ensda.schema import Strict
from ensda.testbeds import ObsSection


class TrainSource(Strict):
    """A cycled classic method whose forecast ensembles become training backgrounds."""

    #: its observation network: sites on Lorenz-96, a column network (``kind``) on the sphere
    obs: ObsSection
    method: str = "letkf"
    #: the method's settings for this network (validated); empty: the method's defaults
    settings: dict[str, Any] = Field(default_factory=dict)
    cycles: int = Field(5000, ge=10)
    #: ``train.target: anchored`` only: this network's range of anchor radii (default
    #: train.anchor_radius)
    anchor_radius: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None

    @pydantic.model_validator(mode="after")
    def _check(self):
        registry.validate_settings(self.method, self.settings)
        if self.anchor_radius is not None and self.anchor_radius[0] > self.anchor_radius[1]:
            raise ValueError(
                f"anchor_radius: low ({self.anchor_radius[0]}) must not exceed high "
                f"({self.anchor_radius[1]})"
            )
        return self


class TrainConfig(Strict):
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
    every_choices: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 2, 4, 5, 8], min_length=1
    )
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
    anchor_inflation: tuple[Annotated[float, Field(ge=1)], Annotated[float, Field(ge=1)]] = (
        1.0,
        1.04,
    )
    anchor_rtps: tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]] = (
        0.0,
        0.4,
    )
    anchor_radius: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (4.0, 14.0)
    #: anchored: self-cycled (DAgger) rounds after the first model, their runs per source and cycles
    #: per run, fine-tune steps, and the sampler the rounds cycle with
    rounds: int = Field(0, ge=0)
    round_runs: int = Field(4, ge=1)
    #: anchored: leave out cycles whose anchor analysis error (RMSE of x̄_a, state units) exceeds
    #: this (a filter that has lost track); None: keep them
    max_anchor_rmse: float | None = Field(None, gt=0)
    #: anchored: each kept cycle gives a second example whose background anomalies are scaled
    #: by κ, log-uniform in [low, high], before the anchor analysis (the truth and the
    #: background mean unchanged), so the model meets over- and under-confident backgrounds
    #: it would otherwise see only in its own cycles; None: no such examples
    spread_scale: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None
    #: anchored: start from this checkpoint's weights and normalisation (its round-0 training is
    #: skipped; the round-0 data are remade for the rounds); None: train from scratch
    init: str | None = None
    round_cycles: int = Field(500, ge=2 * 50 + 10)
    round_steps: int = Field(1000, ge=1)
    round_sampler: Literal["heun", "dpm2s"] = "heun"
    round_sampler_steps: int = Field(20, ge=1)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole training: round 0 (none from ``init``) and the rounds."""
        first = 0 if self.init is not None else self.steps
        return first + (self.rounds * self.round_steps if self.target == "anchored" else 0)

    @pydantic.model_validator(mode="after")
    def _check(self):
        if self.error_min > self.error_max:
            raise ValueError(
                f"train.error_min ({self.error_min}) must not exceed train.error_max "
                f"({self.error_max})"
            )
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"train.sigma_min ({self.sigma_min}) must be below train.sigma_max "
                f"({self.sigma_max})"
            )
        if self.density_min > self.density_max:
            raise ValueError(
                f"train.density_min ({self.density_min}) must not exceed train.density_max "
                f"({self.density_max})"
            )
        if self.perturbed_samples == 0 and not self.sources:
            raise ValueError("train: no training data (perturbed_samples is 0 and no sources)")
        for name in ("anchor_inflation", "anchor_rtps", "anchor_radius", "spread_scale"):
            if getattr(self, name) is None:
                continue
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"train.{name}: low ({low}) must not exceed high ({high})")
        if self.init is not None and (self.target != "anchored" or self.rounds < 1):
            raise ValueError(
                "train.init needs train.target anchored and train.rounds >= 1 (it skips round 0's "
                "training)"
            )
        if self.target == "anchored":
            if not self.sources:
                raise ValueError(
                    "train.target anchored needs train.sources (the networks its LETKF runs cycle "
                    "on)"
                )
            bad = [i for i, src in enumerate(self.sources) if src.method != "letkf" or src.settings]
            if bad:
                raise ValueError(
                    f"train.target anchored: sources {bad} must be method letkf without settings "
                    "(each run draws its LETKF settings from train.anchor_*)"
                )
            short = [i for i, src in enumerate(self.sources) if src.cycles <= 50 + 10]
            if short:
                raise ValueError(
                    f"train.target anchored: sources {short} need more than 60 cycles (50 are "
                    "spin-up)"
                )
        return self


class EmulatorConfig(Strict):
    """``ensda train-emulator``: the sphere forecast emulator (``ensda.testbeds.sphere.emulator``,
    a GraphCast-style grid → multi-mesh → grid GNN of one cycle's residual) trained on the
    first part of the config's nature-run store (``testbed.nature.store``) and scored on the
    held-out rest. The checkpoint serves as ``testbed.forecast.emulator``."""

    #: output directory of the emulator checkpoint (and its ``evaluation.json``)
    checkpoint: str = "checkpoints/sphere_emulator"
    steps: int = Field(20_000, ge=1)
    batch: int = Field(4, ge=1)
    latent: int = Field(64, ge=4)
    #: processor message-passing steps
    message_steps: int = Field(4, ge=1)
    hidden_layers: int = Field(1, ge=0)
    #: icosahedral multi-mesh refinement (a 64 × 32 grid: at most 3)
    refinement: int = Field(3, ge=0, le=6)
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(500, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    log_every: int = Field(100, ge=1)
    #: the last part of the store's times held out from training (the evaluation window)
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    #: loss weight per variable or channel (``temperature_850`` wins over ``temperature``); others 1
    loss_weights: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    #: cycles of the rollout loss (1: the one-step residual loss)
    rollout: int = Field(1, ge=1)
    #: fine-tune this emulator checkpoint (its network and normalisation); None: from scratch
    init: str | None = None
    #: days of the long rollouts from held-out starts (error, global-mean bias, variance ratio); 0:
    #: none
    long_days: float = Field(40.0, ge=0)
    seed: int = 0
    #: read only the first ``times`` store times (quick checks); None: all
    times: int | None = Field(None, ge=3)
    #: evaluation start times, evenly spaced in the held-out window; None: every one that fits
    max_starts: int | None = Field(None, ge=1)
