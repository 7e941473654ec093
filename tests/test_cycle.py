"""The cycled runner: non-finite states are reported with the right cycle and stage, and
the per-cycle outputs line up with the truth and observations of their cycle.

References: the cycle at which a NaN (or an overflowing state) is injected; the
Lorenz-96 forecast of the initial ensemble (free run); NumPy errors of the stored means
against the truth; with almost exact observations of every site, the analysis mean equals
the observations of the same cycle.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from baselines import ETKF, FreeRun
from ensda.config import validate
from ensda.cycle import NonFiniteStateError, check_finite, run_chunked, run_cycles, summarize
from ensda.experiment import make_osse, run_method
from ensda.observe import Observations, ObsNetwork
from ensda.pytree import pytree_dataclass
from ensda.testbeds import Lorenz96

N_STATE, N_MEM, K = 8, 10, 12


@pytest.fixture(scope="module")
def setup():
    tb = Lorenz96(n=N_STATE, spinup_steps=300)
    truth = tb.nature_run(jax.random.key(0), K)
    net = ObsNetwork(n_state=N_STATE, r_std=0.5)
    obs = net.observe_run(truth[1:], jax.random.key(1))
    x0 = truth[0] + jax.random.normal(jax.random.key(2), (N_MEM, N_STATE))
    return tb, truth, obs, x0


def with_y(obs: Observations, cycle: int, value: float) -> Observations:
    """Observations with the first value of ``cycle`` (1-based) replaced."""
    return dataclasses.replace(obs, y=obs.y.at[cycle - 1, 0].set(value))


@pytree_dataclass
class Blowup:
    """Leaves the background alone, except at a cycle whose first observation is huge: then
    the analysis is a large but finite state, which the next forecast overflows."""

    ensemble = True
    name = "blowup"

    def analyse(self, background, obs, key):
        big = jnp.abs(obs.y[0]) > 1e6
        wild = 1e18 * (background - background.mean(0) + jnp.arange(background.shape[-1]))
        return jnp.where(big, wild, background)


def test_nan_in_analysis_reported_at_its_cycle(setup):
    tb, truth, obs, x0 = setup
    result = run_cycles(tb, ETKF(), truth, with_y(obs, 7, np.nan), x0, jax.random.key(3))
    finite_a = np.asarray(result.finite_a)
    assert finite_a[:6].all() and not finite_a[6]
    with pytest.raises(NonFiniteStateError) as info:
        check_finite(result, "etkf")
    err = info.value
    assert (err.cycle, err.stage, err.method) == (7, "analysis", "etkf")
    assert "cycle 7" in str(err) and "analysis" in str(err)


def test_overflowing_analysis_reported_as_forecast_failure_next_cycle(setup):
    tb, truth, obs, x0 = setup
    result = run_cycles(tb, Blowup(), truth, with_y(obs, 4, 1e9), x0, jax.random.key(3))
    assert np.asarray(result.finite_a)[3]  # the analysis of cycle 4 is finite
    assert not np.asarray(result.finite_f)[4]  # its forecast is not
    with pytest.raises(NonFiniteStateError) as info:
        check_finite(result, "blowup")
    assert (info.value.cycle, info.value.stage) == (5, "forecast")


def test_finite_run_passes_the_check(setup):
    tb, truth, obs, x0 = setup
    result = run_cycles(tb, ETKF(), truth, obs, x0, jax.random.key(3))
    check_finite(result, "etkf")  # no error
    assert result.n_cycles == K and result.n_members == N_MEM


def test_chunked_run_stops_early_and_names_the_cycle(setup):
    tb, truth, obs, x0 = setup
    done = []
    timed = run_chunked(
        tb,
        ETKF(),
        truth,
        with_y(obs, 8, np.nan),
        x0,
        jax.random.key(3),
        chunks=4,
        progress=done.append,
    )
    assert done == [3, 6]  # chunk 3 (cycles 7-9) holds the NaN: no progress past it
    assert timed.result.n_cycles == 9
    with pytest.raises(NonFiniteStateError) as info:
        check_finite(timed.result, "etkf")
    assert (info.value.cycle, info.value.stage) == (8, "analysis")


def test_chunked_run_equals_one_scan(setup):
    tb, truth, obs, x0 = setup
    whole = run_cycles(tb, ETKF(), truth, obs, x0, jax.random.key(3))
    chunked = run_chunked(tb, ETKF(), truth, obs, x0, jax.random.key(3), chunks=3).result
    np.testing.assert_allclose(
        np.asarray(chunked.mean_a), np.asarray(whole.mean_a), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(chunked.final_ensemble), np.asarray(whole.final_ensemble), rtol=1e-5, atol=1e-5
    )


def test_free_run_outputs_line_up_with_truth(setup):
    tb, truth, obs, x0 = setup
    result = run_cycles(tb, FreeRun(), truth, obs, x0, jax.random.key(3))
    # final ensemble = K cycle forecasts of the initial ensemble
    np.testing.assert_allclose(
        np.asarray(result.final_ensemble), np.asarray(tb.forecast(x0, K)), rtol=1e-4, atol=1e-4
    )
    mean_a = np.asarray(result.mean_a, np.float64)
    t = np.asarray(truth, np.float64)[1:]
    np.testing.assert_allclose(np.asarray(result.mse_a), ((mean_a - t) ** 2).mean(1), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(result.mse_f), np.asarray(result.mse_a), rtol=1e-6)
    assert np.all(np.asarray(result.rank_hist_a).sum(1) == N_STATE)
    s = summarize(result, burn_in=2)
    assert s["rmse_a"] == pytest.approx(np.sqrt(((mean_a - t) ** 2).mean(1))[2:].mean(), rel=1e-4)


def test_analysis_uses_the_observations_of_its_own_cycle(setup):
    tb, truth, _, x0 = setup
    # nearly exact observations of every site and N > n: the ETKF mean fits them
    obs = ObsNetwork(n_state=N_STATE, r_std=0.01).observe_run(truth[1:], jax.random.key(4))
    result = run_cycles(tb, ETKF(), truth, obs, x0, jax.random.key(3))
    np.testing.assert_allclose(np.asarray(result.mean_a), np.asarray(obs.y), atol=0.05)
    rmse_a = np.sqrt(np.asarray(result.mse_a))
    assert rmse_a.max() < 0.05
    # the check can tell cycles apart: the state moves far more than 0.05 in one cycle
    assert np.abs(np.diff(np.asarray(obs.y), axis=0)).max(1).min() > 0.2


def small_config(method):
    return validate(
        {
            "testbed": {"n": 8, "spinup_steps": 200, "climatology_samples": 200},
            "ensemble": {"size": 6},
            "cycles": 12,
            "burn_in": 2,
            "method": method,
            "tracking": {"enabled": False},
        }
    )


def test_run_method_reports_nan_from_a_corrupt_observation():
    cfg = small_config("etkf")
    osse = make_osse(cfg)
    bad = dataclasses.replace(osse, obs=with_y(osse.obs, 5, np.nan))
    with pytest.raises(NonFiniteStateError) as info:
        run_method(cfg, bad, "etkf")
    assert (info.value.cycle, info.value.stage, info.value.method) == (5, "analysis", "etkf")


def test_run_method_reports_forecast_blowup_after_absurd_observation():
    # 3D-Var draws the state to an absurd (finite) observation at cycle 6; the model overflows next
    cfg = small_config("3dvar")
    osse = make_osse(cfg)
    bad = dataclasses.replace(osse, obs=with_y(osse.obs, 6, 1e30))
    with pytest.raises(NonFiniteStateError) as info:
        run_method(cfg, bad, "3dvar")
    assert (info.value.cycle, info.value.stage) == (7, "forecast")


def test_climatology_skips_the_forecast_its_background_is_the_previous_draw(setup):
    """``needs_forecast = False``: a testbed whose forecast returns NaN does not reach the
    climatology method, and its background at cycle k is its analysis of cycle k − 1
    (recomputed in NumPy from the stored means)."""
    from baselines.climatology import Climatology

    tb, truth, obs, x0 = setup

    class NanForecast:
        grid = tb.grid

        def cycle_forecast(self, x):
            return jnp.full_like(x, jnp.nan)

    clim = Climatology(samples=tb.climatology_samples(jax.random.key(4), 50), mean=None)
    clim = dataclasses.replace(clim, mean=clim.samples.mean(0))
    result = run_cycles(NanForecast(), clim, truth, obs, x0, jax.random.key(3))
    mean_f, mean_a = np.asarray(result.mean_f), np.asarray(result.mean_a)
    assert np.isfinite(mean_a).all() and np.isfinite(mean_f).all()
    np.testing.assert_allclose(mean_f[0], np.asarray(x0).mean(0), rtol=1e-6)
    np.testing.assert_allclose(mean_f[1:], mean_a[:-1], rtol=1e-6)
    with pytest.raises(NonFiniteStateError, match="forecast"):  # the free run does use the forecast
        check_finite(
            run_cycles(NanForecast(), FreeRun(), truth, obs, x0, jax.random.key(3)), "none"
        )


def test_control_is_one_free_trajectory_from_the_climatological_mean():
    """``control``: one member, started at the climatological mean, never corrected. On the
    attractor it is an independent state, so its error tends to √2 σ_clim, while the free
    ensemble's mean tends to the climatological mean (error σ_clim): the ratio is ≈ √2."""
    cfg = validate(
        {
            "testbed": {"n": 40, "spinup_steps": 500, "climatology_samples": 500},
            "ensemble": {"size": 20, "init": "climatology"},
            "cycles": 2000,
            "burn_in": 200,
            "tracking": {"enabled": False},
        }
    )
    osse = make_osse(cfg)
    control, free = run_method(cfg, osse, "control"), run_method(cfg, osse, "none")
    assert control.n_members == 1 and free.n_members == 20
    mean_f = np.asarray(control.result.mean_f)
    start = osse.climatology.mean(0, keepdims=True)
    np.testing.assert_allclose(
        mean_f[0], np.asarray(osse.forecast_model.cycle_forecast(start))[0], rtol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(control.result.mean_a), mean_f)  # never corrected
    ratio = control.summary["rmse_a"] / free.summary["rmse_a"]
    assert ratio == pytest.approx(np.sqrt(2.0), rel=0.08), ratio
