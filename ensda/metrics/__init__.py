"""Ensemble verification metrics (docs/design.md §5). Pure functions of (ensemble, truth, weights).

Ensembles have the member axis first: ``(N, ...)``; truth and weights have the shape of
one member. Weights are area weights (ones on Lorenz-96, cos-latitude on the sphere).
"""

from ensda.metrics.crps import crps
from ensda.metrics.energy import energy_score
from ensda.metrics.lead_time import (
    LeadTimeCurves,
    LeadTimeLoss,
    LeadTimeReference,
    analysis_lead_time_loss,
    analysis_start_cycles,
    forecast_rmse_by_start,
    forecast_rmse_curve,
    lead_time_loss,
    lead_time_reference,
    reference_curve,
    reference_initial_states,
    score_analyses,
)
from ensda.metrics.rank_histogram import rank_histogram, rank_histogram_flatness, truth_rank
from ensda.metrics.rmse import ensemble_mean_mse, ensemble_mean_rmse, weighted_mean
from ensda.metrics.spread import spread, spread_skill_ratio, squared_spread

__all__ = [
    "LeadTimeCurves",
    "LeadTimeLoss",
    "LeadTimeReference",
    "analysis_lead_time_loss",
    "analysis_start_cycles",
    "crps",
    "energy_score",
    "ensemble_mean_mse",
    "ensemble_mean_rmse",
    "forecast_rmse_by_start",
    "forecast_rmse_curve",
    "lead_time_loss",
    "lead_time_reference",
    "rank_histogram",
    "rank_histogram_flatness",
    "reference_curve",
    "reference_initial_states",
    "score_analyses",
    "spread",
    "spread_skill_ratio",
    "squared_spread",
    "truth_rank",
    "weighted_mean",
]
