"""Serial EnSRF (Whitaker & Hamill 2002) against independent references.

References: a float64 NumPy loop over the observations written from the paper's
equations (observed priors carried along, Anderson 2003) with Gaspari–Cohn tapers from
``reference`` (cyclic distance on the ring; haversine km and Δ ln p on the sphere); and,
without localisation and with a linear H, the exact Kalman update of the mean and the
covariance, which the global ETKF computes in one batch (the serial and batch updates agree
for uncorrelated observation errors).
"""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import ring_taper_ref, sphere_taper_ref

from baselines import ETKF, EnSRF
from ensda.observe import Observations, ObsNetwork
from ensda.testbeds.lorenz96.model import RingGrid
from ensda.testbeds.sphere.grid import LatLonGrid
from ensda.testbeds.sphere.observe import GlobalObsNetwork
from ensda.testbeds.sphere.testbed import Channels


def ring_ctx(n):
    return SimpleNamespace(network=ObsNetwork(n_state=n), testbed=SimpleNamespace(grid=RingGrid(n)))


def run(assim, bg, obs):
    out = jax.jit(lambda a, b, o: a.analyse(b, o, jax.random.key(0)))(assim, jnp.asarray(bg), obs)
    return np.asarray(out, np.float64)


def serial_ref(bg, hx, y, r, rho_xy, rho_yy):
    """Whitaker & Hamill (2002) eqs. 2–13, one observation at a time, float64."""
    x, yp = np.array(bg, np.float64), np.array(hx, np.float64)
    n_mem = x.shape[0]
    for k in range(len(y)):
        ya = yp[:, k] - yp[:, k].mean()
        hpht = ya @ ya / (n_mem - 1)
        denom = hpht + r[k] ** 2
        k_x = rho_xy[:, k] * ((x - x.mean(0)).T @ ya) / (n_mem - 1) / denom
        k_y = rho_yy[:, k] * ((yp - yp.mean(0)).T @ ya) / (n_mem - 1) / denom
        alpha = 1.0 / (1.0 + np.sqrt(r[k] ** 2 / denom))
        innov = y[k] - yp[:, k].mean()
        x_mean, x_anom = x.mean(0) + k_x * innov, x - x.mean(0) - alpha * np.outer(ya, k_x)
        y_mean, y_anom = yp.mean(0) + k_y * innov, yp - yp.mean(0) - alpha * np.outer(ya, k_y)
        x, yp = x_mean + x_anom, y_mean + y_anom
    return x


def ring_problem(seed, n=20, n_mem=10, idx=(0, 2, 3, 7, 11, 12, 16), operator="identity"):
    rng = np.random.default_rng(seed)
    bg = rng.normal(0.0, 1.0, (n_mem, n))
    bg = (1.0 + bg + np.roll(bg, 1, 1) + np.roll(bg, -1, 1)).astype(np.float32)
    r = rng.uniform(0.5, 1.2, len(idx))
    obs = Observations(
        y=jnp.asarray(rng.normal(1.0, 1.5, len(idx)), jnp.float32),
        idx=jnp.asarray(idx, jnp.int32),
        r_std=jnp.asarray(r, jnp.float32),
        operator=operator,
    )
    return bg, obs


@pytest.mark.parametrize("radius,operator", [(2.0, "identity"), (5.0, "identity"), (3.0, "abs")])
def test_serial_ensrf_matches_the_float64_reference_on_the_ring(radius, operator):
    bg, obs = ring_problem(0, operator=operator)
    got = run(EnSRF.build(ring_ctx(20), radius=radius), bg, obs)
    rho_xy, rho_yy = ring_taper_ref(20, obs.idx, radius)
    hx = np.asarray(obs.h(jnp.asarray(bg)), np.float64)
    ref = serial_ref(bg, hx, np.asarray(obs.y, np.float64), np.asarray(obs.r_std), rho_xy, rho_yy)
    np.testing.assert_allclose(got, ref, atol=5e-4)
    assert np.abs(got - bg).max() > 0.1  # the observations moved it


def test_without_localisation_it_is_the_kalman_update_of_mean_and_covariance():
    bg, obs = ring_problem(1, n_mem=12)
    got = run(EnSRF(), bg, obs)
    etkf = run(ETKF(), bg, obs)
    np.testing.assert_allclose(got.mean(0), etkf.mean(0), atol=5e-4)
    np.testing.assert_allclose(np.cov(got, rowvar=False), np.cov(etkf, rowvar=False), atol=1e-3)
    # an infinite-reach radius is the same global filter
    far = run(EnSRF.build(ring_ctx(20), radius=1e6), bg, obs)
    np.testing.assert_allclose(far, got, atol=2e-4)


def test_serial_ensrf_on_the_sphere_tapers_great_circle_km_and_log_pressure():
    grid, ch = LatLonGrid(16, 8), Channels(levels=(250, 850))
    net = GlobalObsNetwork(grid, ch, density=0.05)
    rng = np.random.default_rng(2)
    bg = rng.normal(size=(8, ch.n * grid.n)).astype(np.float32)
    truth = jnp.asarray(rng.normal(size=(ch.n, *grid.shape)), jnp.float32)
    obs = net.observe(truth, jax.random.key(1), 0)
    radius, vertical = 2500.0, 1.0
    ctx = SimpleNamespace(network=net)
    got = run(EnSRF.build(ctx, radius=radius, vertical_radius=vertical), bg, obs)
    hpa = [1000.0 if c == ch.n - 1 else float(ch.levels[c % len(ch.levels)]) for c in range(ch.n)]
    rho_xy, rho_yy = sphere_taper_ref(grid, hpa, obs.idx, radius, vertical)
    hx = bg[:, np.asarray(obs.idx)]
    ref = serial_ref(bg, hx, np.asarray(obs.y, np.float64), np.asarray(obs.r_std), rho_xy, rho_yy)
    np.testing.assert_allclose(got, ref, atol=5e-4)
    # states given as fields come back as fields
    fields = run(
        EnSRF.build(ctx, radius=radius, vertical_radius=vertical),
        bg.reshape(8, ch.n, *grid.shape),
        obs,
    )
    np.testing.assert_allclose(fields.reshape(8, -1), got, atol=1e-6)
