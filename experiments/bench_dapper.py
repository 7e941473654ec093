"""Benchmark: ETKF and LETKF side by side with DAPPER (Raanes et al.) on the same machine.

Lorenz-96, 40 variables, F = 8, dt = 0.05, one step per cycle, R = I, N = 40 (the Sakov &
Oke 2008 set-up of DAPPER's ``mods.Lorenz96.sakov2008``), every site and every 4th site
observed; ``--cycles`` (5,000) cycles after a burn-in of 500, both codes on their own truth
and observations from the same model. Reported per method and network: each code's time
mean analysis RMSE and its cycles per second, and the speed ratio ensda / DAPPER.

- DAPPER: ``xp.assimilate`` (its per-cycle statistics included), wall time of the call.
- ensda: ``ensda.cycle.run_cycles`` compiled apart (``lower().compile()``, not timed), the
  best of ``--repeats`` runs (per-cycle metrics included: RMSE, spread, CRPS, energy score).

Settings, the same for both codes: ETKF (DAPPER ``EnKF('Sqrt', rot=True)``) inflation 1.01;
LETKF inflation 1.01 and the Gaspari–Cohn half-width ``radius`` in sites (DAPPER's
``loc_rad`` is scaled by 1.82 before its Gaspari–Cohn taper, so ``loc_rad = radius / 1.82``
gives the same taper). Every 4th site: inflation 1.02 for both methods.

Target (issue 18): ensda ≥ 20x DAPPER's cycles/s at an rmse_a no worse than DAPPER's + 5 %,
for the ETKF and the LETKF. PASS/FAIL printed; ``--check`` exits 1 on FAIL.

DAPPER is optional (``pip install -e '.[bench]'``); without it the DAPPER columns are
SKIP and only ensda's rows are printed.

Usage::

    python experiments/bench_dapper.py                  # make bench
    python experiments/bench_dapper.py --cycles 1000 --json bench_dapper.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

from ensda.benchmark import compile_timed, environment, json_safe, write_json
from ensda.config import load
from ensda.cycle import run_cycles, summarize
from ensda.experiment import build_assimilator, initial_ensemble, make_osse

CONFIG = "experiments/configs/l96.yaml"
BURN_IN = 500
DAPPER_LOC_SCALE = 1.82  # DAPPER's loc_rad -> Gaspari-Cohn half-width (experiments/README)
#: (network name, obs.every, method, settings shared by both codes)
CASES = (
    ("every site", 1, "etkf", {"inflation": 1.01}),
    ("every site", 1, "letkf", {"inflation": 1.01, "radius": 6.0}),
    ("every 4th", 4, "etkf", {"inflation": 1.02}),
    ("every 4th", 4, "letkf", {"inflation": 1.02, "radius": 10.0}),
)
TARGET_SPEEDUP = 20.0
RMSE_SLACK = 1.05


def run_ensda(every: int, method: str, settings: dict, cycles: int, repeats: int) -> dict:
    cfg = load(
        CONFIG,
        [
            f"obs.every={every}",
            f"cycles={cycles + BURN_IN}",
            f"burn_in={BURN_IN}",
            "ensemble.size=40",
            "testbed.climatology_samples=500",
            "tracking.enabled=false",
        ],
    )
    osse = make_osse(cfg)
    assim = build_assimilator(cfg, osse, method, settings)
    x0 = initial_ensemble(cfg, osse, cfg.members_for(method))
    key = jax.random.key(cfg.seeds.assimilator)
    compiled, compile_s = compile_timed(
        run_cycles, osse.testbed, assim, osse.truth, osse.obs, x0, key
    )
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = jax.block_until_ready(compiled(assim, osse.truth, osse.obs, x0, key))
        runs.append(time.perf_counter() - t0)
    finite = bool(np.asarray(res.finite_a).all())
    rmse = summarize(res, BURN_IN)["rmse_a"] if finite else math.nan
    return {"rmse_a": rmse, "cycles_per_s": (cycles + BURN_IN) / min(runs), "compile_s": compile_s}


def run_dapper(every: int, method: str, settings: dict, cycles: int) -> dict | None:
    try:
        import dapper.da_methods as da
        import dapper.mods as modelling
        from dapper.mods.Lorenz96 import sakov2008
        from dapper.tools.localization import nd_Id_localization
    except ImportError:
        return None
    dt = 0.05
    tseq = modelling.Chronology(dt, dko=1, Ko=cycles + BURN_IN, BurnIn=BURN_IN * dt)
    sites = np.arange(40)[::every]
    obs = modelling.partial_Id_Obs(40, sites)
    obs["noise"] = 1
    obs["localizer"] = nd_Id_localization((40,), (2,), sites)
    hmm = modelling.HiddenMarkovModel(sakov2008.Dyn, obs, tseq, sakov2008.X0)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        xx, yy = hmm.simulate()
        if method == "etkf":
            xp = da.EnKF("Sqrt", N=40, infl=settings["inflation"], rot=True)
        else:
            loc = settings["radius"] / DAPPER_LOC_SCALE
            xp = da.LETKF(N=40, infl=settings["inflation"], rot=True, loc_rad=loc)
        t0 = time.perf_counter()
        xp.assimilate(hmm, xx, yy, liveplots=False)
        wall = time.perf_counter() - t0
        xp.stats.average_in_time()
    return {"rmse_a": float(xp.avrgs.err.rms.a.val), "cycles_per_s": (cycles + BURN_IN) / wall}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=5000, help="cycles after burn-in (5,000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed ensda runs (best counts)")
    ap.add_argument("--json", dest="json_out", metavar="PATH", help="also write JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    args = ap.parse_args(argv)
    console = Console(width=132)
    report = {"bench": "dapper", "env": environment(console, "ensda against DAPPER"), "rows": []}
    table = Table(title=f"Lorenz-96, N = 40, {args.cycles} cycles after {BURN_IN}")
    for col in ("network", "method", "settings", "rmse_a ensda", "rmse_a DAPPER"):
        table.add_column(col)
    for col in ("cycles/s ensda", "cycles/s DAPPER", "speed-up", "target"):
        table.add_column(col, justify="right")
    for network, every, method, settings in CASES:
        ours = run_ensda(every, method, settings, args.cycles, args.repeats)
        ref = run_dapper(every, method, settings, args.cycles)
        row = {
            "network": network,
            "method": method,
            "settings": settings,
            "ensda": ours,
            "dapper": ref,
        }
        if ref is None:
            status, speedup = "SKIP", math.nan
        else:
            speedup = ours["cycles_per_s"] / ref["cycles_per_s"]
            ok = speedup >= TARGET_SPEEDUP and ours["rmse_a"] <= RMSE_SLACK * ref["rmse_a"]
            status = "PASS" if ok else "FAIL"
        row |= {"speedup": speedup, "status": status}
        report["rows"].append(row)
        fmt = lambda v, spec: "-" if v is None or not math.isfinite(v) else format(v, spec)  # noqa: E731
        table.add_row(
            network,
            method,
            " ".join(f"{k}={v:g}" for k, v in settings.items()),
            fmt(ours["rmse_a"], ".3f"),
            fmt(ref and ref["rmse_a"], ".3f"),
            fmt(ours["cycles_per_s"], ",.0f"),
            fmt(ref and ref["cycles_per_s"], ",.0f"),
            fmt(speedup, ".1f"),
            status,
        )
    console.print(table)
    if any(r["dapper"] is None for r in report["rows"]):
        console.print("[yellow]SKIP[/] DAPPER not installed: pip install -e '.[bench]'")
    report["passed"] = all(r["status"] != "FAIL" for r in report["rows"])
    write_json(json_safe(report), args.json_out)
    if args.check and not report["passed"]:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
