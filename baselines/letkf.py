r"""Local ensemble transform Kalman filter (Hunt et al. 2007), R-localisation.

Each state site i gets its own ETKF analysis with the inverse observation error variances
tapered by Gaspari–Cohn of the distance between the site and each observation:
r⁻¹_{ij} = ρ(d(i, j) / c) / r_j². Only the ``k`` nearest observations can have non-zero
weight (k bounded by the number of grid sites within 2c), so each local problem is small
and all sites are solved at once with ``vmap``.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from baselines.localization import gaspari_cohn
from baselines.transform import anomalies, etkf_weights, observed_anomalies
from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static


@register
@pytree_dataclass
class LETKF:
    grid: object = static(None, setting=False)  # testbed grid: distance(), max_sites_within()
    radius: float = static(4.0)

    name: ClassVar[str] = "letkf"
    ensemble: ClassVar[bool] = True

    @classmethod
    def build(cls, ctx, radius: float = 4.0):
        if not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        return cls(grid=ctx.testbed.grid, radius=radius)

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        x_mean, x_anom = anomalies(background)
        y_mean, y_anom = observed_anomalies(background, obs)
        innovation = obs.y - y_mean
        rinv = 1.0 / obs.r_std**2
        p = obs.y.shape[-1]
        k = min(p, self.grid.max_sites_within(2.0 * self.radius))
        sites = jnp.arange(x_mean.shape[-1])
        dist = self.grid.distance(sites[:, None], obs.idx[None, :])  # (n, p)
        neg_d, near = jax.lax.top_k(-dist, k)  # k nearest observations of each site
        taper = gaspari_cohn(-neg_d, self.radius)  # (n, k)

        def local(j_near, rho, xa_col, xm):
            w = etkf_weights(y_anom[:, j_near], innovation[j_near], rinv[j_near] * rho)
            return xm + w.T @ xa_col

        return jax.vmap(local, in_axes=(0, 0, 1, 0), out_axes=1)(near, taper, x_anom, x_mean)
