"""Ensemble transform Kalman filter, symmetric square root (Bishop et al. 2001; Hunt et al. 2007).

Global analysis in ensemble space (see ``baselines.transform``); no localisation. The
observation operator enters through the ensemble, so nonlinear H works as in the EnKF.
"""

from __future__ import annotations

from typing import ClassVar

import jax

from baselines.transform import anomalies, etkf_weights, observed_anomalies
from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass


@register
@pytree_dataclass
class ETKF:
    name: ClassVar[str] = "etkf"
    ensemble: ClassVar[bool] = True

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        x_mean, x_anom = anomalies(background)
        y_mean, y_anom = observed_anomalies(background, obs)
        weights = etkf_weights(y_anom, obs.y - y_mean, 1.0 / obs.r_std**2)
        return x_mean + weights.T @ x_anom
