"""Verification metrics against brute-force NumPy formulas (docs/design.md §5) and closed forms.

References: weighted RMSE / spread / SSR written out in NumPy; CRPS and energy score as
explicit double loops over members; the closed-form CRPS of a Gaussian (Gneiting et al.
2005); rank counts with NumPy; the Candille–Talagrand flatness δ, whose expectation is 1
for a reliable ensemble (χ²_N / N).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensda import metrics
from ensda.metrics.crps import crps_pointwise


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    n_mem, shape = 7, (3, 5)
    ens = rng.normal(0.5, 1.5, (n_mem, *shape))
    truth = rng.normal(0.0, 1.0, shape)
    weights = rng.uniform(0.2, 2.0, shape)
    return ens, truth, weights


def f32(a):
    return jnp.asarray(a, jnp.float32)


def ref_rmse(ens, truth, w):
    err2 = (ens.sum(0) / ens.shape[0] - truth) ** 2
    return math.sqrt((w * err2).sum() / w.sum())


def ref_spread(ens, w):
    n = ens.shape[0]
    mean = ens.sum(0) / n
    var = ((ens - mean) ** 2).sum(0) / (n - 1)
    return math.sqrt((w * var).sum() / w.sum())


def ref_crps_point(members, t, fair):
    n = len(members)
    skill = sum(abs(x - t) for x in members) / n
    pair = sum(abs(a - b) for a in members for b in members)
    return skill - pair / (2 * n * (n - 1) if fair else 2 * n * n)


def test_rmse_weighted(case):
    ens, truth, w = case
    got = float(metrics.ensemble_mean_rmse(f32(ens), f32(truth), f32(w)))
    assert got == pytest.approx(ref_rmse(ens, truth, w), rel=1e-5)
    got_mse = float(metrics.ensemble_mean_mse(f32(ens), f32(truth), f32(w)))
    assert got_mse == pytest.approx(ref_rmse(ens, truth, w) ** 2, rel=1e-5)
    # no weights = uniform weights
    got_u = float(metrics.ensemble_mean_rmse(f32(ens), f32(truth)))
    assert got_u == pytest.approx(ref_rmse(ens, truth, np.ones_like(w)), rel=1e-5)


def test_weights_broadcast_over_leading_state_axes(case):
    ens, truth, w = case
    w_row = w[0]  # (5,) broadcast against (3, 5)
    got = float(metrics.ensemble_mean_rmse(f32(ens), f32(truth), f32(w_row)))
    assert got == pytest.approx(ref_rmse(ens, truth, np.broadcast_to(w_row, truth.shape)), rel=1e-5)


def test_spread_weighted_and_unbiased(case):
    ens, truth, w = case
    assert float(metrics.spread(f32(ens), f32(w))) == pytest.approx(ref_spread(ens, w), rel=1e-5)
    assert float(metrics.squared_spread(f32(ens), f32(w))) == pytest.approx(
        ref_spread(ens, w) ** 2, rel=1e-5
    )
    assert float(metrics.spread(f32(ens[:1]), f32(w))) == 0.0


def test_spread_skill_ratio(case):
    ens, truth, w = case
    n = ens.shape[0]
    s, r = ref_spread(ens, w), ref_rmse(ens, truth, w)
    got = float(metrics.spread_skill_ratio(f32(s**2), f32(r**2), n))
    assert got == pytest.approx(math.sqrt((n + 1) / n) * s / r, rel=1e-5)


def test_ssr_is_one_for_a_reliable_ensemble():
    # truth and members exchangeable: E[MSE of mean] = (N+1)/N σ², E[spread²] = σ².
    rng = np.random.default_rng(1)
    n_mem, n_pts = 5, 200_000
    draws = rng.normal(0.0, 1.0, (n_mem + 1, n_pts))
    ens, truth = draws[:n_mem], draws[n_mem]
    s2 = metrics.squared_spread(f32(ens))
    mse = metrics.ensemble_mean_mse(f32(ens), f32(truth))
    assert float(metrics.spread_skill_ratio(s2, mse, n_mem)) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("estimator,fair", [("fair", True), ("standard", False)])
def test_crps_against_double_loop(case, estimator, fair):
    ens, truth, w = case
    ref = np.empty(truth.shape)
    for i in np.ndindex(truth.shape):
        ref[i] = ref_crps_point(ens[(slice(None), *i)], truth[i], fair)
    got = np.asarray(crps_pointwise(f32(ens), f32(truth), estimator))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    got_mean = float(metrics.crps(f32(ens), f32(truth), f32(w), estimator=estimator))
    assert got_mean == pytest.approx((w * ref).sum() / w.sum(), rel=1e-5)


def test_crps_default_is_fair(case):
    ens, truth, _ = case
    default = float(metrics.crps(f32(ens), f32(truth)))
    fair = np.mean(
        [ref_crps_point(ens[:, i, j], truth[i, j], True) for i in range(3) for j in range(5)]
    )
    assert default == pytest.approx(fair, rel=1e-5)


def test_crps_of_one_member_is_absolute_error():
    x, t = np.array([[1.5, -2.0, 0.0]]), np.array([0.5, 1.0, 0.0])
    got = np.asarray(crps_pointwise(f32(x), f32(t), "standard"))
    np.testing.assert_allclose(got, np.abs(x[0] - t), rtol=1e-6)
    with pytest.raises(ValueError, match="standard"):
        crps_pointwise(f32(x), f32(t), "fair")
    with pytest.raises(ValueError, match="kernel"):
        crps_pointwise(f32(x), f32(t), "kernel")


def gaussian_crps(mu, sigma, t):
    z = (t - mu) / sigma
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    return sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def test_crps_of_gaussian_ensemble_matches_closed_form():
    # Members at the Gaussian's quantiles (j − ½)/N: the ensemble CRPS converges to the
    # closed form as N grows (differences O(1/N)).
    from statistics import NormalDist

    n_mem = 800
    cases = [(0.0, 1.0, 0.0), (1.0, 2.0, 0.3), (-2.0, 0.5, 1.0), (0.0, 1.0, -3.5), (5.0, 3.0, 11.0)]
    q = np.array([NormalDist().inv_cdf((j + 0.5) / n_mem) for j in range(n_mem)])
    ens = np.stack([mu + sigma * q for mu, sigma, _ in cases], axis=1)  # (N, P)
    truth = np.array([t for *_, t in cases])
    ref = np.array([gaussian_crps(*c) for c in cases])
    got = np.asarray(crps_pointwise(f32(ens), f32(truth), "standard"))
    np.testing.assert_allclose(got, ref, rtol=5e-4)
    # fair = standard − Σ|x_j − x_k| / (2N²(N−1)) ≈ standard − E|X − X'| / (2(N−1)),
    # E|X − X'| = 2σ/√π
    sigmas = np.array([sigma for _, sigma, _ in cases])
    got = np.asarray(crps_pointwise(f32(ens), f32(truth), "fair"))
    np.testing.assert_allclose(got, ref - sigmas / (math.sqrt(math.pi) * (n_mem - 1)), rtol=5e-4)


def test_crps_of_random_gaussian_ensemble_matches_closed_form_on_average():
    # The fair estimator is unbiased for the parent distribution even for small N.
    rng = np.random.default_rng(2)
    n_mem, n_pts, mu, sigma = 4, 50_000, 0.7, 1.3
    ens = rng.normal(mu, sigma, (n_mem, n_pts))
    truth = rng.normal(mu, sigma, n_pts)
    # E over t ~ N(μ, σ²) of CRPS(N(μ, σ²), t) = σ/√π
    got = float(metrics.crps(f32(ens), f32(truth), estimator="fair"))
    assert got == pytest.approx(sigma / math.sqrt(math.pi), rel=0.02)
    # the standard estimator is biased high for small N (by E|X−X'|/(2N) = σ/(N√π))
    got_std = float(metrics.crps(f32(ens), f32(truth), estimator="standard"))
    assert got_std == pytest.approx(sigma / math.sqrt(math.pi) * (1 + 1 / n_mem), rel=0.02)


def test_rank_histogram_against_numpy_count():
    rng = np.random.default_rng(3)
    ens = rng.normal(0.0, 1.0, (6, 4, 9))
    truth = rng.normal(0.3, 1.2, (4, 9))
    ranks = np.zeros((4, 9), int)
    for i in np.ndindex(4, 9):
        ranks[i] = sum(1 for m in range(6) if ens[(m, *i)] < truth[i])
    np.testing.assert_array_equal(np.asarray(metrics.truth_rank(f32(ens), f32(truth))), ranks)
    counts = np.asarray(metrics.rank_histogram(f32(ens), f32(truth)))
    ref = np.array([(ranks == k).sum() for k in range(7)])
    np.testing.assert_array_equal(counts, ref)
    assert counts.sum() == 36


def test_rank_histogram_flatness_formula():
    counts = np.array([12, 3, 7, 9, 0, 5])
    m, b = counts.sum(), len(counts)
    ref = ((counts - m / b) ** 2).sum() / (m * (b - 1) / b)
    assert float(metrics.rank_histogram_flatness(counts)) == pytest.approx(ref, rel=1e-6)
    assert float(metrics.rank_histogram_flatness(np.full(6, 10))) == 0.0


def test_rank_histogram_flatness_is_one_for_a_reliable_ensemble():
    # Truth and members from the same distribution: ranks uniform on 0..N, δ ~ χ²_N / N.
    n_mem, n_pts, n_reps = 10, 500, 200
    keys = jax.random.split(jax.random.key(4), n_reps)

    @jax.jit
    @jax.vmap
    def delta(key):
        draws = jax.random.normal(key, (n_mem + 1, n_pts))
        return metrics.rank_histogram_flatness(metrics.rank_histogram(draws[:n_mem], draws[n_mem]))

    deltas = np.asarray(delta(keys))
    # mean of 200 draws of χ²_10/10: sd of the mean = sqrt(2/10/200) ≈ 0.032
    assert abs(deltas.mean() - 1.0) < 0.12
    # an under-dispersive ensemble is far from flat
    draws = np.random.default_rng(5).normal(size=(n_mem + 1, n_pts))
    narrow = metrics.rank_histogram(f32(0.3 * draws[:n_mem]), f32(draws[n_mem]))
    assert float(metrics.rank_histogram_flatness(narrow)) > 10.0


def ref_energy(ens, truth, w, fair):
    n = ens.shape[0]
    x = ens.reshape(n, -1)
    t = truth.reshape(-1)
    wf = np.broadcast_to(w, truth.shape).reshape(-1) if w is not None else np.ones_like(t)

    def norm(v):
        return math.sqrt((wf * v * v).sum() / wf.sum())

    skill = sum(norm(x[j] - t) for j in range(n)) / n
    pair = sum(norm(x[j] - x[k]) for j in range(n) for k in range(n))
    return skill - pair / (2 * n * (n - 1) if fair else 2 * n * n)


@pytest.mark.parametrize("estimator", ["standard", "fair"])
@pytest.mark.parametrize("weighted", [False, True])
def test_energy_score_against_double_loop(case, estimator, weighted):
    ens, truth, w = case
    w = w if weighted else None
    got = float(
        metrics.energy_score(
            f32(ens), f32(truth), None if w is None else f32(w), estimator=estimator
        )
    )
    assert got == pytest.approx(ref_energy(ens, truth, w, estimator == "fair"), rel=1e-5)


def test_energy_score_of_scalar_state_is_crps():
    rng = np.random.default_rng(6)
    ens, truth = rng.normal(size=(9, 1)), rng.normal(size=(1,))
    es = float(metrics.energy_score(f32(ens), f32(truth)))
    assert es == pytest.approx(ref_crps_point(ens[:, 0], truth[0], fair=False), rel=1e-5)
