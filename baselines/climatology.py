"""Reference 'methods' without dynamics-aware assimilation.

- ``climatology``: ignores background and observations; the analysis ensemble is N
  attractor states drawn at random, recentred on the climatological mean, so its mean
  is the climatological mean (time-mean RMSE ≈ climatological std, 3.6 on Lorenz-96).
- ``none``: the free-running ensemble, background returned unchanged.
- ``control``: the deterministic free run: one state, started where a deterministic method
  starts (the climatological mean with ``ensemble.init: climatology``), forecast without
  observations; the like-for-like reference of a deterministic analysis such as 3D-Var.
  A single chaotic trajectory tends to an error of √2 σ_clim, while the free ensemble's
  mean tends to the climatological mean (error σ_clim).
"""

from __future__ import annotations

from typing import ClassVar

import jax

from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass


@register
@pytree_dataclass
class Climatology:
    samples: jax.Array | None = None  # (S, n) attractor states
    mean: jax.Array | None = None  # (n,) their mean, the climatological mean

    name: ClassVar[str] = "climatology"
    ensemble: ClassVar[bool] = True
    #: the analysis ignores the background: the cycler skips the model forecast and takes
    #: the previous cycle's climatological draw as the background
    needs_forecast: ClassVar[bool] = False

    @classmethod
    def build(cls, ctx):
        return cls(samples=ctx.climatology, mean=ctx.climatology.mean(0))

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        pick = jax.random.randint(key, (background.shape[0],), 0, self.samples.shape[0])
        draw = self.samples[pick]
        return self.mean + draw - draw.mean(0)


@register
@pytree_dataclass
class FreeRun:
    name: ClassVar[str] = "none"
    ensemble: ClassVar[bool] = True

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        return background


@register
@pytree_dataclass
class Control(FreeRun):
    name: ClassVar[str] = "control"
    ensemble: ClassVar[bool] = False
