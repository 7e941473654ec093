"""The harness the benchmarks share (``experiments/bench_*.py``, ``make bench``): timed
rounds of jitted jobs interleaved so that machine noise hits every job alike, compile times,
targets judged PASS/FAIL/SKIP, the environment the numbers were measured in, and the JSON
report (strict JSON: NaN and inf written as null).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from functools import partial

import jax
from rich.console import Console


@partial(jax.jit, static_argnums=(0, 2))
def forecast_only(testbed, x0: jax.Array, cycles: int) -> jax.Array:
    """The ensemble forecast alone over ``cycles`` cycles (no analysis, no metrics)."""
    return jax.lax.fori_loop(0, cycles, lambda _, x: testbed.cycle_forecast(x), x0)


@jax.jit
def analyse_jit(assim, background: jax.Array, obs, key: jax.Array) -> jax.Array:
    return assim.analyse(background, obs, key)


def compile_timed(fn, *args) -> tuple[object, float]:
    """``fn.lower(*args).compile()`` (the compiled function takes the dynamic arguments) and its
    seconds."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def timed_rounds(jobs: list[dict], repeats: int, budget_s: float) -> None:
    """Run each job's ``call()`` up to ``repeats`` times, the jobs interleaved; no further
    run of a job once its runs took ``budget_s``. Appends the wall times to ``job["runs"]``
    and keeps the last result in ``job["result"]``."""
    for _ in range(repeats):
        for job in jobs:
            if job["runs"] and sum(job["runs"]) >= budget_s:
                continue
            t0 = time.perf_counter()
            job["result"] = jax.block_until_ready(job["call"]())
            job["runs"].append(time.perf_counter() - t0)


def runs_text(runs: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in runs) + " s"


def settings_text(settings: dict) -> str:
    shown = {
        k: v
        for k, v in settings.items()
        if not (k == "rtps" and v == 0.0 or k == "inflation" and v == 1.0)
    }
    return (
        " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        or "-"
    )


def judge_targets(targets, by_row: dict[str, dict], members: int) -> list[dict]:
    """PASS/FAIL/SKIP of each ``(name, row, quantity, limit, direction)`` target against
    ``by_row[row][quantity]`` ("ge": passes when value >= limit, "le" when <=); a row that
    was not measured is SKIP, a non-finite row (``finite`` false) fails (value inf)."""
    out = []
    for name, row, quantity, limit, direction in targets:
        r = by_row.get(row)
        value = None if r is None else r[quantity] if r["finite"] else math.inf
        if value is None:
            status = "SKIP"
        else:
            ok = math.isfinite(value) and (value >= limit if direction == "ge" else value <= limit)
            status = "PASS" if ok else "FAIL"
        out.append(
            {"name": name.format(members=members), "value": value, "limit": limit, "status": status}
        )
    return out


def print_targets(targets: list[dict], console: Console) -> None:
    for t in targets:
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        colour = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}[t["status"]]
        console.print(
            f"[bold {colour}]{t['status']}[/] {t['name']}: {value} (limit {t['limit']:g})"
        )


def parse_common(
    ap: argparse.ArgumentParser,
    argv: list[str] | None,
    config: str,
    budget_s: float,
    fixed_overrides: tuple[str, ...],
    why_members: str,
) -> argparse.Namespace:
    """Add the options the sphere benchmarks share (--config, --members, --repeats,
    --budget, --set, --json, --check) to ``ap``, parse ``argv`` and check them."""
    ap.add_argument("--config", default=config, help=f"experiment config (default {config})")
    ap.add_argument("--members", type=int, default=32, help="ensemble size N (default 32)")
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs per job at most (best counts; default 3)"
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=budget_s,
        metavar="SECONDS",
        help=f"no further run of a job once its runs took this long (default {budget_s:g})",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"further config overrides (after {' '.join(fixed_overrides)} ensemble.size=N)",
    )
    ap.add_argument(
        "--json",
        dest="json_out",
        metavar="PATH",
        help="also write the results as JSON ('-': stdout)",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 if a target fails (or the store is missing)",
    )
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.members < 2:
        ap.error(f"--members must be >= 2 ({why_members})")
    return args


def environment(console: Console, what: str) -> dict:
    """Print and return where the benchmark runs: jax, its backend and device, CPUs, load."""
    device = jax.devices()[0]
    load_before = os.getloadavg()[0]
    console.print(
        f"jax {jax.__version__} on {jax.default_backend()} ({device.device_kind}, "
        f"{jax.device_count()} "
        f"device(s)), {os.cpu_count()} CPUs, load average {load_before:.1f}; {what}"
    )
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": f"{device.platform}:{device.device_kind}",
        "device_count": jax.device_count(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [load_before],
    }


def skip_missing_store(
    bench: str, args: argparse.Namespace, store, targets, console: Console
) -> dict:
    """Without the nature-run store: a SKIP line and report (exit 1 with ``--check``)."""
    judged = [
        {"name": t[0].format(members=args.members), "value": None, "limit": t[3], "status": "SKIP"}
        for t in targets
    ]
    console.print(
        f"[bold yellow]SKIP[/] {bench.replace('_', ' ')} benchmark: no nature-run store at {store} "
        f"(make it with: ensda data nature {args.config})"
    )
    report = {
        "bench": bench,
        "config": args.config,
        "skipped": f"no nature-run store at {store}",
        "targets": judged,
        "passed": not args.check,
    }
    write_json(report, args.json_out)
    if args.check:
        sys.exit(1)
    return report


def finish(report: dict, t_start: float, args: argparse.Namespace, console: Console) -> dict:
    """Print the total time and load, complete ``report`` (wall time, load after, passed),
    write it as JSON (``--json``), exit 1 with ``--check`` if a target failed."""
    wall = time.perf_counter() - t_start
    load_after = os.getloadavg()[0]
    console.print(f"total {wall:.0f} s; load average {load_after:.1f}")
    report["load_average"] = [*report["load_average"], load_after]
    report |= {"wall_s": wall, "passed": all(t["status"] != "FAIL" for t in report["targets"])}
    report = write_json(report, args.json_out)
    if args.check and not report["passed"]:
        sys.exit(1)
    return report


def write_json(report: dict, path: str | None) -> dict:
    report = json_safe(report)
    if path == "-":
        print(json.dumps(report))
    elif path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    return report


def json_safe(obj):
    """NaN/inf -> None, so the file is strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
