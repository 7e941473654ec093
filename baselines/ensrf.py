r"""Serial ensemble square-root filter (Whitaker & Hamill 2002), localised as in DART's EAKF.

Observations are assimilated one at a time (``lax.scan``); observation k, with prior
values ŷ_k = H(x)_k carried along with the state (the observation-space update of
Anderson 2003, so nonlinear H enters only through H(X_b), computed once):

.. math::
    σ² = \tfrac{y'^\top y'}{N-1},\quad
    K = ρ_k ∘ \tfrac{A^\top y'}{(N-1)(σ² + r_k²)},\quad
    α = \Big(1 + \sqrt{r_k² / (σ² + r_k²)}\Big)^{-1},

    \bar x ← \bar x + K (y_k − \bar y_k),\qquad a_j ← a_j − α K y'_j,

for the state (A, ρ_k the taper of observation k to every state element) and for the
remaining observations' priors (Y, ρ between observations). With no localisation and a
linear H this is the exact Kalman update of the ensemble mean and covariance (as the ETKF).
ρ: ``baselines.localization.ObsTaper`` (grid units on the ring, km and ln p on the sphere).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import jax
import jax.numpy as jnp
from pydantic import Field

from baselines.localization import ObsTaper
from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static


@register
@pytree_dataclass
class EnSRF:
    #: localisation half-width (sites on Lorenz-96, km on the sphere); null: global
    radius: Annotated[float, Field(gt=0)] | None = static(None)
    #: sphere only: vertical half-width in ln p; null: no vertical localisation
    vertical_radius: Annotated[float, Field(gt=0)] | None = static(None)
    taper: ObsTaper | None = None

    name: ClassVar[str] = "ensrf"
    ensemble: ClassVar[bool] = True

    @classmethod
    def build(cls, ctx, radius=None, vertical_radius=None):
        return cls(radius, vertical_radius, ObsTaper.build(ctx, radius, vertical_radius))

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        x = obs.flat(background)
        n_members = x.shape[0]

        def one(carry, k):
            x, y_prior = carry
            yk = y_prior[:, k]
            y_anom = yk - yk.mean()
            var = y_anom @ y_anom / (n_members - 1)
            r2 = obs.r_std[k] ** 2
            rho_x, rho_y = (1.0, 1.0) if self.radius is None else self.taper.of_obs(k, obs)
            scale = 1.0 / ((n_members - 1) * (var + r2))
            alpha = 1.0 / (1.0 + jnp.sqrt(r2 / (var + r2)))
            shift = (obs.y[k] - yk.mean()) - alpha * y_anom  # (N,): δ − α y'_j
            gain_x = rho_x * (y_anom @ (x - x.mean(0))) * scale
            gain_y = rho_y * (y_anom @ (y_prior - y_prior.mean(0))) * scale
            return (x + shift[:, None] * gain_x, y_prior + shift[:, None] * gain_y), None

        (xa, _), _ = jax.lax.scan(one, (x, obs.h(x)), jnp.arange(obs.y.shape[-1]))
        return xa.reshape(background.shape)
