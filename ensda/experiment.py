"""From a config to results: the OSSE (truth, observations, climatology) and method runs.

``make_osse`` builds what all methods share, so a comparison is on the same truth and
the same observations; ``run_method`` cycles one method over it and summarises.
Keys: every stream derives from ``config.seeds``; the analysis of cycle k uses
``fold_in(key, k)``, member j of a stochastic method ``fold_in(..., j)`` inside it.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ensda import assimilator as registry
from ensda.config import ExperimentConfig
from ensda.cycle import CycleResult, NonFiniteStateError, check_finite, run_chunked, summarize
from ensda.observe import ObsNetwork, Observations
from ensda.testbeds import Lorenz96


@dataclasses.dataclass(frozen=True)
class OSSE:
    """Everything the methods of one experiment share."""

    testbed: Lorenz96
    network: ObsNetwork
    truth: jax.Array  # (K+1, n), cycle 0 = initial time
    obs: Observations  # stacked over cycles 1..K
    climatology: jax.Array  # (S, n) attractor samples independent of the truth


@dataclasses.dataclass(frozen=True)
class MethodRun:
    method: str
    settings: dict
    n_members: int
    result: CycleResult
    summary: dict
    compile_s: float
    run_s: float


def make_testbed(cfg: ExperimentConfig) -> Lorenz96:
    t = cfg.testbed
    return Lorenz96(n=t.n, forcing=t.forcing, dt=t.dt, steps_per_cycle=t.steps_per_cycle, spinup_steps=t.spinup_steps)


def make_network(cfg: ExperimentConfig) -> ObsNetwork:
    o = cfg.obs
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
    truth = testbed.nature_run(truth_key, cfg.cycles)
    bad = np.flatnonzero(~np.isfinite(np.asarray(truth)).all(axis=-1))
    if bad.size:
        raise NonFiniteStateError(int(bad[0]), "nature run", "truth")
    clim = testbed.climatology_samples(jax.random.fold_in(truth_key, 1), cfg.testbed.climatology_samples)
    obs = network.observe_run(truth[1:], jax.random.key(cfg.seeds.obs))
    return OSSE(testbed, network, truth, obs, clim)


def initial_ensemble(cfg: ExperimentConfig, osse: OSSE, n_members: int) -> jax.Array:
    """Initial ensemble ``(N, n)``: perturbed truth, or random climatological states."""
    key = jax.random.key(cfg.seeds.ensemble)
    if cfg.ensemble.init == "climatology":
        pick = jax.random.choice(key, osse.climatology.shape[0], (n_members,), replace=False)
        return osse.climatology[pick]
    noise = jax.random.normal(key, (n_members, osse.truth.shape[-1]), osse.truth.dtype)
    return osse.truth[0] + cfg.ensemble.init_std * noise


def build_assimilator(cfg: ExperimentConfig, osse: OSSE, method: str, settings: dict | None = None):
    ctx = registry.SetupContext(
        testbed=osse.testbed, network=osse.network, climatology=osse.climatology,
        key=jax.random.key(cfg.seeds.assimilator),
    )
    return registry.build(method, cfg.method_settings(method) if settings is None else settings, ctx)


def run_method(cfg: ExperimentConfig, osse: OSSE, method: str, settings: dict | None = None, progress=None) -> MethodRun:
    """Cycle ``method`` over the OSSE; raises ``NonFiniteStateError`` if the state blows up.

    ``progress(cycles_done)`` is called as the run advances (see ``cycle.run_chunked``).
    """
    settings = cfg.method_settings(method) if settings is None else registry.validate_settings(method, settings)
    assim = build_assimilator(cfg, osse, method, settings)
    n_members = cfg.members_for(method)
    x0 = initial_ensemble(cfg, osse, n_members)
    key = jax.random.key(cfg.seeds.assimilator)
    timed = run_chunked(osse.testbed, assim, osse.truth, osse.obs, x0, key, progress=progress)
    check_finite(timed.result, method)
    summary = summarize(timed.result, cfg.burn_in)
    summary.update(n_cycles=cfg.cycles, n_members=n_members)
    return MethodRun(method, settings, n_members, timed.result, summary, timed.compile_s, timed.run_s)
