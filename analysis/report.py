"""Reports of a sweep, a comparison or one run, built from its MLflow runs (``ensda report``).

    from analysis import report
    store = tracking.Store(uri)                       # MLflow access goes through ensda.tracking
    data = report.collect(store, parent_run_id)       # child runs: params, metrics, tags, artifacts
    written = report.write(data, "outputs/report-<id>")  # PNGs, results.csv, report.html
    report.log(store, data, written)                  # the files as artifacts of the parent,
                                                      # under report/

``collect`` reads, for each child run of the target (a sweep's trials, a comparison's
methods; the run itself when it has no children but has metrics): its params, summary
metrics (the latest value of each metric), tags (``optuna.trial_number``,
``ensda.lead_time_loss``, ``ensda.failure``) and two JSON artifacts, ``lead_time.json``
(the RMSE-vs-lead curves) and ``rank_histogram.json`` (the counts), both written by
``tracking.log_method_run``. The observation density of a run is ``obs.density``, else the
observed fraction of ``obs.sites`` or of every ``obs.every``-th site of ``testbed.n``; its
guidance strength is the diffusion method's resolved ``settings.guidance_strength``.

Sphere runs (``testbed.kind: sphere``) add, where logged: ``channel_metrics.json`` (every
channel's time-mean errors and climatological σ_c), the headline channels' summary metrics
(``rmse_a.<channel>``, ``crps_a.<channel>``, ``ssr_a.<channel>``), the last-cycle maps
``maps/<channel>.png`` (downloaded; of at most ``MAX_MAP_RUNS`` runs) and, from the parent
run (a comparison, or one run), the observed columns of ``observations.zarr``.

``write`` draws the figures of ``analysis.report_figures`` (each left out, with the reason in the
HTML, when the runs cannot show it) and one self-contained ``report.html`` (the PNGs inline
as base64, the results table, the parent run, each child run's id, MLflow UI link and Optuna
trial number). On the sphere also the per-channel skill figure and its data
(``channel_skill.csv``), the headline-channel table (``headline_channels.csv``), the map of
the observed columns, and each run's maps copied to ``maps/<series>_<channel>.png``, shown in
one section per headline channel. A sweep's parent run is found from its Optuna study with
``study_parent``.
"""

from __future__ import annotations

import ast
import base64
import csv
import dataclasses
import datetime
import html
import math
import re
import tempfile
from pathlib import Path

import numpy as np

from analysis import report_figures as figures
from ensda import sweep, tracking

#: summary metrics of the results table and results.csv, in order, with the table's decimals
TABLE_METRICS = ("rmse_a", "spread_a", "ssr_a", "crps_a", "rmse_f", "nfe", "wall_s")
DIGITS = {"nfe": 0, "wall_s": 1}
#: where `ensda ui` serves the MLflow UI (links of a report on a local store)
LOCAL_UI = "http://127.0.0.1:5000"
ARTIFACT_DIR = "report"
#: summary metrics of each headline channel (``<metric>.<channel>``) in headline_channels.csv
HEADLINE_METRICS = ("rmse_a", "crps_a", "ssr_a")
#: runs whose maps a report downloads at most (a larger sweep: its trials' maps stay in MLflow)
MAX_MAP_RUNS = 12
MAPS_DIR = "maps"


class ReportError(RuntimeError):
    """A report that cannot be made; the message says why."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One child run as the report sees it."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    method: str
    density: float | None
    guidance: float | None  # diffusion only
    trial: int | None  # Optuna trial number (sweeps)
    n_members: int | None
    metrics: dict
    lead_time_loss: str | None  # "12.3 h", "> 192 h"
    failure: str | None
    lead_time: dict | None = None  # lead_time.json
    rank_counts: list | None = None  # rank_histogram.json "counts"
    series: str = ""  # the line it belongs to: method, or "diffusion λ=0.5"
    sphere: bool = False  # a sphere run (testbed.kind: sphere)
    channel_metrics: dict | None = None  # channel_metrics.json (sphere)
    maps: dict[str, bytes] | None = (
        None  # headline channel -> maps/<channel>.png (sphere, figures on)
    )


@dataclasses.dataclass(frozen=True)
class ObservedColumns:
    """The grid columns a sphere run observed (``observations.zarr`` of the parent run)."""

    latitude: np.ndarray  # degrees, one per observed column
    longitude: np.ndarray  # degrees east
    n_cycles: np.ndarray  # cycles that observe the column
    cycles: int  # cycles in all
    per_cycle: int | None  # columns observed each cycle
    grid: str  # the grid's name
    kind: str
    density: float | None
    redraw: bool
    channels: int  # channels observed per column (the most in any cycle)


@dataclasses.dataclass(frozen=True)
class ReportData:
    uri: str
    parent: tracking.StoredRun
    experiment: str
    kind: str  # sweep | compare | run
    records: list[RunRecord]
    observations: ObservedColumns | None = None  # the parent's observations.zarr (sphere)
    notes: dict = dataclasses.field(
        default_factory=dict
    )  # what collecting left out: figure name -> why

    @property
    def finished(self) -> list[RunRecord]:
        """Runs with summary metrics that did not fail (a sweep in progress: its finished
        trials)."""
        return [r for r in self.records if r.status != "FAILED" and "crps_a" in r.metrics]

    @property
    def densities(self) -> list[float]:
        return sorted({r.density for r in self.finished if r.density is not None})

    @property
    def series(self) -> list[str]:
        return list(dict.fromkeys(r.series for r in self.records))

    @property
    def series_guidance(self) -> dict[str, float | None]:
        return {r.series: r.guidance for r in self.records}

    @property
    def sphere(self) -> bool:
        """Sphere runs among the records (the report's sphere sections are shown)."""
        return self.observations is not None or any(r.sphere for r in self.records)

    @property
    def headline(self) -> list[str]:
        """The headline channels: those with summary metrics ``rmse_a.<channel>``, in channel
        order."""
        found = {
            k.split(".", 1)[1] for r in self.finished for k in r.metrics if k.startswith("rmse_a.")
        }
        order = next(
            (r.channel_metrics["channels"] for r in self.finished if r.channel_metrics), []
        )
        rank = {c: i for i, c in enumerate(order)}
        return sorted(found, key=lambda c: (rank.get(c, len(rank)), c))


# ----------------------------------------------------------------------------- collecting


def study_parent(study: str, storage: str) -> str:
    """The MLflow parent run id of the sweep ``study`` in the Optuna ``storage``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        attrs = optuna.load_study(
            study_name=study, storage=sweep.open_storage(storage, create=False)
        ).user_attrs
    except sweep.SweepError as err:
        raise ReportError(str(err)) from None
    except KeyError:
        raise ReportError(f"no study {study!r} in {sweep.redact(storage)}") from None
    parent = attrs.get(sweep.STUDY_PARENT)
    if parent is None:
        raise ReportError(
            f"study {study!r} in {sweep.redact(storage)} has no MLflow parent run (tracking was "
            "off, or not an `ensda sweep` study)"
        )
    return parent


def collect(store: tracking.Store, run_id: str) -> ReportData:
    """The target run and its child runs with what the figures need (``ReportError`` if the
    run has neither child runs nor metrics)."""
    try:
        parent = store.run(run_id)
    except tracking.TrackingError as err:
        raise ReportError(str(err)) from None
    children = store.children(parent)
    if children:
        kind = (
            "sweep" if "ensda.sweep" in parent.tags or "optuna.study" in parent.tags else "compare"
        )
        runs = children
    elif _has_summary(parent):
        kind, runs = "run", [parent]
    else:
        raise ReportError(
            f"run {run_id} ({parent.name}) has no child runs and no metrics: nothing to report "
            "(give the id of a sweep or compare parent run, or of one `ensda run`)"
        )
    notes = {}
    with_maps = len(runs) <= MAX_MAP_RUNS
    records = [_record(store, r, with_maps) for r in runs]
    if not with_maps and any(r.sphere for r in records):
        notes[MAPS_DIR] = (
            f"left out: {len(runs)} runs, more than {MAX_MAP_RUNS}: each run's maps/ are in MLflow"
        )
    observations = None
    if any(r.sphere for r in records) or parent.params.get("testbed.kind") == "sphere":
        if "observations.zarr" in store.artifacts(parent.run_id):
            observations = _observed_columns(store, parent.run_id)
        else:
            notes["observed_columns.png"] = "left out: the parent run has no observations.zarr" + (
                " (a sweep's trials log their own)" if kind == "sweep" else ""
            )
    return ReportData(
        store.uri,
        parent,
        store.experiment_name(parent.experiment_id),
        kind,
        _with_series(records),
        observations,
        notes,
    )


def _has_summary(run: tracking.StoredRun) -> bool:
    return any(k in run.metrics for k in ("rmse_a", "crps_a"))


def _record(store: tracking.Store, run: tracking.StoredRun, with_maps: bool = True) -> RunRecord:
    p = run.params
    method = p.get("method") or run.tags.get("ensda.method") or run.name
    # any guided method (diffusion, ens-diffusion) logs its λ as a setting
    guidance = _number(p.get("settings.guidance_strength"))
    trial = run.tags.get("optuna.trial_number")
    artifacts = store.artifacts(run.run_id) if _has_summary(run) else set()
    lead = store.load_json(run.run_id, "lead_time.json") if "lead_time.json" in artifacts else None
    ranks = (
        store.load_json(run.run_id, "rank_histogram.json")
        if "rank_histogram.json" in artifacts
        else None
    )
    n_members = _number(p.get("n_members"))
    if n_members is None:
        n_members = run.metrics.get("n_members")
    channels = (
        store.load_json(run.run_id, "channel_metrics.json")
        if "channel_metrics.json" in artifacts
        else None
    )
    maps = _maps(store, run.run_id) if with_maps and MAPS_DIR in artifacts else None
    return RunRecord(
        run.run_id,
        run.name,
        run.experiment_id,
        run.status,
        method,
        observation_density(p),
        guidance,
        int(trial) if trial is not None and trial.isdigit() else None,
        int(n_members) if n_members is not None else None,
        {k: v for k, v in run.metrics.items() if "/" not in k},
        run.tags.get("ensda.lead_time_loss"),
        run.tags.get("ensda.failure"),
        lead,
        ranks["counts"] if ranks else None,
        sphere=p.get("testbed.kind") == "sphere" or channels is not None,
        channel_metrics=channels,
        maps=maps,
    )


def _maps(store: tracking.Store, run_id: str) -> dict[str, bytes]:
    """The run's ``maps/<channel>.png`` artifacts: channel -> PNG bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(store.download(run_id, MAPS_DIR, tmp))
        return {f.stem: f.read_bytes() for f in sorted(local.glob("*.png"))}


def _observed_columns(store: tracking.Store, run_id: str) -> ObservedColumns:
    """The columns of the run's ``observations.zarr`` (dims cycle × obs: ``column``,
    ``latitude``, ``longitude`` per observation) and how many cycles observe each."""
    import xarray as xr

    with tempfile.TemporaryDirectory() as tmp:
        ds = xr.open_zarr(store.download(run_id, "observations.zarr", tmp), consolidated=False)
        column, lat, lon = (np.asarray(ds[k].values) for k in ("column", "latitude", "longitude"))
        attrs = dict(ds.attrs)
        ds.close()
    cycles = [
        np.unique(c, return_counts=True) for c in column
    ]  # each cycle's columns, and its slots per column
    _, n_cycles = np.unique(np.concatenate([c for c, _ in cycles]), return_counts=True)
    _, first = np.unique(
        column.ravel(), return_index=True
    )  # an observation of each column, in the same order
    per_cycle = attrs.get("n_columns")
    return ObservedColumns(
        lat.ravel()[first].astype(np.float64),
        lon.ravel()[first].astype(np.float64),
        n_cycles,
        int(column.shape[0]),
        int(per_cycle) if per_cycle is not None else None,
        str(attrs.get("grid", "")),
        str(attrs.get("kind", "")),
        float(attrs["density"]) if isinstance(attrs.get("density"), (int, float)) else None,
        bool(attrs.get("redraw", False)),
        max((int(n.max()) for _, n in cycles if n.size), default=0),
    )


def _with_series(records: list[RunRecord]) -> list[RunRecord]:
    """Name each run's line: its method, with the guidance strength when diffusion runs have
    several."""
    several = len({r.guidance for r in records if r.guidance is not None}) > 1
    named = [
        dataclasses.replace(
            r,
            series=f"{r.method} λ={r.guidance:g}"
            if several and r.guidance is not None
            else r.method,
        )
        for r in records
    ]
    order = lambda r: (
        r.method != "diffusion",
        r.method,
        r.guidance or 0.0,
        r.density or 0.0,
        r.trial or 0,
    )
    return sorted(named, key=order)


def _value(text: str | None):
    """A param as logged (``str(value)``) back to a Python value; None for a missing param."""
    if text is None or text == "None":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _number(text: str | None) -> float | None:
    v = _value(text)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def observation_density(params: dict[str, str]) -> float | None:
    """Fraction of sites observed: ``obs.density``, else of ``obs.sites`` or of every
    ``obs.every``-th site of ``testbed.n`` (1 / every when n is unknown)."""
    density = _number(params.get("obs.density"))
    if density is not None:
        return density
    n = _number(params.get("testbed.n"))
    sites = _value(params.get("obs.sites"))
    if isinstance(sites, (list, tuple)):
        return len(sites) / n if n else None
    every = _number(params.get("obs.every"))
    if every is None:
        return None
    return len(range(0, int(n), int(every))) / n if n else 1.0 / every


# ----------------------------------------------------------------------------- writing


@dataclasses.dataclass(frozen=True)
class Written:
    out: Path
    html: Path
    csv: Path
    pngs: list[Path]  # figures, and on the sphere the runs' maps (maps/<series>_<channel>.png)
    notes: dict[str, str]  # figure name -> why left out, or what it could not show
    tables: list[Path] = dataclasses.field(
        default_factory=list
    )  # sphere: headline_channels.csv, channel_skill.csv

    @property
    def files(self) -> list[Path]:
        return [*self.pngs, self.csv, *self.tables, self.html]


def write(data: ReportData, out: Path | str) -> Written:
    """Figures (PNG), ``results.csv`` and the self-contained ``report.html`` in ``out``; on the
    sphere also the maps, ``headline_channels.csv`` and ``channel_skill.csv``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs, notes, images = [], {}, {}
    for name, _ in figures.figures_for(data):
        fig, note = figures.BUILDERS[name](data)
        if note:
            notes[name] = note
        if fig is None:
            continue
        path = out / name
        figures.save(fig, path)
        pngs.append(path)
        images[name] = base64.b64encode(path.read_bytes()).decode("ascii")
    tables, maps = [], {}
    if data.sphere:
        maps, note = _write_maps(data, out)
        pngs += [path for path, _ in maps.values()]
        if note:
            notes[MAPS_DIR] = note
        if data.headline:
            tables.append(out / "headline_channels.csv")
            _write_headline_csv(data, tables[-1])
        skill = figures.channel_skill_table(data)
        if skill:
            tables.append(out / "channel_skill.csv")
            _write_rows(skill, tables[-1])
    csv_path = out / "results.csv"
    _write_csv(data, csv_path)
    html_path = out / "report.html"
    html_path.write_text(_html(data, images, notes, maps), encoding="utf-8")
    return Written(out, html_path, csv_path, pngs, notes, tables)


def log(store: tracking.Store, data: ReportData, written: Written) -> None:
    """The report's files as artifacts of the parent run, under ``report/`` (the maps under
    ``report/maps/``)."""
    groups: dict[str, list[Path]] = {}
    for path in written.files:
        sub = path.parent.relative_to(written.out).as_posix()
        groups.setdefault(ARTIFACT_DIR if sub == "." else f"{ARTIFACT_DIR}/{sub}", []).append(path)
    for artifact_path, paths in groups.items():
        store.log_files(data.parent.run_id, paths, artifact_path)


def _write_csv(data: ReportData, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "run_id",
                "run_name",
                "status",
                "trial",
                "method",
                "density",
                "guidance_strength",
                "n_members",
                *TABLE_METRICS,
                "lead_time_loss_h",
                "lead_time_loss",
            ]
        )
        for r in data.records:
            w.writerow(
                [
                    r.run_id,
                    r.name,
                    r.status,
                    _blank(r.trial),
                    r.method,
                    _blank(r.density),
                    _blank(r.guidance),
                    _blank(r.n_members),
                    *[_blank(r.metrics.get(k)) for k in TABLE_METRICS],
                    _blank(r.metrics.get("lead_time_loss_h")),
                    r.lead_time_loss or "",
                ]
            )


def headline_rows(data: ReportData) -> list[dict]:
    """One row per finished run and headline channel: its ``<metric>.<channel>`` summary
    metrics (``HEADLINE_METRICS``, SI units; None when not logged) and the channel's
    climatological σ_c (from ``channel_metrics.json``; None without it)."""
    rows = []
    for r in data.finished:
        names = (r.channel_metrics or {}).get("channels", [])
        for channel in data.headline:
            std = (
                r.channel_metrics["climatological_std"][names.index(channel)]
                if channel in names
                else None
            )
            rows.append(
                {
                    "run_id": r.run_id,
                    "run_name": r.name,
                    "method": r.method,
                    "series": r.series,
                    "density": r.density,
                    "channel": channel,
                    **{m: r.metrics.get(f"{m}.{channel}") for m in HEADLINE_METRICS},
                    "climatological_std": std,
                }
            )
    return rows


def _write_headline_csv(data: ReportData, path: Path) -> None:
    _write_rows(headline_rows(data), path)


def _write_rows(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(rows[0]))
        for row in rows:
            w.writerow([v if isinstance(v, str) else _blank(v) for v in row.values()])


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "run"


def _write_maps(data: ReportData, out: Path) -> tuple[dict, str]:
    """Each finished run's maps as ``out/maps/<series>_<channel>.png`` (the run id's first
    8 characters added when several runs share a series); returns ``{(run_id, channel): (path,
    base64)}`` and a note: why no maps, or the runs without them."""
    runs = [r for r in data.finished if r.sphere]
    with_maps = [r for r in runs if r.maps]
    if not with_maps:
        return {}, data.notes.get(
            MAPS_DIR, "left out: no run logged maps/ (sphere runs with tracking.figures on)"
        )
    shared = {s for s in (r.series for r in with_maps) if sum(q.series == s for q in with_maps) > 1}
    (out / MAPS_DIR).mkdir(exist_ok=True)
    written = {}
    for r in with_maps:
        stem = _slug(r.series) + (f"_{r.run_id[:8]}" if r.series in shared else "")
        for channel, png in r.maps.items():
            path = out / MAPS_DIR / f"{stem}_{_slug(channel)}.png"
            path.write_bytes(png)
            written[(r.run_id, channel)] = (path, base64.b64encode(png).decode("ascii"))
    lacking = sorted({r.series for r in runs if not r.maps})
    return written, (f"no maps for: {', '.join(lacking)}" if lacking else "")


def _blank(v) -> str:
    return "" if v is None else repr(v)


def cell(value, digits: int = 4) -> str:
    """A number as the HTML table shows it."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def ui_link(data: ReportData, run: RunRecord | tracking.StoredRun) -> str:
    """The run's page in the MLflow UI: the tracking server itself, or `ensda ui` for a local
    store."""
    base = data.uri.rstrip("/") if data.uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 7px}td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f0f0f0}tr.FAILED td{color:#a00}img{max-width:100%;border:1px solid #eee}
.note{color:#666;font-style:italic}code{background:#f4f4f4;padding:0 3px}
"""


def _html(
    data: ReportData, images: dict[str, str], notes: dict[str, str], maps: dict | None = None
) -> str:
    e = html.escape
    p = data.parent
    title = f"ensda report: {p.name or p.run_id}"
    started = (
        datetime.datetime.fromtimestamp(p.start_time / 1000, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M UTC"
        )
        if p.start_time
        else "-"
    )
    about = [
        (
            "kind",
            {
                "sweep": "Optuna sweep (parent run; trials are child runs)",
                "compare": "`ensda compare` (parent run; methods are child runs)",
                "run": "a single run",
            }[data.kind],
        ),
        ("run", f'<a href="{e(ui_link(data, p))}">{e(p.name)}</a> <code>{e(p.run_id)}</code>'),
        ("experiment", f"{e(data.experiment)} (id {e(p.experiment_id)})"),
        ("status", e(p.status)),
        ("started", started),
        ("tracking store", f"<code>{e(data.uri)}</code>"),
    ]
    for tag, label in (
        ("optuna.study", "Optuna study"),
        ("ensda.sweep", "sampler"),
        ("ensda.config", "config"),
        ("optuna.best_trial", "best trial"),
    ):
        if tag in p.tags:
            about.append((label, e(p.tags[tag])))
    if "methods" in p.params:
        about.append(("methods", e(p.params["methods"])))
    n_done = len(data.finished)
    about.append(
        (
            "runs",
            f"{len(data.records)} ({n_done} with results, {len(data.records) - n_done} failed or "
            "unfinished)",
        )
    )
    parts = [
        "<!DOCTYPE html><html><head><meta "
        f"charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<table>",
    ]
    parts += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in about]
    parts.append("</table>")
    for name, caption in figures.figures_for(data):
        parts.append(f"<h2>{e(caption)}</h2>")
        if name in images:
            parts.append(f'<img alt="{e(name)}" src="data:image/png;base64,{images[name]}">')
        if name in notes:
            parts.append(f'<p class="note">{e(name)}: {e(notes[name])}</p>')
        if name == "channel_skill.png":
            parts.append(_headline_html(data, notes, maps or {}))
    parts.append("<h2>Results</h2>")
    parts.append(
        "<p>Time means after burn-in (docs/design.md §5); links open the MLflow UI "
        f"({'the tracking server' if data.uri.startswith('http') else '<code>ensda ui</code>'})"
        ".</p>"
    )
    parts.append(_results_table(data))
    parts.append("</body></html>")
    return "\n".join(parts)


def _results_table(data: ReportData) -> str:
    e = html.escape
    head = [
        "trial",
        "method",
        "density",
        "λ",
        *TABLE_METRICS,
        "lead-time loss",
        "status",
        "MLflow run",
    ]
    rows = ['<table id="results">', "<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for r in data.records:
        lead = r.lead_time_loss or cell(r.metrics.get("lead_time_loss_h"), 1)
        status = r.status + (f": {r.failure[:200]}" if r.failure else "")
        cells = [
            ("n", cell(r.trial)),
            ("", e(r.method)),
            ("n", cell(r.density, 3)),
            ("n", cell(r.guidance, 3)),
            *[("n", cell(r.metrics.get(k), DIGITS.get(k, 4))) for k in TABLE_METRICS],
            ("n", e(lead)),
            ("", e(status)),
            ("", f'<a href="{e(ui_link(data, r))}"><code>{e(r.run_id)}</code></a>'),
        ]
        rows.append(
            f'<tr class="{e(r.status)}" data-run="{e(r.run_id)}">'
            + "".join(f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for c, v in cells)
            + "</tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _sig(value) -> str:
    """A number in SI units as the headline table shows it (4 significant digits)."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4g}"


def _headline_html(data: ReportData, notes: dict[str, str], maps: dict) -> str:
    """The headline channels: their summary metrics per run in one table, then a section per
    channel with each run's last-cycle maps."""
    from ensda.testbeds.sphere.figures import UNITS

    e = html.escape
    channels = data.headline
    if not channels:
        return (
            '<p class="note">headline channels: left out: no run has metrics '
            "&lt;metric&gt;.&lt;channel&gt; (rmse_a.geopotential_500, ...)</p>"
        )
    several = len({r.density for r in data.finished}) > 1
    unit = lambda c: UNITS.get(figures.channel_level(c)[0], "")
    label = {"rmse_a": "RMSE", "crps_a": "CRPS", "ssr_a": "SSR"}
    parts = [
        "<h2>Headline channels</h2>",
        (
            "<p>Time means after burn-in of each run's analysis, in SI units (SSR: spread / RMSE); "
            "also in <code>headline_channels.csv</code>.</p>"
        ),
        '<table id="headline">',
        "<tr><th rowspan=2>method</th>"
        + ("<th rowspan=2>density</th>" if several else "")
        + "".join(
            f"<th colspan={len(HEADLINE_METRICS)}>{e(c)} ({e(unit(c))})</th>" for c in channels
        )
        + "<th rowspan=2>MLflow run</th></tr>",
        "<tr>"
        + "".join(f"<th>{label.get(m, m)}</th>" for _ in channels for m in HEADLINE_METRICS)
        + "</tr>",
    ]
    for r in data.finished:
        cells = [f"<td>{e(r.series)}</td>"] + (
            [f'<td class="n">{cell(r.density, 3)}</td>'] if several else []
        )
        cells += [
            f'<td class="n">{_sig(r.metrics.get(f"{m}.{c}"))}</td>'
            for c in channels
            for m in HEADLINE_METRICS
        ]
        cells.append(f'<td><a href="{e(ui_link(data, r))}"><code>{e(r.run_id)}</code></a></td>')
        parts.append(f'<tr data-run="{e(r.run_id)}">' + "".join(cells) + "</tr>")
    parts.append("</table>")
    for channel in channels:
        parts.append(f"<h3>{e(channel)}: maps at the last cycle</h3>")
        shown = [
            (r, maps[(r.run_id, channel)]) for r in data.finished if (r.run_id, channel) in maps
        ]
        for r, (path, b64) in shown:
            name = f"{MAPS_DIR}/{path.name}"
            parts.append(f"<p>{e(r.series)} <code>{e(name)}</code></p>")
            parts.append(f'<img alt="{e(name)}" src="data:image/png;base64,{b64}">')
        if not shown:
            parts.append(
                f'<p class="note">{MAPS_DIR}: '
                f"{e(notes.get(MAPS_DIR, 'left out: no run logged maps of this channel'))}</p>"
            )
    if maps and notes.get(MAPS_DIR):
        parts.append(f'<p class="note">{MAPS_DIR}: {e(notes[MAPS_DIR])}</p>')
    return "\n".join(parts)
