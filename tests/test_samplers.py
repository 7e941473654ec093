"""Heun and DPM-Solver++(2S) samplers against a known Gaussian distribution.

With the exact denoiser of N(μ, Σ) (``gaussian_denoiser``, itself checked against the
closed form in test_edm), sampling must reproduce N(μ, Σ):

- Monte Carlo, M = 4000 samples (float64 statistics): every mean component within 4
  standard errors sqrt(Σ_ii / M), every covariance entry within 4 Wishart standard
  deviations sqrt((Σ_ij² + Σ_ii Σ_jj) / M). The samplers have a discretisation bias on top
  of the sampling error, measured with M = 200,000: deterministic, 40 steps ≤ 0.95
  (Heun) / 0.65 (DPM) Wishart stds of M = 4000; churn 10, 80 steps ≤ 0.80 / 0.64.
  The deterministic samplers also carry a mean bias ≈ Σ^½ μ / σ_max (they start from
  N(0, σ_max² I), not N(μ, Σ + σ_max² I)): 0.008 here, 0.5 standard error.
- Without sampling noise: a deterministic sampler with the Gaussian denoiser is an affine
  map of its initial state x_T, x_0 = a + B x_T, so its output covariance is σ_max² B Bᵀ
  exactly (B from the images of the unit vectors); this measures the discretisation error
  alone.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensda.diffusion.edm import EDM, gaussian_denoiser
from ensda.diffusion.samplers import SamplerConfig, nfe, sample
from tests.reference import z_scores

N = 6
M = 4000
EDM_ = EDM()


def prior():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(N, N))
    cov = a @ a.T / N + 0.1 * np.eye(N)
    cov = cov / np.mean(np.diag(cov))  # eigenvalues 0.10 ... 2.84
    return rng.normal(0.0, 0.5, N), cov


MU, COV = prior()
D = gaussian_denoiser(MU, COV)


def keys(m, seed=0):
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(m))


#: one compiled program per (denoiser, shape, edm, config): tests share them
run = jax.jit(sample, static_argnames=("denoiser", "shape", "edm", "config"))


@functools.cache
def draw(config, m=M, seed=0):
    """M samples (float64) and the per-sample call counts, cached across tests."""
    batched = jax.jit(jax.vmap(lambda k: sample(D, k, (N,), EDM_, config)))
    x, count = batched(keys(m, seed))
    return np.asarray(x, np.float64), np.asarray(count)


# measured (seed 0, M = 4000): mean z / covariance z
#   heun  det 40 steps: 1.32 / 2.23      dpm2s det 40 steps: 1.30 / 1.76
#   heun  churn 10, 80 steps: 2.81 / 1.86   dpm2s churn 10, 80 steps: 2.77 / 2.48
@pytest.mark.parametrize(
    "config",
    [
        SamplerConfig("heun", steps=40),
        SamplerConfig("dpm2s", steps=40),
        SamplerConfig("heun", steps=80, churn=10.0),
        SamplerConfig("dpm2s", steps=80, churn=10.0),
    ],
    ids=["heun", "dpm2s", "heun-churn", "dpm2s-churn"],
)
def test_sampling_reproduces_gaussian(config):
    x, count = draw(config)
    mean_z, cov_z = z_scores(x, MU, COV)
    assert mean_z < 4.0, mean_z
    assert cov_z < 4.0, cov_z
    assert np.all(count == nfe(config))
    # the check can fail: the same samples against a prior with 20 % more variance, or a
    # mean shifted by a quarter std (measured: cov z 7.4-9.5, mean z 16.9-18.6)
    assert z_scores(x, MU, 1.2 * COV)[1] > 6.0
    assert z_scores(x, MU + 0.25 * np.sqrt(np.diag(COV)), COV)[0] > 10.0


def flow_map(config):
    """(a, σ_max² B Bᵀ) of the deterministic sampler x_0 = a + B x_T (B column by column)."""
    starts = jnp.concatenate([jnp.zeros((1, N)), jnp.eye(N)])
    out = jax.jit(
        jax.vmap(lambda x: sample(D, jax.random.key(0), (N,), EDM_, config, x_init=x)[0])
    )(starts)
    out = np.asarray(out, np.float64)
    a, jac = out[0], (out[1:] - out[0]).T
    return a, EDM_.sigma_max**2 * jac @ jac.T


def exact_flow_mean():
    """Mean of the exact ODE flow from N(0, σ_max² I): μ − Σ^½ (Σ + σ_max² I)^-½ μ."""
    lam, u = np.linalg.eigh(COV)
    return MU - u @ (np.sqrt(lam / (lam + EDM_.sigma_max**2)) * (u.T @ MU))


@pytest.mark.parametrize("kind", ["heun", "dpm2s"])
def test_discretisation_error_falls_with_steps(kind):
    err = {}
    for steps in [5, 20, 40]:
        a, cov = flow_map(SamplerConfig(kind, steps=steps))
        err[steps] = np.linalg.norm(cov - COV) / np.linalg.norm(COV)
        np.testing.assert_allclose(a, exact_flow_mean(), atol=0.01 if steps < 40 else 1e-3)
    # measured relative Frobenius error of the covariance, steps 5 / 20 / 40:
    #   heun 2.39 / 0.064 / 0.014; dpm2s 0.39 / 0.030 / 0.0079 (second order: ×4 per halving);
    # mean vs the exact flow: heun 0.0078 / 2.7e-4 / 6e-5, dpm2s 0.0018 / 1.3e-4 / 3e-5
    assert err[40] < {"heun": 0.02, "dpm2s": 0.012}[kind]
    assert err[5] > 10 * err[40]
    assert err[20] / err[40] > 3.0


def test_fewer_steps_are_worse_in_monte_carlo_too():
    x5, _ = draw(SamplerConfig("heun", steps=5))
    x40, _ = draw(SamplerConfig("heun", steps=40))
    e5 = np.linalg.norm(np.cov(x5, rowvar=False) - COV)
    e40 = np.linalg.norm(np.cov(x40, rowvar=False) - COV)
    assert e5 > 10 * e40  # measured (Frobenius): 8.26 vs 0.10


@pytest.mark.parametrize(
    "kind, steps, churn", [("heun", 1, 0.0), ("heun", 7, 5.0), ("dpm2s", 7, 0.0), ("dpm2s", 3, 5.0)]
)
def test_nfe_formula_equals_runtime_count(kind, steps, churn):
    config = SamplerConfig(kind, steps=steps, churn=churn)
    executed = []

    def counting(z, sigma):  # a host callback runs once per executed denoiser call
        jax.debug.callback(lambda: executed.append(1))
        return D(z, sigma)

    _, count = jax.jit(lambda k: sample(counting, k, (N,), EDM_, config))(jax.random.key(0))
    jax.effects_barrier()
    assert int(count) == nfe(config) == 2 * steps - 1 == len(executed)


def test_deterministic_sampler_is_reproducible_and_vmaps():
    config = SamplerConfig("dpm2s", steps=10)
    k = jax.random.key(7)
    a, _ = run(D, k, (N,), EDM_, config)
    b, _ = run(D, k, (N,), EDM_, config)
    np.testing.assert_array_equal(a, b)
    batch, counts = jax.jit(jax.vmap(lambda key: sample(D, key, (N,), EDM_, config)))(
        jnp.stack([k, k, jax.random.key(8)])
    )
    np.testing.assert_array_equal(batch[0], batch[1])
    np.testing.assert_allclose(batch[0], a, rtol=1e-5, atol=1e-5)
    assert not np.allclose(batch[0], batch[2])
    assert counts.shape == (3,) and counts.dtype == jnp.int32
    # churn makes the result depend on the step noise, still reproducible for one key
    churned = SamplerConfig("dpm2s", steps=10, churn=5.0)
    c1, _ = run(D, k, (N,), EDM_, churned)
    c2, _ = run(D, k, (N,), EDM_, churned)
    np.testing.assert_array_equal(c1, c2)
    assert not np.allclose(c1, a, atol=1e-3)


def test_x_init_and_sample_shape():
    config = SamplerConfig("heun", steps=4)
    x_init = EDM_.sigma_max * jax.random.normal(jax.random.key(0), (N,))
    a, _ = run(D, jax.random.key(1), (N,), EDM_, config, x_init=x_init)
    b, _ = run(D, jax.random.key(2), (N,), EDM_, config, x_init=x_init)
    np.testing.assert_array_equal(a, b)  # deterministic: only x_init matters
    with pytest.raises(ValueError, match="x_init"):
        run(D, jax.random.key(1), (N + 1,), EDM_, config, x_init=x_init)
    # any sample shape works with a shape-agnostic denoiser
    img, _ = run(lambda z, s: z / (1.0 + s**2), jax.random.key(0), (2, 3, 4), EDM_, config)
    assert img.shape == (2, 3, 4) and img.dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "euler"},
        {"steps": 0},
        {"churn": -1.0},
        {"s_noise": -0.1},
        {"s_tmin": 2.0, "s_tmax": 1.0},
    ],
)
def test_config_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="SamplerConfig"):
        SamplerConfig(**kwargs)


def test_churn_window_only_applies_between_s_tmin_and_s_tmax():
    # churn restricted to a window below every noise level is the deterministic sampler
    k = jax.random.key(3)
    a, _ = run(D, k, (N,), EDM_, SamplerConfig("heun", steps=6))
    b, _ = run(D, k, (N,), EDM_, SamplerConfig("heun", steps=6, churn=5.0, s_tmax=1e-3))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    c, _ = run(
        D, k, (N,), EDM_, SamplerConfig("heun", steps=6, churn=5.0, s_tmin=0.05, s_tmax=50.0)
    )
    assert np.all(np.isfinite(c)) and not np.allclose(a, c, atol=1e-3)
