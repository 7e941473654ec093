r"""Rank histogram (Talagrand diagram) and its flatness.

The rank of the truth among N members is the number of members below it, 0..N; a
reliable ensemble gives a flat histogram over the N + 1 bins (Hamill 2001).

Flatness: δ = Σ_k (c_k − M/(N+1))² / (M N/(N+1)) over the N + 1 bin counts c_k of M
ranks (Candille & Talagrand 2005); its expectation is 1 for a reliable ensemble with
independent ranks, larger values mean a less flat histogram.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def truth_rank(ensemble: jax.Array, truth: jax.Array) -> jax.Array:
    """Rank of the truth at each point: #members strictly below it, in 0..N."""
    return jnp.sum(ensemble < truth[None], axis=0)


def rank_histogram(ensemble: jax.Array, truth: jax.Array) -> jax.Array:
    """Counts of the truth's rank over all points, shape ``(N + 1,)``."""
    n = ensemble.shape[0]
    return jnp.bincount(truth_rank(ensemble, truth).ravel(), length=n + 1)


def rank_histogram_flatness(counts: jax.Array) -> jax.Array:
    """Candille–Talagrand δ of a histogram of N + 1 bins (1 ≈ flat)."""
    counts = jnp.asarray(counts, jnp.float32)
    m = counts.sum()
    bins = counts.shape[-1]
    n = bins - 1
    expected = m / bins
    return jnp.sum((counts - expected) ** 2) / (m * n / bins)
