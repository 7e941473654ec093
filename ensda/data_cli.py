"""``ensda data``: make and describe datasets.

    ensda data nature CONFIG [--set testbed.nature.days=30 ...] [--store PATH] [--json]
    ensda data info STORE [--json]
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Make and describe datasets (nature runs).")

ConfigArg = typer.Argument(..., help="Experiment YAML with a sphere testbed, e.g. experiments/configs/sphere.yaml")
SetOpt = typer.Option([], "--set", help="Override a config value, e.g. --set testbed.nature.days=30 (repeatable).")
StoreOpt = typer.Option(None, "--store", help="Store path (default: testbed.nature.store).")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars (spin-up, nature run).")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON (the last stdout line).")
StoreArg = typer.Argument(..., help="A zarr store, e.g. data/sphere/nature.zarr")


def _fail(message: str, code: int = 2) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def nature(
    config: Path = ConfigArg,
    sets: list[str] = SetOpt,
    store: Path | None = StoreOpt,
    progress: bool = ProgressOpt,
    as_json: bool = JsonOpt,
):
    """Spin up the dycore and write the nature run as zarr; run it again to resume or extend."""
    from ensda.config import ConfigError
    from ensda.testbeds.sphere.config import load_testbed

    try:
        cfg = load_testbed(config, list(sets))
    except ConfigError as err:
        _fail(str(err))
    from ensda.testbeds.sphere.nature import generate

    console = Console(stderr=as_json)
    path = store or Path(cfg.nature.store)
    console.print(f"nature run: {cfg.model} {cfg.resolution}, spin-up {cfg.spinup_days:g} d, "
                  f"{cfg.nature.days:g} d every {cfg.nature.output_hours} h -> {path}", highlight=False)
    try:
        summary = generate(cfg, path, progress=progress)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    cost = f"; {summary['s_per_model_day']} s per model day" if summary["s_per_model_day"] is not None else "; nothing to do"
    console.print(f"{summary['n_times']} times in {path} ({'complete' if summary['complete'] else 'incomplete'}){cost}", highlight=False)
    if as_json:
        print(json.dumps(summary))


@app.command()
def info(
    store: Path = StoreArg,
    as_json: bool = JsonOpt,
):
    """Describe a store: dims, times, grid, levels, variables, size, restart state."""
    from ensda.testbeds.sphere.store import describe

    try:
        d = describe(store)
    except FileNotFoundError as err:
        _fail(str(err))
    except (ValueError, KeyError) as err:
        _fail(f"{store}: not a readable store: {err}")
    if as_json:
        print(json.dumps(d, default=str))
        return
    console = Console()
    console.print(f"[bold]{d['store']}[/]  {d['size_mb']} MB", highlight=False)
    console.print("dims: " + ", ".join(f"{k} {v}" for k, v in d["dims"].items()), highlight=False)
    if "time" in d:
        t = d["time"]
        console.print(f"time: {t['first']} .. {t['last']} ({t['count']} times, every {t.get('step_hours', '?')} h)", highlight=False)
    if "grid" in d:
        g = d["grid"]
        console.print(f"grid: {g['n_lon']}x{g['n_lat']}, latitude {g['lat_first']} .. {g['lat_last']}, "
                      f"longitude from {g['lon_first']} every {g['lon_step']}", highlight=False)
    if "levels_hpa" in d:
        console.print(f"levels (hPa): {', '.join(map(str, d['levels_hpa']))}", highlight=False)
    for name, v in d["variables"].items():
        console.print(f"  {name:22s} ({', '.join(v['dims'])}) {v['units']} {v['dtype']}", highlight=False)
    if "restart" in d:
        r = d["restart"]
        console.print(f"restart: after {r['spinup_steps']} spin-up steps and {r['n_written']} output times "
                      "(`ensda data nature` resumes from here)", highlight=False)
    for k, v in d.get("attrs", {}).items():
        console.print(f"  {k}: {v}", highlight=False)
