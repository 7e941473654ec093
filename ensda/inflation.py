r"""Ensemble wrappers: multiplicative inflation and RTPS.

Both wrap any ensemble assimilator behind the same ``analyse`` interface.

- Multiplicative (prior) inflation: X'_b ← ρ X'_b before the analysis (Anderson &
  Anderson 1999), ρ ≥ 1 the ``inflation`` factor.
- RTPS, relaxation to prior spread (Whitaker & Hamill 2012): per variable,
  X'_a ← X'_a (α σ_b/σ_a + 1 − α), with α ∈ [0, 1] the ``rtps`` setting.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static


def inflate(ensemble: jax.Array, factor: float) -> jax.Array:
    """Scale the anomalies about the mean (member axis 0) by ``factor``."""
    mean = ensemble.mean(0, keepdims=True)
    return mean + factor * (ensemble - mean)


def relax_to_prior_spread(background: jax.Array, analysis: jax.Array, alpha: float) -> jax.Array:
    """RTPS: relax the analysis spread towards the background spread by ``alpha``."""
    sb = background.std(0, ddof=1)
    mean = analysis.mean(0, keepdims=True)
    sa = analysis.std(0, ddof=1)
    scale = alpha * sb / jnp.maximum(sa, 1e-12) + 1.0 - alpha
    return mean + (analysis - mean) * scale


@pytree_dataclass
class Inflated:
    """Multiplicative prior inflation around ``inner``."""

    inner: object
    factor: float = static(1.0)

    ensemble = True

    @property
    def name(self) -> str:
        return self.inner.name

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        return self.inner.analyse(inflate(background, self.factor), obs, key)


@pytree_dataclass
class RTPS:
    """Relaxation to prior spread around ``inner``."""

    inner: object
    alpha: float = static(0.0)

    ensemble = True

    @property
    def name(self) -> str:
        return self.inner.name

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        analysis = self.inner.analyse(background, obs, key)
        return relax_to_prior_spread(background, analysis, self.alpha)


def wrap(core, inflation: float = 1.0, rtps: float = 0.0):
    """Wrap ``core`` as configured: RTPS innermost (relative to the inflated prior)."""
    if inflation < 1.0:
        raise ValueError(f"inflation must be >= 1, got {inflation}")
    if not 0.0 <= rtps <= 1.0:
        raise ValueError(f"rtps must be in [0, 1], got {rtps}")
    out = core
    if rtps > 0.0:
        out = RTPS(out, rtps)
    if inflation != 1.0:
        out = Inflated(out, inflation)
    return out
