"""LETKF (R-localisation with Gaspari–Cohn) against independent references.

References: the global ETKF when the radius is far larger than the domain (all taper
weights ≈ 1); the background itself where no observation lies within 2c; and a brute-force
NumPy LETKF that, for every site, solves the full ETKF with all p observations and
r⁻¹_j · GC(d_ij / c) (cyclic distance, published Gaspari–Cohn polynomial), with no
nearest-neighbour selection.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import gc_ref

from baselines import ETKF, LETKF
from ensda.observe import Observations
from ensda.testbeds import RingGrid


def problem(seed, n, n_mem, idx, r_lo=0.5, r_hi=1.5):
    rng = np.random.default_rng(seed)
    # smooth, correlated background on a ring
    base = rng.normal(2.0, 3.0, n)
    noise = rng.normal(size=(n_mem, n))
    smooth = (noise + np.roll(noise, 1, 1) + np.roll(noise, -1, 1)) / np.sqrt(3)
    bg = (base + smooth).astype(np.float32)
    p = len(idx)
    obs = Observations(
        y=jnp.asarray(rng.normal(2.0, 3.0, p), jnp.float32),
        idx=jnp.asarray(idx, jnp.int32),
        r_std=jnp.asarray(rng.uniform(r_lo, r_hi, p), jnp.float32),
    )
    return bg, obs


def letkf_ref(bg, obs, radius):
    bg = bg.astype(np.float64)
    n_mem, n = bg.shape
    idx = np.asarray(obs.idx)
    y = np.asarray(obs.y, np.float64)
    rinv = 1.0 / np.asarray(obs.r_std, np.float64) ** 2
    xm = bg.mean(0)
    a = bg - xm
    hx = bg[:, idx]
    yb = hx.mean(0)
    ya = hx - yb
    out = np.empty_like(bg)
    for i in range(n):
        d = np.array([min(abs(i - j) % n, n - abs(i - j) % n) for j in idx], float)
        rl = rinv * np.array([gc_ref(dj / radius) for dj in d])
        m = (n_mem - 1) * np.eye(n_mem) + ya @ np.diag(rl) @ ya.T
        w_mean = np.linalg.solve(m, ya @ (rl * (y - yb)))
        lam, v = np.linalg.eigh(m)
        w = w_mean[:, None] + v @ np.diag(np.sqrt((n_mem - 1) / lam)) @ v.T
        out[:, i] = xm[i] + w.T @ a[:, i]
    return out


@jax.jit
def _analyse(assim, bg, obs):
    return assim.analyse(bg, obs, jax.random.key(0))


def analyse(assim, bg, obs):
    return np.asarray(_analyse(assim, jnp.asarray(bg), obs), np.float64)


@pytest.mark.parametrize("idx", [list(range(12)), [0, 3, 4, 9]])
def test_huge_radius_equals_etkf(idx):
    bg, obs = problem(0, 12, 8, idx)
    got = analyse(LETKF(grid=RingGrid(12), radius=1e6), bg, obs)
    ref = analyse(ETKF(), bg, obs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-4)


def test_tiny_radius_far_from_observations_leaves_background():
    bg, obs = problem(1, 12, 6, [0, 6])
    got = analyse(LETKF(grid=RingGrid(12), radius=0.3), bg, obs)
    observed = np.zeros(12, bool)
    observed[[0, 6]] = True
    # sites ≥ 1 away from every observation (> 2c = 0.6): untouched
    np.testing.assert_allclose(got[:, ~observed], bg[:, ~observed], rtol=1e-6, atol=1e-6)
    # observed sites are updated (taper 1 at distance 0)
    assert np.abs(got[:, observed] - bg[:, observed]).max() > 1e-2
    np.testing.assert_allclose(got, letkf_ref(bg, obs, 0.3), rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("radius", [1.5, 2.0, 3.7])
def test_letkf_equals_brute_force_local_analyses(radius):
    # every site observed: the k-nearest selection keeps fewer obs than p
    n = 20
    bg, obs = problem(2, n, 10, list(range(n)))
    got = analyse(LETKF(grid=RingGrid(n), radius=radius), bg, obs)
    np.testing.assert_allclose(got, letkf_ref(bg, obs, radius), rtol=1e-4, atol=2e-4)


def test_letkf_sparse_network_wrapping_around_the_ring():
    n = 24
    bg, obs = problem(3, n, 7, [23, 1, 5, 12, 13])
    got = analyse(LETKF(grid=RingGrid(n), radius=2.5), bg, obs)
    np.testing.assert_allclose(got, letkf_ref(bg, obs, 2.5), rtol=1e-4, atol=2e-4)


def test_site_analysis_depends_only_on_observations_within_twice_radius():
    n, radius, site = 30, 2.0, 3
    bg, obs = problem(4, n, 8, list(range(n)))
    base = analyse(LETKF(grid=RingGrid(n), radius=radius), bg, obs)
    sites = np.arange(n)
    dist = np.minimum(np.abs(sites - site), n - np.abs(sites - site))
    far = dist >= 2 * radius
    y_far = np.asarray(obs.y).copy()
    y_far[far] += 50.0
    moved_far = Observations(y=jnp.asarray(y_far), idx=obs.idx, r_std=obs.r_std)
    got = analyse(LETKF(grid=RingGrid(n), radius=radius), bg, moved_far)
    np.testing.assert_allclose(got[:, site], base[:, site], rtol=1e-6, atol=1e-6)
    # but a change to a near observation does move it
    y_near = np.asarray(obs.y).copy()
    y_near[site + 1] += 5.0
    moved_near = Observations(y=jnp.asarray(y_near), idx=obs.idx, r_std=obs.r_std)
    got = analyse(LETKF(grid=RingGrid(n), radius=radius), bg, moved_near)
    assert np.abs(got[:, site] - base[:, site]).max() > 1e-2


def test_built_letkf_equals_brute_force_and_checks_radius():
    from types import SimpleNamespace

    from ensda.observe import ObsNetwork
    from ensda.testbeds import Lorenz96

    n = 16
    ctx = SimpleNamespace(testbed=Lorenz96(n=n), network=ObsNetwork(n_state=n, every=2))
    assim = LETKF.build(ctx, radius=3.0)
    assert assim.radius == 3.0
    bg, obs = problem(5, n, 9, list(range(0, n, 2)))
    np.testing.assert_allclose(
        analyse(assim, bg, obs), letkf_ref(bg, obs, 3.0), rtol=1e-4, atol=2e-4
    )
    from ensda.assimilator import validate_settings

    with pytest.raises(ValueError, match="radius"):
        validate_settings("letkf", {"radius": 0.0})


@pytest.mark.parametrize("network", [{"every": 4}, {"sites": (1, 2, 9, 17, 30)}])
def test_fixed_networks_keep_only_observed_sites_in_the_neighbourhoods(network):
    """On a network whose sites are fixed only observed sites can carry weight: the built
    neighbourhoods hold those alone (k × k local problems instead of N × N) and the analysis
    is the brute-force LETKF's, as with every site in the neighbourhoods."""
    from types import SimpleNamespace

    from ensda.observe import ObsNetwork
    from ensda.testbeds import Lorenz96

    n, radius = 40, 5.0
    net = ObsNetwork(n_state=n, **network)
    ctx = SimpleNamespace(testbed=Lorenz96(n=n), network=net)
    assim = LETKF.build(ctx, radius=radius)
    observed = set(net.fixed_sites)
    assert set(np.asarray(assim.neighbours).ravel()) <= observed
    assert assim.neighbours.shape[1] <= len(observed) < 2 * 2 * radius + 1
    bg, obs = problem(6, n, 12, list(net.fixed_sites))
    got = analyse(assim, bg, obs)
    np.testing.assert_allclose(got, letkf_ref(bg, obs, radius), rtol=1e-4, atol=2e-4)
    every_site = analyse(LETKF(grid=RingGrid(n), radius=radius), bg, obs)
    np.testing.assert_allclose(got, every_site, rtol=1e-4, atol=2e-4)
    # a random network is drawn from a key: every site stays a candidate
    assert ObsNetwork(n_state=n, density=0.25).fixed_sites is None
