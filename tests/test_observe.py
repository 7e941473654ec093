"""Observation networks, operators and error draws.

References: site counts and sets computed directly (range, round(density·n)); operators
applied in NumPy to the truth; the Gaussian error law y − h(x) ~ N(0, r²) checked by
sample moments within their sampling error; an LETKF cycled through arctan observations of
Lorenz-96 against the free run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensda.observe import Observations, ObsNetwork


@pytest.mark.parametrize("n,every", [(40, 1), (40, 2), (40, 3), (10, 4), (7, 7)])
def test_every_kth_site(n, every):
    net = ObsNetwork(n_state=n, every=every)
    ref = np.array(list(range(0, n, every)))
    assert net.n_obs == len(ref) == -(-n // every)
    np.testing.assert_array_equal(np.asarray(net.site_indices(jax.random.key(0), 3)), ref)
    assert net.fraction == pytest.approx(len(ref) / n)


@pytest.mark.parametrize("n,density", [(40, 0.3), (40, 0.1), (40, 1.0), (100, 0.37), (40, 0.26)])
def test_density_draws_round_density_n_distinct_sorted_sites(n, density):
    net = ObsNetwork(n_state=n, density=density)
    p = round(density * n)
    assert net.n_obs == p
    for seed in range(3):
        idx = np.asarray(net.site_indices(jax.random.key(seed), 0))
        assert idx.shape == (p,)
        assert len(set(idx.tolist())) == p
        assert np.all(np.diff(idx) > 0)
        assert idx.min() >= 0 and idx.max() < n


def test_fixed_network_is_the_same_every_cycle_and_redrawn_one_changes():
    key = jax.random.key(11)
    fixed = ObsNetwork(n_state=40, density=0.25)
    first = np.asarray(fixed.site_indices(key, 0))
    for c in range(1, 20):
        np.testing.assert_array_equal(np.asarray(fixed.site_indices(key, c)), first)

    moving = ObsNetwork(n_state=40, density=0.25, redraw=True)
    draws = np.stack([np.asarray(moving.site_indices(key, c)) for c in range(60)])
    assert len({tuple(d) for d in draws}) > 50  # C(40, 10) ≈ 8.5e8 possible sets
    # every site gets observed over 60 redraws of 10 out of 40 (P(miss) = 0.75⁶⁰ ≈ 3e-8 per site)
    assert set(draws.ravel().tolist()) == set(range(40))
    # each site observed ≈ 60 · 10/40 = 15 times
    counts = np.bincount(draws.ravel(), minlength=40)
    assert counts.sum() == 600 and counts.max() < 35


def test_observe_run_sites_follow_the_network():
    truths = jnp.asarray(np.random.default_rng(0).normal(size=(6, 20)), jnp.float32)
    key = jax.random.key(2)
    fixed = ObsNetwork(n_state=20, density=0.5).observe_run(truths, key)
    assert fixed.idx.shape == (6, 10)
    assert all(np.array_equal(np.asarray(fixed.idx[0]), np.asarray(fixed.idx[c])) for c in range(6))
    moving = ObsNetwork(n_state=20, density=0.5, redraw=True).observe_run(truths, key)
    assert not all(
        np.array_equal(np.asarray(moving.idx[0]), np.asarray(moving.idx[c])) for c in range(6)
    )


def test_explicit_sites():
    net = ObsNetwork(n_state=12, sites=(0, 3, 4, 11))
    assert net.n_obs == 4
    np.testing.assert_array_equal(np.asarray(net.site_indices(jax.random.key(0), 5)), [0, 3, 4, 11])
    truth = jnp.arange(12.0) * 1.5
    obs = net.observe(truth, jax.random.key(1), 0)
    np.testing.assert_array_equal(np.asarray(obs.idx), [0, 3, 4, 11])
    np.testing.assert_allclose(np.asarray(obs.r_std), np.ones(4))


@pytest.mark.parametrize(
    "operator,fn",
    [("identity", lambda x: x), ("square", np.square), ("abs", np.abs), ("arctan", np.arctan)],
)
def test_operators_applied_to_selected_sites(operator, fn):
    rng = np.random.default_rng(3)
    truth = rng.normal(0.0, 3.0, 30)
    ens = rng.normal(0.0, 3.0, (4, 30))
    net = ObsNetwork(n_state=30, every=3, operator=operator, r_std=0.5)
    obs = net.observe(jnp.asarray(truth, jnp.float32), jax.random.key(4), 2)
    idx = np.arange(0, 30, 3)
    np.testing.assert_array_equal(np.asarray(obs.idx), idx)
    assert obs.linear == (operator == "identity")
    # H on an ensemble (N, n) -> (N, p)
    np.testing.assert_allclose(
        np.asarray(obs.h(jnp.asarray(ens, jnp.float32))), fn(ens[:, idx]), rtol=1e-5, atol=1e-5
    )
    # the noise is the same draw whatever the operator: y − h(truth) equals the identity
    # network's y − truth
    ident = ObsNetwork(n_state=30, every=3, r_std=0.5).observe(
        jnp.asarray(truth, jnp.float32), jax.random.key(4), 2
    )
    np.testing.assert_allclose(
        np.asarray(obs.y) - fn(truth[idx]), np.asarray(ident.y) - truth[idx], rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("r_std", [0.3, 2.0])
def test_observation_errors_have_std_r_and_are_independent(r_std):
    rng = np.random.default_rng(5)
    k_cycles, n = 400, 40
    truths = jnp.asarray(rng.normal(2.3, 3.6, (k_cycles, n)), jnp.float32)
    net = ObsNetwork(n_state=n, density=0.5, redraw=True, r_std=r_std)
    obs = net.observe_run(truths, jax.random.key(6))
    idx = np.asarray(obs.idx)
    truth_obs = np.take_along_axis(np.asarray(truths), idx, axis=1)
    eps = (np.asarray(obs.y) - truth_obs) / r_std  # should be iid N(0, 1), 8000 of them
    m = eps.size
    assert abs(eps.mean()) < 4 / np.sqrt(m)
    assert abs(eps.std() - 1.0) < 4 / np.sqrt(2 * m)
    # fourth moment of a Gaussian is 3 (sampling sd ≈ sqrt(96/m))
    assert abs((eps**4).mean() - 3.0) < 4 * np.sqrt(96 / m)
    # no reuse of the same noise across cycles, nor across sites
    lag = np.corrcoef(eps[:-1].ravel(), eps[1:].ravel())[0, 1]
    assert abs(lag) < 4 / np.sqrt(m)
    site = np.corrcoef(eps[:, :-1].ravel(), eps[:, 1:].ravel())[0, 1]
    assert abs(site) < 4 / np.sqrt(m)
    np.testing.assert_allclose(np.asarray(obs.r_std), r_std)


def test_observations_at_selects_one_cycle():
    truths = jnp.asarray(np.random.default_rng(7).normal(size=(5, 8)), jnp.float32)
    run = ObsNetwork(n_state=8, every=2).observe_run(truths, jax.random.key(8))
    one = run.at(3)
    assert isinstance(one, Observations)
    assert one.y.shape == (4,)
    np.testing.assert_array_equal(np.asarray(one.y), np.asarray(run.y)[3])
    # and it is the draw the network makes for that cycle alone
    alone = ObsNetwork(n_state=8, every=2).observe(truths[3], jax.random.key(8), 3)
    np.testing.assert_allclose(np.asarray(one.y), np.asarray(alone.y), rtol=1e-6)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.01, 2.0])
def test_density_outside_unit_interval_is_refused(density):
    with pytest.raises(ValueError, match="density"):
        ObsNetwork(n_state=40, density=density)


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(sites=()), "sites"),
        (dict(sites=(0, 40)), "40"),
        (dict(sites=(-1, 3)), "-1"),
        (dict(every=0), "every"),
        (dict(r_std=0.0), "r_std"),
        (dict(operator="cube"), "cube"),
        (dict(redraw=True), "redraw"),
        (dict(every=2, density=0.5), "only one"),
    ],
)
def test_invalid_networks_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ObsNetwork(n_state=40, **kwargs)


def test_arctan_observations_of_known_values():
    truth = jnp.asarray([0.0, 1.0, -1.0, np.sqrt(3.0), -8.0, 1e4], jnp.float32)
    obs = ObsNetwork(n_state=6, operator="arctan").observe(truth, jax.random.key(0), 1)
    exact = np.array([0.0, np.pi / 4, -np.pi / 4, np.pi / 3, np.arctan(-8.0), np.arctan(1e4)])
    np.testing.assert_allclose(np.asarray(obs.h(truth)), exact, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(obs.h(truth)), np.arctan(np.asarray(truth, np.float64)), rtol=1e-6
    )
    assert not obs.linear


def test_unknown_operator_error_names_the_allowed_ones():
    with pytest.raises(ValueError) as info:
        ObsNetwork(n_state=40, operator="tanh")
    message = str(info.value)
    assert "'tanh'" in message and "obs.operator" in message
    for name in ("identity", "square", "abs", "arctan"):
        assert f"'{name}'" in message


def test_letkf_tracks_lorenz96_through_arctan_observations():
    """LETKF (radius 10, inflation 1.02, RTPS 0.1: the every-4th-site settings of
    experiments/configs/l96_every4.yaml) with y = arctan(x) + N(0, 0.5²) at every 2nd site of
    the 40-site Lorenz-96, N = 20, 400 cycles (burn-in 100). arctan flattens for |x| ≳ 2, so
    a large part of the state is seen weakly, but the ensemble carries H through the
    members. Measured: rmse_a 0.91 (0.71-0.91 over five truth/obs/ensemble seeds), the free
    run 3.70 (about the climatological std 3.6, Lorenz & Emanuel 1998)."""
    from baselines import LETKF, FreeRun
    from ensda.cycle import run_cycles, summarize
    from ensda.inflation import wrap
    from ensda.testbeds import Lorenz96, RingGrid

    n, n_mem, cycles = 40, 20, 400
    tb = Lorenz96(n=n)
    truth = tb.nature_run(jax.random.key(0), cycles)
    net = ObsNetwork(n_state=n, every=2, operator="arctan", r_std=0.5)
    obs = net.observe_run(truth[1:], jax.random.key(1))
    x0 = truth[0] + jax.random.normal(jax.random.key(2), (n_mem, n))
    rmse = {}
    for name, assim in (
        ("letkf", wrap(LETKF(grid=RingGrid(n), radius=10.0), inflation=1.02, rtps=0.1)),
        ("none", FreeRun()),
    ):
        result = run_cycles(tb, assim, truth, obs, x0, jax.random.key(3))
        rmse[name] = summarize(result, 100)["rmse_a"]
    assert rmse["none"] > 2.5, rmse
    assert rmse["letkf"] < 1.2 and rmse["letkf"] < 0.35 * rmse["none"], rmse


def test_config_accepts_exactly_the_operators():
    """``obs.operator`` in experiment configs lists the same names as ``OPERATORS``."""
    import typing

    from ensda.config import ObsConfig
    from ensda.observe import OPERATORS

    assert set(typing.get_args(ObsConfig.model_fields["operator"].annotation)) == set(OPERATORS)
