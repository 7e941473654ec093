r"""RMSE of the ensemble mean.

.. math:: \mathrm{RMSE} = \sqrt{\frac{\sum_i w_i (\bar x_i - t_i)^2}{\sum_i w_i}}

with \bar x the ensemble mean (member axis 0) and w_i the area weights; the sum runs over
every point of a member, or over ``axis`` only (e.g. ``axis=-1`` on ``(C, m)`` states: one
value per channel, as on the sphere). Time means over cycles average the per-cycle RMSE (as
DAPPER's ``rmse.a``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_mean(values: jax.Array, weights: jax.Array | None = None, axis=None) -> jax.Array:
    """Σ w v / Σ w over ``axis`` of ``values`` (None: all axes; weights broadcast to it)."""
    if weights is None:
        return jnp.mean(values, axis)
    w = jnp.broadcast_to(weights, values.shape)
    return jnp.sum(w * values, axis) / jnp.sum(w, axis)


def ensemble_mean_mse(
    ensemble: jax.Array, truth: jax.Array, weights: jax.Array | None = None, axis=None
) -> jax.Array:
    """Area-weighted mean squared error of the ensemble mean (over ``axis`` of a member; None:
    all)."""
    return weighted_mean((ensemble.mean(0) - truth) ** 2, weights, axis)


def ensemble_mean_rmse(
    ensemble: jax.Array, truth: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Area-weighted RMSE of the ensemble mean."""
    return jnp.sqrt(ensemble_mean_mse(ensemble, truth, weights))
