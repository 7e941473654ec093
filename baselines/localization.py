r"""Gaspari–Cohn localisation (Gaspari & Cohn 1999, eq. 4.10).

Compactly supported 5th-order piecewise rational function of r = d / c, with c the
localisation ``radius`` (half-width): 1 at r = 0, zero for r ≥ 2.

Vertical localisation on pressure levels uses the same function of the distance in
log-pressure, d = |ln p₁ − ln p₂| (≈ height difference in scale heights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gaspari_cohn(distance: jax.Array, radius: float) -> jax.Array:
    """Gaspari–Cohn taper of ``distance`` with half-width ``radius`` (zero beyond 2·radius)."""
    r = jnp.abs(distance) / radius
    inner = ((-0.25 * r + 0.5) * r + 0.625) * r**3 - (5.0 / 3.0) * r**2 + 1.0
    rs = jnp.maximum(r, 1e-12)
    outer = (
        ((((1.0 / 12.0) * r - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r**2
        - 5.0 * r
        + 4.0
        - 2.0 / (3.0 * rs)
    )
    # near r = 2 the outer branch is a difference of O(1) terms: round-off would make it
    # slightly negative (≈ −1e-7 in float32) where the exact value is ≥ 0
    return jnp.where(r <= 1.0, inner, jnp.where(r < 2.0, jnp.maximum(outer, 0.0), 0.0))


def log_pressure_taper(p1: jax.Array, p2: jax.Array, radius: float | None) -> jax.Array:
    """Gaspari–Cohn of |ln p1 − ln p2| (pressures, broadcasting) with half-width ``radius``
    in ln p; ``radius=None``: no vertical localisation (all ones)."""
    d = jnp.abs(jnp.log(jnp.asarray(p1, jnp.float32)) - jnp.log(jnp.asarray(p2, jnp.float32)))
    return jnp.ones_like(d) if radius is None else gaspari_cohn(d, radius)
