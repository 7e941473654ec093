"""Chaos check of the Held–Suarez nature run: twins from a tiny perturbation diverge.

Starts from the spun-up T21 L8 state in the shipped sample store (200 days from rest,
experiments/sphere_sample.py), adds 0.01 K of grid-point noise to the temperature (0.2 %
of the climatological t850 distance) and integrates both runs for 30 days. Measured with
experiments/sphere_chaos.py on this state: error doubling ≈ 70 h at T21, saturation after
~45 days from 1e-3 K. (The shallow-water barotropic-instability run is not used here: its
flow decays, twin errors grow ×200 during the instability and then stall far below the
distance between independent states.)
"""

from pathlib import Path

import jax
import numpy as np
import pytest

from ensda.testbeds.sphere import store as zstore
from ensda.testbeds.sphere.config import SphereTestbedConfig

pytest.importorskip("dinosaur")

SAMPLE = Path(__file__).parent / "data" / "sphere_t21_sample.zarr"


@pytest.mark.skipif(
    not SAMPLE.exists(), reason="sample store not made (experiments/sphere_sample.py)"
)
def test_twin_runs_diverge_to_climatological_distance():
    from ensda.testbeds.sphere.nature import (
        build,
        doubling_time_hours,
        restore_state,
        twin_divergence,
    )

    restart = zstore.read_restart(SAMPLE)
    cfg = SphereTestbedConfig.model_validate(restart.config).model_copy(
        update={"levels": (500, 850)}
    )
    model, _ = build(cfg)
    state = restore_state(model, restart.arrays)
    res = twin_divergence(
        cfg,
        state,
        days=30.0,
        amplitude=0.01,
        key=jax.random.key(1),
        variables={"geopotential": 500, "temperature": 850, "surface_pressure": None},
        output_hours=24,
    )
    hours = res["hours"]
    t850, z500, ps = res["temperature850"], res["geopotential500"], res["surface_pressure"]
    # climatological distances of a Held–Suarez climate at T21: a few K at 850 hPa,
    # several hundred m² s⁻² at 500 hPa, a few hPa at the surface
    assert (
        2.0 < t850["clim"] < 10.0 and 300.0 < z500["clim"] < 3000.0 and 200.0 < ps["clim"] < 2000.0
    )
    for r in (t850, z500):
        e = r["rmse"]
        assert e[0] < 1e-2 * r["clim"]  # starts tiny
        assert e[-1] > 0.3 * r["clim"]  # ends at a sizeable fraction of saturation
        assert e[-1] / e[0] > 300.0
        # growth is exponential with a doubling time of a few days
        assert 24.0 < doubling_time_hours(hours, e, r["clim"]) < 120.0
    # dry mass is conserved: the global mean surface pressure stays within 0.1 hPa of 1000 hPa
    assert np.ptp(ps["mean"]) < 10.0 and abs(ps["mean"].mean() - 1e5) < 100.0
    assert np.all(np.isfinite(t850["rmse"]))
