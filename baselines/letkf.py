r"""Local ensemble transform Kalman filter (Hunt et al. 2007), R-localisation.

Each state site i gets its own ETKF analysis with the inverse observation error variances
tapered by Gaspari–Cohn of the distance between the site and each observation:
r⁻¹_{ij} = ρ(d(i, j) / c) / r_j², symmetric square root (``baselines.transform``).

How it is computed (the mathematics above is unchanged; see docs in the helpers):

- **Neighbourhoods from the grid, once.** ρ is zero beyond 2c, so only observations at the
  ``grid.max_sites_within(2c)`` sites nearest to i can carry weight; on a network whose sites
  are fixed (``every``, ``sites``) only the observed ones among them (every 4th site: a
  quarter of the slots, so k × k local problems instead of N × N). Those site lists and
  their tapers depend on the grid and the network; ``build`` computes them once (in blocks
  of sites, memory O(n k)), and trailing slots whose taper is zero at every site are
  dropped.
- **Observations merged per site, each cycle.** Observations at the same site share their
  column of Y (H acts site-wise), so Σ_j ρ r⁻¹_j y_j y_jᵀ and Σ_j ρ r⁻¹_j y_j d_j only need,
  per site, Σ r⁻¹_j and Σ r⁻¹_j d_j: two scatter-adds, O(p + n), whatever the network
  (fixed or redrawn each cycle). Unobserved sites get zero weight. Y diag(√r⁻¹) is formed
  once per cycle, not per site.
- **Local solves in the smaller space**, applied to the site's anomaly column only
  (``transform.local_update``): with k local slots < N the eigen-decomposition is k × k.
  Sites are processed in batches (``lax.map``) to bound memory at large n.

**On the sphere** (a network of ``layout`` ``columns``, ``GlobalObsNetwork``: states of
``n_var`` channels on the lat–lon columns) ``build`` returns a ``ColumnLETKF``: the same
R-localised ETKF per grid point, with the taper the product of a horizontal Gaspari–Cohn of
the great-circle distance in km (``radius``) and a vertical one of |ln p − ln p_obs|
(``vertical_radius``; channels of one level share it, surface pressure counts as 1000 hPa):

    r⁻¹_{(i,l),(j,c)} = ρ_h(d(i, j) / c_h) ρ_v(|ln p_l − ln p_c| / c_v) / r²_{jc}.

Observations of one column j in different channels c have different Y rows, so instead
of merging per site the local moments are summed per observed column: for each level l,
G_jl = Σ_c ρ_v(l, c) r⁻¹_jc y_jc y_jcᵀ (N × N) and g_jl = Σ_c ρ_v(l, c) r⁻¹_jc d_jc y_jc,
once per cycle (cost O(p N² L)); column i then needs M_il = (N−1)I + Σ_j ρ_h(i, j) G_jl
over its ``k`` nearest observed columns, k = min(n_obs_columns,
``grid.max_sites_within(2 c_h)``), an upper bound on the observed columns within 2 c_h,
found each cycle with ``top_k`` on the great-circle distances (the columns may be redrawn
every cycle: no fixed index is stored, and no observation within 2 c_h is ever left out).
The L local ETKF weights of a column (``transform.weights_from_moments``) update its
channels, level by level. Columns are ``vmap``ped in memory-bounded batches.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Annotated, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from baselines.localization import gaspari_cohn, log_pressure_taper
from baselines.transform import anomalies, local_update, observed_anomalies, weights_from_moments
from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static

if TYPE_CHECKING:
    from ensda.testbeds.sphere.observe import GlobalObsNetwork

#: float32 elements of working memory per batch of sites (bounds memory at large n)
_BATCH_ELEMENTS = 1 << 22


@partial(jax.jit, static_argnums=(0, 1, 3, 4))
def _nearest_sites(
    grid, n_sites: int, candidates: jax.Array, k: int, rows: int
) -> tuple[jax.Array, jax.Array]:
    """The ``k`` of ``candidates`` (site indices) nearest to each site (ascending distance):
    their site indices and distances."""

    def one(i):
        neg_d, near = jax.lax.top_k(-grid.distance(i, candidates), k)
        return candidates[near].astype(jnp.int32), -neg_d

    return jax.lax.map(one, jnp.arange(n_sites), batch_size=rows)


def local_neighbourhoods(
    grid, n_sites: int, radius: float, observed: tuple[int, ...] | None = None
) -> tuple[jax.Array, jax.Array]:
    """For each site, the sites whose observations can reach it, ``(n, k)`` int32, and their
    Gaspari–Cohn taper ``(n, k)``, nearest first.

    Candidates are the ``observed`` sites when the network fixes them (``every``, ``sites``:
    no other site ever carries weight), else every site. k = the number of candidates within
    2 · radius at most (``grid.max_sites_within``, capped by the candidates), less the
    trailing slots whose taper is zero at every site when the values are concrete (outside
    a trace). Cost O(n · candidates) distance evaluations in blocks of sites (memory
    O(n k)): done once per build.
    """
    candidates = jnp.arange(n_sites) if observed is None else jnp.asarray(observed, jnp.int32)
    k = min(candidates.shape[0], grid.max_sites_within(2.0 * radius))
    rows = max(1, min(n_sites, _BATCH_ELEMENTS // candidates.shape[0]))
    near, dist = _nearest_sites(grid, n_sites, candidates, k, rows)
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
    #: localisation half-width: in sites on Lorenz-96, in km (great circle) on the sphere
    radius: Annotated[float, Field(gt=0)] = static(4.0)
    #: sphere only: vertical half-width in ln p (scale heights); null: no vertical localisation
    vertical_radius: Annotated[float, Field(gt=0)] | None = static(None)
    #: per site, the sites within reach (n, k) and their Gaspari–Cohn taper (n, k);
    #: filled by ``build``, computed at trace time when left None
    neighbours: jax.Array | None = None
    taper: jax.Array | None = None

    name: ClassVar[str] = "letkf"
    ensemble: ClassVar[bool] = True

    @classmethod
    def build(cls, ctx, radius: float = 4.0, vertical_radius: float | None = None):
        if ctx.network.layout == "columns":
            return ColumnLETKF.build(ctx.network, radius, vertical_radius)
        if vertical_radius is not None:
            raise ValueError("vertical_radius applies to the sphere testbed only")
        near, taper = local_neighbourhoods(
            ctx.testbed.grid, ctx.network.n_state, radius, ctx.network.fixed_sites
        )
        return cls(grid=ctx.testbed.grid, radius=radius, neighbours=near, taper=taper)

    def _neighbourhoods(self, n_sites: int) -> tuple[jax.Array, jax.Array]:
        if self.neighbours is None:
            with jax.ensure_compile_time_eval():
                return local_neighbourhoods(self.grid, n_sites, self.radius)
        if self.neighbours.shape[0] != n_sites:
            raise ValueError(
                f"LETKF neighbourhoods are for {self.neighbours.shape[0]} sites, the state has "
                f"{n_sites}"
            )
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


def column_taper(
    grid, columns: jax.Array, obs_columns: jax.Array, radius: float, k: int
) -> tuple[jax.Array, jax.Array]:
    """For each of ``columns``, its ``k`` nearest ``obs_columns`` (positions in that array,
    ``(..., k)``) and their horizontal Gaspari–Cohn taper of the great-circle distance."""
    neg_d, near = jax.lax.top_k(-grid.distance(columns[..., None], obs_columns), k)
    return near, gaspari_cohn(-neg_d, radius)


@pytree_dataclass
class ColumnLETKF:
    """The LETKF on the sphere's lat–lon columns (see the module docstring); built by
    ``LETKF.build`` for a network of ``layout`` ``columns`` (a ``GlobalObsNetwork``). States
    flat ``(N, n_var·n_lat·n_lon)`` or ``(N, n_var, n_lat, n_lon)``."""

    grid: object = static(None, setting=False)  # LatLonGrid
    radius: float = static(1000.0, setting=False)
    n_channels: int = static(1, setting=False)
    #: observed channels per observed column and observed columns per cycle
    obs_channels: int = static(1, setting=False)
    obs_columns: int = static(1, setting=False)
    #: vertical taper (L, obs_channels) between each distinct state level and each observed channel
    vertical: jax.Array | None = None
    #: level (row of ``vertical``) of each state channel, (n_channels,) int32
    level_of: jax.Array | None = None

    name: ClassVar[str] = "letkf"
    ensemble: ClassVar[bool] = True

    @classmethod
    def build(
        cls, network: GlobalObsNetwork, radius: float, vertical_radius: float | None
    ) -> ColumnLETKF:
        ch = network.channels
        p = list(ch.pressures)
        levels = sorted(set(p))
        p_obs = jnp.asarray([p[c] for c in network.observed_channels])
        vertical = log_pressure_taper(jnp.asarray(levels)[:, None], p_obs[None, :], vertical_radius)
        return cls(
            grid=network.grid,
            radius=radius,
            n_channels=ch.n,
            obs_channels=len(network.observed_channels),
            obs_columns=network.n_columns,
            vertical=vertical,
            level_of=jnp.asarray([levels.index(v) for v in p], jnp.int32),
        )

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        n_members, n_cols, pc, m = (
            background.shape[0],
            self.grid.n,
            self.obs_channels,
            self.obs_columns,
        )
        if background[0].size != self.n_channels * n_cols or obs.y.shape[-1] != pc * m:
            raise ValueError(
                f"LETKF built for {self.n_channels} channels x {n_cols} columns and {pc} x {m} "
                f"observations per cycle, got a state of {background[0].size} and "
                f"{obs.y.shape[-1]} observations"
            )
        x_mean, x_anom = anomalies(background.reshape(n_members, self.n_channels, n_cols))
        y_mean, y_anom = observed_anomalies(background, obs)
        # observations are channel-major: (observed channel c, observed column j)
        y_anom = y_anom.reshape(n_members, pc, m)
        rinv = (1.0 / obs.r_std**2).reshape(pc, m)
        d = (obs.y - y_mean).reshape(pc, m)
        gram = jnp.einsum("lc,cj,ncj,kcj->jlnk", self.vertical, rinv, y_anom, y_anom)  # G_jl
        rhs = jnp.einsum("lc,cj,ncj->jln", self.vertical, rinv * d, y_anom)  # g_jl
        k = min(m, self.grid.max_sites_within(2.0 * self.radius))
        obs_cols = obs.sites[:m]

        def column(args):
            i, xm, xa = args  # column index, mean (n_channels,), anomalies (N, n_channels)
            near, h = column_taper(self.grid, i, obs_cols, self.radius, k)
            weights = jax.vmap(weights_from_moments)(
                jnp.einsum("j,jlnk->lnk", h, gram[near]), jnp.einsum("j,jln->ln", h, rhs[near])
            )  # (L, N, N)
            return xm + jnp.einsum("cnk,nc->kc", weights[self.level_of], xa)

        n_levels = self.vertical.shape[0]
        per_column = (
            k * n_levels * n_members * (n_members + 1) + 3 * self.n_channels * n_members * n_members
        )
        cols = (jnp.arange(n_cols), x_mean.T, jnp.moveaxis(x_anom, 2, 0))
        xa = _map_sites(column, cols, n_cols, per_site=per_column)  # (n_cols, N, n_channels)
        return jnp.moveaxis(xa, 0, 2).reshape(background.shape)
