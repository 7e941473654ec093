"""`ensda report`: figures, results table and self-contained HTML from a sweep's or a
comparison's MLflow runs; artifacts logged to the parent run; clear errors.

A tiny real grid sweep (climatology and 3D-Var at two densities, 100 cycles: cheap to
compile) and a comparison are made once for the module in temporary MLflow and Optuna
stores. References: the numbers in the HTML table and results.csv against the runs read
back with MlflowClient (an independent path), the trial numbers against the Optuna study,
the embedded images against the PNG files. The diffusion-only figures (guidance strength
lines, the density × strength heat map) are checked on records built in the test.
"""

import base64
import csv
import html as htmllib
import json
import re

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from PIL import Image
from typer.testing import CliRunner

from analysis import report
from analysis import report_figures as figures
from ensda import sweep, tracking
from ensda.cli import app

SWEEP_CONFIG = "experiments/configs/l96_sweep.yaml"
SHORT = [
    "cycles=100",
    "burn_in=20",
    "ensemble.size=8",
    "lead_time.max_lead_h=null",
    "testbed.climatology_samples=300",
    "testbed.spinup_steps=300",
    "tracking.figures=false",
    "tracking.experiment=report-test",
]
GRID = "sweep.params={obs.density: [0.5, 1.0], method: [climatology, 3dvar]}"
PNGS = {"crps_density.png", "ssr_density.png", "rank_histograms.png", "lead_time.png"}
runner = CliRunner()


def _sets(*items) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, request):
    """One sweep (2 densities × climatology, 3dvar) and one comparison, in temporary stores."""
    root = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.chdir(root)  # artifacts in root/mlruns, reports in root/outputs
    storage = f"sqlite:///{root / 'optuna.db'}"
    config = str(request.config.rootpath / SWEEP_CONFIG)
    result = runner.invoke(
        app, ["sweep", config, *_sets(*SHORT, GRID), "--storage", storage, "--study", "rep"]
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="rep", storage=storage)
    result = runner.invoke(
        app,
        [
            "compare",
            config,
            "--methods",
            "climatology,3dvar",
            *_sets(*SHORT, "obs.density=0.5"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    compare_id = json.loads(result.stdout.strip().splitlines()[-1])["mlflow_run_id"]
    yield {
        "root": root,
        "uri": uri,
        "storage": storage,
        "study": study,
        "sweep_id": study.user_attrs[sweep.STUDY_PARENT],
        "compare_id": compare_id,
    }
    mp.undo()


def _children(client, parent_id):
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )


def _check_png(path):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 400 and img.height >= 250, (path, img.size)


def _row(html: str, run_id: str) -> list[str]:
    row = re.search(rf'<tr class="\w+" data-run="{run_id}">(.*?)</tr>', html).group(1)
    return [
        htmllib.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)
    ]


def test_sweep_report_figures_table_html_and_artifacts(stores):
    out = stores["root"] / "sweep-report"
    result = runner.invoke(app, ["report", stores["sweep_id"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.glob("*.png")} == PNGS  # no heat map: no diffusion runs
    for name in PNGS:
        _check_png(out / name)

    client = MlflowClient(tracking_uri=stores["uri"])
    children = _children(client, stores["sweep_id"])
    trial_of = {
        t.user_attrs[sweep.RUN_ID]: t.number
        for t in stores["study"].get_trials()
        if t.state == TrialState.COMPLETE
    }
    assert sorted(trial_of) == sorted(c.info.run_id for c in children) and len(children) == 4

    html = (out / "report.html").read_text()
    assert (
        '<table id="results">' in html
        and stores["sweep_id"] in html
        and "Optuna study</th><td>rep<" in html
    )
    header = re.findall(r"<th>(.*?)</th>", html.split('<table id="results">')[1].split("</tr>")[0])
    col = {h: i for i, h in enumerate(header)}
    for child in children:  # the table's numbers are the runs' metrics, read back independently
        cells, m, p = _row(html, child.info.run_id), child.data.metrics, child.data.params
        assert cells[col["trial"]] == str(trial_of[child.info.run_id])
        assert cells[col["method"]] == p["method"] and float(cells[col["density"]]) == float(
            p["obs.density"]
        )
        for key in ("rmse_a", "spread_a", "ssr_a", "crps_a", "rmse_f"):
            assert cells[col[key]] == f"{m[key]:.4f}", key
        assert cells[col["lead-time loss"]] == child.data.tags["ensda.lead_time_loss"]
        assert f"/#/experiments/{child.info.experiment_id}/runs/{child.info.run_id}" in html
    rows = {r["run_id"]: r for r in csv.DictReader((out / "results.csv").open())}
    for child in children:
        assert (
            float(rows[child.info.run_id]["crps_a"]) == child.data.metrics["crps_a"]
        )  # full precision
        assert int(rows[child.info.run_id]["trial"]) == trial_of[child.info.run_id]

    # every PNG embedded, byte for byte; the left-out heat map is named with its reason
    embedded = dict(
        re.findall(r'<img alt="([\w.]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    )
    assert set(embedded) == PNGS
    for name, data in embedded.items():
        assert base64.b64decode(data) == (out / name).read_bytes()
    assert "crps_heatmap.png: left out: needs diffusion runs" in html
    assert "deterministic methods left out (no spread): 3dvar" in html

    # rank-histogram counts stored as data by log_method_run: N + 1 ranks, one per site and cycle
    # after burn-in
    clim = next(c for c in children if c.data.params["method"] == "climatology")
    counts = tracking.Store(stores["uri"]).load_json(clim.info.run_id, "rank_histogram.json")[
        "counts"
    ]
    assert len(counts) == 8 + 1 and sum(counts) == (100 - 20) * 40

    logged = {a.path for a in client.list_artifacts(stores["sweep_id"], "report")}
    assert {f"report/{n}" for n in PNGS | {"report.html", "results.csv"}} == logged


def test_report_from_study_name_matches_run_id(stores):
    out = stores["root"] / "by-study"
    result = runner.invoke(
        app, ["report", "study:rep", "--storage", stores["storage"], "--out", str(out), "--no-log"]
    )
    assert result.exit_code == 0, result.output
    assert (
        runner.invoke(app, ["report", stores["sweep_id"], "--no-log"]).exit_code == 0
    )  # default --out
    by_id = stores["root"] / "outputs" / f"report-{stores['sweep_id']}"
    assert (out / "results.csv").read_text() == (by_id / "results.csv").read_text()


def test_compare_and_single_run_reports_say_what_they_leave_out(stores):
    client = MlflowClient(tracking_uri=stores["uri"])
    before = {a.path for a in client.list_artifacts(stores["compare_id"])}
    out = stores["root"] / "compare-report"
    result = runner.invoke(app, ["report", stores["compare_id"], "--out", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.glob("*.png")} == {"rank_histograms.png", "lead_time.png"}
    html = (out / "report.html").read_text()
    assert (
        "`ensda compare`" in html
        and "crps_density.png: left out: all runs have one observation density (0.5)" in html
    )
    assert "ssr_density.png: left out" in html
    assert {a.path for a in client.list_artifacts(stores["compare_id"])} == before  # --no-log

    child = next(
        c for c in _children(client, stores["compare_id"]) if c.data.params["method"] == "3dvar"
    )
    out = stores["root"] / "single-report"
    result = runner.invoke(app, ["report", child.info.run_id, "--out", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert (
        "a single run" in html
        and _row(html, child.info.run_id)[4] == f"{child.data.metrics['rmse_a']:.4f}"
    )
    assert (
        "rank_histograms.png: left out: no run has stored rank-histogram counts" in html
    )  # 3D-Var has no ensemble
    _check_png(out / "lead_time.png")


def test_clear_errors(stores, tmp_path):
    def error(*args):
        result = runner.invoke(app, ["report", *args])
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    assert "no run 'deadbeef'" in error("deadbeef", "--no-log")
    assert "no MLflow tracking store at" in error(
        stores["sweep_id"], "--uri", f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    )
    assert "cannot reach the MLflow tracking server at http://127.0.0.1:9" in error(
        stores["sweep_id"], "--uri", "http://127.0.0.1:9"
    )
    assert "no study 'nope'" in error("study:nope", "--storage", stores["storage"])
    missing = tmp_path / "no-such-optuna.db"  # a wrong --storage makes no empty database
    assert "no Optuna storage at" in error("study:nope", "--storage", f"sqlite:///{missing}")
    assert not missing.exists()
    client = MlflowClient(tracking_uri=stores["uri"])
    empty = client.create_run(
        client.get_experiment_by_name("report-test").experiment_id, run_name="empty"
    ).info.run_id
    assert "has no child runs and no metrics" in error(empty)


# ------------------------------------------------------------------------- figures on built records


def _records(lead_for=("diffusion", "letkf")):
    """Diffusion at 2 densities × 3 guidance strengths (one cell missing) and LETKF at both."""
    curves = {
        "leads_h": [0, 6, 12, 18],
        "rmse_reference": [0.05, 0.1, 0.2, 0.4],
        "rmse_analysis": [0.2, 0.3, 0.5, 0.8],
        "lead_h": 6.0,
        "lead_time_loss_h": 6.0,
        "lead_time_loss": "6.0 h",
    }
    out = []
    for density in (0.25, 1.0):
        for g in (0.5, 1.0, 2.0):
            if (density, g) == (1.0, 2.0):
                continue
            out.append(("diffusion", density, g, 0.1 * g + density))
        out.append(("letkf", density, None, 0.3 + density))
    return [
        report.RunRecord(
            f"r{i}",
            f"t{i}",
            "0",
            "FINISHED",
            m,
            d,
            g,
            i,
            10,
            {"crps_a": c, "ssr_a": 1.0, "rmse_a": c},
            "6.0 h",
            None,
            curves if m in lead_for else None,
            [5, 3, 3, 3, 3, 3, 3, 3, 3, 3, 5],
        )
        for i, (m, d, g, c) in enumerate(out)
    ]


def _data(records):
    parent = tracking.StoredRun("p", "sweep", "0", "FINISHED", None, {}, {}, {"optuna.study": "s"})
    return report.ReportData("sqlite:///x.db", parent, "exp", "sweep", report._with_series(records))


def test_diffusion_series_heatmap_and_missing_pieces(tmp_path):
    data = _data(_records(lead_for=("diffusion",)))
    assert data.series == ["diffusion λ=0.5", "diffusion λ=1", "diffusion λ=2", "letkf"]
    fig, note = figures.crps_heatmap_figure(data)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert (
        f"{0.1 * 0.5 + 0.25:.3g}" in texts
        and "-" in texts
        and note == "1 cell(s) without a finished run (grey)"
    )
    written = report.write(data, tmp_path)
    assert {p.name for p in written.pngs} == PNGS | {"crps_heatmap.png"}
    html = written.html.read_text()
    assert "no lead-time curves (lead_time.json) for: letkf" in html
    # one guidance strength: diffusion is one line, no heat map
    one = _data([r for r in _records() if r.guidance in (None, 1.0)])
    assert one.series == ["diffusion", "letkf"] and figures.crps_heatmap_figure(one)[0] is None


@pytest.mark.parametrize(
    "params, density",
    [
        ({"obs.density": "0.25", "obs.every": "1", "testbed.n": "40"}, 0.25),
        ({"obs.density": "None", "obs.every": "3", "testbed.n": "40"}, 14 / 40),
        (
            {
                "obs.density": "None",
                "obs.every": "1",
                "obs.sites": "[0, 5, 10, 15]",
                "testbed.n": "40",
            },
            0.1,
        ),
        ({"obs.every": "4"}, 0.25),
        ({}, None),
    ],
)
def test_observation_density_from_params(params, density):
    found = report.observation_density(params)
    assert found is None if density is None else found == pytest.approx(density)
