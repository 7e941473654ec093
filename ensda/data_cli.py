"""``ensda data``: make and describe datasets.

ensda data nature CONFIG [--set testbed.nature.days=30 ...] [--store PATH] [--json]
ensda data info STORE [--climatology OUT.png [--times K]] [--json]
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Make and describe datasets (nature runs)."
)

ConfigArg = typer.Argument(
    ..., help="Experiment YAML with a sphere testbed, e.g. experiments/configs/sphere.yaml"
)
SetOpt = typer.Option(
    [], "--set", help="Override a config value, e.g. --set testbed.nature.days=30 (repeatable)."
)
StoreOpt = typer.Option(None, "--store", help="Store path (default: testbed.nature.store).")
ProgressOpt = typer.Option(
    True, "--progress/--no-progress", help="Show progress bars (spin-up, nature run)."
)
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON (the last stdout line).")
StoreArg = typer.Argument(..., help="A zarr store, e.g. data/sphere/nature.zarr")
ClimatologyOpt = typer.Option(
    None,
    "--climatology",
    help="Write a climatology figure (zonal-mean u and T, "
    "z500 and T850 maps) to this PNG and report the jets, the poleward T contrast "
    "at 850 hPa and the global mean surface pressure.",
)
TimesOpt = typer.Option(
    None, "--times", min=1, help="With --climatology: use at most the last K times (default all)."
)


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
    console.print(
        f"nature run: {cfg.model} {cfg.resolution}, spin-up {cfg.spinup_days:g} d, "
        f"{cfg.nature.days:g} d every {cfg.nature.output_hours} h -> {path}",
        highlight=False,
    )
    try:
        summary = generate(cfg, path, progress=progress)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    cost = (
        f"; {summary['s_per_model_day']} s per model day"
        if summary["s_per_model_day"] is not None
        else "; nothing to do"
    )
    console.print(
        f"{summary['n_times']} times in {path} "
        f"({'complete' if summary['complete'] else 'incomplete'}){cost}",
        highlight=False,
    )
    if as_json:
        print(json.dumps(summary))


@app.command()
def info(
    store: Path = StoreArg,
    climatology: Path | None = ClimatologyOpt,
    times: int | None = TimesOpt,
    as_json: bool = JsonOpt,
):
    """Describe a store: dims, times, grid, levels, variables, size, restart state; with
    --climatology, also its climatology (figure and numbers)."""
    from ensda.testbeds.sphere.store import describe

    if times is not None and climatology is None:
        _fail("--times applies to --climatology only")
    try:
        d = describe(store)
    except FileNotFoundError as err:
        _fail(str(err))
    except (ValueError, KeyError) as err:
        _fail(f"{store}: not a readable store: {err}")
    if climatology is not None:
        d["climatology"] = _climatology(store, climatology, times, Console(stderr=as_json))
    if as_json:
        print(json.dumps(d, default=str))
        return
    console = Console()
    console.print(f"[bold]{d['store']}[/]  {d['size_mb']} MB", highlight=False)
    console.print("dims: " + ", ".join(f"{k} {v}" for k, v in d["dims"].items()), highlight=False)
    if "time" in d:
        t = d["time"]
        console.print(
            f"time: {t['first']} .. {t['last']} ({t['count']} times, every "
            f"{t.get('step_hours', '?')} h)",
            highlight=False,
        )
    if "grid" in d:
        g = d["grid"]
        console.print(
            f"grid: {g['n_lon']}x{g['n_lat']}, latitude {g['lat_first']} .. {g['lat_last']}, "
            f"longitude from {g['lon_first']} every {g['lon_step']}",
            highlight=False,
        )
    if "levels_hpa" in d:
        console.print(f"levels (hPa): {', '.join(map(str, d['levels_hpa']))}", highlight=False)
    for name, v in d["variables"].items():
        console.print(
            f"  {name:22s} ({', '.join(v['dims'])}) {v['units']} {v['dtype']}", highlight=False
        )
    if "restart" in d:
        r = d["restart"]
        console.print(
            f"restart: after {r['spinup_steps']} spin-up steps and {r['n_written']} output times "
            "(`ensda data nature` resumes from here)",
            highlight=False,
        )
    for k, v in d.get("attrs", {}).items():
        console.print(f"  {k}: {v}", highlight=False)
    if "climatology" in d:
        from ensda.testbeds.sphere.climate import format_numbers

        for line in format_numbers(d["climatology"]):
            console.print(line, highlight=False, soft_wrap=True)


def _climatology(store: Path, out: Path, times: int | None, console: Console) -> dict:
    """Write the climatology figure of ``store`` to ``out``; its numbers, with the figure's path."""
    from ensda.run_figures import plt
    from ensda.testbeds.sphere.climate import climatology_numbers
    from ensda.testbeds.sphere.figures import climatology_figure
    from ensda.testbeds.sphere.store import open_store

    ds = open_store(store)
    try:
        numbers = climatology_numbers(ds, times)
        fig = climatology_figure(ds, times, title=store.name, numbers=numbers)
    except (ValueError, KeyError) as err:
        _fail(f"{store}: no climatology: {err}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    console.print(f"climatology figure -> {out}", highlight=False)
    return {**numbers, "figure": str(out)}
