r"""Optimal interpolation with the climatological background-error covariance.

δx = B Hᵀ (H B Hᵀ + R)⁻¹ (y − H(x_b)) with B the (unscaled) covariance of attractor
states, optionally Schur-multiplied by a Gaspari–Cohn correlation of half-width
``radius`` (OI's local data selection, as a smooth taper). The gain is that of 3D-Var's
exact solver (``baselines.variational.exact_increment``); what makes it OI is the untuned
climatological B (Gandin 1963; Lorenc 1981).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import jax
import jax.numpy as jnp
from pydantic import Field

from baselines.localization import gaspari_cohn
from baselines.variational import climatological_covariance, exact_increment
from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static


@register
@pytree_dataclass
class OptimalInterpolation:
    b: jax.Array | None = None
    radius: Annotated[float, Field(gt=0)] | None = static(None)

    name: ClassVar[str] = "oi"
    ensemble: ClassVar[bool] = False

    @classmethod
    def build(cls, ctx, radius=None):
        b = climatological_covariance(ctx.climatology)
        if radius is not None:
            sites = jnp.arange(b.shape[0])
            b = b * gaspari_cohn(ctx.testbed.grid.distance(sites[:, None], sites[None, :]), radius)
        return cls(b=b, radius=radius)

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        return background + exact_increment(self.b, background.mean(0), obs)
