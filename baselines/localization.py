r"""Gaspari–Cohn localisation (Gaspari & Cohn 1999, eq. 4.10).

Compactly supported 5th-order piecewise rational function of r = d / c, with c the
localisation ``radius`` (half-width): 1 at r = 0, zero for r ≥ 2.

Vertical localisation on pressure levels uses the same function of the distance in
log-pressure, d = |ln p₁ − ln p₂| (≈ height difference in scale heights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ensda.pytree import pytree_dataclass, static


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


@pytree_dataclass
class ObsTaper:
    r"""Gaspari–Cohn taper between state elements and observations, in the testbed's geometry.

    ρ(e, o) = GC(d(site_e, site_o) / c) · GC(|ln p_e − ln p_o| / c_v): d in grid units on the
    ring, great-circle km on the sphere (as the LETKF's); the vertical factor only on a
    network of ``layout`` ``columns`` with a ``vertical_radius`` (channels of one level
    share ln p, surface pressure counts as 1000 hPa). ``radius=None``: no localisation.
    Used by the methods that localise the gain (Schur product, Houtekamer & Mitchell 2001).
    """

    grid: object = static(None)
    radius: float | None = static(None)
    vertical_radius: float | None = static(None)
    #: grid site (column) and ln p of each state element, (n,)
    site_of: jax.Array | None = None
    logp_of: jax.Array | None = None

    @classmethod
    def build(cls, ctx, radius: float | None, vertical_radius: float | None) -> ObsTaper:
        network = ctx.network
        if network.layout == "columns":
            n_cols = network.grid.n
            pressures = np.asarray(network.channels.pressures, np.float64)
            site_of = np.tile(np.arange(n_cols), len(pressures))
            logp_of = np.repeat(np.log(pressures), n_cols)
            return cls(
                network.grid,
                radius,
                vertical_radius,
                jnp.asarray(site_of, jnp.int32),
                jnp.asarray(logp_of, jnp.float32),
            )
        if vertical_radius is not None:
            raise ValueError("vertical_radius applies to the sphere testbed only")
        site_of = jnp.arange(network.n_state, dtype=jnp.int32)
        return cls(ctx.testbed.grid, radius, None, site_of, None)

    def between(self, obs) -> jax.Array:
        """ρ between every state element and every observation: ``(n, p)``."""
        elements = jnp.arange(self.site_of.shape[0])
        return self._taper(elements[:, None], obs.idx[None, :], obs.sites[None, :])

    def among(self, obs) -> jax.Array:
        """ρ between every pair of observations: ``(p, p)``."""
        return self._taper(
            obs.idx[:, None], obs.idx[None, :], obs.sites[None, :], sites_a=obs.sites[:, None]
        )

    def of_obs(self, k, obs) -> tuple[jax.Array, jax.Array]:
        """ρ of observation ``k`` with every state element ``(n,)`` and every observation
        ``(p,)``."""
        site_k = obs.sites[k]
        to_state = self._taper(jnp.arange(self.site_of.shape[0]), obs.idx[k], site_k)
        return to_state, self._taper(obs.idx, obs.idx[k], site_k, sites_a=obs.sites)

    def _taper(self, elem_a, elem_b, site_b, sites_a=None) -> jax.Array:
        site_a = self.site_of[elem_a] if sites_a is None else sites_a
        shape = jnp.broadcast_shapes(jnp.shape(site_a), jnp.shape(site_b))
        if self.radius is None:
            return jnp.ones(shape, jnp.float32)
        rho = gaspari_cohn(self.grid.distance(site_a, site_b), self.radius)
        if self.logp_of is not None and self.vertical_radius is not None:
            dz = self.logp_of[elem_a] - self.logp_of[elem_b]
            rho = rho * gaspari_cohn(dz, self.vertical_radius)
        return jnp.broadcast_to(rho, shape)
