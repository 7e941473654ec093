r"""Ensemble spread and the spread-skill ratio.

Spread:  s = \sqrt{\sum_i w_i \mathrm{var}_i / \sum_i w_i}, with the unbiased member
variance var_i = \frac{1}{N-1}\sum_j (x_{ij} - \bar x_i)^2 (0 for N = 1).

Spread-skill ratio (Fortin et al. 2014):  SSR = \sqrt{(N+1)/N}\; s / \mathrm{RMSE};
1 means a reliable ensemble. Over many cycles it is computed from the time means of the
stored primitives, SSR = \sqrt{(N+1)/N} \sqrt{\overline{s^2} / \overline{\mathrm{MSE}}}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ensda.metrics.rmse import weighted_mean


def squared_spread(ensemble: jax.Array, weights: jax.Array | None = None, axis=None) -> jax.Array:
    """Area-weighted mean of the unbiased member variance over ``axis`` of a member (None:
    all axes); 0 for one member."""
    if ensemble.shape[0] < 2:
        return weighted_mean(jnp.zeros_like(ensemble[0]), weights, axis)
    return weighted_mean(jnp.var(ensemble, axis=0, ddof=1), weights, axis)


def spread(ensemble: jax.Array, weights: jax.Array | None = None, axis=None) -> jax.Array:
    """Ensemble spread s (square root of the weighted mean variance)."""
    return jnp.sqrt(squared_spread(ensemble, weights, axis))


def spread_skill_ratio(spread2: jax.Array, mse: jax.Array, n_members: int) -> jax.Array:
    """SSR = sqrt((N+1)/N) · sqrt(spread² / MSE), from (time-mean) primitives."""
    return jnp.sqrt((n_members + 1) / n_members) * jnp.sqrt(spread2 / mse)
