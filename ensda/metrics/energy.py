r"""Energy score of an ensemble for the multivariate state (Gneiting & Raftery 2007).

.. math:: \mathrm{ES} = \frac1N\sum_j \lVert x_j - t\rVert
          - \frac{1}{2N^2}\sum_{j,k}\lVert x_j - x_k\rVert

(standard estimator; ``estimator='fair'`` uses 1/(2N(N−1))). With area weights the norm is
\lVert v\rVert_w = \sqrt{\sum_i w_i v_i^2 / \sum_i w_i}. Computed with ``scoringrules``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import scoringrules as sr

_ESTIMATORS = {"standard": "nrg", "fair": "fair"}


def energy_score(
    ensemble: jax.Array,
    truth: jax.Array,
    weights: jax.Array | None = None,
    estimator: str = "standard",
) -> jax.Array:
    """Energy score over the flattened state; member axis 0."""
    if estimator not in _ESTIMATORS:
        raise ValueError(
            f"energy score estimator must be one of {sorted(_ESTIMATORS)}, got {estimator!r}"
        )
    n = ensemble.shape[0]
    ens = ensemble.reshape(n, -1)
    t = truth.reshape(-1)
    if weights is not None:
        w = jnp.broadcast_to(weights, truth.shape).reshape(-1)
        scale = jnp.sqrt(w / w.sum())
    else:
        scale = jnp.full(t.shape, 1.0 / jnp.sqrt(t.size), ens.dtype)
    return sr.es_ensemble(
        t * scale,
        ens * scale,
        m_axis=-2,
        v_axis=-1,
        estimator=_ESTIMATORS[estimator],
        backend="jax",
    )
