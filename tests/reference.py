"""Independent reference formulas shared by several tests (plain Python/NumPy)."""

import numpy as np

EARTH_RADIUS_KM = 6371.0  # mean Earth radius, as the sphere testbed


def gc_ref(r):
    """Gaspari & Cohn (1999) eq. 4.10 of r = d/c, written term by term."""
    r = abs(r)
    if r <= 1.0:
        return -0.25 * r**5 + 0.5 * r**4 + 0.625 * r**3 - 5.0 / 3.0 * r**2 + 1.0
    if r < 2.0:
        return (
            r**5 / 12.0
            - 0.5 * r**4
            + 0.625 * r**3
            + 5.0 / 3.0 * r**2
            - 5.0 * r
            + 4.0
            - 2.0 / (3.0 * r)
        )
    return 0.0


def haversine_km(a, b, grid):
    """Great-circle km between flat columns of a lat-lon ``grid`` by the haversine formula."""
    lat = (
        np.deg2rad(grid.latitudes)[np.asarray(a) // grid.n_lon],
        np.deg2rad(grid.latitudes)[np.asarray(b) // grid.n_lon],
    )
    lon = (
        np.deg2rad(grid.longitudes)[np.asarray(a) % grid.n_lon],
        np.deg2rad(grid.longitudes)[np.asarray(b) % grid.n_lon],
    )
    h = (
        np.sin((lat[1] - lat[0]) / 2) ** 2
        + np.cos(lat[0]) * np.cos(lat[1]) * np.sin((lon[1] - lon[0]) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(h))


def z_scores(x, mu, cov):
    """Largest |mean error| in standard errors and |covariance error| in Wishart stds."""
    m = x.shape[0]
    se = np.sqrt(np.diag(cov) / m)
    wishart = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / m)
    return (
        np.max(np.abs(x.mean(0) - mu) / se),
        np.max(np.abs(np.cov(x, rowvar=False) - cov) / wishart),
    )


def _gc(r):
    return np.vectorize(gc_ref, otypes=[float])(r)


def ring_taper_ref(n, idx, radius):
    """Gaspari–Cohn tapers on a ring of ``n`` sites between every site and the observed
    sites ``idx``, ``(n, p)``, and among the observations, ``(p, p)``."""
    idx = np.asarray(idx)

    def rho(a, b):
        d = np.abs(a[:, None] - b[None, :]) % n
        return _gc(np.minimum(d, n - d) / radius)

    return rho(np.arange(n), idx), rho(idx, idx)


def sphere_taper_ref(grid, channel_hpa, idx, radius, vertical_radius=None):
    """The same on a lat-lon ``grid`` for flat state indices (channel · n_columns + column)
    with channel pressures ``channel_hpa``: GC of the haversine km times GC of Δ ln p."""
    idx = np.asarray(idx)
    lnp = np.log(np.asarray(channel_hpa, np.float64))

    def rho(a, b):
        out = _gc(haversine_km((a % grid.n)[:, None], (b % grid.n)[None, :], grid) / radius)
        if vertical_radius is not None:
            dz = lnp[a // grid.n][:, None] - lnp[b // grid.n][None, :]
            out = out * _gc(dz / vertical_radius)
        return out

    return rho(np.arange(len(channel_hpa) * grid.n), idx), rho(idx, idx)
