"""From a config to results: the OSSE (truth, observations, climatology) and method runs.

``make_osse`` builds what all methods share, so a comparison is on the same truth and
the same observations (and the same lead-time reference curve); ``run_method`` cycles one
method over it, summarises, and scores its lead-time loss.

Models: the nature run uses ``testbed``; the cycle's backgrounds, the lead-time forecasts
and what methods build from forecasts (3D-Var's NMC B) use the forecast model
(``forecast_model``: the testbed with e.g. another forcing; the testbed itself by default).
Testbeds: Lorenz-96, or the sphere (``testbed.kind: sphere``) as a ``FlatSphere``: states
are flat vectors ``(..., n_var·n_lat·n_lon)`` with cos-latitude weights per element, so the
cycler, the metrics and the methods work on both alike; the truth is a window of the
nature-run store (its start ``testbed.truth_start`` or drawn from ``seeds.truth``) and the
climatology store states outside that window; the network is a ``GlobalObsNetwork``.
Keys: every stream derives from ``config.seeds``; the analysis of cycle k uses
``fold_in(key, k)``, member j of a stochastic method ``fold_in(..., j)`` inside it.

Metrics on the sphere: the summary's rmse_*, spread_*, crps_*, ssr_* are aggregates over
channels normalised by each channel's climatological standard deviation σ_c
(``channel_std``, from the OSSE's climatology samples), and the headline channels
(``testbed.headline_channels``) are reported one by one in SI units as
``<metric>.<channel>`` (``ensda.cycle.summarize``). Methods that cannot run on the sphere
yet (``SPHERE_UNSUPPORTED``) fail at build, naming the reason.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ensda import assimilator as registry
from ensda import metrics
from ensda.config import ExperimentConfig
from ensda.cycle import CycleResult, NonFiniteStateError, check_finite, run_chunked, summarize
from ensda.observe import GLOBAL_R_STD, GlobalObsNetwork, ObsNetwork, Observations
from ensda.testbeds import Lorenz96
from ensda.testbeds.sphere.grid import LatLonGrid
from ensda.testbeds.sphere.testbed import FlatSphere, channels_of
from ensda.testbeds.sphere.testbed import channel_std as sphere_channel_std
from ensda.testbeds.sphere.testbed import from_config as sphere_from_config

Testbed = Lorenz96 | FlatSphere


@dataclasses.dataclass(frozen=True)
class OSSE:
    """Everything the methods of one experiment share."""

    testbed: Testbed
    network: ObsNetwork | GlobalObsNetwork
    truth: jax.Array  # (K+1, n), cycle 0 = initial time
    obs: Observations  # stacked over cycles 1..K
    climatology: jax.Array  # (S, n) attractor samples independent of the truth
    model: Testbed | None = None  # the forecast model; None: the testbed (perfect model)
    lead_time: metrics.LeadTimeReference | None = None  # None: lead-time loss off
    channel_std: jax.Array | None = None  # (C,) σ_c of each channel on the sphere (``channel_std``)
    truth_start: int | None = None  # sphere: the store time index of truth[0]

    @property
    def forecast_model(self) -> Testbed:
        return self.testbed if self.model is None else self.model

    @property
    def truth_times(self) -> np.ndarray | None:
        """Valid times (datetime64[ns]) of the truth's cycles 0..K (the store's times on the
        sphere); None on Lorenz-96."""
        if self.truth_start is None:
            return None
        return self.testbed.truth_times(self.truth_start, self.truth.shape[0] - 1)


@dataclasses.dataclass(frozen=True)
class SphereRun:
    """What per-channel tables and maps of a sphere run need besides its ``CycleResult``."""

    grid: LatLonGrid
    names: tuple[str, ...]  # every channel, in state order
    headline: tuple[str, ...]  # channels reported one by one (summary keys, maps)
    channel_std: np.ndarray  # (C,) climatological σ_c
    truth_last: np.ndarray  # (C, n_lat, n_lon) truth at the last cycle

    @property
    def headline_index(self) -> dict[str, int]:
        """Headline channel name → its channel index (state order)."""
        return {name: self.names.index(name) for name in self.headline}


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


#: methods that cannot run on the sphere yet, and why (``build_assimilator`` refuses them);
#: a method class with ``supports_sphere = True`` is let through
SPHERE_UNSUPPORTED = {
    "oi": "oi builds a dense n_state × n_state climatological B, far too large on the sphere",
}


def make_testbed(cfg: ExperimentConfig) -> Testbed:
    t = cfg.testbed
    if cfg.sphere:
        return FlatSphere(sphere_from_config(t))
    return Lorenz96(n=t.n, forcing=t.forcing, dt=t.dt, steps_per_cycle=t.steps_per_cycle, spinup_steps=t.spinup_steps)


def make_forecast_model(cfg: ExperimentConfig) -> Testbed:
    """The testbed with the ``forecast_model`` values that are set (on the sphere: the dycore
    at ``testbed.forecast``'s resolution and time step)."""
    if cfg.sphere:
        return FlatSphere(sphere_from_config(cfg.testbed, perfect=False))
    changes = {k: v for k, v in cfg.forecast_model.model_dump().items() if v is not None}
    return dataclasses.replace(make_testbed(cfg), **changes)


def make_network(cfg: ExperimentConfig) -> ObsNetwork | GlobalObsNetwork:
    o = cfg.obs
    if cfg.sphere:
        t = cfg.testbed
        return GlobalObsNetwork(
            LatLonGrid(t.grid.n_lon, t.grid.n_lat), channels_of(t), kind=o.kind, density=o.density, redraw=o.redraw,
            variables=o.variables, levels=o.levels, r_std=tuple((dict(GLOBAL_R_STD) | o.r_std).items()),
            cycle_hours=t.cycle_hours, n_clusters=o.n_clusters, n_satellites=o.n_satellites,
            inclination_deg=o.inclination_deg, period_minutes=o.period_minutes,
        )
    return ObsNetwork(
        n_state=cfg.testbed.n, every=o.every, density=o.density,
        sites=tuple(o.sites) if o.sites is not None else None,
        redraw=o.redraw, r_std=o.r_std, operator=o.operator,
    )


def make_osse(cfg: ExperimentConfig) -> OSSE:
    """Truth, observations and climatology of an experiment (deterministic in the seeds)."""
    testbed = make_testbed(cfg)
    network = make_network(cfg)
    truth_key = jax.random.key(cfg.seeds.truth)
    clim_key = jax.random.fold_in(truth_key, 1)
    start = None
    if cfg.sphere:  # a window of the store; the climatology from outside it
        start = testbed.truth_start(truth_key, cfg.cycles, cfg.testbed.truth_start)
        truth, clim = testbed.truth_and_climatology(truth_key, cfg.cycles, clim_key, cfg.testbed.climatology_samples,
                                                    start)
    else:
        truth = testbed.nature_run(truth_key, cfg.cycles)
        clim = testbed.climatology_samples(clim_key, cfg.testbed.climatology_samples)
    bad = np.flatnonzero(~np.isfinite(np.asarray(truth)).all(axis=-1))
    if bad.size:
        raise NonFiniteStateError(int(bad[0]), "nature run", "truth")
    obs = network.observe_run(truth[1:], jax.random.key(cfg.seeds.obs))
    std = channel_std(clim, testbed) if cfg.sphere else None
    osse = OSSE(testbed, network, truth, obs, clim, model=make_forecast_model(cfg), channel_std=std, truth_start=start)
    if cfg.lead_time.enabled:
        osse = dataclasses.replace(osse, lead_time=make_lead_time_reference(cfg, osse))
    return osse


def channel_std(samples: jax.Array, testbed: FlatSphere) -> jax.Array:
    r"""Climatological standard deviation of each channel from flat samples ``(S, n)``:

    .. math:: \sigma_c = \sqrt{\sum_i w_i \,\mathrm{var}_s(x_{s,c,i}) / \sum_i w_i}

    (unbiased sample variance at each grid point i, cos-latitude weights w_i;
    ``sphere.testbed.channel_std``, the same σ as 3D-Var's climatological B): about the RMSE
    of a climatological forecast.
    """
    std = sphere_channel_std(testbed.unflatten(samples), testbed.testbed.grid, by_latitude=False)[:, 0, 0]
    flat = np.flatnonzero(~(np.asarray(std) > 0))
    if flat.size:
        names = [testbed.testbed.channels.names[i] for i in flat]
        raise ValueError(f"channels {names} have no climatological variance in the {samples.shape[0]} samples: "
                         "cannot normalise the metrics by them")
    return std


def make_lead_time_reference(cfg: ExperimentConfig, osse: OSSE) -> metrics.LeadTimeReference:
    """The reference RMSE-vs-lead curve of ``cfg.lead_time`` (shared by every method)."""
    lt = cfg.lead_time
    lead, max_lead = cfg.lead_cycles()
    # on the sphere: the RMSE of the standardised state (each channel / its σ_c), as rmse_a,
    # and the reference noise in units of σ_c
    scale = None if osse.channel_std is None else jnp.repeat(osse.channel_std, osse.truth.shape[-1] // osse.channel_std.size)
    if lt.reference == "dense_reference":
        kw = {"reference_states": dense_reference_run(cfg, osse).result.mean_a}
    elif lt.noise_std > 0:
        kw = {"reference_std": lt.noise_std if scale is None else lt.noise_std * scale,
              "key": jax.random.key(cfg.seeds.lead_time)}
    else:
        kw = {}
    model = osse.forecast_model
    return metrics.lead_time_reference(
        osse.truth, model.cycle_forecast, lead, hours_per_cycle=model.hours_per_cycle, burn_in=cfg.burn_in,
        stride=lt.stride, max_lead_cycles=max_lead, weights=model.grid.weights, scale=scale, **kw,
    )


def dense_reference_run(cfg: ExperimentConfig, osse: OSSE) -> MethodRun:
    """``lead_time.dense_method`` cycled on the same truth with every site (on the sphere:
    every column, in the network's channels) observed (same error std, operator and obs
    seed), as the reference analyses of the lead-time loss."""
    o = cfg.obs
    if cfg.sphere:
        network = dataclasses.replace(osse.network, kind="random", density=1.0, redraw=False)
    else:
        network = ObsNetwork(n_state=cfg.testbed.n, every=1, r_std=o.r_std, operator=o.operator)
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
    """Whether ``method`` can run on the config's testbed (see ``SPHERE_UNSUPPORTED``)."""
    return not (cfg.sphere and method in SPHERE_UNSUPPORTED and not getattr(registry.get(method), "supports_sphere", False))


def build_assimilator(cfg: ExperimentConfig, osse: OSSE, method: str, settings: dict | None = None):
    if not runs_on(cfg, method):
        raise ValueError(f"{SPHERE_UNSUPPORTED[method]}; use letkf, etkf, enkf or 3dvar (or the references none, control, climatology)")
    ctx = registry.SetupContext(
        testbed=osse.forecast_model, network=osse.network, climatology=osse.climatology,
        key=jax.random.key(cfg.seeds.assimilator),
    )
    return registry.build(method, cfg.method_settings(method) if settings is None else settings, ctx)


def run_method(cfg: ExperimentConfig, osse: OSSE, method: str, settings: dict | None = None, progress=None,
               analyses=None) -> MethodRun:
    """Cycle ``method`` over the OSSE; raises ``NonFiniteStateError`` if the state blows up.

    ``progress(cycles_done)`` is called as the run advances, ``analyses(first, ensembles)``
    (None: off) with each chunk's analysis ensembles (see ``cycle.run_chunked``).
    With the OSSE's lead-time reference the summary has ``lead_time_loss_h`` (``inf`` when
    off the curve: "> max lead"), ``lead_time_rmse`` (r at the lead) and
    ``lead_time_off_curve``; the curves are in ``MethodRun.lead_time``.
    """
    settings = cfg.method_settings(method) if settings is None else registry.validate_settings(method, settings)
    assim = build_assimilator(cfg, osse, method, settings)
    n_members = cfg.members_for(method)
    x0 = initial_ensemble(cfg, osse, n_members)
    key = jax.random.key(cfg.seeds.assimilator)
    timed = run_chunked(osse.forecast_model, assim, osse.truth, osse.obs, x0, key, progress=progress,
                        channel_std=osse.channel_std, analyses=analyses)
    check_finite(timed.result, method)
    sphere = sphere_run(cfg, osse) if cfg.sphere else None
    summary = summarize(timed.result, cfg.burn_in, {} if sphere is None else sphere.headline_index)
    summary.update(n_cycles=cfg.cycles, n_members=n_members, nfe=registry.network_calls(assim))
    if not cfg.sphere:
        summary["lost_track_a"] = lost_track_fraction(timed.result, osse, cfg.burn_in)
    lead = None
    if osse.lead_time is not None:
        lead = metrics.score_analyses(osse.lead_time, timed.result)
        summary.update(lead_time_loss_h=float(lead.loss.loss_h), lead_time_rmse=float(lead.loss.rmse),
                       lead_time_off_curve=bool(lead.loss.off_curve))
    return MethodRun(method, settings, n_members, timed.result, summary, timed.compile_s, timed.run_s, lead, sphere)


def lost_track_fraction(result, osse: OSSE, burn_in: int) -> float:
    """The fraction of cycles after ``burn_in`` whose analysis-mean RMSE exceeds that of the
    climatological mean (the mean of the OSSE's climatological samples) against the same
    truth: the cycles in which the filter has lost track."""
    truth = osse.truth[1:][burn_in:]
    clim_mse = metrics.ensemble_mean_mse(osse.climatology.mean(0)[None, None], truth, osse.testbed.grid.weights, axis=-1)
    return float(jnp.mean(result.mse_a[burn_in:] > clim_mse))


def sphere_run(cfg: ExperimentConfig, osse: OSSE) -> SphereRun:
    """The channels, headline channels, grid, σ_c and last truth of a sphere OSSE."""
    tb = osse.testbed
    return SphereRun(tb.testbed.grid, tb.testbed.channels.names, cfg.testbed.headline,
                     np.asarray(osse.channel_std), np.asarray(tb.unflatten(osse.truth[-1])))
