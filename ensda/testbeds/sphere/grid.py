r"""The equiangular latitude–longitude analysis grid.

Convention (WeatherBench 2's ``equiangular`` grids without poles, e.g. its
``64x32_equiangular_conservative`` ERA5 store): ``n_lat`` cell-centred latitudes

.. math:: \varphi_j = -90° + (j + \tfrac12)\,\Delta,\quad \Delta = 180° / n_\text{lat},
          \quad j = 0..n_\text{lat}-1

ascending from south to north (64×32: −87.1875° … 87.1875°, Δ = 5.625°), and ``n_lon``
longitudes :math:`\lambda_i = i \cdot 360° / n_\text{lon}` starting at 0°.

A field is an array ``(..., n_lat, n_lon)``; a column (site) is the flat index
``j * n_lon + i``. Area weights are cos φ normalised to mean 1 over the grid (docs/design.md §5).
Distances are great-circle distances on a sphere of radius 6371.0 km.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ensda.nn.grid_mesh import grid_mesh_graphs

EARTH_RADIUS_KM = 6371.0


@dataclasses.dataclass(frozen=True)
class LatLonGrid:
    """An equiangular ``n_lon × n_lat`` grid without poles (see the module docstring)."""

    n_lon: int = 64
    n_lat: int = 32

    def __post_init__(self):
        if self.n_lat < 2 or self.n_lon < 4:
            raise ValueError(f"grid needs n_lat >= 2 and n_lon >= 4, got {self.n_lon}x{self.n_lat}")

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_lat, n_lon)``: the trailing axes of a field."""
        return (self.n_lat, self.n_lon)

    @property
    def n(self) -> int:
        """Number of columns (sites)."""
        return self.n_lat * self.n_lon

    @property
    def name(self) -> str:
        return f"{self.n_lon}x{self.n_lat}_equiangular"

    @functools.cached_property
    def latitudes(self) -> np.ndarray:
        """Latitudes in degrees, south to north, ``(n_lat,)`` float64."""
        d = 180.0 / self.n_lat
        return -90.0 + d * (np.arange(self.n_lat) + 0.5)

    @functools.cached_property
    def longitudes(self) -> np.ndarray:
        """Longitudes in degrees, from 0 eastwards, ``(n_lon,)`` float64."""
        return np.arange(self.n_lon) * (360.0 / self.n_lon)

    @property
    def truncation(self) -> int:
        """The triangular spectral truncation this grid resolves without aliasing of
        quadratic terms: T = ⌊(n_lon − 1) / 3⌋ (64×32 → T21, 128×64 → T42)."""
        return (self.n_lon - 1) // 3

    @property
    def weights(self) -> jax.Array:
        """Area weights cos φ normalised to mean 1, ``(n_lat, n_lon)`` float32."""
        w = np.cos(np.deg2rad(self.latitudes))
        w = np.broadcast_to(w[:, None] / w.mean(), self.shape)
        return jnp.asarray(w, jnp.float32)

    def site_coords(self, site: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Latitude and longitude (radians) of flat column indices (broadcasting)."""
        lat = jnp.asarray(np.deg2rad(self.latitudes), jnp.float32)[site // self.n_lon]
        lon = jnp.asarray(np.deg2rad(self.longitudes), jnp.float32)[site % self.n_lon]
        return lat, lon

    def distance(self, a: jax.Array, b: jax.Array) -> jax.Array:
        """Great-circle distance in km between columns ``a`` and ``b`` (flat indices,
        broadcasting)."""
        lat1, lon1 = self.site_coords(jnp.asarray(a))
        lat2, lon2 = self.site_coords(jnp.asarray(b))
        return great_circle_km(lat1, lon1, lat2, lon2)

    def max_sites_within(self, radius: float) -> int:
        """Exact maximum over columns of the number of columns within ``radius`` km.

        Columns are densest near the poles; all columns of one latitude row see the same
        count, so one column per row is checked (n_lat · n distances).
        """
        lat = np.deg2rad(self.latitudes)
        lon = np.deg2rad(self.longitudes)
        glat, glon = np.meshgrid(lat, lon, indexing="ij")
        d = great_circle_km(lat[:, None, None], lon[0], glat[None], glon[None])
        return int(min(self.n, (np.asarray(d) <= radius).sum(axis=(1, 2)).max()))


def great_circle_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km between points given in radians (sphere of radius 6371 km).

    Vincenty's atan2 form of the central angle, accurate in float32 from coincident to
    antipodal points (the haversine's asin loses digits near antipodes):
    Δσ = atan2(√((cos φ₂ sin Δλ)² + (cos φ₁ sin φ₂ − sin φ₁ cos φ₂ cos Δλ)²),
    sin φ₁ sin φ₂ + cos φ₁ cos φ₂ cos Δλ). NumPy and JAX arrays alike (broadcasting).
    """
    xp = jnp if any(isinstance(x, jax.Array) for x in (lat1, lon1, lat2, lon2)) else np
    dlon = lon2 - lon1
    c1, s1, c2, s2 = xp.cos(lat1), xp.sin(lat1), xp.cos(lat2), xp.sin(lat2)
    num = xp.sqrt((c2 * xp.sin(dlon)) ** 2 + (c1 * s2 - s1 * c2 * xp.cos(dlon)) ** 2)
    return EARTH_RADIUS_KM * xp.arctan2(num, s1 * s2 + c1 * c2 * xp.cos(dlon))


def _cell_bounds(centres: np.ndarray, low: float, high: float) -> np.ndarray:
    """Cell edges of increasing cell centres: midpoints, with ``low`` and ``high`` at the ends."""
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[low], mid, [high]])


def conservative_weights(
    src_lat: np.ndarray, src_lon: np.ndarray, grid: LatLonGrid
) -> tuple[np.ndarray, np.ndarray]:
    """First-order conservative regridding from a rectilinear lat–lon grid to ``grid``.

    Source cells are bounded by the midpoints between centres (±90° at the ends; periodic in
    longitude), target cells are ``grid``'s equiangular cells. A target value is the
    area-weighted mean of the source cells it overlaps: with overlap areas
    A_ts = Δ(sin φ) · Δλ, target = W_lat · source · W_lonᵀ with each weight row summing to 1,
    so the area integral is kept. Inputs in degrees, latitudes increasing; returns
    ``(W_lat (n_lat, n_src_lat), W_lon (n_lon, n_src_lon))``.
    """
    src_lat = np.asarray(src_lat, np.float64)
    src_lon = np.asarray(src_lon, np.float64) % 360.0
    if np.any(np.diff(src_lat) <= 0):
        raise ValueError("conservative_weights: source latitudes must increase")
    order = np.argsort(src_lon)
    if np.any(order != np.arange(order.size)):
        raise ValueError("conservative_weights: source longitudes must increase within [0, 360)")
    s_lat = np.sin(np.deg2rad(_cell_bounds(src_lat, -90.0, 90.0)))
    d = 180.0 / grid.n_lat
    t_lat = np.sin(np.deg2rad(-90.0 + d * np.arange(grid.n_lat + 1)))
    w_lat = np.clip(
        np.minimum(t_lat[1:, None], s_lat[None, 1:])
        - np.maximum(t_lat[:-1, None], s_lat[None, :-1]),
        0,
        None,
    )
    ext = np.concatenate([src_lon[-1:] - 360.0, src_lon, src_lon[:1] + 360.0])
    s_lon = (ext[1:] + ext[:-1]) / 2  # edges: n_src + 1 values, first below the first centre
    dl = 360.0 / grid.n_lon
    t_lo = grid.longitudes - dl / 2
    w_lon = np.zeros((grid.n_lon, src_lon.size))
    for shift in (-360.0, 0.0, 360.0):
        lo = np.maximum(t_lo[:, None], s_lon[None, :-1] + shift)
        hi = np.minimum(t_lo[:, None] + dl, s_lon[None, 1:] + shift)
        w_lon += np.clip(hi - lo, 0, None)
    return w_lat / w_lat.sum(1, keepdims=True), w_lon / w_lon.sum(1, keepdims=True)


@functools.cache
def mesh_graphs(n_lon: int, n_lat: int, refinement: int):
    """The grid → multi-mesh → grid graphs (``ensda.nn.grid_mesh.GridMeshGraphs``) of the
    ``n_lon`` × ``n_lat`` grid and the mesh of that refinement; cached, and concrete arrays
    even when first asked for under a trace (e.g. ``nnx.eval_shape`` while loading a model)."""
    grid = LatLonGrid(n_lon, n_lat)
    with jax.ensure_compile_time_eval():
        return grid_mesh_graphs(grid.latitudes, grid.longitudes, refinement)
