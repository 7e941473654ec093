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
import numpy as np

from ensda.testbeds.sphere.grid import LatLonGrid


@functools.lru_cache(maxsize=16)
def harmonics(grid: LatLonGrid, truncation: int):
    """dinosaur ``Grid`` with T = ``truncation`` coefficients (plus the spare l = T + 1)
    whose nodes are the points of ``grid`` (equiangular, no poles, longitudes from 0)."""
    from dinosaur import spherical_harmonic

    if truncation + 1 > grid.n_lon // 2:
        raise ValueError(
            f"truncation T{truncation} needs at least {2 * truncation + 2} longitudes, grid has "
            f"{grid.n_lon}"
        )
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


# ---------------------------------------------------------------------------------------
# Analysis: grid values -> coefficients, the inverse of the evaluation above for fields of
# degree <= T. The grid has no quadrature that is exact for degree 2T on equiangular
# latitudes, so the coefficients are a least-squares fit (area-weighted by cos φ) of the
# degree-T series to the grid values: exact for a degree-T field, the area-weighted L²
# projection otherwise. Longitude is exact (real DFT, n_lon > 2T); latitude is a small
# least-squares problem per zonal wavenumber m, solved once (pseudo-inverses, float64).
# ---------------------------------------------------------------------------------------


def _lat_weights(grid: LatLonGrid) -> np.ndarray:
    return np.sqrt(np.cos(np.deg2rad(grid.latitudes)))


def _fourier_rows(h, field: jax.Array) -> jax.Array:
    """Real-Fourier coefficients ``(..., rows, lat)`` of grid values ``(..., lat, lon)``."""
    f = jnp.asarray(
        h.spherical_harmonics.basis.f, jnp.float32
    )  # (lon, rows), orthonormal for weights 2π / n_lon
    return jnp.einsum("...jl,lr->...rj", field, f) * (2 * np.pi / f.shape[0])


@functools.lru_cache(maxsize=16)
def _scalar_inverse(grid: LatLonGrid, truncation: int) -> np.ndarray:
    """Per row m: the weighted pseudo-inverse ``(rows, T + 2, lat)`` of the Legendre basis."""
    h = harmonics(grid, truncation)
    p = np.asarray(h.spherical_harmonics.basis.p, np.float64)  # (rows, lat, T + 2)
    m = np.abs(h.spherical_harmonics.modal_axes[0])
    l = np.arange(truncation + 2)
    sw = _lat_weights(grid)
    out = np.zeros((p.shape[0], truncation + 2, grid.n_lat))
    for r in range(p.shape[0]):
        cols = (l >= m[r]) & (l <= truncation)
        out[r][cols] = np.linalg.pinv(sw[:, None] * p[r][:, cols]) * sw[None, :]
    return out


def analyse(values: jax.Array, grid: LatLonGrid, truncation: int) -> jax.Array:
    """Coefficients ``(..., 2T + 1, T + 2)`` of grid values ``(..., n_lat, n_lon)``: the degree-T
    least-squares fit (exact inverse of ``evaluate`` for fields of degree ≤ T)."""
    h = harmonics(grid, truncation)
    g = _fourier_rows(h, values)
    return jnp.einsum(
        "rlj,...rj->...rl", jnp.asarray(_scalar_inverse(grid, truncation), jnp.float32), g
    )


@functools.lru_cache(maxsize=16)
def _wind_inverse(grid: LatLonGrid, truncation: int):
    """Per zonal wavenumber m: the weighted pseudo-inverse of (ζ, δ) -> Fourier rows of (u, v).

    Unknowns per m: ζ and δ on the rows of m (cos, sin; one row for m = 0) for l = 0..T+1
    (structural zeros included, they get zero weight); observations: the rows of m of u
    and v at every latitude. Columns of the map are built by evaluating unit coefficients.
    Returns (inverse ``(T + 1, 4 (T + 2), 4 n_lat)``, rows ``(T + 1, 2)``, row valid
    ``(T + 1, 2)``).
    """
    t, nl, n_lat = truncation, truncation + 2, grid.n_lat
    h = harmonics(grid, t)
    rows = np.array([[0, 0]] + [[2 * m - 1, 2 * m] for m in range(1, t + 1)])
    valid = np.ones_like(rows, bool)
    valid[0, 1] = False
    shape = h.modal_shape  # (2T + 1, T + 2)

    @jax.jit
    def observed(units, m_rows):  # unit coefficients (4 nl, 2, rows, T + 2) -> (4 nl, 4 lat)
        u, v = evaluate_winds(units[:, 0], units[:, 1], grid, t)
        gu, gv = _fourier_rows(h, u), _fourier_rows(h, v)  # (4 nl, rows, lat)
        return jnp.concatenate(
            [gu[:, m_rows[0]], gu[:, m_rows[1]], gv[:, m_rows[0]], gv[:, m_rows[1]]], axis=-1
        )

    def columns(m_rows):
        units = np.zeros((4 * nl, 2) + shape, np.float32)
        for k, (field, i) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            units[k * nl + np.arange(nl), field, m_rows[i], np.arange(nl)] = 1.0
        return np.asarray(observed(units, m_rows), np.float64).T  # (4 lat, 4 nl)

    sw = np.tile(_lat_weights(grid), 4)
    inverse = np.zeros((t + 1, 4 * nl, 4 * n_lat))
    l = np.arange(nl)
    for m in range(t + 1):
        with jax.ensure_compile_time_eval():  # concrete even when first needed inside a trace
            a = columns(rows[m])
        known = np.zeros(4 * nl, bool)
        for k, i in enumerate([0, 1, 0, 1]):  # ζ on row 0 and 1 of m, then δ
            known[k * nl : (k + 1) * nl] = valid[m, i] & (l >= max(m, 1)) & (l <= t)
        seen = np.repeat(np.array([True, valid[m, 1], True, valid[m, 1]]), n_lat)
        w = sw * seen
        inverse[m][np.ix_(known, seen)] = (
            np.linalg.pinv(w[:, None] * a[:, known])[:, seen] * w[None, seen]
        )
    return inverse, rows, valid


def analyse_winds(
    u: jax.Array, v: jax.Array, grid: LatLonGrid, truncation: int
) -> tuple[jax.Array, jax.Array]:
    """Vorticity and divergence coefficients ``(..., 2T + 1, T + 2)`` (nondimensional) from the
    wind components ``(..., n_lat, n_lon)``: the degree-T least-squares fit, exact inverse of
    ``evaluate_winds`` for a degree-T flow (the global means of ζ and δ are zero)."""
    h = harmonics(grid, truncation)
    inverse, rows, valid = _wind_inverse(grid, truncation)
    nl = truncation + 2
    gu, gv = _fourier_rows(h, u), _fourier_rows(h, v)  # (..., rows, lat)
    obs = jnp.concatenate(
        [
            gu[..., rows[:, 0], :],
            gu[..., rows[:, 1], :],
            gv[..., rows[:, 0], :],
            gv[..., rows[:, 1], :],
        ],
        axis=-1,
    )
    c = jnp.einsum("mkn,...mn->...mk", jnp.asarray(inverse, jnp.float32), obs)  # (..., T + 1, 4 nl)
    c = c.reshape(c.shape[:-1] + (2, 2, nl))  # (..., m, field, row of m, l)
    out = jnp.zeros(c.shape[:-4] + (2,) + h.modal_shape, c.dtype)
    for i in range(2):
        ms = np.flatnonzero(valid[:, i])
        part = jnp.take(c[..., i, :], ms, axis=-3)  # (..., len(ms), field, l)
        out = out.at[..., :, rows[ms, i], :].set(jnp.moveaxis(part, -3, -2))
    return out[..., 0, :, :], out[..., 1, :, :]


# ---------------------------------------------------------------------------------------
# Isotropic operators: a spectrum over the total wavenumber applied through ``evaluate``.
# ---------------------------------------------------------------------------------------


def modal_degrees(grid: LatLonGrid, truncation: int) -> tuple[np.ndarray, np.ndarray]:
    """Total wavenumber l and zonal wavenumber |m| of each coefficient ``(2T + 1, T + 2)``
    (int arrays; a coefficient is a basis function when |m| ≤ l ≤ T)."""
    axes = harmonics(grid, truncation).spherical_harmonics.modal_axes
    m, l = np.meshgrid(np.abs(np.asarray(axes[0])), np.asarray(axes[1]), indexing="ij")
    return l, m


def evaluate_adjoint(values: jax.Array, grid: LatLonGrid, truncation: int) -> jax.Array:
    """Adjoint of ``evaluate`` (Euclidean inner products on grid values and coefficients):
    grid values ``(..., n_lat, n_lon)`` → coefficients ``(..., 2T + 1, T + 2)``, Sᵀ y."""
    shape = values.shape[:-2] + harmonics(grid, truncation).modal_shape
    (out,) = jax.linear_transpose(
        lambda c: evaluate(c, grid, truncation), jax.ShapeDtypeStruct(shape, values.dtype)
    )(values)
    return out
