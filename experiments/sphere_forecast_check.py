"""Forecast errors of the sphere testbed's forecast models against their nature run.

From states of a nature-run store (`ensda data nature`), forecasts over 6 h and 24 h with the
perfect model (the nature run's dycore, through the lat–lon grid) and with the imperfect
T21 model, scored (cos-lat weighted RMSE) against the stored truth next to persistence and
the climatological distance (√2 × temporal std over the store).

    nice -n 15 .venv/bin/python experiments/sphere_forecast_check.py data/sphere/nature.zarr
"""

import argparse
import json
import time

import numpy as np

from ensda.testbeds.sphere import store as zstore
from ensda.testbeds.sphere.config import SphereTestbedConfig
from ensda.testbeds.sphere.testbed import from_config

CHANNELS = ("geopotential_500", "temperature_850", "u_component_of_wind_250", "surface_pressure")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument(
        "--starts", type=int, default=4, help="forecasts started at store times 0, 8, 16, ..."
    )
    p.add_argument("--imperfect", default="T21", help="resolution of the imperfect model")
    p.add_argument("--imperfect-dt", type=float, default=30.0)
    args = p.parse_args()
    cfg = SphereTestbedConfig.model_validate(zstore.read_restart(args.store).config)
    imperfect_cfg = SphereTestbedConfig.model_validate(
        cfg.model_dump()
        | {"forecast": {"resolution": args.imperfect, "dt_minutes": args.imperfect_dt}}
    )
    models = {
        "perfect": from_config(cfg, store=args.store),
        "imperfect": from_config(imperfect_cfg, store=args.store, perfect=False),
    }
    tb = models["perfect"]
    w = np.asarray(tb.grid.weights)
    n_times = zstore.n_times(args.store)
    everything = np.asarray(tb.truth(0, n_times - 1))
    starts = np.arange(args.starts) * 8
    out = {"store": args.store, "truth": f"{cfg.model} {cfg.resolution}", "starts": starts.tolist()}
    for lead in (1, 4):
        x0, xt = everything[starts], everything[starts + lead]
        row = {}
        for name, model in models.items():
            t0 = time.perf_counter()
            fc = np.asarray(model.forecast(x0, lead))
            row[f"{name}_wall_s"] = round(time.perf_counter() - t0, 1)
            for ch in CHANNELS:
                c = tb.channels.names.index(ch)
                row.setdefault(ch, {})[name] = float(
                    np.sqrt((w * (fc[:, c] - xt[:, c]) ** 2).mean())
                )
        for ch in CHANNELS:
            c = tb.channels.names.index(ch)
            row[ch]["persistence"] = float(np.sqrt((w * (x0[:, c] - xt[:, c]) ** 2).mean()))
            row[ch]["climatology_distance"] = float(
                np.sqrt(2 * (w * everything[:, c].var(axis=0)).mean())
            )
        out[f"lead_{6 * lead}h"] = row
        print(f"lead {6 * lead} h:")
        for ch in CHANNELS:
            print("  " + ch.ljust(26) + "  ".join(f"{k} {v:.4g}" for k, v in row[ch].items()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
