"""`ensda report` of a sphere comparison: the per-channel skill figure and its data, the
headline-channel table, each run's maps and the observed columns.

One tiny shallow-water `ensda compare` (the OSSE of ``test_sphere_cycle``: T21, 32x16 grid,
3 channels, headline channel geopotential_500; LETKF and the free run, 12 cycles, figures
on) is made once for the module in a temporary MLflow store, and reported with the report
logged to its parent run. References, read back independently with ``MlflowClient``: the
children's summary metrics ``<metric>.<channel>`` (headline_channels.csv, the HTML table),
their ``channel_metrics.json`` (the skill table, its CSV and the lines of the figure), their
``maps/<channel>.png`` (copied byte for byte, embedded in report.html) and the parent's
``observations.zarr`` (the observed columns: a fixed network of 51 of 512 columns, each
observed in every one of the 12 cycles).
"""

import base64
import csv
import dataclasses
import json
import math
import re

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

pytest.importorskip("dinosaur")

from test_sphere_cycle import sw_experiment, sw_store  # noqa: F401  (the tiny nature-run store)

from analysis import report
from analysis import report_figures as figures
from ensda import tracking
from ensda.cli import app

runner = CliRunner()
HEADLINE = "geopotential_500"
CHANNELS = ["geopotential_500", "u_component_of_wind_500", "v_component_of_wind_500"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def made(sw_store, tmp_path_factory):  # noqa: F811
    """The comparison (letkf, none) and its report (logged to the parent run)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("sphere-report")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # MLflow artifacts in root/mlruns
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data = sw_experiment(
        sw_store,
        tracking={"enabled": True, "uri": uri, "experiment": "sphere-report", "figures": True},
    )
    config = root / "sw.yaml"
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["compare", str(config), "--methods", "letkf,none", "--json"])
    assert result.exit_code == 0, result.output
    parent_id = json.loads(result.output.strip().splitlines()[-1])["mlflow_run_id"]
    out = root / "report"
    result = runner.invoke(app, ["report", parent_id, "--uri", uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    yield {
        "root": root,
        "uri": uri,
        "parent": parent_id,
        "out": out,
        "printed": result.output,
        "client": client,
        "children": {c.data.params["method"]: c for c in children},
    }
    mp.undo()


def _png(path, min_bytes=5000):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > min_bytes, (path, len(data))
    return data


def _channel_metrics(made, run_id):
    local = made["client"].download_artifacts(
        run_id, "channel_metrics.json", str(made["root"] / f"cm-{run_id}")
    )
    with open(local) as f:
        return json.load(f)


def test_sphere_report_files_printed_and_logged(made):
    out, children = made["out"], made["children"]
    assert set(children) == {"letkf", "none"}
    maps = {f"maps/{m}_{HEADLINE}.png" for m in children}
    for name in ("channel_skill.png", "observed_columns.png", "rank_histograms.png", *maps):
        _png(out / name)
        assert str(out / name) in " ".join(made["printed"].split()), (
            name
        )  # the printed list names every figure
    assert (out / "headline_channels.csv").is_file() and (out / "channel_skill.csv").is_file()
    assert "lead_time.png: left out" in made["printed"]  # the existing figures keep saying why
    logged = {a.path for a in made["client"].list_artifacts(made["parent"], "report")}
    assert {
        "report/channel_skill.png",
        "report/observed_columns.png",
        "report/headline_channels.csv",
        "report/channel_skill.csv",
        "report/report.html",
        "report/results.csv",
        "report/maps",
    } <= logged
    assert {a.path for a in made["client"].list_artifacts(made["parent"], "report/maps")} == {
        f"report/{m}" for m in maps
    }


def test_headline_channels_are_the_logged_metrics(made):
    rows = list(csv.DictReader((made["out"] / "headline_channels.csv").open()))
    assert {(r["method"], r["channel"]) for r in rows} == {(m, HEADLINE) for m in made["children"]}
    html = (made["out"] / "report.html").read_text()
    table = html.split('<table id="headline">')[1].split("</table>")[0]
    for row in rows:
        child = made["children"][row["method"]]
        assert row["run_id"] == child.info.run_id
        cm = _channel_metrics(made, child.info.run_id)
        assert (
            float(row["climatological_std"])
            == cm["climatological_std"][cm["channels"].index(HEADLINE)]
        )
        cells = re.search(rf'<tr data-run="{child.info.run_id}">(.*?)</tr>', table).group(1)
        numbers = re.findall(r'<td class="n">(.*?)</td>', cells)
        for i, metric in enumerate(("rmse_a", "crps_a", "ssr_a")):
            logged = child.data.metrics[f"{metric}.{HEADLINE}"]
            assert float(row[metric]) == logged, metric  # full precision
            assert numbers[i] == f"{logged:.4g}", metric
    letkf, free = (next(r for r in rows if r["method"] == m) for m in ("letkf", "none"))
    assert float(letkf["rmse_a"]) < float(free["rmse_a"])


def test_channel_skill_table_csv_and_figure_from_channel_metrics(made):
    store = tracking.Store(made["uri"])
    data = report.collect(store, made["parent"])
    assert data.sphere and data.headline == [HEADLINE]
    table = figures.channel_skill_table(data)
    assert len(table) == 2 * len(CHANNELS)
    written = list(csv.DictReader((made["out"] / "channel_skill.csv").open()))
    assert [(r["run_id"], r["channel"]) for r in written] == [
        (r["run_id"], r["channel"]) for r in table
    ]
    for method, child in made["children"].items():
        cm = _channel_metrics(made, child.info.run_id)
        assert cm["channels"] == CHANNELS
        rows = [r for r in table if r["run_id"] == child.info.run_id]
        assert [r["channel"] for r in rows] == CHANNELS and all(r["series"] == method for r in rows)
        for i, r in enumerate(rows):
            std = cm["climatological_std"][i]
            assert r["variable"] == CHANNELS[i][:-4] and r["level_hpa"] == 500.0
            assert (
                r["rmse_a"] == cm["rmse_a"][i]
                and r["crps_a"] == cm["crps_a"][i]
                and r["climatological_std"] == std
            )
            assert r["rmse_a_over_std"] == pytest.approx(cm["rmse_a"][i] / std, rel=1e-12)
            assert r["crps_a_over_std"] == pytest.approx(cm["crps_a"][i] / std, rel=1e-12)
        csv_rows = [r for r in written if r["run_id"] == child.info.run_id]
        assert [float(r["rmse_a_over_std"]) for r in csv_rows] == [
            r["rmse_a_over_std"] for r in rows
        ]
    # the figure: a panel per variable (one level each), RMSE / σ top, CRPS / σ bottom, a line per
    # method
    fig, note = figures.channel_skill_figure(data)
    assert note == "" and len(fig.axes) == 2 * len(CHANNELS)
    for k, channel in enumerate(CHANNELS):
        for row, metric in ((0, "rmse_a_over_std"), (1, "crps_a_over_std")):
            ax = fig.axes[row * len(CHANNELS) + k]
            drawn = {
                ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()))
                for ln in ax.get_lines()
                if not ln.get_label().startswith("_")
            }
            expect = {r["series"]: ([r[metric]], [500.0]) for r in table if r["channel"] == channel}
            assert drawn == expect, (channel, metric)
    figures.run_figures.close(fig)


def test_maps_are_copied_and_embedded(made):
    html = (made["out"] / "report.html").read_text()
    embedded = dict(
        re.findall(r'<img alt="([\w./]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    )
    assert f"<h3>{HEADLINE}: maps at the last cycle</h3>" in html
    for method, child in made["children"].items():
        name = f"maps/{method}_{HEADLINE}.png"
        copied = _png(made["out"] / name, 20000)
        original = made["client"].download_artifacts(
            child.info.run_id, f"maps/{HEADLINE}.png", str(made["root"] / f"m-{method}")
        )
        with open(original, "rb") as f:
            assert copied == f.read()
        assert base64.b64decode(embedded[name]) == copied
    for name in ("channel_skill.png", "observed_columns.png"):
        assert base64.b64decode(embedded[name]) == (made["out"] / name).read_bytes()
    assert (
        html.index("channel_skill.png")
        < html.index('<table id="headline">')
        < html.index("maps/letkf_")
        < html.index('id="results"')
    )


def test_observed_columns_from_the_parents_observations(made):
    local = made["client"].download_artifacts(
        made["parent"], "observations.zarr", str(made["root"] / "obs")
    )
    stored = xr.open_zarr(local, consolidated=False)
    columns = np.unique(stored["column"].values)
    assert columns.size == 51
    data = report.collect(tracking.Store(made["uri"]), made["parent"])
    obs = data.observations
    assert (
        obs.cycles == 12
        and obs.per_cycle == 51
        and obs.channels == 3
        and not obs.redraw
        and obs.density == 0.1
    )
    assert (
        obs.n_cycles == 12
    ).all() and obs.n_cycles.size == 51  # a fixed network: every column in every cycle
    col = stored["column"].values.ravel()
    for c, la, lo in zip(columns, obs.latitude, obs.longitude):
        k = int(np.argmax(col == c))
        assert (la, lo) == (
            float(stored["latitude"].values.ravel()[k]),
            float(stored["longitude"].values.ravel()[k]),
        )
    fig, note = figures.observed_columns_figure(data)
    points = fig.axes[0].collections[0]
    assert (
        note == ""
        and points.get_offsets().shape == (51, 2)
        and list(points.get_array()) == [12] * 51
    )
    figures.run_figures.close(fig)


def test_left_out_sphere_parts_say_why(made, tmp_path):
    data = report.collect(tracking.Store(made["uri"]), made["parent"])
    # figures off, a sweep's parent: no maps, no observations.zarr
    bare = dataclasses.replace(
        data,
        kind="sweep",
        observations=None,
        records=[dataclasses.replace(r, maps=None, channel_metrics=None) for r in data.records],
        notes={
            "observed_columns.png": "left out: the parent run has no observations.zarr (a sweep's "
            "trials log their own)"
        },
    )
    written = report.write(bare, tmp_path / "bare")
    assert {p.name for p in written.pngs} == {"rank_histograms.png"}
    assert written.notes["maps"].startswith("left out: no run logged maps/")
    assert written.notes["channel_skill.png"].startswith("left out: no run has per-channel metrics")
    assert written.notes["observed_columns.png"].startswith(
        "left out: the parent run has no observations.zarr"
    )
    html = written.html.read_text()
    assert (
        "maps: left out: no run logged maps/" in html and '<table id="headline">' in html
    )  # headline metrics still logged
    assert [p.name for p in written.tables] == ["headline_channels.csv"]
    # two densities: a line per (method, density), replicate runs averaged
    twice = [dataclasses.replace(r, run_id=r.run_id + "x", density=0.3) for r in data.records]
    fig, _ = figures.channel_skill_figure(dataclasses.replace(data, records=data.records + twice))
    labels = sorted(
        ln.get_label() for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")
    )
    assert labels == [
        "letkf, density 0.1",
        "letkf, density 0.3",
        "none, density 0.1",
        "none, density 0.3",
    ]
    figures.run_figures.close(fig)
    # not a sphere report: none of the sphere parts
    flat = dataclasses.replace(
        data,
        observations=None,
        notes={},
        records=[
            dataclasses.replace(r, sphere=False, channel_metrics=None, maps=None)
            for r in data.records
        ],
    )
    assert not flat.sphere and figures.figures_for(flat) == figures.FIGURES
    written = report.write(flat, tmp_path / "flat")
    assert (
        written.tables == []
        and not (tmp_path / "flat" / "maps").exists()
        and "Headline channels" not in written.html.read_text()
    )
    assert math.isfinite(float(next(csv.DictReader(written.csv.open()))["rmse_a"]))
