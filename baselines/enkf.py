r"""Stochastic ensemble Kalman filter with perturbed observations (Burgers et al. 1998;
Houtekamer & Mitchell 1998), optionally localised (Houtekamer & Mitchell 2001).

Each member assimilates its own perturbed observations y_j = y + r ε_j (ε_j centred over
members): x_a,j = x_f,j + K (y_j − H(x_f,j)).

- **Global** (``radius: null``): the gain from the ensemble covariances in ensemble space,

  .. math:: K = A^\top \big[(N-1)I + Y R^{-1} Y^\top\big]^{-1} Y R^{-1}

  (the push-through form of P_b Hᵀ (H P_b Hᵀ + R)⁻¹), so every solve is N × N.
- **Localised** (``radius`` set): the Schur product on both covariances,

  .. math:: K = \big(ρ_{xy} ∘ \tfrac{A^\top Y}{N-1}\big)
                \big(ρ_{yy} ∘ \tfrac{Y^\top Y}{N-1} + R\big)^{-1},

  ρ Gaspari–Cohn of the distance between state elements and observations
  (``baselines.localization.ObsTaper``: grid units on the ring, great-circle km and ln p on
  the sphere); one p × p Cholesky solve per cycle.

A = X_b − x̄_b (N × n) and Y = H(X_b) − mean (N × p) are the anomalies (rows are members).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import jax
import jax.numpy as jnp
from pydantic import Field

from baselines.localization import ObsTaper
from baselines.transform import anomalies, ensemble_space_eigh, observed_anomalies
from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static


@register
@pytree_dataclass
class StochasticEnKF:
    #: centre the observation perturbations over members (removes their sampling mean)
    center_perturbations: bool = static(True)
    #: localisation half-width (sites on Lorenz-96, km on the sphere); null: global gain
    radius: Annotated[float, Field(gt=0)] | None = static(None)
    #: sphere only: vertical half-width in ln p; null: no vertical localisation
    vertical_radius: Annotated[float, Field(gt=0)] | None = static(None)
    taper: ObsTaper | None = None

    name: ClassVar[str] = "enkf"
    ensemble: ClassVar[bool] = True

    @classmethod
    def build(cls, ctx, center_perturbations=True, radius=None, vertical_radius=None):
        taper = ObsTaper.build(ctx, radius, vertical_radius)
        return cls(center_perturbations, radius, vertical_radius, taper)

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        x = obs.flat(background)
        n_members = x.shape[0]
        _, x_anom = anomalies(x)
        _, y_anom = observed_anomalies(x, obs)
        eps = jax.random.normal(key, (n_members, obs.y.shape[-1]), x.dtype)
        if self.center_perturbations:
            eps = eps - eps.mean(0)
        innovations = obs.y + obs.r_std * eps - obs.h(x)  # (N, p)
        if self.radius is None:
            rinv = 1.0 / obs.r_std**2
            lam, v = ensemble_space_eigh(y_anom, rinv)
            coeffs = ((innovations * rinv) @ y_anom.T) @ v / lam @ v.T  # rows d_jᵀR⁻¹Yᵀ M⁻¹
            return (x + coeffs @ x_anom).reshape(background.shape)
        c_xy = self.taper.between(obs) * (x_anom.T @ y_anom)
        c_yy = self.taper.among(obs) * (y_anom.T @ y_anom) + (n_members - 1) * jnp.diag(
            obs.r_std**2
        )  # (N−1)(ρ∘HPHᵀ + R)
        solved = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(c_yy), innovations.T)
        return (x + (c_xy @ solved).T).reshape(background.shape)
