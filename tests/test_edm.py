"""EDM preconditioning, noise schedule, training noise and loss (Karras et al. 2022).

References: Table 1 of the paper (scalings, schedule, training distribution) written out
in NumPy float64; the exact denoiser of a Gaussian prior N(μ, Σ),
D = μ + Σ (Σ + σ² I)⁻¹ (z − μ) (np.linalg.solve), whose expected weighted loss is
E_σ[λ(σ) tr(σ² Σ (Σ + σ² I)⁻¹) / n], integrated over ln σ ~ N(P_mean, P_std²) by
Gauss–Hermite quadrature.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensda.diffusion.edm import EDM, gaussian_denoiser

SIGMAS = np.array([0.002, 0.05, 0.3, 1.0, 2.5, 17.0, 80.0])


def prior(n=5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    cov = a @ a.T / n + 0.2 * np.eye(n)
    return rng.normal(0.0, 0.5, n), cov


@pytest.mark.parametrize("sd", [1.0, 0.5])
def test_scalings_match_table_1(sd):
    edm = EDM(sigma_data=sd)
    c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64) for c in edm.scalings(SIGMAS))
    s = SIGMAS
    np.testing.assert_allclose(c_skip, sd**2 / (s**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_out, s * sd / np.sqrt(s**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1.0 / np.sqrt(s**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_noise, np.log(s) / 4.0, rtol=1e-6)
    # identities: the skip and the output parts share the target variance; unit input variance;
    # λ = 1 / c_out² (unit effective weight on F)
    np.testing.assert_allclose(c_skip + c_out**2 / sd**2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(c_in**2 * (s**2 + sd**2), 1.0, rtol=1e-6)
    lam = np.asarray(edm.loss_weight(SIGMAS), np.float64)
    np.testing.assert_allclose(lam, (s**2 + sd**2) / (s * sd) ** 2, rtol=1e-6)
    np.testing.assert_allclose(lam * c_out**2, 1.0, rtol=1e-6)


def test_denoiser_wraps_network_and_tends_to_identity():
    edm = EDM(sigma_data=0.7)
    z = jnp.linspace(-2.0, 3.0, 6)
    net = lambda z_in, c_noise: jnp.sin(3.0 * z_in) + c_noise
    D = edm.denoiser(net)
    for s in [0.1, 1.0, 10.0]:
        sd = 0.7
        z_in = np.asarray(z) / np.sqrt(s**2 + sd**2)
        want = sd**2 / (s**2 + sd**2) * np.asarray(z) + s * sd / np.sqrt(s**2 + sd**2) * (
            np.sin(3.0 * z_in) + np.log(s) / 4.0
        )
        np.testing.assert_allclose(D(z, jnp.float32(s)), want, rtol=1e-5, atol=1e-6)
    # σ → 0: D → z whatever the network (c_skip → 1, c_out → 0)
    np.testing.assert_allclose(D(z, jnp.float32(1e-5)), z, atol=1e-4)


def test_sigmas_schedule():
    edm = EDM()
    steps = 18
    s = np.asarray(edm.sigmas(steps), np.float64)
    assert s.shape == (steps + 1,)
    assert s[-1] == 0.0
    np.testing.assert_allclose(s[0], 80.0, rtol=1e-6)
    np.testing.assert_allclose(s[-2], 0.002, rtol=1e-5)
    assert np.all(np.diff(s) < 0)
    i = np.arange(steps)
    ref = (80.0 ** (1 / 7) + i / (steps - 1) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s[:-1], ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(edm.sigmas(1)), [80.0, 0.0])
    with pytest.raises(ValueError, match="steps"):
        edm.sigmas(0)


def test_training_sigma_is_log_normal():
    edm = EDM(p_mean=-0.4, p_std=0.9)
    m = 200_000
    log_s = np.log(np.asarray(edm.training_sigma(jax.random.key(1), (m,)), np.float64))
    # standard errors of the sample mean and std of ln σ: P_std/√m and P_std/√(2m)
    assert abs(log_s.mean() - (-0.4)) < 4 * 0.9 / np.sqrt(m)
    assert abs(log_s.std() - 0.9) < 4 * 0.9 / np.sqrt(2 * m)
    assert edm.training_sigma(jax.random.key(1), (3, 4)).shape == (3, 4)


def gaussian_net(edm, mu, cov):
    """The exact Gaussian denoiser written as a batched network through the inverse
    preconditioning."""
    D = jax.vmap(gaussian_denoiser(mu, cov))

    def net(z_in, c_noise):
        sigma = jnp.exp(4.0 * c_noise)
        c_skip, c_out, c_in, _ = edm.scalings(sigma)
        z = z_in / c_in[:, None]
        return (D(z, sigma) - c_skip[:, None] * z) / c_out[:, None]

    return net


def expected_loss(edm, cov):
    """E_σ[λ(σ) tr(σ²Σ(Σ+σ²I)⁻¹)/n], ln σ ~ N(P_mean, P_std²), Gauss–Hermite (probabilists')."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    lam_cov = np.linalg.eigvalsh(cov)
    total = 0.0
    for t, w in zip(nodes, weights):
        s2 = np.exp(2 * (edm.p_mean + edm.p_std * t))
        lam = (s2 + edm.sigma_data**2) / (s2 * edm.sigma_data**2)
        total += w * lam * np.mean(s2 * lam_cov / (lam_cov + s2))
    return total / np.sqrt(2 * np.pi)


def test_gaussian_denoiser_matches_formula():
    mu, cov = prior()
    D = gaussian_denoiser(mu, cov)
    z = np.random.default_rng(5).normal(size=5)
    for s in [0.01, 0.7, 30.0]:
        want = mu + cov @ np.linalg.solve(cov + s**2 * np.eye(5), z - mu)
        np.testing.assert_allclose(
            D(jnp.asarray(z, jnp.float32), jnp.float32(s)), want, rtol=2e-5, atol=2e-5
        )
    with pytest.raises(ValueError, match="cov"):
        gaussian_denoiser(mu, cov[:3])


def test_loss_of_exact_denoiser_is_its_expected_value_and_beats_wrong_ones():
    mu, cov = prior()
    edm = EDM(sigma_data=float(np.sqrt(np.mean(np.diag(cov)))))
    b = 50_000
    x0 = jnp.asarray(np.random.default_rng(2).multivariate_normal(mu, cov, size=b), jnp.float32)
    key = jax.random.key(3)
    loss = jax.jit(edm.loss, static_argnums=0)
    exact = float(loss(gaussian_net(edm, mu, cov), key, x0))
    # the per-sample weighted loss is O(1) and bounded; measured: 0.9349 vs 0.9359 (0.1 %,
    # 0.1-0.35 % over three keys)
    assert abs(exact - expected_loss(edm, cov)) < 0.01 * expected_loss(edm, cov)
    # same noise draws (same key): a wrong prior covariance, a wrong mean, and F = 0 (the
    # optimal denoiser of N(0, sd² I)) all give larger losses. Measured excess: 0.0133 (1.5 Σ),
    # 0.0236 (μ + 0.2), 0.082 (F = 0); the Monte Carlo noise of a difference is ~0.001.
    wrong_cov = float(loss(gaussian_net(edm, mu, 1.5 * cov), key, x0))
    wrong_mu = float(loss(gaussian_net(edm, mu + 0.2, cov), key, x0))
    zero = float(loss(lambda z_in, c_noise: jnp.zeros_like(z_in), key, x0))
    assert wrong_cov - exact > 0.007 and wrong_mu - exact > 0.012 and zero - exact > 0.04


def test_loss_batch_shapes_and_weighting():
    edm = EDM()
    x0 = jnp.ones((3, 2, 4))
    calls = []

    def net(z_in, c_noise):
        calls.append((z_in.shape, c_noise.shape))
        return jnp.zeros_like(z_in)

    value = edm.loss(net, jax.random.key(0), x0)
    assert calls == [((3, 2, 4), (3,))]
    # F = 0: D = c_skip z, so the loss is mean_b λ_b mean_i (c_skip z − x0)² — recompute it
    sig_key, noise_key = jax.random.split(jax.random.key(0))
    s = np.asarray(edm.training_sigma(sig_key, (3,)), np.float64)[:, None, None]
    eps = np.asarray(jax.random.normal(noise_key, (3, 2, 4)), np.float64)
    z = 1.0 + s * eps
    per = (
        np.mean((z / (s**2 + 1) - 1.0) ** 2, axis=(1, 2)) * (s[:, 0, 0] ** 2 + 1) / s[:, 0, 0] ** 2
    )
    np.testing.assert_allclose(value, per.mean(), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{"sigma_data": 0.0}, {"sigma_min": 0.0}, {"sigma_min": 90.0}, {"rho": 0.0}, {"p_std": -1.0}],
)
def test_edm_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="EDM"):
        EDM(**kwargs)
