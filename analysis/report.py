"""Reports of a sweep, a comparison or one run, built from its MLflow runs (``ensda report``).

    from analysis import report
    store = tracking.Store(uri)                       # MLflow access goes through ensda.tracking
    data = report.collect(store, parent_run_id)       # child runs: params, metrics, tags, artifacts
    written = report.write(data, "outputs/report-<id>")  # PNGs, results.csv, report.html
    report.log(store, data, written)                  # the files as artifacts of the parent, under report/

``collect`` reads, for each child run of the target (a sweep's trials, a comparison's
methods; the run itself when it has no children but has metrics): its params, summary
metrics (the latest value of each metric), tags (``optuna.trial_number``,
``ensda.lead_time_loss``, ``ensda.failure``) and two JSON artifacts, ``lead_time.json``
(the RMSE-vs-lead curves) and ``rank_histogram.json`` (the counts), both written by
``tracking.log_method_run``. The observation density of a run is ``obs.density``, else the
observed fraction of ``obs.sites`` or of every ``obs.every``-th site of ``testbed.n``; its
guidance strength is the diffusion method's resolved ``settings.guidance_strength``.

``write`` draws the figures of ``analysis.figures`` (each left out, with the reason in the
HTML, when the runs cannot show it) and one self-contained ``report.html`` (the PNGs inline
as base64, the results table, the parent run, each child run's id, MLflow UI link and Optuna
trial number). A sweep's parent run is found from its Optuna study with ``study_parent``.
"""

from __future__ import annotations

import ast
import base64
import csv
import dataclasses
import datetime
import html
import math
from pathlib import Path

from analysis import figures
from ensda import tracking

#: summary metrics of the results table and results.csv, in order, with the table's decimals
TABLE_METRICS = ("rmse_a", "spread_a", "ssr_a", "crps_a", "rmse_f", "nfe", "wall_s")
DIGITS = {"nfe": 0, "wall_s": 1}
#: where `ensda ui` serves the MLflow UI (links of a report on a local store)
LOCAL_UI = "http://127.0.0.1:5000"
ARTIFACT_DIR = "report"


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


@dataclasses.dataclass(frozen=True)
class ReportData:
    uri: str
    parent: tracking.StoredRun
    experiment: str
    kind: str  # sweep | compare | run
    records: list[RunRecord]

    @property
    def finished(self) -> list[RunRecord]:
        """Runs with summary metrics that did not fail (a sweep in progress: its finished trials)."""
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


# ----------------------------------------------------------------------------- collecting


def study_parent(study: str, storage: str) -> str:
    """The MLflow parent run id of the sweep ``study`` in the Optuna ``storage``."""
    import optuna

    from ensda import sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        attrs = optuna.load_study(study_name=study, storage=sweep.open_storage(storage)).user_attrs
    except sweep.SweepError as err:
        raise ReportError(str(err)) from None
    except KeyError:
        raise ReportError(f"no study {study!r} in {storage}") from None
    parent = attrs.get(sweep.STUDY_PARENT)
    if parent is None:
        raise ReportError(f"study {study!r} in {storage} has no MLflow parent run (tracking was off, or not an `ensda sweep` study)")
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
        kind = "sweep" if "ensda.sweep" in parent.tags or "optuna.study" in parent.tags else "compare"
        runs = children
    elif _has_summary(parent):
        kind, runs = "run", [parent]
    else:
        raise ReportError(f"run {run_id} ({parent.name}) has no child runs and no metrics: nothing to report "
                          "(give the id of a sweep or compare parent run, or of one `ensda run`)")
    records = [_record(store, r) for r in runs]
    return ReportData(store.uri, parent, store.experiment_name(parent.experiment_id), kind, _with_series(records))


def _has_summary(run: tracking.StoredRun) -> bool:
    return any(k in run.metrics for k in ("rmse_a", "crps_a"))


def _record(store: tracking.Store, run: tracking.StoredRun) -> RunRecord:
    p = run.params
    method = p.get("method") or run.tags.get("ensda.method") or run.name
    guidance = _number(p.get("settings.guidance_strength")) if method == "diffusion" else None
    trial = run.tags.get("optuna.trial_number")
    artifacts = store.artifacts(run.run_id) if _has_summary(run) else set()
    lead = store.load_json(run.run_id, "lead_time.json") if "lead_time.json" in artifacts else None
    ranks = store.load_json(run.run_id, "rank_histogram.json") if "rank_histogram.json" in artifacts else None
    n_members = _number(p.get("n_members"))
    if n_members is None:
        n_members = run.metrics.get("n_members")
    return RunRecord(
        run.run_id, run.name, run.experiment_id, run.status, method, observation_density(p), guidance,
        int(trial) if trial is not None and trial.isdigit() else None,
        int(n_members) if n_members is not None else None,
        {k: v for k, v in run.metrics.items() if "/" not in k},
        run.tags.get("ensda.lead_time_loss"), run.tags.get("ensda.failure"),
        lead, ranks["counts"] if ranks else None,
    )


def _with_series(records: list[RunRecord]) -> list[RunRecord]:
    """Name each run's line: its method, with the guidance strength when diffusion runs have several."""
    several = len({r.guidance for r in records if r.guidance is not None}) > 1
    named = [dataclasses.replace(r, series=f"{r.method} λ={r.guidance:g}" if several and r.guidance is not None else r.method)
             for r in records]
    order = lambda r: (r.method != "diffusion", r.method, r.guidance or 0.0, r.density or 0.0, r.trial or 0)
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
    pngs: list[Path]
    notes: dict[str, str]  # figure name -> why left out, or what it could not show

    @property
    def files(self) -> list[Path]:
        return [*self.pngs, self.csv, self.html]


def write(data: ReportData, out: Path | str) -> Written:
    """Figures (PNG), ``results.csv`` and the self-contained ``report.html`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs, notes, images = [], {}, {}
    for name, _ in figures.FIGURES:
        fig, note = figures.BUILDERS[name](data)
        if note:
            notes[name] = note
        if fig is None:
            continue
        path = out / name
        figures.save(fig, path)
        pngs.append(path)
        images[name] = base64.b64encode(path.read_bytes()).decode("ascii")
    csv_path = out / "results.csv"
    _write_csv(data, csv_path)
    html_path = out / "report.html"
    html_path.write_text(_html(data, images, notes), encoding="utf-8")
    return Written(out, html_path, csv_path, pngs, notes)


def log(store: tracking.Store, data: ReportData, written: Written) -> None:
    """The report's files as artifacts of the parent run, under ``report/``."""
    store.log_files(data.parent.run_id, written.files, ARTIFACT_DIR)


def _write_csv(data: ReportData, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run_id", "run_name", "status", "trial", "method", "density", "guidance_strength", "n_members",
                    *TABLE_METRICS, "lead_time_loss_h", "lead_time_loss"])
        for r in data.records:
            w.writerow([r.run_id, r.name, r.status, _blank(r.trial), r.method, _blank(r.density), _blank(r.guidance),
                        _blank(r.n_members), *[_blank(r.metrics.get(k)) for k in TABLE_METRICS],
                        _blank(r.metrics.get("lead_time_loss_h")), r.lead_time_loss or ""])


def _blank(v) -> str:
    return "" if v is None else repr(v)


def cell(value, digits: int = 4) -> str:
    """A number as the HTML table shows it."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def ui_link(data: ReportData, run: RunRecord | tracking.StoredRun) -> str:
    """The run's page in the MLflow UI: the tracking server itself, or `ensda ui` for a local store."""
    base = data.uri.rstrip("/") if data.uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 7px}td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f0f0f0}tr.FAILED td{color:#a00}img{max-width:100%;border:1px solid #eee}
.note{color:#666;font-style:italic}code{background:#f4f4f4;padding:0 3px}
"""


def _html(data: ReportData, images: dict[str, str], notes: dict[str, str]) -> str:
    e = html.escape
    p = data.parent
    title = f"ensda report: {p.name or p.run_id}"
    started = (datetime.datetime.fromtimestamp(p.start_time / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
               if p.start_time else "-")
    about = [("kind", {"sweep": "Optuna sweep (parent run; trials are child runs)", "compare": "`ensda compare` (parent run; methods are child runs)",
                       "run": "a single run"}[data.kind]),
             ("run", f'<a href="{e(ui_link(data, p))}">{e(p.name)}</a> <code>{e(p.run_id)}</code>'),
             ("experiment", f"{e(data.experiment)} (id {e(p.experiment_id)})"),
             ("status", e(p.status)), ("started", started), ("tracking store", f"<code>{e(data.uri)}</code>")]
    for tag, label in (("optuna.study", "Optuna study"), ("ensda.sweep", "sampler"), ("ensda.config", "config"),
                       ("optuna.best_trial", "best trial")):
        if tag in p.tags:
            about.append((label, e(p.tags[tag])))
    if "methods" in p.params:
        about.append(("methods", e(p.params["methods"])))
    n_done = len(data.finished)
    about.append(("runs", f"{len(data.records)} ({n_done} with results, {len(data.records) - n_done} failed or unfinished)"))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>", "<table>"]
    parts += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in about]
    parts.append("</table>")
    for name, caption in figures.FIGURES:
        parts.append(f"<h2>{e(caption)}</h2>")
        if name in images:
            parts.append(f'<img alt="{e(name)}" src="data:image/png;base64,{images[name]}">')
        if name in notes:
            parts.append(f'<p class="note">{e(name)}: {e(notes[name])}</p>')
    parts.append("<h2>Results</h2>")
    parts.append("<p>Time means after burn-in (DESIGN §5); links open the MLflow UI "
                 f"({'the tracking server' if data.uri.startswith('http') else '<code>ensda ui</code>'}).</p>")
    parts.append(_results_table(data))
    parts.append("</body></html>")
    return "\n".join(parts)


def _results_table(data: ReportData) -> str:
    e = html.escape
    head = ["trial", "method", "density", "λ", *TABLE_METRICS, "lead-time loss", "status", "MLflow run"]
    rows = ['<table id="results">', "<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for r in data.records:
        lead = r.lead_time_loss or cell(r.metrics.get("lead_time_loss_h"), 1)
        status = r.status + (f": {r.failure[:200]}" if r.failure else "")
        cells = [("n", cell(r.trial)), ("", e(r.method)), ("n", cell(r.density, 3)), ("n", cell(r.guidance, 3)),
                 *[("n", cell(r.metrics.get(k), DIGITS.get(k, 4))) for k in TABLE_METRICS], ("n", e(lead)), ("", e(status)),
                 ("", f'<a href="{e(ui_link(data, r))}"><code>{e(r.run_id)}</code></a>')]
        rows.append(f'<tr class="{e(r.status)}" data-run="{e(r.run_id)}">'
                    + "".join(f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for c, v in cells) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)
