r"""Spectral truncation and exact evaluation of spherical-harmonic series on the lat–lon grid.

A dycore state is a set of real spherical-harmonic coefficients in dinosaur's layout
``(..., 2M − 1, L)``: rows m = 0, +1, −1, …, +M, −M (cos / sin pairs), columns the total
wavenumber l = 0..L−1 (Y_l^m normalised to unit L² norm on the unit sphere).

To put a state of any resolution on the analysis grid it is truncated triangularly at
T = min(model T, grid T) (``LatLonGrid.truncation``: 64×32 → T21, 128×64 → T42) and the
truncated series is *evaluated* at the grid points. Evaluation is exact (no quadrature),
so a field that is a spherical harmonic of degree ≤ T comes out as its point values to
float32 round-off, and the global mean (the l = 0 coefficient) is kept. Truncation first
removes the scales the grid cannot carry (no aliasing of T42 onto 64 longitudes).

The evaluation grid keeps one spare total wavenumber (l = T + 1, zero on input) so that
cos φ ∇ of a degree-T field (degree T + 1) is exact: winds are evaluated without loss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ensda.testbeds.sphere.grid import LatLonGrid


@functools.lru_cache(maxsize=16)
def harmonics(grid: LatLonGrid, truncation: int):
    """dinosaur ``Grid`` with T = ``truncation`` coefficients (plus the spare l = T + 1)
    whose nodes are the points of ``grid`` (equiangular, no poles, longitudes from 0)."""
    from dinosaur import spherical_harmonic

    if truncation + 1 > grid.n_lon // 2:
        raise ValueError(f"truncation T{truncation} needs at least {2 * truncation + 2} longitudes, grid has {grid.n_lon}")
    return spherical_harmonic.Grid(
        longitude_wavenumbers=truncation + 1,
        total_wavenumbers=truncation + 2,
        longitude_nodes=grid.n_lon,
        latitude_nodes=grid.n_lat,
        latitude_spacing="equiangular",
    )


def truncate(x: jax.Array, truncation: int) -> jax.Array:
    """Coefficients ``(..., 2M − 1, L)`` truncated to T: shape ``(..., 2T + 1, T + 2)``,
    zero for l > T (the spare column), padded with zeros if the input is coarser."""
    rows, cols = 2 * truncation + 1, truncation + 2
    x = x[..., :rows, :cols]
    pad = [(0, 0)] * (x.ndim - 2) + [(0, rows - x.shape[-2]), (0, cols - x.shape[-1])]
    x = jnp.pad(x, pad)
    keep = (jnp.arange(cols) <= truncation).astype(x.dtype)
    return x * keep


def to_latlon(nodal: jax.Array) -> jax.Array:
    """dinosaur's nodal layout ``(..., lon, lat)`` (lat ascending) → ``(..., lat, lon)``."""
    return jnp.swapaxes(nodal, -1, -2)


def evaluate(coeffs: jax.Array, grid: LatLonGrid, truncation: int) -> jax.Array:
    """Point values ``(..., n_lat, n_lon)`` of a scalar series (any resolution) truncated at T."""
    h = harmonics(grid, truncation)
    return to_latlon(h.to_nodal(truncate(coeffs, truncation)))


def evaluate_winds(vorticity: jax.Array, divergence: jax.Array, grid: LatLonGrid, truncation: int):
    """Eastward and northward wind ``(..., n_lat, n_lon)`` from vorticity and divergence
    coefficients (nondimensional), truncated at T.

    u cos φ = ∂χ/∂λ − cos φ ∂ψ/∂φ and v cos φ = ∂ψ/∂λ + cos φ ∂χ/∂φ with ∇²ψ = ζ, ∇²χ = δ,
    evaluated exactly (degree ≤ T + 1) and divided by cos φ (no grid point is at a pole).
    """
    from dinosaur import spherical_harmonic

    h = harmonics(grid, truncation)
    u_cos, v_cos = spherical_harmonic.get_cos_lat_vector(
        truncate(vorticity, truncation), truncate(divergence, truncation), h, clip=False
    )
    return to_latlon(h.to_nodal(u_cos) / h.cos_lat), to_latlon(h.to_nodal(v_cos) / h.cos_lat)
