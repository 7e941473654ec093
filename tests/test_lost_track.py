"""``lost_track_a``: the fraction of cycles whose analysis error exceeds the climatological
mean's."""

import numpy as np

from ensda import experiment
from ensda.config import validate


def test_lost_track_fraction_separates_a_filter_from_a_free_run():
    cfg = validate(
        {
            "cycles": 300,
            "burn_in": 50,
            "ensemble": {"size": 20},
            "obs": {"every": 1},
            "methods": {"letkf": {"inflation": 1.02, "radius": 10.0}},
            "tracking": {"enabled": False},
            "lead_time": {"enabled": False},
        }
    )
    osse = experiment.make_osse(cfg)
    free = experiment.run_method(cfg, osse, "none")
    letkf = experiment.run_method(cfg, osse, "letkf")
    # by hand: the climatological mean's error each cycle against the free run's
    truth = np.asarray(osse.truth[1:][50:])
    clim = np.sqrt(((np.asarray(osse.climatology).mean(0) - truth) ** 2).mean(-1))
    expected = np.mean(np.sqrt(np.asarray(free.result.mse_a[50:])) > clim)
    assert abs(free.summary["lost_track_a"] - expected) < 1e-6
    assert 0.3 < expected < 0.8  # a free ensemble's mean is about as far off as climatology's
    assert letkf.summary["lost_track_a"] == 0.0
