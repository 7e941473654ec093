"""The ``ensda`` command.

ensda run CONFIG [--method NAME] [--set key=value ...] [--json] [--no-track] [--analyses PATH]
ensda assimilate CONFIG --background BG.zarr --observations OBS.zarr --out AN.zarr [--method NAME]
ensda compare CONFIG --methods letkf,etkf,enkf,3dvar [--set ...] [--json]
ensda train CONFIG [--set ...]
ensda sweep CONFIG [--trials N] [--workers K] [--storage URL] [--study NAME] [--set ...]
ensda tune CONFIG --method letkf [--trials 30] [--seeds 300,400] [--workers K] [--storage URL]
ensda report RUN_ID | study:NAME [--out DIR] [--uri URI] [--storage URL] [--no-log]
ensda methods
ensda ui [--port 5000] [--optuna [--optuna-port 8080] [--storage URL]]
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ensda import __version__
from ensda.data_cli import app as data_app

app = typer.Typer(no_args_is_help=True)  # its help: the docstring of ``main``
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ensda {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
):
    """Ensemble data assimilation with diffusion models and classic baselines."""


TABLE_KEYS = ("rmse_a", "spread_a", "ssr_a", "crps_a", "rmse_f")
#: scores that a single-member (deterministic) method has none of: shown as "–"
ENSEMBLE_KEYS = ("spread_a", "ssr_a")


def _score_cell(scores: dict, key: str) -> str:
    """``scores[key]`` for a table: "–" for an ensemble score of one member, "-" if absent."""
    if key in ENSEMBLE_KEYS and scores.get("n_members") == 1:
        return "–"
    return f"{scores[key]:.4f}" if key in scores else "-"


SetOpt = typer.Option(
    [], "--set", help="Override a config value, e.g. --set obs.density=0.25 (repeatable)."
)
JsonOpt = typer.Option(
    False, "--json", help="Print the results as one JSON object on the last stdout line."
)
TrackOpt = typer.Option(
    True, "--track/--no-track", help="Log to MLflow (default store: sqlite:///mlflow.db)."
)
StorageOpt = typer.Option(
    "sqlite:///optuna.db",
    "--storage",
    envvar="ENSDA_STORAGE",
    show_envvar=True,
    help="Optuna storage (SQLAlchemy URL; PostgreSQL for several machines). A URL with a "
    "password belongs in $ENSDA_STORAGE, not on the command line; it is shown and stored "
    "with the password masked.",
)
WorkersOpt = typer.Option(
    1,
    "--workers",
    min=1,
    help="Worker processes, each pinned to one GPU, or to one CPU device and a share of the cores.",
)
TunedOpt = typer.Option(
    "tuned",
    "--tuned",
    help="Directory of tuned settings (one YAML per set-up, written by `ensda tune`).",
)


def _fail(message: str, code: int = 2) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _console(as_json: bool) -> Console:
    """Human output; on stderr when stdout carries JSON. Wide enough for the tables."""
    console = Console(stderr=as_json)
    if not console.is_terminal:
        console = Console(stderr=as_json, width=120)
    return console


def _load(config: Path, sets: list[str], extra: list[str] = (), presets: dict | None = None):
    from ensda.config import ConfigError, load

    try:
        return load(config, list(sets) + list(extra), presets=presets)
    except ConfigError as err:
        _fail(str(err))


def _run_methods(
    cfg,
    methods: list[str],
    console: Console,
    keep_going: bool = False,
    analyses: Path | None = None,
):
    """Run each method on the same OSSE; returns (osse, [MethodRun | NonFiniteStateError]).

    A diverged method stops the command, or with ``keep_going`` is reported and skipped.
    With ``analyses`` (one method, a sphere config) every cycle's analysis ensemble is
    written to that zarr store as the run goes (``analyse_store.run_writer``).
    """
    from ensda.analyse_store import run_writer
    from ensda.cycle import NonFiniteStateError
    from ensda.experiment import make_osse, run_method

    with console.status(f"nature run and observations ({cfg.cycles} cycles)..."):
        try:
            osse = make_osse(cfg)
        except NonFiniteStateError as err:
            _fail(str(err), code=3)
    runs = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    for i, method in enumerate(methods, 1):
        with Progress(
            *columns, console=console, transient=True, disable=not console.is_terminal
        ) as bar:
            task = bar.add_task(f"[{i}/{len(methods)}] {method} (compiling)", total=cfg.cycles)

            def advance(done, task=task, bar=bar, label=f"[{i}/{len(methods)}] {method}"):
                bar.update(task, completed=done, description=label)

            try:
                sink = None if analyses is None else run_writer(cfg, osse, method, analyses)
                runs.append(run_method(cfg, osse, method, progress=advance, analyses=sink))
            except NonFiniteStateError as err:
                if not keep_going:
                    _fail(str(err), code=3)
                runs.append(err)
                console.print(f"  {method}: [red]diverged[/] at cycle {err.cycle} ({err.stage})")
                continue
            except ValueError as err:
                _fail(str(err))
        r = runs[-1]
        console.print(
            f"  {method}: rmse_a {r.summary['rmse_a']:.4f}  (compile {r.compile_s:.1f} s, run "
            f"{r.run_s:.1f} s)",
            highlight=False,
        )
    return osse, runs


def _table(records: list[dict], title: str) -> Table:
    table = Table(title=title)
    table.add_column("method")
    for key in TABLE_KEYS:
        table.add_column(key, justify="right")
    lead = any("lead_time_loss" in r for r in records)
    if lead:
        table.add_column(
            f"lead-time loss at {next(r['lead_h'] for r in records if 'lead_h' in r):g} h",
            justify="right",
        )
    table.add_column("N", justify="right")
    table.add_column("wall s", justify="right")
    finished = [r for r in records if "diverged" not in r]
    best = min((r["rmse_a"] for r in finished), default=None)
    for r in records:
        if "diverged" in r:
            table.add_row(
                r["method"],
                f"[red]diverged at cycle {r['diverged_at_cycle']}[/]",
                *[""] * (len(TABLE_KEYS) + lead + 1),
            )
            continue
        cells = [_score_cell(r, k) for k in TABLE_KEYS] + (
            [r.get("lead_time_loss", "-")] if lead else []
        )
        if r["rmse_a"] == best and len(records) > 1:
            cells[0] = f"[bold green]{cells[0]}[/]"
        table.add_row(r["method"], *cells, str(r["n_members"]), f"{r['wall_s']:.1f}")
    return table


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment YAML, e.g. experiments/configs/l96.yaml"),
    method: str | None = typer.Option(
        None, "--method", "-m", help="Assimilation method (see `ensda methods`)."
    ),
    sets: list[str] = SetOpt,
    as_json: bool = JsonOpt,
    track: bool = TrackOpt,
    analyses: Path | None = typer.Option(
        None,
        "--analyses",
        help="Also write every cycle's analysis ensemble to this zarr store (sphere configs; "
        "WeatherBench 2 layout with a member dim).",
    ),
):
    """Run one cycled experiment (OSSE) and print its time-mean scores."""
    from ensda import experiment, tracking

    cfg = _load(
        config,
        sets,
        ([f"method={method}"] if method else []) + ([] if track else ["tracking.enabled=false"]),
    )
    if analyses is not None and not cfg.testbed_kind.lat_lon_stores:
        _fail(
            "--analyses writes lat-lon analysis stores: it needs a sphere config (testbed.kind: "
            f"sphere); {config} is a {cfg.testbed.kind} experiment"
        )
    console = _console(as_json)
    osse, (result,) = _run_methods(cfg, [cfg.method], console, analyses=analyses)
    record = experiment.run_record(result)
    with tracking.method_run(cfg, f"{cfg.name}:{cfg.method}") as mlrun:
        tracking.log_result(mlrun, cfg, result, osse)
    console.print(_table([record], f"{cfg.name} — {cfg.cycles} cycles, burn-in {cfg.burn_in}"))
    if mlrun.run_id:
        console.print(
            f"MLflow run {mlrun.run_id} in {tracking.tracking_uri(cfg.tracking.uri)} (see `ensda "
            "ui`)",
            highlight=False,
        )
    if analyses is not None:
        console.print(
            f"analysis ensembles of {result.summary['n_cycles']} cycles in {analyses}",
            highlight=False,
        )
    if as_json:
        print(
            json.dumps(
                record
                | {"mlflow_run_id": mlrun.run_id}
                | ({"analyses": str(analyses)} if analyses else {})
            )
        )


@app.command()
def assimilate(
    config: Path = typer.Argument(
        ..., help="Sphere experiment YAML: testbed (grid, channels), method settings, seeds."
    ),
    background: Path = typer.Option(
        ...,
        "--background",
        help="Background ensemble: zarr store in the ERA5 / WeatherBench 2 layout with a member "
        "dim.",
    ),
    observations: Path = typer.Option(
        ...,
        "--observations",
        help="observations.zarr as a sphere run logs it (GlobalObsNetwork.dataset).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Analysis store to write (zarr, WeatherBench 2 layout with a member dim); resumed if "
        "it exists.",
    ),
    method: str | None = typer.Option(
        None, "--method", "-m", help="Assimilation method (default: the config's)."
    ),
    sets: list[str] = SetOpt,
    obs_start: str | None = typer.Option(
        None,
        "--obs-start",
        help="Valid time of cycle 0 of observations without a time coordinate, e.g. 2020-01-01T00.",
    ),
    as_json: bool = JsonOpt,
):
    """One analysis per time of a background ensemble store, with the observations of that time."""
    from ensda.analyse_store import assimilate as run_assimilation

    cfg = _load(config, sets, [f"method={method}"] if method else [])
    console = _console(as_json)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task(f"{cfg.method} analyses", total=None)

        def advance(done, total):
            bar.update(task, completed=done, total=total)

        try:
            summary = run_assimilation(
                cfg,
                background,
                observations,
                out,
                cfg.method,
                progress=advance,
                obs_start=obs_start,
            )
        except (ValueError, FileNotFoundError) as err:
            _fail(str(err))
    console.print(
        f"{summary['method']}: {summary['n_written']} analyses of {summary['n_members']} members "
        f"written to {out} ({summary['n_skipped']} there already); obs - background RMS / sigma_o "
        f"{_maybe(summary['omb_rms'])}, obs - analysis {_maybe(summary['oma_rms'])}",
        highlight=False,
    )
    if as_json:
        print(json.dumps(summary))


def _maybe(value) -> str:
    return "-" if value is None else f"{value:.3f}"


#: ``ensda compare``'s methods when ``--methods`` is not given
COMPARE_DEFAULT = ("letkf", "etkf", "enkf", "ensrf", "3dvar", "oi", "climatology")


@app.command()
def compare(
    config: Path = typer.Argument(..., help="Experiment YAML"),
    methods: str | None = typer.Option(
        None,
        "--methods",
        help=f"Comma-separated methods (default {','.join(COMPARE_DEFAULT)}, less those the "
        "testbed cannot run).",
    ),
    sets: list[str] = SetOpt,
    as_json: bool = JsonOpt,
    track: bool = TrackOpt,
    tuned_dir: Path = TunedOpt,
    use_tuned: bool = typer.Option(
        True,
        "--tuned-settings/--config-settings",
        help="Use the settings `ensda tune` stored for this set-up (over methods.<name>; --set "
        "still wins).",
    ),
):
    """Run several methods on the same truth and observations; print a table."""
    from ensda import assimilator as registry
    from ensda import experiment, tracking
    from ensda import tune as tn

    names = (
        list(COMPARE_DEFAULT)
        if methods is None
        else [m.strip() for m in methods.split(",") if m.strip()]
    )
    if not names:
        _fail("--methods is empty")
    for name in names:
        if name not in registry.methods():
            _fail(f"unknown method {name!r}; known methods: {', '.join(registry.methods())}")
    extra = [] if track else ["tracking.enabled=false"]
    cfg = _load(config, sets, extra)
    console = _console(as_json)
    if methods is None and (left_out := [m for m in names if not experiment.runs_on(cfg, m)]):
        names = [m for m in names if m not in left_out]
        console.print(
            f"left out (cannot run on this testbed): {', '.join(left_out)}", highlight=False
        )
    tuned = None if not use_tuned else _tuned_settings(cfg, names, tuned_dir, console)
    if tuned:
        cfg = _load(config, sets, extra, presets=tn.tuned_overrides(tuned[1], names))
    for name in names:
        try:
            cfg.method_settings(name)
        except ValueError as err:
            _fail(str(err))
    t0 = time.perf_counter()
    osse, runs = _run_methods(cfg, names, console, keep_going=True)
    records = [experiment.run_record(r) for r in runs]
    parent_id = tracking.log_comparison(
        cfg, names, osse, runs, records, time.perf_counter() - t0, None if not tuned else tuned[0]
    )
    console.print(
        _table(
            records,
            f"{cfg.name} — {cfg.cycles} cycles, burn-in {cfg.burn_in}, same truth and observations",
        )
    )
    if parent_id:
        console.print(
            f"MLflow parent run {parent_id} in {tracking.tracking_uri(cfg.tracking.uri)}",
            highlight=False,
        )
    if as_json:
        used = (
            {"file": str(tuned[0]), "methods": {m: tuned[1][m] for m in names if m in tuned[1]}}
            if tuned
            else None
        )
        print(
            json.dumps({"results": records, "mlflow_run_id": parent_id, "tuned": used}, default=str)
        )


def _tuned_settings(cfg, names: list[str], directory: Path, console: Console):
    """(path, {method: entry}) of the tuned settings for ``cfg``'s set-up, printed; or None."""
    from ensda import tune as tn

    found = tn.find_tuned(cfg, directory)
    if found is None or not any(m in found[1] for m in names):
        console.print(
            f"tuned settings: none in {directory}/ for this set-up (id {tn.setup_id(cfg)}); using "
            "the config's",
            highlight=False,
        )
        return None
    path, entries = found
    for m in names:
        if m in entries:
            e = entries[m]
            console.print(
                f"tuned settings ({path}): {m} {_settings_text(e['settings'])} ({e['objective']} "
                f"{e['value']:.4f} over truth seeds {e['seeds']}, study {e['study']})",
                highlight=False,
            )
    return path, entries


@app.command()
def sweep(
    config: Path = typer.Argument(
        ..., help="Experiment YAML with a sweep: section, e.g. experiments/configs/l96_sweep.yaml"
    ),
    trials: int | None = typer.Option(
        None,
        "--trials",
        min=1,
        help="Trials to finish (tpe/random; default sweep.trials). The grid sampler runs its "
        "whole grid.",
    ),
    workers: int = WorkersOpt,
    storage: str = StorageOpt,
    study: str | None = typer.Option(
        None, "--study", help="Study name (default: the config's name)."
    ),
    sets: list[str] = SetOpt,
):
    """Run an Optuna sweep over config values; the same command again resumes it."""
    cfg = _load(config, sets)
    if cfg.sweep is None:
        _fail(f"{config}: no sweep: section (objective, sampler, params; see README)")
    console = _console(False)
    if cfg.sweep.sampler == "grid" and trials is not None and trials != cfg.sweep.grid_size():
        console.print(
            f"note: the grid sampler runs the whole grid of {cfg.sweep.grid_size()} points "
            f"(--trials {trials} ignored)",
            highlight=False,
        )
    _run_study(cfg, study or cfg.name, storage, trials, workers, console)


@app.command("sweep-worker", hidden=True)
def sweep_worker(
    storage: str = StorageOpt,
    study: str = typer.Option(..., "--study", help="Study name."),
    index: int = typer.Option(
        0, "--index", min=0, help="Worker number (seeds the sampler with sweep.seed + index)."
    ),
    device: str = typer.Option("", "--device", help="Label stored with each trial."),
    cpus: str | None = typer.Option(None, "--cpus", help="Comma-separated CPU cores to run on."),
):
    """A sweep worker: take trials from a study until its budget is done (machines beyond the
    first join a sweep with this; `ensda sweep --workers K` starts K of them)."""
    from ensda import sweep as sw

    try:
        sw.worker_main(storage, study, index, device, cpus)
    except sw.SweepError as err:
        _fail(f"sweep worker {index}: {err}")


def _run_study(cfg, name: str, storage: str, trials: int | None, workers: int, console: Console):
    """Create or resume the study of ``cfg.sweep``, run its workers with a progress bar, close
    it and print the best trials; exits 1 when the budget is not done. Returns the study."""
    from ensda import sweep as sw

    try:
        study_obj, budget = sw.prepare(cfg, storage, name, trials)
    except sw.SweepError as err:
        _fail(str(err))
    before = sw.study_tally(study_obj, cfg.sweep)
    console.print(
        f"sweep {name!r} in {sw.redact(storage)}: {before.done} of {budget} trials done, "
        f"{workers} worker{'s' if workers > 1 else ''}",
        highlight=False,
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("trials", total=budget, completed=before.done)

        def report(t):
            bar.update(
                task,
                completed=min(t.done, budget),
                description=f"trials ({t.running} running, {t.failed} failed)",
            )

        try:
            if workers == 1:
                sw.run_worker(storage, name, 0, "in-process", report=report)
            else:
                codes = sw.supervise(
                    sw.start_workers(storage, name, workers),
                    lambda: sw.study_tally(study_obj, cfg.sweep),
                    report,
                )
                for i, code in enumerate(codes):
                    if code:
                        console.print(f"[red]worker {i} exited with code {code}[/]")
        except sw.SweepError as err:
            _fail(str(err))
        except KeyboardInterrupt:
            _fail("interrupted: run the same command to resume the sweep", code=130)
    t = sw.finish(study_obj, cfg, budget)
    console.print(_best_table(study_obj, cfg, sw))
    parent = study_obj.user_attrs.get(sw.STUDY_PARENT)
    if parent:
        console.print(
            f"MLflow parent run {parent} in {_tracking_uri(cfg)} (see `ensda ui`)", highlight=False
        )
    if t.done < budget:
        _fail(
            f"sweep incomplete: {t.done} of {budget} trials done; run the same command to resume",
            code=1,
        )
    if errors := sw.final_errors(study_obj.get_trials(deepcopy=False)):
        _fail(
            f"{len(errors)} trial(s) failed for a reason other than divergence (the table above; "
            "the reasons are in Optuna's user attr ensda.failure and MLflow's tag ensda.failure)",
            code=1,
        )
    return study_obj


@app.command()
def tune(
    config: Path = typer.Argument(
        ..., help="Experiment YAML, e.g. experiments/configs/l96_every4.yaml"
    ),
    method: str = typer.Option(
        ...,
        "--method",
        "-m",
        help="Method to tune (its search space: ensda.tune.SEARCH_SPACES; per testbed "
        "TESTBED_SEARCH_SPACES).",
    ),
    trials: int = typer.Option(
        30, "--trials", min=1, help="TPE trials to finish (the same command with more resumes)."
    ),
    objective: str = typer.Option(
        "rmse_a", "--objective", help="Summary metric to minimise (mean over the tuning seeds)."
    ),
    seeds: str = typer.Option(
        "300,400", "--seeds", help="Tuning truth seeds (comma list), not the config's own."
    ),
    workers: int = WorkersOpt,
    storage: str = StorageOpt,
    study: str | None = typer.Option(
        None, "--study", help="Study name (default: tune:<config name>:<method>:<set-up id>)."
    ),
    tuned_dir: Path = TunedOpt,
    sets: list[str] = SetOpt,
):
    """Tune a method's settings with TPE on other seeds; store the best for `ensda compare`."""
    from ensda import sweep as sw
    from ensda import tune as tn
    from ensda.config import ConfigError

    cfg = _load(config, sets)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        _fail(f"--seeds expects comma-separated integers, got {seeds!r}")
    try:
        tcfg = tn.tune_config(cfg, method, objective, seed_list, trials)
    except (tn.TuneError, ConfigError) as err:
        _fail(str(err))
    console = _console(False)
    name = study or f"tune:{cfg.name}:{method}:{tn.setup_id(cfg)}"
    space = ", ".join(
        f"{k.split('.')[-1]} "
        f"{v if isinstance(v, list) else f'[{v.low:g}, {v.high:g}]' + (' log' if v.log else '')}"
        for k, v in tcfg.sweep.params.items()
    )
    console.print(
        f"tuning {method} on {cfg.name} ({space}) by {objective} over truth seeds {seed_list}",
        highlight=False,
    )
    study_obj = _run_study(tcfg, name, storage, trials, workers, console)
    best = tn.best_settings(study_obj, method)
    record = {
        "objective": objective,
        "value": float(study_obj.best_value),
        "trials": trials,
        "seeds": seed_list,
        "study": name,
        "storage": sw.redact(storage),
        "trial": study_obj.best_trial.number,
    }
    path = tn.write_tuned(cfg, method, best, record, tuned_dir)
    console.print(
        f"best {method} settings: {_settings_text(best)} ({objective} {study_obj.best_value:.4f}); "
        f"written to {path}, used by `ensda compare` for this set-up",
        highlight=False,
    )


def _settings_text(settings: dict) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items()
    )


def _tracking_uri(cfg) -> str:
    from ensda.tracking import tracking_uri

    return tracking_uri(cfg.tracking.uri)


def _best_table(study, cfg, sw, top: int = 10) -> Table:
    """The best COMPLETE trials (by the objective), then the failed ones with their reasons."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    live = sw.live_trials(trials)
    complete = sorted(
        (t for t in live if t.state == TrialState.COMPLETE),
        key=lambda t: t.value,
        reverse=cfg.sweep.direction == "maximize",
    )
    failed = [t for t in live if t.state == TrialState.FAIL]
    objective = cfg.sweep.objective + (" |ssr-1|" if cfg.sweep.objective.startswith("ssr") else "")
    table = Table(
        title=f"{study.study_name}: best of {len(complete)} complete trials ({len(failed)} failed)"
    )
    table.add_column("trial", justify="right")
    for key in cfg.sweep.params:
        table.add_column(key)
    table.add_column(objective, justify="right")
    shown = [
        k for k in ("rmse_a", "crps_a", "ssr_a", "lead_time_loss_h") if k != cfg.sweep.objective
    ]
    for key in shown:
        table.add_column(key, justify="right")
    for t in complete[:top]:
        summary = t.user_attrs.get(sw.SUMMARY, {})
        cells = [_score_cell(summary, k) for k in shown]
        table.add_row(
            str(t.number),
            *[str(t.params.get(k)) for k in cfg.sweep.params],
            f"{t.value:.4f}",
            *cells,
        )
    for t in failed[:top]:
        reason = t.user_attrs.get(sw.FAILURE, sw.STALE_REASON)
        table.add_row(
            str(t.number),
            *[str(t.params.get(k)) for k in cfg.sweep.params],
            "[red]failed[/]",
            f"[red]{reason[:80]}[/]",
            *[""] * (len(shown) - 1),
        )
    return table


@app.command()
def report(
    target: str = typer.Argument(
        ...,
        help="MLflow run id of a sweep or compare parent run (or of one run), or study:NAME (with "
        "--storage).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (default outputs/report-<run id>/)."
    ),
    uri: str | None = typer.Option(
        None, "--uri", help="Tracking store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
    ),
    storage: str = StorageOpt,
    log: bool = typer.Option(
        True,
        "--log/--no-log",
        help="Log the PNGs, results.csv and report.html as artifacts of the parent run (report/).",
    ),
):
    """Figures, results table and a self-contained report.html of a sweep, comparison or run."""
    from analysis import report as rp
    from ensda.tracking import Store, TrackingError

    console = _console(False)
    try:
        store = Store(uri)
        run_id = (
            rp.study_parent(target.removeprefix("study:"), storage)
            if target.startswith("study:")
            else target
        )
        with console.status(f"reading run {run_id} and its child runs..."):
            data = rp.collect(store, run_id)
        written = rp.write(data, out or Path("outputs") / f"report-{run_id}")
        if log:
            rp.log(store, data, written)
    except (rp.ReportError, TrackingError) as err:
        _fail(str(err))
    console.print(
        f"report of {data.kind} {data.parent.name!r} ({run_id}): {len(data.records)} runs, "
        f"{len(data.finished)} with results",
        highlight=False,
    )
    for path in written.pngs:
        console.print(
            f"  {path}" + (f"  ({written.notes[path.name]})" if path.name in written.notes else ""),
            highlight=False,
        )
    for name, note in written.notes.items():
        if name not in {p.name for p in written.pngs}:
            console.print(f"  {name}: {note}", highlight=False)
    for path in (written.csv, *written.tables, written.html):
        console.print(f"  {path}", highlight=False)
    if log:
        console.print(
            f"logged to MLflow run {run_id} under {rp.ARTIFACT_DIR}/ in {store.uri}",
            highlight=False,
        )


@app.command("methods")
def list_methods():
    """List the assimilation methods and their settings (with defaults)."""
    from ensda import assimilator as registry

    table = Table(title="methods")
    table.add_column("name")
    table.add_column("kind")
    table.add_column("settings (default)")
    for name in registry.methods():
        cls = registry.get(name)
        fields = registry.settings_fields(cls)
        text = ", ".join(f"{k}={d!r}" for k, (_, d) in fields.items()) or "-"
        table.add_row(name, "ensemble" if cls.ensemble else "deterministic", text)
    Console().print(table)


@app.command()
def ui(
    port: int = typer.Option(5000, "--port", help="Port of the MLflow UI on 127.0.0.1."),
    uri: str | None = typer.Option(
        None, "--uri", help="Tracking store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
    ),
    optuna: bool = typer.Option(
        False, "--optuna", help="Also start optuna-dashboard on the Optuna storage."
    ),
    optuna_port: int = typer.Option(
        8080, "--optuna-port", help="Port of optuna-dashboard on 127.0.0.1."
    ),
    storage: str = StorageOpt,
):
    """Start the MLflow UI (and with --optuna optuna-dashboard) on 127.0.0.1; Ctrl-C stops them."""
    from ensda import sweep as sw
    from ensda.tracking import tracking_uri

    store = tracking_uri(uri)
    mlflow_cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        store,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    console = Console()
    console.print(
        f"MLflow UI for {store} on http://127.0.0.1:{port} (Ctrl-C to stop)", highlight=False
    )
    sys.stdout.flush()
    if not optuna:
        os.execv(
            sys.executable, mlflow_cmd
        )  # become the MLflow server: signals reach it (and its workers) directly
    dashboard_cmd = [
        sys.executable,
        "-c",
        "import sys; from optuna_dashboard._cli import main; sys.argv[0] = 'optuna-dashboard'; "
        "main()",
        storage,
        "--host",
        "127.0.0.1",
        "--port",
        str(optuna_port),
    ]
    console.print(
        f"optuna-dashboard for {sw.redact(storage)} on http://127.0.0.1:{optuna_port}",
        highlight=False,
    )
    raise typer.Exit(_serve_together([mlflow_cmd, dashboard_cmd], console))


def _serve_together(cmds: list[list[str]], console: Console) -> int:
    """Run servers, each in its own process group (MLflow's workers included), until one
    exits or Ctrl-C/SIGTERM; then stop every group (SIGTERM, SIGKILL after 10 s)."""
    import signal
    import subprocess

    def to_interrupt(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell starting `ensda ui &` without job control leaves SIGINT ignored
    signal.signal(signal.SIGTERM, to_interrupt)
    signal.signal(signal.SIGINT, to_interrupt)
    procs = []
    code = 0
    try:
        for cmd in cmds:
            procs.append(subprocess.Popen(cmd, start_new_session=True))
        console.print("process groups: " + ", ".join(str(p.pid) for p in procs), highlight=False)
        sys.stdout.flush()
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        code = next(p.returncode for p in procs if p.returncode is not None) or 1
        console.print(f"[red]a server exited with code {code}: stopping the other[/]")
    except KeyboardInterrupt:
        pass
    finally:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
            deadline = time.monotonic() + wait_s
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.1)
            if all(p.poll() is not None for p in procs):
                break
    return code


@app.command()
def train(
    config: Path = typer.Argument(
        ..., help="Experiment YAML with a 'train' section, e.g. experiments/configs/l96.yaml"
    ),
    sets: list[str] = SetOpt,
    track: bool = TrackOpt,
):
    """Train the diffusion denoiser of the config's 'train' section and save its checkpoint."""
    from ensda import tracking
    from ensda.config import flatten
    from ensda.run_figures import close, training_figure
    from ensda.training import train as train_model

    cfg = _load(config, sets, [] if track else ["tracking.enabled=false"])
    if cfg.train is None:
        _fail(f"{config} has no 'train' section: nothing to train")
    console = _console(False)
    params = {
        k: v for k, v in flatten(cfg).items() if k.startswith(("train.", "testbed.", "obs.r_std"))
    }
    with (
        tracking.tracked_run(
            cfg.tracking, f"{cfg.name}:train", params, tracking.config_tags(cfg)
        ) as mlrun,
        Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar,
    ):
        total = cfg.train.total_steps
        task = bar.add_task("train", total=total, info="making data")

        def progress(step, loss, val):
            bar.update(task, completed=step, info=f"loss {loss:.4f}  val {val:.4f}")
            if not console.is_terminal:  # logs: one line per logging interval
                console.print(
                    f"step {step}/{total}: loss {loss:.4f}, validation {val:.4f}",
                    highlight=False,
                )

        result = train_model(
            cfg,
            progress=progress,
            report=lambda text: console.print(text, highlight=False),
            log=lambda step, values: mlrun.log_metrics(values, step=step),
        )
        mlrun.log_metrics(
            {
                "train_s": result.train_s,
                "data_s": result.data_s,
                "n_params": result.n_params,
                "final_val_loss": float(result.val_loss[-1]),
            }
        )
        fig = training_figure(result.steps, result.loss, result.val_loss, f"{cfg.name}: EDM loss")
        mlrun.log_figure(fig, "training_loss.png")
        close(fig)
        mlrun.log_dict({"checkpoint": str(result.checkpoint.resolve())}, "checkpoint.json")
    console.print(
        f"checkpoint {result.checkpoint} ({result.n_params} parameters, {result.n_train} "
        f"examples): validation loss {result.val_loss[-1]:.4f}; data {result.data_s:.0f} s, "
        f"training {result.train_s:.0f} s",
        highlight=False,
    )


@app.command("train-emulator")
def train_emulator(
    config: Path = typer.Argument(
        ...,
        help="Sphere experiment YAML with an 'emulator' section (its nature-run store is trained "
        "on).",
    ),
    sets: list[str] = SetOpt,
    eval_only: bool = typer.Option(
        False, "--eval-only", help="Score the checkpoint of emulator.checkpoint again; no training."
    ),
    as_json: bool = JsonOpt,
):
    """Train the sphere forecast emulator on the config's nature run and score its held-out
    rollouts."""
    from ensda.training.emulator import train_and_evaluate

    cfg = _load(config, sets)
    if cfg.emulator is None:
        _fail(f"{config} has no 'emulator' section: nothing to train")
    console = _console(as_json)
    try:
        run = train_and_evaluate(
            cfg,
            eval_only=eval_only,
            report=lambda text: console.print(text, highlight=False),
            progress=console.is_terminal,
        )
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    res, table = run.evaluation, run.evaluation["table_48h"]
    console.print(
        f"{res['n_starts']} forecasts from the held-out window, {res['eval_s']:.1f} s; "
        f"RMSE at {table['lead_hours']} h (emulator / persistence / climatology):",
        highlight=False,
    )
    for name, row in table["rows"].items():
        verdict = "beats both" if row["beats_both"] else "does NOT beat both"
        console.print(
            f"  {name:28s} {row['emulator']:10.4g} {row['persistence']:10.4g} "
            f"{row['climatology']:10.4g}  {verdict}",
            highlight=False,
        )
    console.print(
        f"  channels beating both: {table['channels_beating_both']}; "
        f"full table: {run.checkpoint / 'evaluation.json'}",
        highlight=False,
    )
    if "long_rollout" in res:
        lr = res["long_rollout"]
        rows = zip(lr["days"], lr["rmse"], lr["abs_bias"], lr["variance_ratio"], strict=True)
        console.print(
            f"long rollouts from {lr['n_starts']} held-out starts (day: standardised rmse / "
            "mean |global-mean bias| / variance ratio):\n  "
            + "  ".join(f"{d:g}: {r:.2f} / {b:.2f} / {v:.2f}" for d, r, b, v in rows),
            highlight=False,
        )
    if as_json:
        print(
            json.dumps(
                {"checkpoint": str(run.checkpoint), "table_48h": table, "trained": run.trained}
            )
        )


if __name__ == "__main__":
    app()
