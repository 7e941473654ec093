r"""Continuous ranked probability score of an ensemble, area-weighted.

Fair estimator (default; Ferro 2014), unbiased for the CRPS of the ensemble's parent
distribution:

.. math:: \mathrm{CRPS}_F = \frac1N\sum_j |x_j - t| - \frac{1}{2N(N-1)}\sum_{j,k}|x_j - x_k|

Standard estimator: the same with 1/(2N²); it is the CRPS of the empirical distribution
(for N = 1, the absolute error). Computed with ``scoringrules`` (JAX backend, so it runs
inside jit and scans), then averaged with the area weights.
"""

from __future__ import annotations

import jax
import scoringrules as sr

from ensda.metrics.rmse import weighted_mean

#: our estimator names -> scoringrules' estimator names ("nrg" is the standard form)
ESTIMATORS = {"fair": "fair", "standard": "nrg"}


def crps_pointwise(ensemble: jax.Array, truth: jax.Array, estimator: str = "fair") -> jax.Array:
    """CRPS at every point, shape of ``truth``. Member axis 0."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"CRPS estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}")
    if estimator == "fair" and ensemble.shape[0] < 2:
        raise ValueError("the fair CRPS needs at least 2 members; use estimator='standard'")
    return sr.crps_ensemble(
        truth, ensemble, m_axis=0, estimator=ESTIMATORS[estimator], backend="jax"
    )


def crps(
    ensemble: jax.Array,
    truth: jax.Array,
    weights: jax.Array | None = None,
    estimator: str = "fair",
    axis=None,
) -> jax.Array:
    """Area-weighted mean CRPS over ``axis`` of a member (None: all points)."""
    return weighted_mean(crps_pointwise(ensemble, truth, estimator), weights, axis)
