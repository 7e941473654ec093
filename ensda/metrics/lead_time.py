r"""Lead-time loss (DiffDA; docs/design.md §5).

Forecasts started from the analyses reach an RMSE ``r`` at lead ``L``. Forecasts with the
same forecast model started from a *reference* initial state (the truth plus small
Gaussian noise, or the analyses of a reference run, e.g. a dense observation network)
give the reference curve RMSE_ref(ℓ), ℓ = 0..max lead. The lead-time loss is

.. math:: \Delta = \ell^* - L, \qquad \mathrm{RMSE_{ref}}(\ell^*) = r,

in hours: how much forecast lead the analysis costs compared with the reference. Positive
means the analysis is worse than the reference initial state.

Conventions
-----------
* Cycle indexing follows ``cycle.py`` and ``experiment.make_osse``: ``truth`` has shape
  ``(K+1, ...)`` with index 0 the initial time; a forecast started at cycle ``k`` and run
  ``ℓ`` cycles is verified against ``truth[k + ℓ]``. The analysis means of a
  ``CycleResult`` (``mean_a``, shape ``(K, ...)``) belong to cycles 1..K, so the analysis of
  cycle ``k`` is ``mean_a[k - 1]``.
* **Averaging.** RMSE(ℓ) is the *mean over start cycles of the per-start area-weighted
  RMSE* at lead ℓ, ``mean_s sqrt(Σ w (x_s(ℓ) − t_{s+ℓ})² / Σ w)``, the same order of
  averaging as the time-mean analysis RMSE of docs/design.md §5 (mean of per-cycle RMSE).
  A forecast that is not finite makes the mean non-finite (and the loss off the curve).
* **Interpolation.** ℓ* is where the piecewise-linear interpolant of the reference curve
  (through the points (ℓ_j, RMSE_ref(ℓ_j))) *first* reaches ``r``. On an increasing curve
  that is its ordinary inverse. On a curve that is not monotone (sampling noise at short
  leads, saturation at long leads) the first crossing is the inverse of the running
  maximum of the interpolant: a later dip below ``r`` does not move ℓ*.
* **Below the curve.** If ``r`` is below the curve's first point (the analysis beats the
  reference initial state), ℓ* is clamped at the first lead (0), so the loss is −L at
  most; ``below_curve`` is set.
* **Above the curve** ("> max lead"). If ``r`` is above every point of the curve (or is
  not finite), ℓ* and the loss are ``+inf`` and ``off_curve`` is set; the loss is then only
  known to exceed ``max_lead_h − lead_h`` (see ``LeadTimeLoss.text``).
* Hours: a cycle lasts ``testbed.hours_per_cycle`` hours (0.05 model time units = 6 h on
  Lorenz-96).

All functions are pure JAX; the forecasts are one ``lax.scan`` over leads of the
forecast step ``vmap``-ped over start cycles. ``forecast_step`` advances one state by one
cycle (e.g. ``testbed.cycle_forecast`` or the ``cycle_forecast`` of an imperfect model);
it is a static argument of the compiled program, so it must be hashable (bound methods of
the frozen testbeds and plain functions are).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ensda.metrics.rmse import weighted_mean
from ensda.pytree import pytree_dataclass

ForecastStep = Callable[[jax.Array], jax.Array]


def _concrete(x) -> np.ndarray | None:
    """``x`` as a NumPy array when it is not traced (for validation), else ``None``."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _check_starts(start_cycles, n_truth: int, max_lead_cycles: int) -> None:
    s = _concrete(start_cycles)
    if s is None:
        return
    if s.size == 0:
        raise ValueError("start_cycles is empty")
    if s.min() < 0 or s.max() + max_lead_cycles > n_truth - 1:
        raise ValueError(
            "start cycles must satisfy 0 <= start and start + max_lead_cycles <= K = "
            f"{n_truth - 1}; "
            f"got starts in [{s.min()}, {s.max()}] with max_lead_cycles={max_lead_cycles}"
        )


@partial(jax.jit, static_argnames=("forecast_step", "max_lead_cycles"))
def _rmse_by_start(
    forecast_step, initial_states, truth, start_cycles, max_lead_cycles, weights, scale
):
    step = jax.vmap(forecast_step)
    unit = 1.0 if scale is None else scale
    rmse_one = jax.vmap(lambda x, t: jnp.sqrt(weighted_mean(((x - t) / unit) ** 2, weights)))

    def rmse_at(x, lead):
        return rmse_one(x, truth[start_cycles + lead])

    def body(x, lead):
        x = step(x)
        return x, rmse_at(x, lead)

    _, later = jax.lax.scan(body, initial_states, jnp.arange(1, max_lead_cycles + 1))
    return jnp.concatenate([rmse_at(initial_states, 0)[None], later], axis=0).T


def forecast_rmse_by_start(
    forecast_step: ForecastStep,
    initial_states: jax.Array,
    truth: jax.Array,
    start_cycles: jax.Array,
    max_lead_cycles: int,
    weights: jax.Array | None = None,
    scale: jax.Array | None = None,
) -> jax.Array:
    """Per-start forecast RMSE, shape ``(S, max_lead_cycles + 1)``.

    ``initial_states[s]`` (shape of one state) is valid at cycle ``start_cycles[s]``; it is
    advanced ``ℓ`` times by ``forecast_step`` and compared with ``truth[start_cycles[s] + ℓ]``
    (area weights ``weights``; ``None`` = uniform), the error divided by ``scale`` (per
    element, e.g. each channel's climatological σ on the sphere: the RMSE of the
    standardised state; ``None`` = 1). Requires
    ``start + max_lead_cycles <= K`` for every start (checked when the starts are concrete).
    """
    initial_states = jnp.asarray(initial_states)
    truth = jnp.asarray(truth)
    start_cycles = jnp.asarray(start_cycles, jnp.int32)
    if start_cycles.ndim != 1 or initial_states.shape[0] != start_cycles.shape[0]:
        raise ValueError(
            f"initial_states (S, ...) and start_cycles (S,) disagree: {initial_states.shape} vs "
            f"{start_cycles.shape}"
        )
    if initial_states.shape[1:] != truth.shape[1:]:
        raise ValueError(
            f"state shapes differ: initial_states {initial_states.shape}, truth {truth.shape}"
        )
    max_lead_cycles = int(max_lead_cycles)
    if max_lead_cycles < 0:
        raise ValueError(f"max_lead_cycles must be >= 0, got {max_lead_cycles}")
    _check_starts(start_cycles, truth.shape[0], max_lead_cycles)
    return _rmse_by_start(
        forecast_step, initial_states, truth, start_cycles, max_lead_cycles, weights, scale
    )


def forecast_rmse_curve(
    forecast_step: ForecastStep,
    initial_states: jax.Array,
    truth: jax.Array,
    start_cycles: jax.Array,
    max_lead_cycles: int,
    weights: jax.Array | None = None,
    scale: jax.Array | None = None,
) -> jax.Array:
    """RMSE(ℓ) for ℓ = 0..max_lead_cycles, shape ``(max_lead_cycles + 1,)``.

    The mean over the S starts of the per-start area-weighted RMSE (see
    ``forecast_rmse_by_start`` for the arguments).
    """
    return forecast_rmse_by_start(
        forecast_step, initial_states, truth, start_cycles, max_lead_cycles, weights, scale
    ).mean(0)


def reference_initial_states(
    truth: jax.Array,
    start_cycles: jax.Array,
    noise_std: float | jax.Array,
    key: jax.Array,
    states: jax.Array | None = None,
) -> jax.Array:
    """Reference initial states ``(S, ...)``: ``states`` (default ``truth[start_cycles]``)
    plus Gaussian noise of standard deviation ``noise_std``.

    The noise of a start depends on its cycle only: ``normal(fold_in(key, cycle))``, so a
    start has the same perturbation whichever other starts are chosen.
    """
    truth = jnp.asarray(truth)
    start_cycles = jnp.asarray(start_cycles, jnp.int32)
    base = truth[start_cycles] if states is None else jnp.asarray(states)
    noise = jax.vmap(
        lambda k: jax.random.normal(jax.random.fold_in(key, k), base.shape[1:], base.dtype)
    )(start_cycles)
    return base + noise_std * noise


def reference_curve(
    forecast_step: ForecastStep,
    truth: jax.Array,
    start_cycles: jax.Array,
    max_lead_cycles: int,
    weights: jax.Array | None = None,
    *,
    initial_states: jax.Array | None = None,
    noise_std: float | jax.Array | None = None,
    key: jax.Array | None = None,
    scale: jax.Array | None = None,
) -> jax.Array:
    """The reference RMSE-vs-lead curve, shape ``(max_lead_cycles + 1,)``.

    Forecasts (with ``forecast_step``, possibly an imperfect model) from the reference
    initial states: ``initial_states`` ``(S, ...)`` when given (e.g. the analyses of a
    dense-network reference run at the start cycles), else the truth at the start cycles;
    plus Gaussian noise of std ``noise_std`` when given (``key`` required; see
    ``reference_initial_states``). Averaged as ``forecast_rmse_curve``.
    """
    truth = jnp.asarray(truth)
    start_cycles = jnp.asarray(start_cycles, jnp.int32)
    states = truth[start_cycles] if initial_states is None else jnp.asarray(initial_states)
    if noise_std is not None:
        if key is None:
            raise ValueError("reference_curve: noise_std needs an explicit key")
        states = reference_initial_states(truth, start_cycles, noise_std, key, states)
    return forecast_rmse_curve(
        forecast_step, states, truth, start_cycles, max_lead_cycles, weights, scale
    )


@pytree_dataclass
class LeadTimeLoss:
    """A lead-time loss (all fields arrays; hours).

    ``loss_h = matched_lead_h − lead_h``; ``+inf`` when ``off_curve`` (``rmse`` above every
    point of the reference curve, or not finite: the loss exceeds ``max_lead_h − lead_h``).
    ``below_curve``: ``rmse`` is below the curve's first point and ℓ* was clamped there.
    """

    loss_h: jax.Array
    lead_h: jax.Array
    matched_lead_h: jax.Array
    off_curve: jax.Array
    below_curve: jax.Array
    rmse: jax.Array
    max_lead_h: jax.Array

    @property
    def text(self) -> str:
        """``'12.3 h'``, or ``'> 228 h'`` (the "> max lead" report) when off the curve."""
        if bool(self.off_curve):
            return f"> {float(self.max_lead_h - self.lead_h):g} h"
        return f"{float(self.loss_h):.1f} h"


def lead_time_loss(
    r: float | jax.Array,
    lead_h: float | jax.Array,
    leads_h: jax.Array,
    ref_curve: jax.Array,
) -> LeadTimeLoss:
    """Lead-time loss ℓ* − L of a forecast RMSE ``r`` at lead ``lead_h`` (hours).

    ``leads_h`` (M,) are the reference curve's leads in hours (strictly increasing, e.g.
    ``hours_per_cycle * arange(M)``), ``ref_curve`` (M,) its RMSE. ℓ* is the first lead at
    which the linear interpolant of the curve reaches ``r``; clamped at ``leads_h[0]`` when
    ``r`` is below the first point; ``+inf`` when ``r`` is above every point or not finite
    (module docstring). Jit- and vmap-able (over ``r``).
    """
    r = jnp.asarray(r, jnp.result_type(float))
    leads_h = jnp.asarray(leads_h, r.dtype)
    c = jnp.asarray(ref_curve, r.dtype)
    if c.ndim != 1 or leads_h.shape != c.shape or c.shape[0] < 1:
        raise ValueError(
            f"leads_h and ref_curve must be 1-D of the same length, got {leads_h.shape}, {c.shape}"
        )
    lh = _concrete(leads_h)
    if lh is not None and np.any(np.diff(lh) <= 0):
        raise ValueError("leads_h must be strictly increasing")
    cc = _concrete(c)
    if cc is not None and not np.all(np.isfinite(cc)):
        raise ValueError("the reference curve has non-finite values")

    reached = c >= r  # False everywhere for a NaN r
    off = ~jnp.any(reached)
    at_start = r <= c[0]
    if c.shape[0] == 1:
        interior = leads_h[0]
    else:
        # first point reaching r; every earlier point is < r, so c[j-1] < r <= c[j]
        j = jnp.clip(jnp.argmax(reached), 1, c.shape[0] - 1)
        c0, c1 = c[j - 1], c[j]
        frac = (r - c0) / jnp.where(c1 > c0, c1 - c0, 1.0)
        interior = leads_h[j - 1] + frac * (leads_h[j] - leads_h[j - 1])
    matched = jnp.where(off, jnp.inf, jnp.where(at_start, leads_h[0], interior))
    lead_h = jnp.asarray(lead_h, r.dtype)
    return LeadTimeLoss(
        loss_h=matched - lead_h,
        lead_h=lead_h,
        matched_lead_h=matched,
        off_curve=off,
        below_curve=r < c[0],
        rmse=r,
        max_lead_h=leads_h[-1],
    )


def analysis_start_cycles(
    n_cycles: int, max_lead_cycles: int, burn_in: int = 0, stride: int = 1
) -> np.ndarray:
    """Start cycles ``burn_in+1, burn_in+1+stride, ...`` with ``start + max_lead_cycles <= K``.

    Cycles are numbered 1..K as the analyses of a ``CycleResult`` (cycle ``k`` verifies
    against ``truth[k]``); ``burn_in`` cycles are skipped as in ``cycle.summarize``.
    """
    if burn_in < 0 or stride < 1:
        raise ValueError(
            f"need burn_in >= 0 and stride >= 1, got burn_in={burn_in}, stride={stride}"
        )
    starts = np.arange(burn_in + 1, n_cycles - max_lead_cycles + 1, stride)
    if starts.size == 0:
        raise ValueError(
            f"no start cycle: {n_cycles} cycles, burn_in={burn_in}, max lead {max_lead_cycles} "
            "cycles (need K >= burn_in + 1 + max_lead)"
        )
    return starts


def _analysis_means(analyses, truth: jax.Array) -> jax.Array:
    """The analysis means ``(K, ...)`` of a ``CycleResult`` or an array, checked against
    ``truth``."""
    mean_a = jnp.asarray(getattr(analyses, "mean_a", analyses))
    expected = (truth.shape[0] - 1, *truth.shape[1:])
    if mean_a.shape != expected:
        raise ValueError(
            f"analyses must be (K, ...) = {expected} for truth {truth.shape}, got {mean_a.shape}"
        )
    return mean_a


@dataclasses.dataclass(frozen=True)
class LeadTimeReference:
    """The reference side of a run's lead-time loss, computed once and shared by methods.

    ``curve[ℓ]`` = RMSE_ref at lead ℓ cycles (ℓ = 0..max_lead_cycles) of forecasts with
    ``forecast_step`` from the reference states at ``start_cycles`` (cycles 1..K numbering);
    ``lead_cycles`` is the lead L at which analyses are scored.
    """

    forecast_step: ForecastStep
    truth: jax.Array
    start_cycles: np.ndarray
    lead_cycles: int
    hours_per_cycle: float
    curve: jax.Array
    weights: jax.Array | None = None
    scale: jax.Array | None = None  # per-element error divisor (``forecast_rmse_by_start``)

    @property
    def max_lead_cycles(self) -> int:
        return int(self.curve.shape[0]) - 1

    @property
    def leads_h(self) -> np.ndarray:
        """The curve's leads in hours, ``hours_per_cycle * arange(max_lead_cycles + 1)``."""
        return self.hours_per_cycle * np.arange(self.max_lead_cycles + 1)


@dataclasses.dataclass(frozen=True)
class LeadTimeCurves:
    """A run's lead-time loss with both RMSE-vs-lead curves (for figures).

    ``analysis_curve[ℓ]``: RMSE of forecasts from the analysis means at the reference's
    start cycles (same model, same averaging), ℓ = 0..max lead; ``loss`` uses
    ``analysis_curve[lead_cycles]`` as ``r``.
    """

    loss: LeadTimeLoss
    analysis_curve: np.ndarray
    reference_curve: np.ndarray
    leads_h: np.ndarray
    n_starts: int


def lead_time_reference(
    truth: jax.Array,
    forecast_step: ForecastStep,
    lead_cycles: int,
    *,
    hours_per_cycle: float,
    burn_in: int = 0,
    stride: int = 1,
    max_lead_cycles: int | None = None,
    reference_states: jax.Array | None = None,
    reference_std: float | None = None,
    key: jax.Array | None = None,
    weights: jax.Array | None = None,
    scale: jax.Array | None = None,
) -> LeadTimeReference:
    """The reference curve of ``analysis_lead_time_loss`` (same arguments, no analyses)."""
    truth = jnp.asarray(truth)
    n_cycles = truth.shape[0] - 1
    lead_cycles = int(lead_cycles)
    if lead_cycles < 0:
        raise ValueError(f"lead_cycles must be >= 0, got {lead_cycles}")
    if max_lead_cycles is None:
        max_lead_cycles = max(40, 2 * lead_cycles)
    if max_lead_cycles < lead_cycles:
        raise ValueError(f"max_lead_cycles ({max_lead_cycles}) < lead_cycles ({lead_cycles})")
    if not (
        isinstance(hours_per_cycle, (int, float))
        and math.isfinite(hours_per_cycle)
        and hours_per_cycle > 0
    ):
        raise ValueError(f"hours_per_cycle must be a positive number, got {hours_per_cycle!r}")
    starts = analysis_start_cycles(n_cycles, max_lead_cycles, burn_in, stride)
    ref_states = (
        None if reference_states is None else jnp.asarray(reference_states)[jnp.asarray(starts - 1)]
    )
    curve = reference_curve(
        forecast_step,
        truth,
        starts,
        max_lead_cycles,
        weights,
        initial_states=ref_states,
        noise_std=reference_std,
        key=key,
        scale=scale,
    )
    return LeadTimeReference(
        forecast_step, truth, starts, lead_cycles, float(hours_per_cycle), curve, weights, scale
    )


def score_analyses(reference: LeadTimeReference, analyses) -> LeadTimeCurves:
    """Lead-time loss and RMSE-vs-lead curve of analyses ``(K, ...)`` (or a ``CycleResult``)
    against ``reference`` (forecasts from the analysis means at the reference's starts)."""
    mean_a = _analysis_means(analyses, reference.truth)
    truth = reference.truth
    starts = reference.start_cycles
    curve = forecast_rmse_curve(
        reference.forecast_step,
        mean_a[jnp.asarray(starts - 1)],
        truth,
        starts,
        reference.max_lead_cycles,
        reference.weights,
        reference.scale,
    )
    loss = lead_time_loss(
        curve[reference.lead_cycles],
        reference.lead_cycles * reference.hours_per_cycle,
        reference.leads_h,
        reference.curve,
    )
    return LeadTimeCurves(
        loss, np.asarray(curve), np.asarray(reference.curve), reference.leads_h, int(starts.size)
    )


def analysis_lead_time_loss(
    analyses, truth: jax.Array, forecast_step: ForecastStep, lead_cycles: int, **options
) -> LeadTimeLoss:
    """Lead-time loss of the analyses of a cycled run (docs/design.md §5).

    ``analyses``: a ``CycleResult`` (its ``mean_a``) or analysis means ``(K, ...)`` of cycles
    1..K; ``truth`` ``(K+1, ...)``. Forecasts with ``forecast_step`` start at the cycles of
    ``analysis_start_cycles(K, max_lead_cycles, burn_in, stride)``; the analysis forecasts
    give ``r`` = RMSE at ``lead_cycles``, the reference forecasts (same starts, same model)
    the curve up to ``max_lead_cycles`` (default ``max(40, 2 * lead_cycles)``: 10 days at
    6 h). Reference initial states: ``reference_states`` ``(K, ...)`` (cycles 1..K, e.g. the
    ``mean_a`` of a dense-network run) or the truth, plus noise of std ``reference_std``
    when given (``key`` required). Hours: ``hours_per_cycle`` (``testbed.hours_per_cycle``).
    ``options`` are the keyword arguments of ``lead_time_reference`` (``hours_per_cycle``
    required; ``burn_in``, ``stride``, ``max_lead_cycles``, ``reference_states``,
    ``reference_std``, ``key``, ``weights``): one call of it, then ``score_analyses``.
    """
    truth = jnp.asarray(truth)
    mean_a = _analysis_means(analyses, truth)
    return score_analyses(
        lead_time_reference(truth, forecast_step, lead_cycles, **options), mean_a
    ).loss
