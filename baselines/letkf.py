r"""Local ensemble transform Kalman filter (Hunt et al. 2007), R-localisation.

Each state site i gets its own ETKF analysis with the inverse observation error variances
tapered by Gaspari–Cohn of the distance between the site and each observation:
r⁻¹_{ij} = ρ(d(i, j) / c) / r_j², symmetric square root (``baselines.transform``).

How it is computed (the mathematics above is unchanged; see docs in the helpers):

- **Neighbourhoods from the grid, once.** ρ is zero beyond 2c, so only observations at the
  ``grid.max_sites_within(2c)`` sites nearest to i can carry weight. Those site lists and
  their tapers depend on the grid alone; ``build`` computes them once (in blocks of sites,
  memory O(n k)), and trailing slots whose taper is zero at every site are dropped.
- **Observations merged per site, each cycle.** Observations at the same site share their
  column of Y (H acts site-wise), so Σ_j ρ r⁻¹_j y_j y_jᵀ and Σ_j ρ r⁻¹_j y_j d_j only need,
  per site, Σ r⁻¹_j and Σ r⁻¹_j d_j: two scatter-adds, O(p + n), whatever the network
  (fixed or redrawn each cycle). Unobserved sites get zero weight. Y diag(√r⁻¹) is formed
  once per cycle, not per site.
- **Local solves in the smaller space**, applied to the site's anomaly column only
  (``transform.local_update``): with k local slots < N the eigen-decomposition is k × k.
  Sites are processed in batches (``lax.map``) to bound memory at large n.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from baselines.localization import gaspari_cohn
from baselines.transform import anomalies, local_update, observed_anomalies
from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static

#: float32 elements of working memory per batch of sites (bounds memory at large n)
_BATCH_ELEMENTS = 1 << 22


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _nearest_sites(grid, n_sites: int, k: int, rows: int) -> tuple[jax.Array, jax.Array]:
    """The ``k`` sites nearest to each site (ascending distance): indices and distances."""
    sites = jnp.arange(n_sites)

    def one(i):
        neg_d, near = jax.lax.top_k(-grid.distance(i, sites), k)
        return near.astype(jnp.int32), -neg_d

    return jax.lax.map(one, sites, batch_size=rows)


def local_neighbourhoods(grid, n_sites: int, radius: float) -> tuple[jax.Array, jax.Array]:
    """For each site, the sites whose observations can reach it, ``(n, k)`` int32, and their
    Gaspari–Cohn taper ``(n, k)``, nearest first.

    k = ``grid.max_sites_within(2 * radius)`` (capped at n), less the trailing slots whose
    taper is zero at every site when the values are concrete (outside a trace). Cost
    O(n²) distance evaluations in blocks of sites (memory O(n k)): done once per build.
    """
    k = min(n_sites, grid.max_sites_within(2.0 * radius))
    rows = max(1, min(n_sites, _BATCH_ELEMENTS // n_sites))
    near, dist = _nearest_sites(grid, n_sites, k, rows)
    taper = gaspari_cohn(dist, radius)
    try:
        used = np.flatnonzero(np.asarray(taper > 0).any(axis=0))
    except jax.errors.TracerArrayConversionError:  # inside a trace: keep all k slots
        return near, taper
    keep = int(used[-1]) + 1 if used.size else 1
    return near[:, :keep], taper[:, :keep]


@register
@pytree_dataclass
class LETKF:
    grid: object = static(None, setting=False)  # testbed grid: distance(), max_sites_within()
    radius: Annotated[float, Field(gt=0)] = static(4.0)
    #: per site, the sites within reach (n, k) and their Gaspari–Cohn taper (n, k);
    #: filled by ``build``, computed at trace time when left None
    neighbours: jax.Array | None = None
    taper: jax.Array | None = None

    name: ClassVar[str] = "letkf"
    ensemble: ClassVar[bool] = True

    @classmethod
    def build(cls, ctx, radius: float = 4.0):
        near, taper = local_neighbourhoods(ctx.testbed.grid, ctx.network.n_state, radius)
        return cls(grid=ctx.testbed.grid, radius=radius, neighbours=near, taper=taper)

    def _neighbourhoods(self, n_sites: int) -> tuple[jax.Array, jax.Array]:
        if self.neighbours is None:
            with jax.ensure_compile_time_eval():
                return local_neighbourhoods(self.grid, n_sites, self.radius)
        if self.neighbours.shape[0] != n_sites:
            raise ValueError(f"LETKF neighbourhoods are for {self.neighbours.shape[0]} sites, the state has {n_sites}")
        return self.neighbours, self.taper

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        n_members, n = background.shape
        x_mean, x_anom = anomalies(background)
        y_mean, y_anom = observed_anomalies(background, obs)
        near, taper = self._neighbourhoods(n)
        dtype = x_anom.dtype

        # observations merged per site: Σ r⁻¹ and Σ r⁻¹ d; rows of Y diag(√r⁻¹) by site
        # (observations of one site share their column of Y: H acts site-wise)
        rinv = 1.0 / obs.r_std**2
        r_site = jnp.zeros((n,), dtype).at[obs.idx].add(rinv)
        rd_site = jnp.zeros((n,), dtype).at[obs.idx].add(rinv * (obs.y - y_mean))
        sqrt_r = jnp.sqrt(r_site)
        ys = jnp.zeros((n, n_members), dtype).at[obs.idx].set(y_anom.T) * sqrt_r[:, None]
        s = rd_site / jnp.where(r_site > 0, sqrt_r, 1.0)  # √r⁻¹ d, 0 where unobserved

        def site(args):
            j_near, w, xm, v = args
            return xm + local_update((ys[j_near] * w[:, None]).T, s[j_near] * w, v)

        k = near.shape[1]
        sites = (near, jnp.sqrt(jnp.maximum(taper, 0.0)), x_mean, x_anom.T)
        xa = _map_sites(site, sites, n, per_site=3 * k * n_members + 3 * k * k + 2 * n_members)
        return xa.T  # (N, n)


def _map_sites(fn, sites, n: int, per_site: int):
    """``vmap(fn)`` over the leading (site) axis, in equal batches of at most
    ``_BATCH_ELEMENTS // per_site`` sites (``lax.map``), padding the last batch with site 0."""
    n_batches = -(-n * per_site // _BATCH_ELEMENTS)
    if n_batches <= 1:
        return jax.vmap(fn)(sites)
    size = -(-n // n_batches)
    pad = n_batches * size - n

    def batched(a):
        a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad, *a.shape[1:]))]) if pad else a
        return a.reshape(n_batches, size, *a.shape[1:])

    out = jax.lax.map(jax.vmap(fn), jax.tree_util.tree_map(batched, sites))
    return out.reshape(n_batches * size, *out.shape[2:])[:n]
