"""Multiplicative inflation and RTPS (relaxation to prior spread).

References: anomalies and standard deviations computed in NumPy; RTPS per Whitaker &
Hamill (2012): σ_new = α σ_b + (1 − α) σ_a per variable, mean of the analysis kept.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from baselines import ETKF, FreeRun
from ensda.inflation import RTPS, Inflated, inflate, relax_to_prior_spread, wrap
from ensda.observe import Observations


def ensembles(seed=0, n_mem=8, n=6):
    rng = np.random.default_rng(seed)
    bg = rng.normal(1.0, rng.uniform(0.5, 2.0, n), (n_mem, n))
    an = rng.normal(0.5, rng.uniform(0.1, 0.5, n), (n_mem, n))
    return bg, an


@pytest.mark.parametrize("factor", [1.0, 1.07, 2.5])
def test_inflate_scales_anomalies_and_keeps_the_mean(factor):
    bg, _ = ensembles()
    out = np.asarray(inflate(jnp.asarray(bg, jnp.float32), factor))
    mean = bg.mean(0)
    np.testing.assert_allclose(out.mean(0), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out - out.mean(0), factor * (bg - mean), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.std(0, ddof=1), factor * bg.std(0, ddof=1), rtol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_rtps_relaxes_spread_per_variable(alpha):
    bg, an = ensembles(1)
    out = np.asarray(
        relax_to_prior_spread(jnp.asarray(bg, jnp.float32), jnp.asarray(an, jnp.float32), alpha)
    )
    sb, sa = bg.std(0, ddof=1), an.std(0, ddof=1)
    np.testing.assert_allclose(out.mean(0), an.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.std(0, ddof=1), alpha * sb + (1 - alpha) * sa, rtol=1e-4)
    # anomalies only rescaled per variable: X'_new = X'_a · σ_new / σ_a
    target = alpha * sb + (1 - alpha) * sa
    np.testing.assert_allclose(
        out - out.mean(0), (an - an.mean(0)) * target / sa, rtol=1e-4, atol=1e-5
    )
    if alpha == 0.0:
        np.testing.assert_allclose(out, an, rtol=1e-5, atol=1e-6)


def obs_all(n, y, r=1.0):
    return Observations(
        y=jnp.asarray(y, jnp.float32),
        idx=jnp.arange(n, dtype=jnp.int32),
        r_std=jnp.full((n,), r, jnp.float32),
    )


def test_inflated_free_run_is_inflated_background():
    bg, _ = ensembles(2)
    assim = wrap(FreeRun(), inflation=1.3)
    assert isinstance(assim, Inflated)
    out = np.asarray(
        assim.analyse(jnp.asarray(bg, jnp.float32), obs_all(6, np.zeros(6)), jax.random.key(0))
    )
    np.testing.assert_allclose(out, bg.mean(0) + 1.3 * (bg - bg.mean(0)), rtol=1e-4, atol=1e-5)


def test_full_rtps_around_etkf_restores_inflated_background_spread():
    # wrap(): RTPS is innermost, so with α = 1 the analysis spread equals the *inflated* prior
    # spread.
    bg, _ = ensembles(3, n_mem=10)
    obs = obs_all(6, np.random.default_rng(4).normal(size=6), r=0.5)
    assim = wrap(ETKF(), inflation=1.2, rtps=1.0)
    assert isinstance(assim, Inflated) and isinstance(assim.inner, RTPS)
    assert assim.name == "etkf"
    out = np.asarray(assim.analyse(jnp.asarray(bg, jnp.float32), obs, jax.random.key(0)))
    np.testing.assert_allclose(out.std(0, ddof=1), 1.2 * bg.std(0, ddof=1), rtol=1e-4)
    # the mean is the ETKF mean of the inflated background
    plain = np.asarray(
        ETKF().analyse(inflate(jnp.asarray(bg, jnp.float32), 1.2), obs, jax.random.key(0))
    )
    np.testing.assert_allclose(out.mean(0), plain.mean(0), rtol=1e-4, atol=1e-5)
    # and the observations did reduce the spread before the relaxation
    assert np.all(plain.std(0, ddof=1) < 1.2 * bg.std(0, ddof=1))


def test_wrap_without_settings_is_the_core():
    core = ETKF()
    assert wrap(core) is core


@pytest.mark.parametrize(
    "kwargs,word",
    [(dict(inflation=0.9), "inflation"), (dict(rtps=1.5), "rtps"), (dict(rtps=-0.1), "rtps")],
)
def test_wrap_refuses_bad_settings(kwargs, word):
    with pytest.raises(ValueError, match=word):
        wrap(ETKF(), **kwargs)
