"""Chaos check of a sphere nature run: twin runs from a tiny perturbation of the spun-up state.

Starts from the restart state saved in a nature-run store (`ensda data nature`), adds
``--amplitude`` K of grid-point noise to the temperature (m of depth for shallow water),
integrates both runs for ``--days`` and prints the RMS difference of z500 and t850 against
time, the climatological distance (√2 × temporal std of the control), the error-doubling
time (fitted where 0.1 % < error < 25 % of saturation) and when the error reaches 50 % and
90 % of the climatological distance.

    nice -n 15 .venv/bin/python experiments/sphere_chaos.py data/sphere/nature.zarr --days 60
"""

import argparse
import json
import time

import jax
import numpy as np

from ensda.testbeds.sphere import store as zstore
from ensda.testbeds.sphere.config import SphereTestbedConfig
from ensda.testbeds.sphere.nature import (
    build,
    doubling_time_hours,
    restore_state,
    twin_divergence,
)


def _first_reach(hours, rmse, level):
    """First output hour at which the error reaches ``level`` (None if never)."""
    return next((float(h) for h, e in zip(hours, rmse, strict=True) if e >= level), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("--days", type=float, default=60.0)
    p.add_argument(
        "--amplitude", type=float, default=1e-3, help="K (Held-Suarez) or m (shallow water)"
    )
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    restart = zstore.read_restart(args.store)
    cfg = SphereTestbedConfig.model_validate(restart.config)
    model, _ = build(cfg)
    state = restore_state(model, restart.arrays)
    variables = (
        {"geopotential": 500, "temperature": 850}
        if cfg.model == "held_suarez"
        else {"geopotential": cfg.shallow_water_level}
    )
    t0 = time.perf_counter()
    res = twin_divergence(
        cfg, state, args.days, args.amplitude, jax.random.key(args.seed), variables
    )
    wall = time.perf_counter() - t0
    hours = res.pop("hours")
    summary = {
        "store": args.store,
        "model": f"{cfg.model} {cfg.resolution}",
        "amplitude": args.amplitude,
        "days": args.days,
        "wall_s": round(wall, 1),
    }
    for name, r in res.items():
        rmse, clim = r["rmse"], r["clim"]
        summary[name] = {
            "clim": round(clim, 3),
            "rmse_first": float(rmse[0]),
            "rmse_last": float(rmse[-1]),
            "doubling_h": round(doubling_time_hours(hours, rmse, clim), 1),
            "hours_to_50pct": _first_reach(hours, rmse, 0.5 * clim),
            "hours_to_90pct": _first_reach(hours, rmse, 0.9 * clim),
        }
        print(f"{name}: climatological distance {clim:.4g}")
        for h, e in zip(hours[::4], rmse[::4]):
            print(f"  day {h / 24:5.1f}  rmse {e:.4g}  ({e / clim:.2e} of clim)")
    print(json.dumps(summary))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
