"""Lead-time loss (docs/design.md §5) against hand-computed and analytic references.

References:
- interpolation: values worked out by hand on small synthetic curves (inside, on points,
  below the first point, above the last, a non-monotone curve, a NaN RMSE);
- the forecast RMSE curve: a plain NumPy loop over starts and leads with its own
  float64 RK4 Lorenz-96 (imperfect forcing, two steps per cycle, non-uniform weights);
- exact identities: analyses equal to the reference states give loss 0; analyses that
  are the reference states already forecast m cycles give loss m cycles; an analysis at
  the truth against a noisy reference with a perfect model gives −L (clamped);
- the linear model x_{k+1} = a x_k: analysis errors κ times the reference errors give
  RMSE_ref(ℓ) = ρ a^ℓ exactly, so ℓ* solves the chord equation by hand and is within the
  chord error of log κ / log a cycles (exactly m when κ = a^m).
"""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensda import metrics
from ensda.testbeds import Lorenz96

H = 6.0  # hours per cycle on Lorenz-96 (0.05 time units, one step)


# --------------------------------------------------------------------------- interpolation

LEADS = np.array([0.0, 6.0, 12.0, 18.0, 24.0])
CURVE = np.array([0.2, 0.5, 1.0, 1.6, 2.0])


@pytest.mark.parametrize(
    "r,matched,off,below",
    [
        (0.75, 9.0, False, False),  # halfway between 0.5 (6 h) and 1.0 (12 h)
        (1.3, 15.0, False, False),  # (1.3-1.0)/(1.6-1.0) = 0.5 of 12..18 h
        (0.35, 3.0, False, False),  # (0.35-0.2)/0.3 = 0.5 of 0..6 h
        (1.6, 18.0, False, False),  # on a point
        (2.0, 24.0, False, False),  # on the last point: still on the curve
        (0.2, 0.0, False, False),  # on the first point
        (0.05, 0.0, False, True),  # below: clamped at lead 0
        (2.5, math.inf, True, False),  # above every point: "> max lead"
    ],
)
def test_interpolation_hand_values(r, matched, off, below):
    res = metrics.lead_time_loss(r, 6.0, LEADS, CURVE)
    assert float(res.matched_lead_h) == pytest.approx(matched, abs=1e-5)
    assert float(res.loss_h) == pytest.approx(matched - 6.0, abs=1e-5)
    assert bool(res.off_curve) is off
    assert bool(res.below_curve) is below
    assert float(res.lead_h) == 6.0 and float(res.max_lead_h) == 24.0
    assert res.text == ("> 18 h" if off else f"{matched - 6.0:.1f} h")


def test_non_monotone_curve_uses_first_crossing():
    leads = np.array([0.0, 1.0, 2.0, 3.0])
    curve = np.array([0.2, 0.8, 0.6, 1.0])
    # 0.7 is first reached on 0..1: (0.7-0.2)/0.6; the later dip is ignored
    assert float(metrics.lead_time_loss(0.7, 0.0, leads, curve).matched_lead_h) == pytest.approx(
        5 / 6, abs=1e-6
    )
    # 0.9 is above the 0.8 peak: first reached on 2..3: 2 + (0.9-0.6)/0.4
    assert float(metrics.lead_time_loss(0.9, 0.0, leads, curve).matched_lead_h) == pytest.approx(
        2.75, abs=1e-6
    )
    # 0.65: first reached on 0..1 (not on the dip 1..2 nor 2..3)
    assert float(metrics.lead_time_loss(0.65, 0.0, leads, curve).matched_lead_h) == pytest.approx(
        0.75, abs=1e-6
    )


def test_nan_is_off_curve_and_jit_vmap_agree():
    res = metrics.lead_time_loss(float("nan"), 6.0, LEADS, CURVE)
    assert bool(res.off_curve) and math.isinf(float(res.loss_h))
    rs = jnp.array([0.75, 0.05, 2.5, 1.3])
    got = jax.jit(jax.vmap(metrics.lead_time_loss, in_axes=(0, None, None, None)))(
        rs, 6.0, LEADS, CURVE
    )
    np.testing.assert_allclose(np.asarray(got.loss_h), [3.0, -6.0, np.inf, 9.0], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.off_curve), [False, False, True, False])
    np.testing.assert_array_equal(np.asarray(got.below_curve), [False, True, False, False])


def test_single_point_curve():
    assert float(metrics.lead_time_loss(0.1, 0.0, [0.0], [0.3]).loss_h) == 0.0
    assert bool(metrics.lead_time_loss(0.4, 0.0, [0.0], [0.3]).off_curve)


# --------------------------------------------------------------------------- forecast RMSE curve


def np_l96_step(x, forcing, dt):
    def f(v):
        return (np.roll(v, -1) - np.roll(v, 2)) * np.roll(v, 1) - v + forcing

    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def test_rmse_curve_matches_numpy_loop():
    truth_tb = Lorenz96(n=20, forcing=8.0, steps_per_cycle=2)
    model = Lorenz96(n=20, forcing=9.0, steps_per_cycle=2)  # imperfect forecast model
    truth = np.asarray(truth_tb.nature_run(jax.random.key(3), 20), np.float64)
    rng = np.random.default_rng(0)
    starts = np.array([3, 7, 10, 2, 14])
    x0 = truth[starts] + rng.normal(0.0, 0.3, (len(starts), 20))
    w = rng.uniform(0.2, 2.0, 20)
    max_lead = 6

    ref = np.empty((len(starts), max_lead + 1))
    for i, s in enumerate(starts):
        x = x0[i].copy()
        for lead in range(max_lead + 1):
            ref[i, lead] = math.sqrt((w * (x - truth[s + lead]) ** 2).sum() / w.sum())
            for _ in range(2):
                x = np_l96_step(x, 9.0, 0.05)

    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    args = (model.cycle_forecast, f32(x0), f32(truth), starts, max_lead, f32(w))
    np.testing.assert_allclose(np.asarray(metrics.forecast_rmse_by_start(*args)), ref, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(metrics.forecast_rmse_curve(*args)), ref.mean(0), rtol=1e-4
    )
    # the same states through reference_curve
    got = metrics.reference_curve(
        model.cycle_forecast, f32(truth), starts, max_lead, f32(w), initial_states=f32(x0)
    )
    np.testing.assert_allclose(np.asarray(got), ref.mean(0), rtol=1e-4)


def test_starts_past_the_truth_are_refused():
    tb = Lorenz96(n=8)
    truth = jnp.zeros((11, 8))
    with pytest.raises(ValueError, match="start"):
        metrics.forecast_rmse_curve(tb.cycle_forecast, truth[4:5], truth, [4], 7)
    with pytest.raises(ValueError, match="key"):
        metrics.reference_curve(tb.cycle_forecast, truth, [1], 3, noise_std=0.1)
    with pytest.raises(ValueError, match="analyses"):
        metrics.analysis_lead_time_loss(truth, truth, tb.cycle_forecast, 2, hours_per_cycle=H)


def test_reference_noise_std_and_per_cycle_keys():
    tb = Lorenz96()
    truth = tb.nature_run(jax.random.key(0), 60)
    starts = np.arange(1, 41)
    key = jax.random.key(7)
    curve = metrics.reference_curve(tb.cycle_forecast, truth, starts, 2, noise_std=0.2, key=key)
    # lead 0: mean over 40 starts of the RMS of 40 N(0, 0.2²) values: 0.2 (1 - 1/160) ± 1.8 %
    assert float(curve[0]) == pytest.approx(0.2, rel=0.06)
    # a start's perturbation depends on its cycle only, not on which other starts are used
    a = metrics.reference_initial_states(truth, [5, 9], 0.2, key)
    b = metrics.reference_initial_states(truth, [9], 0.2, key)
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[0]))
    assert not np.allclose(np.asarray(a[0] - truth[5]), np.asarray(b[0] - truth[9]))


# --------------------------------------------------------------------- exact identities (Lorenz-96)


@pytest.fixture(scope="module")
def l96():
    tb = Lorenz96()
    truth = tb.nature_run(jax.random.key(0), 100)
    return tb, truth


@pytest.mark.parametrize("m", [0, 2, 5])
def test_analyses_m_cycles_along_the_reference_lose_m_cycles(l96, m):
    """A_{s+m} = M^m(R_s): forecast to lead L from s+m is the reference forecast from s to
    lead L+m, verified at the same truth, so r = RMSE_ref(L+m) and the loss is m cycles."""
    tb, truth = l96
    lead, max_lead = 4, 20
    starts = np.arange(1, 61, 2)
    ref_states = metrics.reference_initial_states(truth, starts, 0.1, jax.random.key(1))
    curve = metrics.reference_curve(
        tb.cycle_forecast, truth, starts, max_lead, initial_states=ref_states
    )
    c = np.asarray(curve)
    assert c[lead + m] > c[: lead + m].max()  # precondition: first reached at lead + m
    analyses = jax.vmap(lambda x: tb.forecast(x, m))(ref_states)
    r = metrics.forecast_rmse_curve(tb.cycle_forecast, analyses, truth, starts + m, lead)[lead]
    res = metrics.lead_time_loss(r, lead * H, H * np.arange(max_lead + 1), curve)
    assert float(res.loss_h) == pytest.approx(m * H, abs=1e-3)
    assert not bool(res.off_curve) and not bool(res.below_curve)


def test_convenience_exact_cases(l96):
    tb, truth = l96
    imperfect = Lorenz96(forcing=8.5)
    kw = dict(hours_per_cycle=tb.hours_per_cycle, burn_in=10, stride=3, max_lead_cycles=24)
    # analyses at the truth, DiffDA-style reference (truth, imperfect model): same states, loss 0
    res = metrics.analysis_lead_time_loss(
        types.SimpleNamespace(mean_a=truth[1:]), truth, imperfect.cycle_forecast, 4, **kw
    )
    assert float(res.loss_h) == pytest.approx(0.0, abs=1e-3) and float(res.lead_h) == 24.0
    # analyses = the given reference states (noisy), perfect model: loss 0
    noisy = truth[1:] + 0.1 * jax.random.normal(jax.random.key(4), truth[1:].shape)
    res = metrics.analysis_lead_time_loss(
        noisy, truth, tb.cycle_forecast, 4, reference_states=noisy, **kw
    )
    assert float(res.loss_h) == pytest.approx(0.0, abs=1e-3)
    # perfect analysis, perfect model, noisy reference: r = 0 below the curve -> clamped, loss = -L
    res = metrics.analysis_lead_time_loss(
        truth[1:], truth, tb.cycle_forecast, 4, reference_std=0.1, key=jax.random.key(1), **kw
    )
    assert float(res.rmse) < 1e-3
    assert float(res.loss_h) == -24.0 and bool(res.below_curve)
    # an analysis far worse than the curve: "> max lead"
    bad = truth[1:] + 8.0 * jax.random.normal(jax.random.key(5), truth[1:].shape)
    res = metrics.analysis_lead_time_loss(
        bad, truth, tb.cycle_forecast, 4, reference_std=0.1, key=jax.random.key(1), **kw
    )
    assert bool(res.off_curve) and res.text == "> 120 h"


def test_start_cycles_by_hand():
    # K = 60, burn-in 10, stride 4, max lead 20: cycles 11, 15, ..., up to 40
    np.testing.assert_array_equal(
        metrics.analysis_start_cycles(60, 20, 10, 4), [11, 15, 19, 23, 27, 31, 35, 39]
    )
    np.testing.assert_array_equal(metrics.analysis_start_cycles(5, 4), [1])
    with pytest.raises(ValueError, match="no start"):
        metrics.analysis_start_cycles(5, 5)


def test_loss_grows_with_analysis_noise(l96):
    tb, truth = l96
    key = jax.random.key(1)
    starts = metrics.analysis_start_cycles(100, 30, burn_in=5, stride=2)
    e = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(key, k), (40,)))(
        jnp.asarray(starts)
    )
    kw = dict(
        hours_per_cycle=H, burn_in=5, stride=2, max_lead_cycles=30, reference_std=0.1, key=key
    )
    losses = []
    for kappa in (1.0, 2.0, 4.0):
        mean_a = jnp.zeros_like(truth[1:]).at[starts - 1].set(truth[starts] + 0.1 * kappa * e)
        losses.append(
            float(metrics.analysis_lead_time_loss(mean_a, truth, tb.cycle_forecast, 4, **kw).loss_h)
        )
    assert losses[0] == pytest.approx(0.0, abs=1e-3)  # the analyses are the reference states
    assert 0.0 < losses[1] < losses[2] < 30 * H


# -------------------------------------------------------------------------- analytic: linear growth


A = 1.25


def linear_step(x):
    return A * x


def chord_loss_cycles(kappa, lead, max_lead):
    """ℓ* − L for RMSE_ref(ℓ) = ρ a^ℓ interpolated linearly, r = κ ρ a^L (worked by hand)."""
    target = kappa * A**lead  # in units of ρ
    if target <= 1.0:
        return -lead  # clamped at lead 0
    if target > A**max_lead:
        return math.inf
    j = math.floor(math.log(target) / math.log(A))
    j = min(j, max_lead - 1)
    return j + (target - A**j) / (A ** (j + 1) - A**j) - lead


@pytest.mark.parametrize(
    "kappa",
    [
        1.0,
        A**3,
        3.0,
        0.5,
        0.2,
        100.0,
    ],  # zero, exactly 3 cycles, between points, negative, below, off
)
def test_linear_model_analytic(kappa):
    lead, max_lead = 5, 12
    k = 30
    truth = jnp.asarray(
        0.3 * A ** np.arange(k + 1)[:, None] * np.linspace(-1, 1, 6)[None], jnp.float32
    )
    starts = np.arange(1, k - max_lead + 1)
    key = jax.random.key(2)
    ref_states = metrics.reference_initial_states(truth, starts, 0.01, key)
    err = ref_states - truth[starts]
    curve = metrics.reference_curve(linear_step, truth, starts, max_lead, initial_states=ref_states)
    rho = float(curve[0])
    np.testing.assert_allclose(np.asarray(curve), rho * A ** np.arange(max_lead + 1), rtol=1e-4)
    r = metrics.forecast_rmse_curve(linear_step, truth[starts] + kappa * err, truth, starts, lead)[
        lead
    ]
    res = metrics.lead_time_loss(r, lead * H, H * np.arange(max_lead + 1), curve)
    expected = chord_loss_cycles(kappa, lead, max_lead)
    if math.isinf(expected):
        assert bool(res.off_curve) and math.isinf(float(res.loss_h))
        return
    assert float(res.loss_h) == pytest.approx(expected * H, abs=2e-3)
    assert bool(res.below_curve) is (kappa * A**lead < 1.0)
    if kappa * A**lead >= 1.0:
        # the chord inverse is within 0.03 cycles of the exact log κ / log a
        assert abs(float(res.loss_h) / H - math.log(kappa) / math.log(A)) < 0.03
    if kappa == A**3:
        assert float(res.loss_h) == pytest.approx(3 * H, abs=2e-3)


# ----------------------------------------------------------- wired into runs (config -> run_method)

from ensda import config  # noqa: E402
from ensda.experiment import make_osse, run_method  # noqa: E402

RUN = [
    "cycles=150",
    "burn_in=20",
    "ensemble.size=10",
    "testbed.climatology_samples=300",
    "testbed.spinup_steps=300",
    "tracking.enabled=false",
    "lead_time.max_lead_h=120",
    "lead_time.stride=2",
    "methods.etkf={inflation: 1.02}",
]


def load_run(*extra):
    return config.load("experiments/configs/l96.yaml", [*RUN, *extra])


@pytest.mark.parametrize(
    "sets, named",
    [
        (["lead_time.lead_h=-6"], "lead_time.lead_h"),  # negative lead
        (
            ["lead_time.lead_h=804", "lead_time.max_lead_h=null"],
            "lead_time.lead_h (804 h = 134 cycles) is longer than the run after burn-in allows "
            "(129 cycles",
        ),
        (
            ["lead_time.max_lead_h=900"],
            "lead_time.max_lead_h (900 h = 150 cycles) is longer than the run",
        ),
        (["lead_time.lead_h=50"], "lead_time.lead_h (50 h) is not a whole number of cycles of 6 h"),
        (
            ["lead_time.max_lead_h=24"],
            "lead_time.max_lead_h (24 h) is shorter than lead_time.lead_h",
        ),
        (
            ["lead_time.noise_std=0"],
            "lead_time.noise_std must be > 0 with a perfect forecast model",
        ),
        (
            ["lead_time.reference=dense_reference", "lead_time.dense_settings={radius: 4}"],
            "lead_time.dense_method/dense_settings",
        ),
        (["lead_time.reference=dense"], "lead_time.reference"),
        (
            [
                "lead_time.enabled=false",
                "sweep={objective: lead_time_loss_h, params: {method: [etkf]}}",
            ],
            "needs lead_time.enabled",
        ),
    ],
)
def test_bad_lead_time_config_is_named(sets, named):
    with pytest.raises(config.ConfigError) as info:
        load_run(*sets)
    assert named in str(info.value)


def test_default_max_lead_fits_the_run():
    assert load_run("lead_time.max_lead_h=null").lead_cycles() == (8, 40)  # 48 h, 240 h
    assert load_run("lead_time.max_lead_h=null", "cycles=40", "burn_in=10").lead_cycles() == (
        8,
        29,
    )  # what the run allows
    assert load_run("lead_time.lead_h=0", "lead_time.max_lead_h=6").lead_cycles() == (0, 1)


def test_dense_reference_run_scores_itself_zero_and_a_worse_method_positive():
    """Analyses that are the reference states (the dense run's own method and settings on the
    dense network) lose 0 h; 3D-Var on the same truth loses lead time. The run's value is
    checked against the one-shot ``analysis_lead_time_loss`` fed with the dense analyses."""
    cfg = load_run(
        "lead_time.reference=dense_reference",
        "lead_time.dense_method=letkf",
        "lead_time.dense_settings={inflation: 1.02, radius: 4}",
        "methods.letkf={inflation: 1.02, radius: 4}",
    )
    osse = make_osse(cfg)
    same = run_method(cfg, osse, "letkf")
    assert same.summary["lead_time_loss_h"] == pytest.approx(0.0, abs=1e-3)
    assert same.lead_time.n_starts == len(range(21, 150 - 20 + 1, 2))
    np.testing.assert_allclose(
        same.lead_time.analysis_curve, same.lead_time.reference_curve, rtol=1e-6
    )
    worse = run_method(cfg, osse, "3dvar")
    assert worse.summary["rmse_a"] > 1.5 * same.summary["rmse_a"]
    assert (
        6.0 < worse.summary["lead_time_loss_h"] < 72.0 and not worse.summary["lead_time_off_curve"]
    )
    direct = metrics.analysis_lead_time_loss(
        worse.result,
        osse.truth,
        osse.testbed.cycle_forecast,
        8,
        hours_per_cycle=6.0,
        burn_in=20,
        stride=2,
        max_lead_cycles=20,
        reference_states=same.result.mean_a,
    )
    assert worse.summary["lead_time_loss_h"] == pytest.approx(float(direct.loss_h), abs=1e-3)
    assert worse.summary["lead_time_rmse"] == pytest.approx(
        worse.lead_time.analysis_curve[8], rel=1e-6
    )


def test_imperfect_forecast_model_cycles_and_forecasts():
    """forecast_model.forcing: the backgrounds are forecasts of the F = 8.5 model (checked on
    the first cycle by hand), and the truth itself, forecast with that model, loses 0 h
    against a noise-free truth reference (DiffDA-style reference with an imperfect model)."""
    cfg = load_run(
        "forecast_model.forcing=8.5",
        "lead_time.noise_std=0",
        "methods.letkf={inflation: 1.1, radius: 4}",
    )
    osse = make_osse(cfg)
    assert osse.testbed.forcing == 8.0 and osse.forecast_model.forcing == 8.5
    run = run_method(cfg, osse, "letkf")
    from ensda.experiment import initial_ensemble

    x0 = initial_ensemble(cfg, osse, 10)
    np.testing.assert_allclose(
        np.asarray(run.result.mean_f[0]),
        np.asarray(Lorenz96(forcing=8.5).cycle_forecast(x0).mean(0)),
        rtol=1e-5,
    )
    assert (
        float(osse.lead_time.curve[0]) == 0.0 and float(osse.lead_time.curve[8]) > 0.05
    )  # model error alone
    truth_scored = metrics.score_analyses(osse.lead_time, osse.truth[1:])
    assert float(truth_scored.loss.loss_h) == pytest.approx(0.0, abs=1e-3)
    assert run.summary["lead_time_loss_h"] > 0.0
