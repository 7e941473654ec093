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
