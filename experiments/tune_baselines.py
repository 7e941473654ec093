r"""Grid-search the settings of one classic method on one experiment config.

The OSSE (truth, observations, climatology) is built once per truth seed and every
setting is cycled over it; the table is sorted by time-mean analysis RMSE (mean over the
truth seeds). Tune on other seeds than the config's own, then evaluate the chosen
settings on the config's seeds:

    python experiments/tune_baselines.py experiments/configs/l96.yaml letkf \
        --set seeds.obs=101 --truth-seeds 100,200 --grid inflation=1.01,1.02 radius=10,20
    python experiments/tune_baselines.py experiments/configs/l96.yaml all --eval   # methods.* of
    the config

``--grid key=v1,v2,...`` values are parsed as YAML (``null`` for None); the grid is the
Cartesian product of all ``--grid`` options, on top of ``methods.<method>`` of the config.
Without ``--grid`` a default grid for the method is used (``DEFAULT_GRIDS``).
A setting "diverged" when the state became NaN/Inf (``NonFiniteStateError``); it is "lost"
(filter failure) when rmse_a >= the climatological std, or, for an ensemble, ssr_a < 0.25.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from ensda.config import load
from ensda.cycle import NonFiniteStateError
from ensda.experiment import make_osse, run_method

DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "etkf": {"inflation": [1.0, 1.01, 1.02, 1.03, 1.04, 1.06], "rtps": [0.0, 0.3]},
    "enkf": {"inflation": [1.0, 1.02, 1.04, 1.06, 1.08], "rtps": [0.0, 0.2, 0.4]},
    "letkf": {"inflation": [1.01, 1.02, 1.04, 1.06], "radius": [4.0, 6.0, 8.0, 10.0, 14.0, 20.0]},
    "3dvar": {
        "b_source": ["climatology", "nmc"],
        "scale": [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0],
    },
    "oi": {"radius": [None, 1.0, 2.0, 4.0, 8.0, 16.0]},
}
METRICS = ("rmse_a", "spread_a", "crps_a", "ssr_a", "rmse_f")


def parse_grid(items: list[str]) -> dict[str, list]:
    grid: dict[str, list] = {}
    for item in items:
        key, _, values = item.partition("=")
        if not key or not values:
            raise SystemExit(f"--grid expects key=v1,v2,..., got {item!r}")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def run_one(cfg, osse, method: str, settings: dict) -> tuple[dict, str, float]:
    """(summary, status, run seconds) of one cycled run."""
    try:
        run = run_method(cfg, osse, method, settings)
    except NonFiniteStateError as err:
        return (
            {m: math.nan for m in METRICS},
            f"diverged (cycle {err.cycle}, {err.stage})",
            math.nan,
        )
    s, status = run.summary, "ok"
    if method not in ("climatology", "none"):
        clim_std = float(np.sqrt(np.asarray(osse.climatology).var(0).mean()))
        if s["rmse_a"] >= clim_std:
            status = "lost (rmse_a >= clim. std)"
        elif run.n_members > 1 and s["ssr_a"] < 0.25:
            status = "lost (ssr_a < 0.25)"
    return s, status, run.run_s


def run_point(cfgs, osses, method: str, settings: dict) -> dict:
    """One setting over every truth seed: metrics averaged, worst status kept."""
    runs = [run_one(c, o, method, settings) for c, o in zip(cfgs, osses)]
    bad = sorted(
        (st for _, st, _ in runs if st != "ok"), key=lambda st: not st.startswith("diverged")
    )
    row = {m: float(np.mean([s[m] for s, _, _ in runs])) for m in METRICS}
    row.update(
        method=method,
        settings=settings,
        run_s=float(np.mean([t for *_, t in runs])),
        rmse_a_max=max(s["rmse_a"] for s, _, _ in runs),
        per_seed=[s["rmse_a"] for s, _, _ in runs],
        status="ok"
        if not bad
        else (bad[0] if len(runs) == 1 else f"{len(bad)}/{len(runs)} {bad[0]}"),
    )
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("config")
    ap.add_argument(
        "method", help="method to tune; with --eval a comma list or 'all' (the config's methods)"
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, as ensda.config.load (e.g. seeds.truth=100 cycles=2000)",
    )
    ap.add_argument(
        "--grid",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V1,V2",
        help="values of one setting to try (repeatable); default: DEFAULT_GRIDS[method]",
    )
    ap.add_argument(
        "--truth-seeds", help="comma list: repeat every setting with these seeds.truth and average"
    )
    ap.add_argument(
        "--eval", action="store_true", help="no grid: run each method with the config's settings"
    )
    ap.add_argument("--json", dest="json_out", help="also write all rows to this JSON file")
    args = ap.parse_args(argv)

    cfg = load(args.config, args.overrides)
    seeds = [int(s) for s in args.truth_seeds.split(",")] if args.truth_seeds else [cfg.seeds.truth]
    cfgs = [load(args.config, [*args.overrides, f"seeds.truth={s}"]) for s in seeds]
    if args.eval:
        methods = (
            [m for m in cfg.methods if m != "none"]
            if args.method == "all"
            else args.method.split(",")
        )
        points, keys = [(m, {}) for m in methods], []
    else:
        grid = parse_grid(args.grid) if args.grid else DEFAULT_GRIDS.get(args.method, {})
        keys = list(grid)
        points = [
            (args.method, dict(zip(keys, v))) for v in itertools.product(*(grid[k] for k in keys))
        ]
    console = Console(width=max(Console().width, 140))
    console.print(
        f"[bold]{cfg.name}[/]: obs every={cfg.obs.every} density={cfg.obs.density} "
        f"N={cfg.ensemble.size} "
        f"cycles={cfg.cycles} burn_in={cfg.burn_in} seeds={cfg.seeds.model_dump()} truth "
        f"seeds={seeds}"
    )

    t0 = time.perf_counter()
    osses = [make_osse(c) for c in cfgs]
    console.print(f"OSSE(s) built in {time.perf_counter() - t0:.1f} s")

    rows = []
    for method, point in points:
        row = run_point(cfgs, osses, method, {**cfg.methods.get(method, {}), **point})
        row["setting"] = point
        rows.append(row)
        console.print(
            f"  {method} {row['settings']}: {row['status']} rmse_a={row['rmse_a']:.4f} "
            f"spread_a={row['spread_a']:.4f} per seed {[round(r, 4) for r in row['per_seed']]}"
        )

    if not args.eval:
        rows.sort(
            key=lambda r: (
                r["status"] != "ok",
                r["rmse_a"] if math.isfinite(r["rmse_a"]) else math.inf,
            )
        )
    what = "config settings" if args.eval else args.method
    table = Table(
        title=f"{what} on {cfg.name}: truth seeds {seeds}, obs seed {cfg.seeds.obs}, "
        f"{cfg.cycles - cfg.burn_in} cycles after burn-in"
        + (" (means over seeds)" if len(seeds) > 1 else "")
    )
    for k in keys or ["method", "settings"]:
        table.add_column(k, no_wrap=True)
    for m in METRICS:
        table.add_column(m, justify="right")
    if len(seeds) > 1:
        table.add_column("max rmse_a", justify="right")
    table.add_column("run s", justify="right")
    table.add_column("status")
    fmt = lambda x: f"{x:.4f}" if math.isfinite(x) else "-"  # noqa: E731
    for r in rows:
        cells = (
            [str(r["setting"][k]) for k in keys]
            if keys
            else [r["method"], " ".join(f"{k}={v}" for k, v in r["settings"].items())]
        )
        cells += [fmt(r[m]) for m in METRICS] + ([fmt(r["rmse_a_max"])] if len(seeds) > 1 else [])
        table.add_row(*cells, f"{r['run_s']:.1f}", r["status"])
    console.print(table)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
