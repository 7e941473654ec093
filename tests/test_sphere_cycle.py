"""Cycled experiments on the sphere testbed, and the config of a sphere experiment.

A tiny shallow-water nature run (T21 dycore, 32x16 analysis grid, 10 days) is the truth;
the free run (``none``) and the LETKF are cycled from the same climatological ensemble.
References: the cos-latitude weighted RMSE recomputed in NumPy from the stored analysis
means and the truth (weights cos φ, any normalisation), each channel's error divided by its
climatological standard deviation (NumPy, from the OSSE's climatology samples); the LETKF
must beat the free run. Per-channel metrics and maps: ``test_sphere_metrics.py``.
"""

from pathlib import Path

import numpy as np
import pytest

from ensda.config import ConfigError, load, validate

pytest.importorskip("dinosaur")

CONFIGS = Path(__file__).parent.parent / "experiments" / "configs"


def sw_experiment(store: Path, **extra) -> dict:
    testbed = {
        "kind": "sphere",
        "model": "shallow_water",
        "resolution": "T21",
        "dt_minutes": 30.0,
        "spinup_days": 2.0,
        "grid": {"n_lon": 32, "n_lat": 16},
        "nature": {"store": str(store), "days": 10.0, "time_chunk": 8},
        "climatology_samples": 16,
        "truth_start": 4,
    }
    return {
        "name": "sw",
        "testbed": testbed,
        "obs": {"kind": "random", "density": 0.1},
        "ensemble": {"size": 12, "init": "climatology"},
        "cycles": 12,
        "burn_in": 4,
        "methods": {"letkf": {"radius": 1500.0, "inflation": 1.05}},
        "lead_time": {"enabled": False},
        "tracking": {"enabled": False},
    } | extra


@pytest.fixture(scope="module")
def sw_store(tmp_path_factory):
    from ensda.testbeds.sphere.nature import generate

    path = tmp_path_factory.mktemp("sw") / "nature.zarr"
    generate(validate(sw_experiment(path)).testbed, progress=False)
    return path


def test_cycled_letkf_beats_the_free_run_in_cos_latitude_weighted_rmse(sw_store):
    from ensda.experiment import make_osse, run_method

    cfg = validate(sw_experiment(sw_store))
    osse = make_osse(cfg)
    n_state = 3 * 16 * 32  # geopotential, u, v at one level
    assert osse.truth.shape == (13, n_state) and osse.climatology.shape == (16, n_state)
    assert osse.obs.y.shape == (12, 3 * 51)  # 51 of 512 columns, 3 channels each
    truth = np.asarray(osse.truth[1:], np.float64).reshape(12, 3, 16, 32)
    cos = np.cos(np.deg2rad(-90 + 180 / 16 * (np.arange(16) + 0.5)))[:, None] * np.ones(32)
    clim = np.asarray(osse.climatology, np.float64).reshape(16, 3, 16, 32)
    var_c = (cos * clim.var(axis=0, ddof=1)).sum(axis=(1, 2)) / cos.sum()  # σ_c², cos-lat weighted
    rmse = {}
    for method in ("none", "letkf"):
        run = run_method(cfg, osse, method)
        assert np.isfinite(np.asarray(run.result.final_ensemble)).all()
        mean_a = np.asarray(run.result.mean_a, np.float64).reshape(12, 3, 16, 32)
        mse_c = (cos * (mean_a - truth) ** 2).sum(axis=(2, 3)) / cos.sum()  # (cycles, channels)
        per_cycle = np.sqrt((mse_c / var_c).mean(axis=1))  # RMSE of the standardised state
        np.testing.assert_allclose(np.sqrt(np.asarray(run.result.mse_a)), per_cycle, rtol=1e-4)
        assert run.summary["rmse_a"] == pytest.approx(per_cycle[4:].mean(), rel=1e-4)
        rmse[method] = run.summary["rmse_a"]
    # in units of the climatological σ: free run ~1.0 (a climatological ensemble), LETKF ~0.58
    assert rmse["none"] == pytest.approx(1.0, abs=0.3) and rmse["letkf"] < 0.75 * rmse["none"], rmse


def test_sphere_configs_load_and_errors_name_the_field(tmp_path):
    cfg = load(CONFIGS / "sphere.yaml")
    assert (
        cfg.testbed.kind == "sphere"
        and cfg.obs.kind == "random"
        and cfg.obs.density == 0.01
        and cfg.ensemble.size == 32
    )
    assert cfg.hours_per_cycle == 6.0 and cfg.method_settings("letkf")["radius"] > 100  # km
    assert (
        cfg.perfect_model
        and not load(CONFIGS / "sphere.yaml", ["testbed.forecast.emulator=ckpt"]).perfect_model
    )
    assert not load(CONFIGS / "sphere.yaml", ["testbed.forecast.resolution=T21"]).perfect_model
    l96 = load(CONFIGS / "l96.yaml")
    assert l96.testbed.kind == "lorenz96" and l96.obs.every == 1 and l96.testbed.n == 40
    base = sw_experiment(tmp_path / "x.zarr")
    # channel names as the testbed's; headline channels: z500 and t850 where the state has them
    from ensda.testbeds.sphere.testbed import channels_of

    assert (
        cfg.testbed.channel_names == channels_of(cfg.testbed).names
        and len(cfg.testbed.channel_names) == 53
    )
    assert cfg.testbed.headline == ("geopotential_500", "temperature_850")
    assert validate(base).testbed.headline == ("geopotential_500",)  # shallow water: no temperature
    # obs without kind on the sphere: random columns
    assert validate(base | {"obs": {"density": 0.2}}).obs.kind == "random"
    cases = [
        ({"obs": {"kind": "random", "density": 1.5}}, "obs.density"),
        ({"obs": {"kind": "random", "every": 2}}, "obs.every"),
        ({"obs": {"kind": "random", "levels": [850]}}, "obs.levels"),
        ({"obs": {"kind": "random", "variables": ["temperature"]}}, "obs.variables"),
        ({"obs": {"kind": "random", "r_std": {"geopotential": 0.0}}}, "obs.r_std.geopotential"),
        ({"obs": {"kind": "grid"}}, "obs.kind"),
        ({"obs": {"kind": "swaths", "redraw": True}}, "obs.redraw"),
        ({"forecast_model": {"forcing": 8.5}}, "forecast_model.forcing"),
        ({"ensemble": {"size": 40, "init": "climatology"}}, "testbed.climatology_samples"),
        ({"testbed": base["testbed"] | {"grid": {"n_lon": 30, "n_lat": 16}}}, "grid"),
        ({"testbed": base["testbed"] | {"climatology_samples": 1}}, "testbed.climatology_samples"),
        ({"testbed": base["testbed"] | {"truth_start": -1}}, "testbed.truth_start"),
        ({"testbed": base["testbed"] | {"kind": "cube"}}, "testbed.kind"),
        (
            {"testbed": base["testbed"] | {"headline_channels": ["temperature_850"]}},
            "headline_channels",
        ),
        ({"methods": {"letkf": {"vertical_radius": -1.0}}}, "vertical_radius"),
    ]
    for change, field in cases:
        with pytest.raises(ConfigError) as err:
            validate(base | change)
        assert field in str(err.value), (change, str(err.value))
    # a global network on Lorenz-96
    with pytest.raises(ConfigError, match="obs.kind: global networks"):
        validate({"obs": {"kind": "random", "density": 0.1}})
