"""Gaspari–Cohn taper against the published piecewise polynomial (Gaspari & Cohn 1999,
eq. 4.10), evaluated term by term here; GC(0) = 1, GC(1) = 5/24, zero from r = 2 on,
continuous with continuous first derivative at r = 1 and r = 2.
"""

from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest

from baselines.localization import gaspari_cohn


def gc_published(r):
    """Eq. 4.10 of Gaspari & Cohn (1999), r = |z|/c, exact rational arithmetic when r is a
    Fraction."""
    r = abs(r)
    if r <= 1:
        return (
            -Fraction(1, 4) * r**5
            + Fraction(1, 2) * r**4
            + Fraction(5, 8) * r**3
            - Fraction(5, 3) * r**2
            + 1
        )
    if r <= 2:
        return (
            Fraction(1, 12) * r**5
            - Fraction(1, 2) * r**4
            + Fraction(5, 8) * r**3
            + Fraction(5, 3) * r**2
            - 5 * r
            + 4
            - Fraction(2, 3) / r
        )
    return Fraction(0)


def gc(d, c):
    return np.asarray(gaspari_cohn(jnp.asarray(d, jnp.float32), c), np.float64)


def test_known_values():
    assert gc_published(Fraction(0)) == 1
    assert gc_published(Fraction(1)) == Fraction(5, 24)
    assert gc_published(Fraction(2)) == 0
    assert float(gc(0.0, 3.0)) == pytest.approx(1.0, abs=1e-7)
    assert float(gc(3.0, 3.0)) == pytest.approx(5 / 24, rel=1e-6)
    assert float(gc(1.0, 1.0)) == pytest.approx(0.2083333, rel=1e-6)


@pytest.mark.parametrize("c", [1.0, 2.5, 4.0])
def test_matches_published_polynomial(c):
    d = np.linspace(0.0, 2.6 * c, 301)
    ref = np.array([float(gc_published(Fraction(float(x)) / Fraction(c))) for x in d])
    np.testing.assert_allclose(gc(d, c), ref, atol=2e-6)
    np.testing.assert_allclose(gc(-d, c), ref, atol=2e-6)  # symmetric in the sign of the distance


def test_zero_at_and_beyond_twice_the_radius():
    c = 2.0
    d = np.array([4.0, 4.0001, 5.0, 40.0, 1e6])
    np.testing.assert_array_equal(gc(d, c), 0.0)
    # just inside 2c the exact value is ~1e-11: below float32 resolution, but never negative
    near = gc(np.linspace(3.9, 4.0, 201), c)
    assert np.all(near >= 0.0)
    assert gc(3.8, c) == pytest.approx(float(gc_published(Fraction(19, 10))), abs=2e-6)
    assert gc(3.8, c) > 0.0


@pytest.mark.parametrize("r0", [1.0, 2.0])
def test_continuous_value_and_slope_at_the_knots(r0):
    c, h = 1.0, 1e-3
    left, right = gc(r0 - h, c), gc(r0 + h, c)
    # value: |jump| ≲ |slope| · 2h
    assert abs(left - right) < 2e-3
    # slope: one-sided differences agree
    sl = (gc(r0 - h, c) - gc(r0 - 2 * h, c)) / h
    sr = (gc(r0 + 2 * h, c) - gc(r0 + h, c)) / h
    assert abs(sl - sr) < 1e-2
    # against the derivative of the published inner branch at r = 1 (= −17/24 ≈ −0.708)
    if r0 == 1.0:
        deriv = -5 / 4 + 2 + 15 / 8 - 10 / 3  # d/dr of the inner branch at r = 1
        assert sl == pytest.approx(deriv, abs=1e-2)


def test_monotone_decreasing_and_bounded():
    v = gc(np.linspace(0.0, 2.0, 401), 1.0)
    assert np.all(np.diff(v) <= 2e-6)  # non-increasing up to float32 round-off
    assert v.min() >= 0.0 and v.max() <= 1.0


def test_taper_matrix_on_a_line_is_positive_semidefinite():
    # GC is a correlation function in R³ (compactly supported), hence positive definite on a line
    x = np.arange(30.0)
    m = gc(np.abs(x[:, None] - x[None, :]), 3.0)
    assert np.linalg.eigvalsh(m).min() > -1e-5
