"""From a config to results: the OSSE (truth, observations, climatology) and method runs.

``make_osse`` builds what all methods share, so a comparison is on the same truth and
the same observations (and the same lead-time reference curve); ``run_method`` cycles one
method over it, summarises, and scores its lead-time loss.

Models: the nature run uses ``testbed``; the cycle's backgrounds, the lead-time forecasts
and what methods build from forecasts (3D-Var's NMC B) use the forecast model
(``forecast_model``: the testbed with e.g. another forcing; the testbed itself by default).
Testbeds: what differs between them (the models, the network, where the truth and the
climatology come from, per-channel metric scales) is asked of the config's testbed kind
(``cfg.testbed_kind``, an ``ensda.testbeds.TestbedKind``), never branched on here.
Keys: every stream derives from ``config.seeds``; the analysis of cycle k uses
``fold_in(key, k)``, member j of a stochastic method ``fold_in(..., j)`` inside it.

Metrics: with per-channel scales (the sphere's climatological σ_c, ``OSSE.channel_std``) the
summary's rmse_*, spread_*, crps_*, ssr_* are aggregates over normalised channels, and the
testbed's headline channels are reported one by one as ``<metric>.<channel>``
(``ensda.cycle.summarize``). Methods a testbed cannot run (``TestbedKind.unsupported``)
fail at build, naming the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ensda import assimilator as registry
from ensda import metrics
from ensda.config import ExperimentConfig
from ensda.cycle import CycleResult, NonFiniteStateError, check_finite, run_chunked, summarize
from ensda.observe import Observations
from ensda.testbeds.sphere.plugin import SphereRun


@dataclasses.dataclass(frozen=True)
class OSSE:
    """Everything the methods of one experiment share."""

    testbed: Any  # the nature run's model (``Lorenz96``, ``FlatSphere``)
    network: Any  # the observation network (``ObsNetwork``, ``GlobalObsNetwork``)
    truth: jax.Array  # (K+1, n), cycle 0 = initial time
    obs: Observations  # stacked over cycles 1..K
    climatology: jax.Array  # (S, n) attractor samples independent of the truth
    model: Any = None  # the forecast model; None: the testbed (perfect model)
    lead_time: metrics.LeadTimeReference | None = None  # None: lead-time loss off
    channel_std: jax.Array | None = None  # (C,) σ_c of each channel on the sphere (``channel_std``)
    truth_start: int | None = None  # sphere: the store time index of truth[0]

    @property
    def forecast_model(self):
        return self.testbed if self.model is None else self.model

    @property
    def truth_times(self) -> np.ndarray | None:
        """Valid times (datetime64[ns]) of the truth's cycles 0..K (the store's times on the
        sphere); None on Lorenz-96."""
        if self.truth_start is None:
            return None
        return self.testbed.truth_times(self.truth_start, self.truth.shape[0] - 1)


@dataclasses.dataclass(frozen=True)
class MethodRun:
    method: str
    settings: dict
    n_members: int
    result: CycleResult
    summary: dict
    compile_s: float
    run_s: float
    lead_time: metrics.LeadTimeCurves | None = None
    sphere: SphereRun | None = None  # None on Lorenz-96


def make_testbed(cfg: ExperimentConfig):
    """The nature run's model of the config's testbed."""
    return cfg.testbed_kind.model(cfg)


def make_forecast_model(cfg: ExperimentConfig):
    """The forecast model (the testbed with the ``forecast_model`` values that are set; on the
    sphere the dycore at ``testbed.forecast``'s resolution and time step, or the emulator)."""
    return cfg.testbed_kind.forecast_model(cfg)


def make_network(cfg: ExperimentConfig, obs=None):
    """The observation network of ``obs`` (default: the config's ``obs`` section)."""
    return cfg.testbed_kind.network(cfg, cfg.obs if obs is None else obs)


def make_osse(cfg: ExperimentConfig) -> OSSE:
    """Truth, observations and climatology of an experiment (deterministic in the seeds)."""
    kind = cfg.testbed_kind
    testbed = kind.model(cfg)
    network = make_network(cfg)
    truth_key = jax.random.key(cfg.seeds.truth)
    truth, clim, start = kind.truth_and_climatology(
        cfg, testbed, truth_key, jax.random.fold_in(truth_key, 1)
    )
    bad = np.flatnonzero(~np.isfinite(np.asarray(truth)).all(axis=-1))
    if bad.size:
        raise NonFiniteStateError(int(bad[0]), "nature run", "truth")
    obs = network.observe_run(truth[1:], jax.random.key(cfg.seeds.obs))
    osse = OSSE(
        testbed,
        network,
        truth,
        obs,
        clim,
        model=kind.forecast_model(cfg),
        channel_std=kind.channel_std(clim, testbed),
        truth_start=start,
    )
    if cfg.lead_time.enabled:
        osse = dataclasses.replace(osse, lead_time=make_lead_time_reference(cfg, osse))
    return osse


def make_lead_time_reference(cfg: ExperimentConfig, osse: OSSE) -> metrics.LeadTimeReference:
    """The reference RMSE-vs-lead curve of ``cfg.lead_time`` (shared by every method)."""
    lt = cfg.lead_time
    lead, max_lead = cfg.lead_cycles()
    # on the sphere: the RMSE of the standardised state (each channel / its σ_c), as rmse_a,
    # and the reference noise in units of σ_c
    scale = (
        None
        if osse.channel_std is None
        else jnp.repeat(osse.channel_std, osse.truth.shape[-1] // osse.channel_std.size)
    )
    if lt.reference == "dense_reference":
        kw = {"reference_states": dense_reference_run(cfg, osse).result.mean_a}
    elif lt.noise_std > 0:
        kw = {
            "reference_std": lt.noise_std if scale is None else lt.noise_std * scale,
            "key": jax.random.key(cfg.seeds.lead_time),
        }
    else:
        kw = {}
    model = osse.forecast_model
    return metrics.lead_time_reference(
        osse.truth,
        model.cycle_forecast,
        lead,
        hours_per_cycle=model.hours_per_cycle,
        burn_in=cfg.burn_in,
        stride=lt.stride,
        max_lead_cycles=max_lead,
        weights=model.grid.weights,
        scale=scale,
        **kw,
    )


def dense_reference_run(cfg: ExperimentConfig, osse: OSSE) -> MethodRun:
    """``lead_time.dense_method`` cycled on the same truth with every site (on the sphere:
    every column, in the network's channels) observed (same error std, operator and obs
    seed), as the reference analyses of the lead-time loss."""
    network = cfg.testbed_kind.dense_network(cfg, osse.network)
    obs = network.observe_run(osse.truth[1:], jax.random.key(cfg.seeds.obs))
    dense = dataclasses.replace(osse, network=network, obs=obs, lead_time=None)
    return run_method(cfg, dense, cfg.lead_time.dense_method, cfg.lead_time.dense_settings)


def initial_ensemble(cfg: ExperimentConfig, osse: OSSE, n_members: int) -> jax.Array:
    """Initial ensemble ``(N, n)``: perturbed truth, or random climatological states (one
    member, a deterministic method's state: the climatological mean, the best state
    without observations)."""
    key = jax.random.key(cfg.seeds.ensemble)
    if cfg.ensemble.init == "climatology" and n_members == 1:
        return osse.climatology.mean(0, keepdims=True)
    if cfg.ensemble.init == "climatology":
        pick = jax.random.choice(key, osse.climatology.shape[0], (n_members,), replace=False)
        return osse.climatology[pick]
    noise = jax.random.normal(key, (n_members, osse.truth.shape[-1]), osse.truth.dtype)
    return osse.truth[0] + cfg.ensemble.init_std * noise


def runs_on(cfg: ExperimentConfig, method: str) -> bool:
    """Whether ``method`` can run on the config's testbed (``TestbedKind.unsupported``)."""
    return method not in cfg.testbed_kind.unsupported


def build_assimilator(cfg: ExperimentConfig, osse: OSSE, method: str, settings: dict | None = None):
    if not runs_on(cfg, method):
        raise ValueError(
            f"{cfg.testbed_kind.unsupported[method]}; use letkf, etkf, enkf, ensrf or 3dvar "
            "(or the references none, control, climatology)"
        )
    ctx = registry.SetupContext(
        testbed=osse.forecast_model,
        network=osse.network,
        climatology=osse.climatology,
        key=jax.random.key(cfg.seeds.assimilator),
    )
    return registry.build(
        method, cfg.method_settings(method) if settings is None else settings, ctx
    )


def run_method(
    cfg: ExperimentConfig,
    osse: OSSE,
    method: str,
    settings: dict | None = None,
    progress=None,
    analyses=None,
) -> MethodRun:
    """Cycle ``method`` over the OSSE; raises ``NonFiniteStateError`` if the state blows up.

    ``progress(cycles_done)`` is called as the run advances, ``analyses(first, ensembles)``
    (None: off) with each chunk's analysis ensembles (see ``cycle.run_chunked``).
    With the OSSE's lead-time reference the summary has ``lead_time_loss_h`` (``inf`` when
    off the curve: "> max lead"), ``lead_time_rmse`` (r at the lead) and
    ``lead_time_off_curve``; the curves are in ``MethodRun.lead_time``.
    """
    settings = (
        cfg.method_settings(method)
        if settings is None
        else registry.validate_settings(method, settings)
    )
    assim = build_assimilator(cfg, osse, method, settings)
    n_members = cfg.members_for(method)
    x0 = initial_ensemble(cfg, osse, n_members)
    key = jax.random.key(cfg.seeds.assimilator)
    timed = run_chunked(
        osse.forecast_model,
        assim,
        osse.truth,
        osse.obs,
        x0,
        key,
        progress=progress,
        channel_std=osse.channel_std,
        analyses=analyses,
    )
    check_finite(timed.result, method)
    sphere = cfg.testbed_kind.run_info(cfg, osse)
    summary = summarize(timed.result, cfg.burn_in, {} if sphere is None else sphere.headline_index)
    summary.update(n_cycles=cfg.cycles, n_members=n_members, nfe=registry.network_calls(assim))
    if cfg.testbed_kind.lost_track:
        summary["lost_track_a"] = lost_track_fraction(timed.result, osse, cfg.burn_in)
    lead = None
    if osse.lead_time is not None:
        lead = metrics.score_analyses(osse.lead_time, timed.result)
        summary.update(
            lead_time_loss_h=float(lead.loss.loss_h),
            lead_time_rmse=float(lead.loss.rmse),
            lead_time_off_curve=bool(lead.loss.off_curve),
        )
    return MethodRun(
        method,
        settings,
        n_members,
        timed.result,
        summary,
        timed.compile_s,
        timed.run_s,
        lead,
        sphere,
    )


def lost_track_fraction(result, osse: OSSE, burn_in: int) -> float:
    """The fraction of cycles after ``burn_in`` whose analysis-mean RMSE exceeds that of the
    climatological mean (the mean of the OSSE's climatological samples) against the same
    truth: the cycles in which the filter has lost track."""
    truth = osse.truth[1:][burn_in:]
    clim_mse = metrics.ensemble_mean_mse(
        osse.climatology.mean(0)[None, None], truth, osse.testbed.grid.weights, axis=-1
    )
    return float(jnp.mean(result.mse_a[burn_in:] > clim_mse))


#: summary scores of a run's JSON record (``run_record``)
SUMMARY_KEYS = (
    "rmse_a",
    "spread_a",
    "crps_a",
    "ssr_a",
    "rmse_f",
    "crps_f",
    "energy_a",
    "rank_flatness_a",
    "nfe",
)


def run_record(run: MethodRun | NonFiniteStateError) -> dict:
    """The JSON record of a method's run (``ensda run`` / ``compare --json``, the comparison
    artifact): its summary scores, lead-time loss, timings and settings; for a run that
    diverged, the cycle and the reason."""
    if isinstance(run, Exception):  # diverged
        return {"method": run.method, "diverged": str(run), "diverged_at_cycle": run.cycle}
    rec = {"method": run.method}
    rec.update({k: run.summary[k] for k in SUMMARY_KEYS})
    if "lost_track_a" in run.summary:
        rec["lost_track_a"] = run.summary["lost_track_a"]
    if (
        run.lead_time is not None
    ):  # JSON has no inf: null when off the curve, the text says "> max lead"
        loss = run.lead_time.loss
        rec.update(
            lead_time_loss_h=float(loss.loss_h) if not bool(loss.off_curve) else None,
            lead_time_loss=loss.text,
            lead_time_rmse=float(loss.rmse),
            lead_h=float(loss.lead_h),
        )
    rec.update(
        n_cycles=run.summary["n_cycles"],
        n_members=run.n_members,
        compile_s=round(run.compile_s, 3),
        run_s=round(run.run_s, 3),
        wall_s=round(run.compile_s + run.run_s, 3),
        settings=run.settings,
    )
    return rec
