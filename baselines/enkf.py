r"""Stochastic ensemble Kalman filter with perturbed observations (Burgers et al. 1998;
Houtekamer & Mitchell 1998).

Each member assimilates its own perturbed observations y_j = y + r ε_j (ε_j centred over
members), with the gain from the ensemble covariances

.. math:: K = A^\top \big[(N-1)I + Y R^{-1} Y^\top\big]^{-1} Y R^{-1}

(the ensemble-space form of P_b Hᵀ (H P_b Hᵀ + R)⁻¹, push-through identity), so every
solve is N × N. x_a,j = x_f,j + K (y_j − H(x_f,j)).
"""

from __future__ import annotations

from typing import ClassVar

import jax

from baselines.transform import anomalies, ensemble_space_eigh, observed_anomalies
from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static


@register
@pytree_dataclass
class StochasticEnKF:
    #: centre the observation perturbations over members (removes their sampling mean)
    center_perturbations: bool = static(True)

    name: ClassVar[str] = "enkf"
    ensemble: ClassVar[bool] = True

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        _, x_anom = anomalies(background)
        _, y_anom = observed_anomalies(background, obs)
        rinv = 1.0 / obs.r_std**2
        eps = jax.random.normal(key, (background.shape[0], obs.y.shape[-1]), background.dtype)
        if self.center_perturbations:
            eps = eps - eps.mean(0)
        innovations = obs.y + obs.r_std * eps - obs.h(background)  # (N, p)
        lam, v = ensemble_space_eigh(y_anom, rinv)
        coeffs = ((innovations * rinv) @ y_anom.T) @ v / lam @ v.T  # (N, N): rows d_jᵀR⁻¹Yᵀ M⁻¹
        return background + coeffs @ x_anom
