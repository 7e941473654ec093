"""Make the small Held–Suarez sample store shipped for the tests
(tests/data/sphere_t21_sample.zarr).

A T21 L8 Held–Suarez run (dt 30 min), spun up 200 days from rest, then 1 day written every
6 h on the 64x32 grid and the 13 WeatherBench 2 levels: 4 times, ~2 MB. Its restart group
holds the spun-up T21 state, which the chaos test (tests/test_sphere_chaos.py) starts from.

    nice -n 15 .venv/bin/python experiments/sphere_sample.py     # ~2-5 min on 2 cores
"""

import json
import shutil
import sys
from pathlib import Path

from ensda.testbeds.sphere.config import SphereTestbedConfig
from ensda.testbeds.sphere.nature import generate

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "sphere_t21_sample.zarr"

CONFIG = SphereTestbedConfig(
    model="held_suarez",
    resolution="T21",
    layers=8,
    dt_minutes=30.0,
    spinup_days=200.0,
    nature={
        "store": str(OUT.relative_to(OUT.parents[2])),
        "days": 1.0,
        "output_hours": 6,
        "seed": 0,
        "time_chunk": 4,
    },
)

if __name__ == "__main__":
    if OUT.exists() and "--force" not in sys.argv:
        sys.exit(f"{OUT} exists; pass --force to remake it")
    shutil.rmtree(OUT, ignore_errors=True)
    print(json.dumps(generate(CONFIG, OUT, progress=True)))
