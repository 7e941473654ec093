"""Sparse networks: every method cycles with its tuned settings without diverging.

Networks (N = 40, R = I): every 2nd site, every 4th site, a fixed random 25 % of the sites
(experiments/configs/l96_every2.yaml, l96_every4.yaml, l96_density25.yaml). Shorter runs
than the configs' 5,500 cycles; the full-length numbers are in experiments/README.md.
Reference: the climatological std of Lorenz-96 (3.6, Lorenz & Emanuel 1998) — a method
whose analysis error reaches it has lost the truth (filter divergence).
"""

from pathlib import Path

import pytest

from ensda import config
from ensda.experiment import make_osse, run_method

CONFIGS = Path(__file__).resolve().parents[1] / "experiments/configs"
NETWORKS = ("l96_every2.yaml", "l96_every4.yaml", "l96_density25.yaml")
METHODS = ("etkf", "letkf", "enkf", "3dvar", "oi")
CLIM_STD = 3.6

_osse_cache: dict = {}


def osse_for(name: str):
    if name not in _osse_cache:
        cfg = config.load(CONFIGS / name, ["cycles=1500", "burn_in=300"])
        _osse_cache[name] = (cfg, make_osse(cfg))
    return _osse_cache[name]


@pytest.mark.slow
@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("method", METHODS)
def test_tuned_method_does_not_diverge(network, method):
    """Finite state through every cycle (run_method raises otherwise), error bounded by the
    attractor's scale. With 10-20 observations of 40 variables the static-B methods sit near
    climatology (see experiments/README.md): that is their skill, not a divergence."""
    cfg, osse = osse_for(network)
    summary = run_method(cfg, osse, method).summary
    assert summary["rmse_a"] < 1.25 * CLIM_STD


@pytest.mark.slow
@pytest.mark.parametrize(
    "network, method, bound",
    [
        ("l96_every2.yaml", "etkf", 0.4),
        ("l96_every2.yaml", "letkf", 0.4),
        ("l96_every2.yaml", "enkf", 0.5),
        ("l96_every4.yaml", "etkf", 1.0),
        ("l96_every4.yaml", "letkf", 1.0),
        ("l96_density25.yaml", "letkf", 2.0),
    ],
)
def test_ensemble_filters_track_sparse_networks(network, method, bound):
    """Bounds 25-55 % above the full-length numbers of experiments/README.md: these 1,500-cycle
    runs are noisier (the 25 % network loses and regains the truth now and then)."""
    cfg, osse = osse_for(network)
    summary = run_method(cfg, osse, method).summary
    assert summary["rmse_a"] < bound
    assert summary["rmse_a"] < summary["rmse_f"]


#: the LETKF tuned for every 4th site at N = 20 (tuned/d54c240db1cf.yaml, `ensda tune`)
EVERY4_N20 = {"inflation": 1.01, "rtps": 0.144, "radius": 10.0}


@pytest.mark.slow
def test_every_4th_site_at_n_20_needs_localisation_and_inflation():
    """Every 4th site, N = 20: the tuned LETKF measures 0.59 here (0.61 over 1,100 cycles in
    experiments/README.md). The bound 0.75 fails the free run (3.71), the filter without
    inflation or RTPS (3.97), and the radius 4 times too small (2.5: 1.26) or too large
    (40, global: 4.76)."""
    cfg = config.load(
        CONFIGS / "l96_every4.yaml", ["ensemble.size=20", "cycles=1500", "burn_in=300"]
    )
    osse = make_osse(cfg)
    rmse = lambda method, s: run_method(cfg, osse, method, s).summary["rmse_a"]  # noqa: E731
    assert rmse("letkf", EVERY4_N20) < 0.75
    assert rmse("none", {}) > 0.75
    for broken in (
        EVERY4_N20 | {"inflation": 1.0, "rtps": 0.0},
        EVERY4_N20 | {"radius": 2.5},
        EVERY4_N20 | {"radius": 40.0},
    ):
        assert rmse("letkf", broken) > 0.75, broken
