"""The cycled OSSE runner: forecast, then analysis, every cycle, in one ``lax.scan``.

Inputs are the truth ``(K+1, n)`` (cycle 0 is the initial time), the observations of
cycles 1..K (stacked ``Observations``), and the initial ensemble ``(N, n)``. States are flat
vectors on every testbed: on the sphere ``n = n_var · n_lat · n_lon`` (``FlatSphere``), with
the cos-latitude weight of each element in ``testbed.grid.weights``. Each cycle k:

    x_f = M(x_a[k-1])                       (testbed.cycle_forecast, all members at once;
                                             x_a[k-1] itself for an assimilator whose
                                             analysis ignores the background:
                                             ``needs_forecast = False``, climatology)
    x_a = assimilator.analyse(x_f, y_k, fold_in(key, k))
    metrics of x_f and x_a against truth[k]

Per-cycle metrics are stored as primitives (MSE, spread², CRPS, rank histogram, energy
score); ``summarize`` turns them into time means after the burn-in. A non-finite state is
reported with the cycle and the stage (forecast or analysis) that produced it.

**Channels (the sphere).** When the testbed's grid has ``n_channels`` = C (``FlatGrid``:
a state is C channels of m = n_lat·n_lon points), the scan also stores each channel's
cos-latitude weighted MSE_c, spread²_c and CRPS_c (SI units, ``channel_*`` fields, shape
``(K, C)``), and the aggregates (``mse_*``, ``spread2_*``, ``crps_*``, ``energy_a``) are
*normalised*: each channel is divided by its climatological standard deviation σ_c
(``channel_std``; ones if not given, which gives the SI aggregate) before averaging,

    MSE = (1/C) Σ_c MSE_c / σ_c²,   spread² = (1/C) Σ_c spread²_c / σ_c²,
    CRPS = (1/C) Σ_c CRPS_c / σ_c,  energy score of the states divided by σ_c,

i.e. the all-channel metrics of the standardised state x_c / σ_c, so that no variable
(geopotential in m²/s², surface pressure in Pa) dominates. On Lorenz-96 (no channels)
nothing changes.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ensda import metrics
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass


class NonFiniteStateError(FloatingPointError):
    """A NaN or Inf appeared in the cycled state."""

    def __init__(self, cycle: int, stage: str, method: str):
        self.cycle, self.stage, self.method = cycle, stage, method
        hint = (
            "check the testbed's dt and spin-up"
            if stage == "nature run"
            else "check inflation, observation errors and dt"
        )
        super().__init__(
            f"non-finite state (NaN/Inf) produced by the {stage} at cycle {cycle} "
            f"(method {method!r}); the run diverged — {hint}"
        )


@pytree_dataclass
class CycleResult:
    """Per-cycle outputs of a run (leading axis: cycles 1..K)."""

    mse_f: jax.Array
    mse_a: jax.Array
    spread2_f: jax.Array
    spread2_a: jax.Array
    crps_f: jax.Array
    crps_a: jax.Array
    energy_a: jax.Array
    rank_hist_a: jax.Array  # (K, N+1)
    mean_f: jax.Array  # (K, n) forecast (background) ensemble means
    mean_a: jax.Array  # (K, n) analysis ensemble means
    finite_f: jax.Array  # (K,) bool
    finite_a: jax.Array  # (K,) bool
    final_ensemble: jax.Array  # (N, n)
    # per channel (K, C), SI units, on a testbed with channels (the sphere); None otherwise
    channel_mse_f: jax.Array | None = None
    channel_mse_a: jax.Array | None = None
    channel_spread2_f: jax.Array | None = None
    channel_spread2_a: jax.Array | None = None
    channel_crps_f: jax.Array | None = None
    channel_crps_a: jax.Array | None = None
    # (K, N, n) every cycle's analysis ensemble, only when asked (``keep_analyses``); None otherwise
    analyses: jax.Array | None = None

    @property
    def n_cycles(self) -> int:
        return int(self.mse_a.shape[0])

    @property
    def n_members(self) -> int:
        return int(self.final_ensemble.shape[0])


def _cycle_metrics(ens: jax.Array, truth: jax.Array, weights: jax.Array) -> dict:
    estimator = "fair" if ens.shape[0] > 1 else "standard"
    return dict(
        mse=metrics.ensemble_mean_mse(ens, truth, weights),
        spread2=metrics.squared_spread(ens, weights),
        crps=metrics.crps(ens, truth, weights, estimator=estimator),
        finite=jnp.all(jnp.isfinite(ens)),
    )


def channel_metrics(ens: jax.Array, truth: jax.Array, weights: jax.Array, std: jax.Array) -> dict:
    """Per-channel metrics (SI) of flat states with C = ``std.size`` channels, and their
    aggregates normalised by the channel standard deviations ``std`` (module docstring)."""
    c = std.shape[0]
    e, t, w = ens.reshape(ens.shape[0], c, -1), truth.reshape(c, -1), weights.reshape(c, -1)
    estimator = "fair" if ens.shape[0] > 1 else "standard"
    per = dict(
        mse=metrics.ensemble_mean_mse(e, t, w, axis=-1),
        spread2=metrics.squared_spread(e, w, axis=-1),
        crps=metrics.crps(e, t, w, estimator=estimator, axis=-1),
    )
    return dict(
        mse=jnp.mean(per["mse"] / std**2),
        spread2=jnp.mean(per["spread2"] / std**2),
        crps=jnp.mean(per["crps"] / std),
        finite=jnp.all(jnp.isfinite(ens)),
        channels=per,
    )


@partial(jax.jit, static_argnames=("testbed", "keep_analyses"))
def run_cycles(
    testbed,
    assimilator,
    truth: jax.Array,
    obs: Observations,
    x0: jax.Array,
    key: jax.Array,
    first_cycle=1,
    channel_std: jax.Array | None = None,
    keep_analyses: bool = False,
) -> CycleResult:
    """Cycle ``assimilator`` over ``obs`` from the initial ensemble ``x0``.

    ``truth`` has one more entry than ``obs`` (its first is the initial time); the cycles
    are numbered from ``first_cycle``, which sets the analysis keys ``fold_in(key, k)``.
    On a testbed with channels, ``channel_std`` (C,) normalises the aggregate metrics
    (module docstring; None: ones). With ``keep_analyses`` the result also holds every
    cycle's analysis ensemble (``analyses``, K × N × n: off by default, it is K ensembles).
    """
    weights = testbed.grid.weights
    n_channels = getattr(testbed.grid, "n_channels", None)
    if n_channels is None:
        scale = None
        measure = _cycle_metrics
    else:
        std = (
            jnp.ones(n_channels, truth.dtype)
            if channel_std is None
            else jnp.asarray(channel_std, truth.dtype)
        )
        scale = jnp.repeat(std, truth.shape[-1] // n_channels)  # σ_c of every state element
        measure = partial(channel_metrics, std=std)

    forecast = (
        testbed.cycle_forecast if getattr(assimilator, "needs_forecast", True) else (lambda x: x)
    )

    def body(xa, inputs):
        k, t, y = inputs
        xf = forecast(xa)
        xa_new = assimilator.analyse(xf, y, jax.random.fold_in(key, k))
        mf = measure(xf, t, weights)
        ma = measure(xa_new, t, weights)
        out = dict(
            mse_f=mf["mse"],
            mse_a=ma["mse"],
            spread2_f=mf["spread2"],
            spread2_a=ma["spread2"],
            crps_f=mf["crps"],
            crps_a=ma["crps"],
            energy_a=metrics.energy_score(xa_new, t, weights)
            if scale is None
            else metrics.energy_score(xa_new / scale, t / scale, weights),
            rank_hist_a=metrics.rank_histogram(xa_new, t),
            mean_f=xf.mean(0),
            mean_a=xa_new.mean(0),
            finite_f=mf["finite"],
            finite_a=ma["finite"],
        )
        if keep_analyses:
            out["analyses"] = xa_new
        if scale is not None:
            out.update(
                {
                    f"channel_{name}_{s}": m["channels"][name]
                    for s, m in (("f", mf), ("a", ma))
                    for name in ("mse", "spread2", "crps")
                }
            )
        return xa_new, out

    n_cycles = truth.shape[0] - 1
    ks = first_cycle + jnp.arange(n_cycles)
    final, out = jax.lax.scan(body, x0, (ks, truth[1:], obs))
    return CycleResult(final_ensemble=final, **out)


def n_chunks(n_cycles: int, most: int = 20) -> int:
    """The largest number of equal chunks (≤ ``most``) that divides ``n_cycles``."""
    return max(c for c in range(1, min(most, n_cycles) + 1) if n_cycles % c == 0)


@dataclasses.dataclass(frozen=True)
class Timed:
    """A result with its compile and run wall times (seconds)."""

    result: CycleResult
    compile_s: float
    run_s: float


def run_chunked(
    testbed,
    assimilator,
    truth,
    obs,
    x0,
    key,
    chunks: int | None = None,
    progress=None,
    channel_std=None,
    analyses=None,
) -> Timed:
    """``run_cycles`` in equal chunks (one compiled program), for progress and early NaN stops.

    The result equals one scan over all cycles (same keys, same order). ``progress(done)``
    is called after each chunk with the number of cycles done. Stops at the first chunk
    that produced a non-finite state (``check_finite`` then names the cycle).

    ``analyses(first, ensembles)``, when given, receives each chunk's analysis ensembles
    ``(size, N, n)`` of cycles ``first + 1 .. first + size`` as soon as the chunk is done
    (a chunk that produced a non-finite state is not passed on); they are not kept in the
    result, so memory holds one chunk of ensembles at a time.
    """
    n_cycles = truth.shape[0] - 1
    chunks = n_chunks(n_cycles) if chunks is None else chunks
    if n_cycles % chunks:
        raise ValueError(f"{chunks} chunks do not divide {n_cycles} cycles")
    size = n_cycles // chunks
    t0 = time.perf_counter()
    compiled = run_cycles.lower(
        testbed,
        assimilator,
        truth[: size + 1],
        obs.at(slice(0, size)),
        x0,
        key,
        1,
        channel_std,
        keep_analyses=analyses is not None,
    ).compile()
    compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    parts, x = [], x0
    for c in range(chunks):
        s = c * size
        part = compiled(
            assimilator,
            truth[s : s + size + 1],
            obs.at(slice(s, s + size)),
            x,
            key,
            s + 1,
            channel_std,
        )
        x = part.final_ensemble
        if not bool(part.finite_a.all() & part.finite_f.all()):
            parts.append(dataclasses.replace(part, analyses=None))
            break
        if analyses is not None:
            analyses(s, part.analyses)
            part = dataclasses.replace(part, analyses=None)
        parts.append(part)
        if progress is not None:
            progress(s + size)
    merged = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis=0), *parts)
    result = dataclasses.replace(merged, final_ensemble=x)
    jax.block_until_ready(result)
    return Timed(result, compile_s, time.perf_counter() - t1)


def check_finite(result: CycleResult, method: str) -> None:
    """Raise ``NonFiniteStateError`` at the first cycle (1-based) whose state is not finite."""
    finite_f = np.asarray(result.finite_f)
    finite_a = np.asarray(result.finite_a)
    if finite_f.all() and finite_a.all():
        return
    bad_f = np.flatnonzero(~finite_f)
    bad_a = np.flatnonzero(~finite_a)
    first_f = bad_f[0] if bad_f.size else np.inf
    first_a = bad_a[0] if bad_a.size else np.inf
    if first_f <= first_a:
        raise NonFiniteStateError(int(first_f) + 1, "forecast", method)
    raise NonFiniteStateError(int(first_a) + 1, "analysis", method)


def _time_means(mse, spread2, crps, n_members: int) -> dict:
    """Time means (axis 0: cycles after burn-in) of per-cycle primitives: rmse, spread, crps,
    ssr."""
    mse, spread2 = np.asarray(mse, np.float64), np.asarray(spread2, np.float64)
    ssr = (
        metrics.spread_skill_ratio(spread2.mean(0), mse.mean(0), n_members)
        if n_members > 1
        else np.zeros(mse.shape[1:])
    )
    return dict(
        rmse=np.sqrt(mse).mean(0),
        spread=np.sqrt(spread2).mean(0),
        crps=np.asarray(crps, np.float64).mean(0),
        ssr=np.asarray(ssr, np.float64),
    )


def _check_burn_in(result: CycleResult, burn_in: int) -> None:
    if not 0 <= burn_in < result.n_cycles:
        raise ValueError(
            f"burn_in must be in [0, cycles), got burn_in={burn_in}, cycles={result.n_cycles}"
        )


def summarize(
    result: CycleResult, burn_in: int, channels: dict[str, int] | None = None
) -> dict[str, float]:
    """Time means after ``burn_in`` cycles (docs/design.md §5).

    rmse_* is the mean of per-cycle RMSE; spread_* the mean of per-cycle spread; ssr_* is
    sqrt((N+1)/N) · sqrt(mean spread² / mean MSE); crps_* the mean per-cycle CRPS. On the
    sphere these are the normalised aggregates (module docstring), e.g.

        rmse_a = mean_k sqrt((1/C) Σ_c MSE_{k,c} / σ_c²),

    and ``channels`` (name → channel index) adds the same time means of single channels
    in SI units as ``<metric>.<channel>``: ``rmse_a.geopotential_500``, ``crps_f.temperature_850``,
    ``ssr_a.surface_pressure``, ... (see ``channel_summary``).
    """
    _check_burn_in(result, burn_in)
    n = result.n_members
    sl = slice(burn_in, None)
    out: dict[str, float] = {}
    for s in ("f", "a"):
        means = _time_means(
            getattr(result, f"mse_{s}")[sl],
            getattr(result, f"spread2_{s}")[sl],
            getattr(result, f"crps_{s}")[sl],
            n,
        )
        out.update({f"{m}_{s}": float(means[m]) for m in ("rmse", "spread", "crps", "ssr")})
    out["energy_a"] = float(np.asarray(result.energy_a[sl], np.float64).mean())
    hist = np.asarray(result.rank_hist_a[sl]).sum(0)
    out["rank_flatness_a"] = float(metrics.rank_histogram_flatness(hist)) if n > 1 else float("nan")
    if channels:
        per = channel_summary(result, burn_in)
        out.update(
            {f"{key}.{name}": float(per[key][c]) for name, c in channels.items() for key in per}
        )
    return out


def channel_summary(result: CycleResult, burn_in: int) -> dict[str, np.ndarray]:
    """Per-channel time means after ``burn_in`` (SI units), each ``(C,)``: ``rmse_f``,
    ``spread_f``, ``crps_f``, ``ssr_f`` and the same of the analysis (``*_a``); defined as
    in ``summarize`` on each channel's cos-latitude weighted primitives."""
    if result.channel_mse_a is None:
        raise ValueError("this run has no per-channel metrics (its testbed has no channels)")
    _check_burn_in(result, burn_in)
    sl = slice(burn_in, None)
    out = {}
    for s in ("f", "a"):
        means = _time_means(
            getattr(result, f"channel_mse_{s}")[sl],
            getattr(result, f"channel_spread2_{s}")[sl],
            getattr(result, f"channel_crps_{s}")[sl],
            result.n_members,
        )
        out.update({f"{m}_{s}": v for m, v in means.items()})
    return out


def rank_histogram_counts(result: CycleResult, burn_in: int) -> np.ndarray:
    """Rank histogram of the analysis over the cycles after burn-in, shape ``(N + 1,)``."""
    return np.asarray(result.rank_hist_a[burn_in:]).sum(0)
