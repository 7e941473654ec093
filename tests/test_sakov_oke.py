"""The classic baselines reproduce the published Lorenz-96 numbers (Sakov & Oke 2008).

Sakov & Oke (2008) set-up: n = 40, F = 8, dt = 0.05, every variable observed every cycle
with R = I, N = 40; 5,000 cycles after a burn-in of 500, with the tuned settings of
experiments/configs/l96.yaml. Published time-mean analysis RMSE in brackets:
ETKF ≤ 0.20 [0.18 at N = 24], LETKF ≤ 0.20 [0.22 at N = 7], EnKF ≤ 0.24 [0.22],
3D-Var ≤ 0.45 [0.41], OI ≤ 1.0 [0.95], climatology within 10 % of 3.6 [3.6].
"""

from pathlib import Path

import pytest

from ensda import config
from ensda.experiment import make_osse, run_method

CONFIG = Path(__file__).resolve().parents[1] / "experiments/configs/l96.yaml"


@pytest.fixture(scope="module")
def osse_and_cfg():
    cfg = config.load(CONFIG)
    assert cfg.cycles - cfg.burn_in >= 5000 and cfg.burn_in >= 500
    assert (
        cfg.testbed.n,
        cfg.testbed.forcing,
        cfg.testbed.dt,
        cfg.obs.every,
        cfg.obs.r_std,
        cfg.ensemble.size,
    ) == (40, 8.0, 0.05, 1, 1.0, 40)
    return cfg, make_osse(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, bound",
    [("etkf", 0.20), ("letkf", 0.20), ("enkf", 0.24), ("3dvar", 0.45), ("oi", 1.0)],
)
def test_rmse_within_published_bound(osse_and_cfg, method, bound):
    cfg, osse = osse_and_cfg
    summary = run_method(cfg, osse, method).summary
    assert summary["rmse_a"] <= bound
    # an analysis is better than its background, and a filter is not trivially loose
    assert summary["rmse_a"] < summary["rmse_f"]
    assert summary["rmse_a"] > 0.05
    if cfg.members_for(method) > 1:  # ensemble filters are calibrated: spread-skill ratio near 1
        assert 0.8 < summary["ssr_a"] < 1.25


@pytest.mark.slow
def test_climatology_rmse_is_the_climatological_std(osse_and_cfg):
    cfg, osse = osse_and_cfg
    summary = run_method(cfg, osse, "climatology").summary
    assert summary["rmse_a"] == pytest.approx(3.6, rel=0.10)
    assert 0.9 < summary["ssr_a"] < 1.1


@pytest.mark.slow
def test_localisation_does_the_work_at_n_10():
    """N = 10 < 40 variables: the global ETKF's 9-dimensional analysis space cannot hold the
    error and it diverges (measured 3.9 at inflation 1.1); the LETKF at radius 4 tracks
    (measured 0.239; Bocquet 2011 via DAPPER: 0.22 at N = 7, loc_rad 4, which is radius
    7.3 here: experiments/README.md). The bound fails a filter without inflation (0.85), or
    with the radius 4 times too small (1: 0.35) or too large (16: 0.41)."""
    cfg = config.load(CONFIG, ["ensemble.size=10", "cycles=3000", "burn_in=500"])
    osse = make_osse(cfg)
    rmse = lambda method, **s: run_method(cfg, osse, method, s).summary["rmse_a"]  # noqa: E731
    assert rmse("etkf", inflation=1.1) > 3.0
    assert rmse("letkf", radius=4.0, inflation=1.04) < 0.30
    for broken in (
        {"radius": 4.0},
        {"radius": 1.0, "inflation": 1.04},
        {"radius": 16.0, "inflation": 1.04},
    ):
        assert rmse("letkf", **broken) > 0.30, broken
