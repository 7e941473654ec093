"""The cycled OSSE runner: forecast, then analysis, every cycle, in one ``lax.scan``.

Inputs are the truth ``(K+1, n)`` (cycle 0 is the initial time), the observations of
cycles 1..K (stacked ``Observations``), and the initial ensemble ``(N, n)``. States are flat
vectors on every testbed: on the sphere ``n = n_var · n_lat · n_lon`` (``FlatSphere``), with
the cos-latitude weight of each element in ``testbed.grid.weights``. Each cycle k:

    x_f = M(x_a[k-1])                       (testbed.cycle_forecast, all members at once)
    x_a = assimilator.analyse(x_f, y_k, fold_in(key, k))
    metrics of x_f and x_a against truth[k]

Per-cycle metrics are stored as primitives (MSE, spread², CRPS, rank histogram, energy
score); ``summarize`` turns them into time means after the burn-in. A non-finite state is
reported with the cycle and the stage (forecast or analysis) that produced it.
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
        hint = "check the testbed's dt and spin-up" if stage == "nature run" else "check inflation, observation errors and dt"
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

    @property
    def n_cycles(self) -> int:
        return int(self.mse_a.shape[0])

    @property
    def n_members(self) -> int:
        return int(self.final_ensemble.shape[0])


def _cycle_metrics(ens: jax.Array, truth: jax.Array, weights: jax.Array) -> dict:
    n = ens.shape[0]
    estimator = "fair" if n > 1 else "standard"
    return dict(
        mse=metrics.ensemble_mean_mse(ens, truth, weights),
        spread2=metrics.squared_spread(ens, weights),
        crps=metrics.crps(ens, truth, weights, estimator=estimator),
        finite=jnp.all(jnp.isfinite(ens)),
    )


@partial(jax.jit, static_argnames=("testbed",))
def run_cycles(
    testbed, assimilator, truth: jax.Array, obs: Observations, x0: jax.Array, key: jax.Array, first_cycle=1
) -> CycleResult:
    """Cycle ``assimilator`` over ``obs`` from the initial ensemble ``x0``.

    ``truth`` has one more entry than ``obs`` (its first is the initial time); the cycles
    are numbered from ``first_cycle``, which sets the analysis keys ``fold_in(key, k)``.
    """
    weights = testbed.grid.weights

    def body(xa, inputs):
        k, t, y = inputs
        xf = testbed.cycle_forecast(xa)
        xa_new = assimilator.analyse(xf, y, jax.random.fold_in(key, k))
        mf = _cycle_metrics(xf, t, weights)
        ma = _cycle_metrics(xa_new, t, weights)
        out = dict(
            mse_f=mf["mse"], mse_a=ma["mse"],
            spread2_f=mf["spread2"], spread2_a=ma["spread2"],
            crps_f=mf["crps"], crps_a=ma["crps"],
            energy_a=metrics.energy_score(xa_new, t, weights),
            rank_hist_a=metrics.rank_histogram(xa_new, t),
            mean_f=xf.mean(0), mean_a=xa_new.mean(0),
            finite_f=mf["finite"], finite_a=ma["finite"],
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


def run_chunked(testbed, assimilator, truth, obs, x0, key, chunks: int | None = None, progress=None) -> Timed:
    """``run_cycles`` in equal chunks (one compiled program), for progress and early NaN stops.

    The result equals one scan over all cycles (same keys, same order). ``progress(done)``
    is called after each chunk with the number of cycles done. Stops at the first chunk
    that produced a non-finite state (``check_finite`` then names the cycle).
    """
    n_cycles = truth.shape[0] - 1
    chunks = n_chunks(n_cycles) if chunks is None else chunks
    if n_cycles % chunks:
        raise ValueError(f"{chunks} chunks do not divide {n_cycles} cycles")
    size = n_cycles // chunks
    t0 = time.perf_counter()
    compiled = run_cycles.lower(testbed, assimilator, truth[: size + 1], obs.at(slice(0, size)), x0, key, 1).compile()
    compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    parts, x = [], x0
    for c in range(chunks):
        s = c * size
        part = compiled(assimilator, truth[s : s + size + 1], obs.at(slice(s, s + size)), x, key, s + 1)
        parts.append(part)
        x = part.final_ensemble
        if not bool(part.finite_a.all() & part.finite_f.all()):
            break
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


def summarize(result: CycleResult, burn_in: int) -> dict[str, float]:
    """Time means after ``burn_in`` cycles (DESIGN §5).

    rmse_* is the mean of per-cycle RMSE; spread_* the mean of per-cycle spread; ssr_* is
    sqrt((N+1)/N) · sqrt(mean spread² / mean MSE); crps_* the mean per-cycle CRPS.
    """
    k = result.n_cycles
    if not 0 <= burn_in < k:
        raise ValueError(f"burn_in must be in [0, cycles), got burn_in={burn_in}, cycles={k}")
    n = result.n_members
    sl = slice(burn_in, None)
    out: dict[str, float] = {}
    for s in ("f", "a"):
        mse = np.asarray(getattr(result, f"mse_{s}")[sl], np.float64)
        sp2 = np.asarray(getattr(result, f"spread2_{s}")[sl], np.float64)
        out[f"rmse_{s}"] = float(np.sqrt(mse).mean())
        out[f"spread_{s}"] = float(np.sqrt(sp2).mean())
        out[f"crps_{s}"] = float(np.asarray(getattr(result, f"crps_{s}")[sl], np.float64).mean())
        out[f"ssr_{s}"] = float(metrics.spread_skill_ratio(sp2.mean(), mse.mean(), n)) if n > 1 else 0.0
    out["energy_a"] = float(np.asarray(result.energy_a[sl], np.float64).mean())
    hist = np.asarray(result.rank_hist_a[sl]).sum(0)
    out["rank_flatness_a"] = float(metrics.rank_histogram_flatness(hist)) if n > 1 else float("nan")
    return out


def rank_histogram_counts(result: CycleResult, burn_in: int) -> np.ndarray:
    """Rank histogram of the analysis over the cycles after burn-in, shape ``(N + 1,)``."""
    return np.asarray(result.rank_hist_a[burn_in:]).sum(0)
