"""Benchmark: analysis cycles per second of ETKF and LETKF on Lorenz-96, N = 40.

Sizes n = 40, 400 and 4,000 variables, every variable observed every cycle with R = I
(the config ``experiments/configs/l96.yaml`` with ``--set testbed.n=...``; method settings
are the config's ``methods.<name>``). Each size cycles three methods over the same truth
and observations with ``ensda.cycle.run_cycles`` (one ``lax.scan``, per-cycle metrics
included):

- ``none``, the free-running ensemble (forecast and metrics only): the **reference**,
- ``etkf`` (global, no localisation: at n ≫ N it is only a cost reference),
- ``letkf`` (R-localisation).

Compile time is measured apart from run time (``lower().compile()``); the compiled scan is
then run a few times, the methods of one size interleaved, and the best run counts.
These machines are shared and noisy, so the table reports each method's cost per cycle
relative to the free run of the same size, measured in the same process and rounds
(``x free run``), and the analysis cost alone (``analysis ms``: method minus free run),
also in units of the N-member model forecast alone (``analysis/model``; the free run
includes the per-cycle metrics — CRPS and energy score are O(N² n) — which cost more
than the forecast itself at large n).

Targets (PASS/FAIL printed; ``--check`` exits 1 on FAIL):

1. LETKF at n = 4,000 runs: finite state, analysis RMSE < 0.5 (the obs error std is 1).
2. LETKF's analysis cost is linear in n: its analysis ms per cycle and per site at
   n = 4,000 is at most 1.5x that at n = 400 (no O(n p) work per cycle).
3. ETKF at n = 40 costs at most 6x the free run per cycle.

What to expect (2 CPU cores): LETKF's cost is one local eigen-decomposition per site, of
size min(N, k) with k the sites within 2 x radius (``baselines.letkf``): with radius 4
(k = 15 < N) it is about 20x the free run at n = 4,000; with a radius of 20 (k = 79 >= N,
N x N per site) about 5x more.

Usage::

    python experiments/bench_baselines.py                      # the table (make bench)
    python experiments/bench_baselines.py --json bench.json    # also write the results
    python experiments/bench_baselines.py --sizes 40,400 --repeats 5 --set ensemble.size=20

Cycles per size (``--cycles`` overrides): 1,000 at n = 40, 300 at n = 400, 200 at
n = 4,000; burn-in a quarter of that, at most 100; ``testbed.climatology_samples`` 500
(none of these methods uses the climatology). Up to ``--repeats`` (3) timed runs per
method, fewer once a method's runs took ``--budget`` (20 s): a few minutes in all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

from ensda.benchmark import forecast_only, json_safe, settings_text
from ensda.config import load
from ensda.cycle import run_cycles, summarize
from ensda.experiment import build_assimilator, initial_ensemble, make_osse

CONFIG = "experiments/configs/l96.yaml"
SIZES = (40, 400, 4000)
METHODS = ("none", "etkf", "letkf")
REFERENCE = "none"
CYCLES = {40: 1000, 400: 300}  # larger n: 200
TARGETS = (
    # (name, what, limit): what(rows) -> (value, ok-to-judge)
    ("LETKF runs at n=4000: rmse_a < 0.5", "letkf_runs", 0.5),
    ("LETKF analysis cost linear in n: per-site cost n=4000 / n=400 <= 1.5", "letkf_scaling", 1.5),
    ("ETKF at n=40 <= 6x free run", "etkf_cost", 6.0),
)


def cycles_for(n: int, override: int | None) -> tuple[int, int]:
    cycles = override or CYCLES.get(n, 200)
    return cycles, min(100, cycles // 4)


def bench_size(
    config: str,
    n: int,
    overrides: list[str],
    cycles_override: int | None,
    repeats: int,
    budget_s: float,
    console: Console,
) -> list[dict]:
    """Compile and run every method at size ``n``, the runs of all methods interleaved: up to
    ``repeats`` runs each, no further run of a method once its runs took ``budget_s``."""
    cycles, burn_in = cycles_for(n, cycles_override)
    cfg = load(
        config,
        [
            f"testbed.n={n}",
            f"cycles={cycles}",
            f"burn_in={burn_in}",
            "testbed.climatology_samples=500",
            *overrides,
        ],
    )
    t0 = time.perf_counter()
    osse = make_osse(cfg)
    jax.block_until_ready(osse.obs)
    console.print(f"n={n}: OSSE ({cycles} cycles) built in {time.perf_counter() - t0:.1f} s")
    key = jax.random.key(cfg.seeds.assimilator)

    jobs = []
    for method in METHODS:
        settings = cfg.method_settings(method)
        t0 = time.perf_counter()
        assim = build_assimilator(cfg, osse, method, settings)
        jax.block_until_ready(assim)
        build_s = time.perf_counter() - t0
        x0 = initial_ensemble(cfg, osse, cfg.members_for(method))
        t0 = time.perf_counter()
        compiled = run_cycles.lower(osse.testbed, assim, osse.truth, osse.obs, x0, key).compile()
        compile_s = time.perf_counter() - t0
        jobs.append(
            dict(
                method=method,
                settings=settings,
                members=int(x0.shape[0]),
                assim=assim,
                x0=x0,
                local_k=_local_slots(assim),
                compiled=compiled,
                build_s=build_s,
                compile_s=compile_s,
                runs=[],
                result=None,
            )
        )

    model = forecast_only.lower(osse.testbed, jobs[0]["x0"], cycles).compile()
    model_runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(model(jobs[0]["x0"]))
        model_runs.append(time.perf_counter() - t0)
        for job in jobs:
            if job["runs"] and sum(job["runs"]) >= budget_s:
                continue
            t0 = time.perf_counter()
            job["result"] = jax.block_until_ready(
                job["compiled"](job["assim"], osse.truth, osse.obs, job["x0"], key)
            )
            job["runs"].append(time.perf_counter() - t0)

    rows = []
    for job in jobs:
        res = job["result"]
        finite = bool(np.asarray(res.finite_f).all() and np.asarray(res.finite_a).all())
        rmse_a = summarize(res, burn_in)["rmse_a"] if finite else math.nan
        best = min(job["runs"])
        rows.append(
            dict(
                n=n,
                method=job["method"],
                settings=job["settings"],
                local_k=job["local_k"],
                members=job["members"],
                cycles=cycles,
                burn_in=burn_in,
                build_s=job["build_s"],
                compile_s=job["compile_s"],
                run_s=best,
                runs_s=job["runs"],
                cycles_per_s=cycles / best,
                ms_per_cycle=1e3 * best / cycles,
                finite=finite,
                rmse_a=rmse_a,
            )
        )
    ref = next(r for r in rows if r["method"] == REFERENCE)
    model_ms = 1e3 * min(model_runs) / cycles
    for r in rows:
        r["rel_cost"] = r["ms_per_cycle"] / ref["ms_per_cycle"]
        r["analysis_ms"] = r["ms_per_cycle"] - ref["ms_per_cycle"]
        r["model_ms"] = model_ms
        r["analysis_per_model"] = r["analysis_ms"] / model_ms
    return rows


def _local_slots(assim) -> int | None:
    """Observation slots of one LETKF local analysis (sites within 2 x radius), else None."""
    while assim is not None:
        near = getattr(assim, "neighbours", None)
        if near is not None:
            return int(near.shape[1])
        assim = getattr(assim, "inner", None)
    return None


def _row(rows: list[dict], n: int, method: str) -> dict | None:
    return next((r for r in rows if r["n"] == n and r["method"] == method), None)


def _target_value(rows: list[dict], what: str) -> float | None:
    """The measured value of a target, None when the sizes it needs were not run."""
    if what == "letkf_runs":
        row = _row(rows, 4000, "letkf")
        return None if row is None else (row["rmse_a"] if row["finite"] else math.inf)
    if what == "letkf_scaling":
        small, large = _row(rows, 400, "letkf"), _row(rows, 4000, "letkf")
        if small is None or large is None:
            return None
        return (large["analysis_ms"] / large["n"]) / (small["analysis_ms"] / small["n"])
    if what == "etkf_cost":
        row = _row(rows, 40, "etkf")
        return None if row is None else (row["rel_cost"] if row["finite"] else math.inf)
    raise ValueError(what)


def check_targets(rows: list[dict]) -> list[dict]:
    out = []
    for name, what, limit in TARGETS:
        value = _target_value(rows, what)
        status = (
            "SKIP"
            if value is None
            else "PASS"
            if math.isfinite(value) and value <= limit
            else "FAIL"
        )
        out.append(dict(name=name, value=value, limit=limit, status=status))
    return out


def render(rows: list[dict], targets: list[dict], repeats: int, console: Console) -> None:
    table = Table(
        title=f"Analysis cycles per second, Lorenz-96, all variables observed, R = I "
        f"(best of up to {repeats} runs; x free run = cost per cycle / that of '{REFERENCE}')"
    )
    for col in (
        "n",
        "method",
        "settings",
        "N",
        "cycles",
        "compile s",
        "run s",
        "cycles/s",
        "ms/cycle",
        "x free run",
        "analysis ms",
        "model ms",
        "analysis/model",
        "rmse_a",
    ):
        table.add_column(
            col, justify="left" if col in ("method", "settings") else "right", no_wrap=True
        )
    last_n = None
    for r in rows:
        if last_n is not None and r["n"] != last_n:
            table.add_section()
        last_n = r["n"]
        table.add_row(
            f"{r['n']:,}",
            r["method"],
            settings_text(r["settings"]) + ("" if r["local_k"] is None else f" (k={r['local_k']})"),
            str(r["members"]),
            str(r["cycles"]),
            f"{r['compile_s']:.2f}",
            f"{r['run_s']:.2f}",
            f"{r['cycles_per_s']:,.1f}",
            f"{r['ms_per_cycle']:.3f}",
            f"{r['rel_cost']:.2f}",
            "-" if r["method"] == REFERENCE else f"{r['analysis_ms']:.3f}",
            f"{r['model_ms']:.3f}",
            "-" if r["method"] == REFERENCE else f"{r['analysis_per_model']:.1f}",
            f"{r['rmse_a']:.4f}" if r["finite"] else "[red]diverged[/]",
        )
    console.print(table)
    console.print(
        "x free run: cost per cycle over that of the free run (forecast + the per-cycle metrics, "
        "which "
        "dominate it at large n); analysis ms: the method's ms/cycle minus the free run's; model "
        "ms: the "
        "N-member forecast alone per cycle; analysis/model: analysis ms over model ms."
    )
    console.print(
        "rmse_a is a sanity check only (few cycles): 'none' is the free run; the global ETKF is "
        "not "
        "expected to track the truth with N = 40 when n >> N."
    )
    for t in targets:
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        colour = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}[t["status"]]
        console.print(
            f"[bold {colour}]{t['status']}[/] {t['name']}: {value} (limit {t['limit']:g})"
        )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default=CONFIG, help=f"experiment config (default {CONFIG})")
    ap.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="comma-separated n (default 40,400,4000)"
    )
    ap.add_argument(
        "--cycles", type=int, default=None, help="cycles at every size (default: by size)"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per method at most (best counts; default 3)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="no further run of a method once its runs took this long (default 20)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="further config overrides (e.g. ensemble.size=20)",
    )
    ap.add_argument(
        "--json",
        dest="json_out",
        metavar="PATH",
        help="also write the results as JSON ('-': stdout)",
    )
    ap.add_argument("--check", action="store_true", help="exit with status 1 if a target fails")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    console = Console(width=max(Console().width, 175), stderr=args.json_out == "-")
    device = jax.devices()[0]
    load_before = os.getloadavg()
    console.print(
        f"jax {jax.__version__} on {device.platform} ({device.device_kind}), {os.cpu_count()} "
        "CPUs, "
        f"load average {load_before[0]:.1f}"
    )
    t_start = time.perf_counter()
    rows = []
    for n in sizes:
        rows += bench_size(
            args.config, n, args.overrides, args.cycles, args.repeats, args.budget, console
        )
    targets = check_targets(rows)
    render(rows, targets, args.repeats, console)
    wall = time.perf_counter() - t_start
    console.print(f"total {wall:.0f} s; load average {os.getloadavg()[0]:.1f}")

    report = dict(
        bench="baselines",
        config=args.config,
        overrides=args.overrides,
        sizes=sizes,
        repeats=args.repeats,
        budget_s=args.budget,
        reference=REFERENCE,
        jax=jax.__version__,
        device=f"{device.platform}:{device.device_kind}",
        cpus=os.cpu_count(),
        python=platform.python_version(),
        load_average=[load_before[0], os.getloadavg()[0]],
        wall_s=wall,
        results=rows,
        targets=targets,
        passed=all(t["status"] != "FAIL" for t in targets),
    )
    report = json_safe(report)
    if args.json_out == "-":
        print(json.dumps(report))
    elif args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=1)
    if args.check and not report["passed"]:
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
