"""Independent reference formulas shared by several tests (plain Python/NumPy)."""

import numpy as np


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


def z_scores(x, mu, cov):
    """Largest |mean error| in standard errors and |covariance error| in Wishart stds."""
    m = x.shape[0]
    se = np.sqrt(np.diag(cov) / m)
    wishart = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / m)
    return (
        np.max(np.abs(x.mean(0) - mu) / se),
        np.max(np.abs(np.cov(x, rowvar=False) - cov) / wishart),
    )
