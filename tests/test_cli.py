"""The `ensda` command end to end: JSON output, MLflow runs, clear errors.

MLflow writes to a temporary sqlite store; the numbers printed are checked against a
direct library call on the same config (an independent path through the code).
"""

import json

import pytest
from typer.testing import CliRunner

from ensda import config
from ensda.cli import app
from ensda.experiment import make_osse, run_method

CONFIG = "experiments/configs/l96.yaml"
SHORT = ["--set", "cycles=200", "--set", "burn_in=20"]
runner = CliRunner()


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts land in tmp_path/mlruns
    return uri


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_run_json_matches_library_and_is_tracked(store, request):
    cfg_path = str(request.config.rootpath / CONFIG)
    result = runner.invoke(app, ["run", cfg_path, "--method", "etkf", *SHORT, "--json"])
    assert result.exit_code == 0, result.output
    rec = _last_json(result.stdout)
    for key in ("method", "rmse_a", "spread_a", "crps_a", "ssr_a", "rmse_f", "n_cycles", "wall_s"):
        assert key in rec
    assert rec["method"] == "etkf" and rec["n_cycles"] == 200

    cfg = config.load(cfg_path, ["cycles=200", "burn_in=20", "method=etkf"])
    direct = run_method(cfg, make_osse(cfg), "etkf")
    assert rec["rmse_a"] == pytest.approx(direct.summary["rmse_a"], rel=1e-5)
    assert rec["crps_a"] == pytest.approx(direct.summary["crps_a"], rel=1e-5)
    # lead-time loss (default: 48 h against truth + N(0, 0.05²) forecasts): ETKF's analysis
    # error (~0.2) is ~4x the reference's, so it costs ~2 error doublings (~4 days)
    assert rec["lead_time_loss_h"] == pytest.approx(direct.summary["lead_time_loss_h"], abs=1e-3)
    assert (
        24.0 < rec["lead_time_loss_h"] < 150.0
        and rec["lead_time_loss"] == f"{rec['lead_time_loss_h']:.1f} h"
    )

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    run = client.get_run(rec["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["obs.every"] == "1"
    assert run.data.params["method"] == "etkf"
    assert run.data.metrics["rmse_a"] == pytest.approx(rec["rmse_a"], rel=1e-6)
    history = client.get_metric_history(run.info.run_id, "cycle/rmse_a")
    assert sorted(m.step for m in history) == list(range(1, 201))
    burned = [m.value for m in sorted(history, key=lambda m: m.step)][20:]
    assert sum(burned) / len(burned) == pytest.approx(
        rec["rmse_a"], rel=1e-5
    )  # time mean of per-cycle RMSE
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "error_spread.png",
        "rank_histogram.png",
        "settings.json",
        "lead_time.png",
        "lead_time.json",
    } <= artifacts
    assert run.data.metrics["lead_time_loss_h"] == pytest.approx(rec["lead_time_loss_h"], abs=1e-3)


def test_compare_parent_and_children(store, request):
    cfg_path = str(request.config.rootpath / CONFIG)
    result = runner.invoke(
        app, ["compare", cfg_path, "--methods", "etkf,3dvar,none", *SHORT, "--json"]
    )
    assert result.exit_code == 0, result.output
    out = _last_json(result.stdout)
    by_method = {r["method"]: r for r in out["results"]}
    assert set(by_method) == {"etkf", "3dvar", "none"}
    # assimilation beats the free run by far on the same truth
    assert by_method["etkf"]["rmse_a"] < 0.1 * by_method["none"]["rmse_a"]
    assert by_method["3dvar"]["n_members"] == 1
    # lead-time loss in the table and the JSON: the free run is off the curve ("> 192 h")
    assert "lead-time loss at 48 h" in result.stderr
    assert (
        by_method["none"]["lead_time_loss_h"] is None
        and by_method["none"]["lead_time_loss"] == "> 192 h"
    )
    assert 0 < by_method["etkf"]["lead_time_loss_h"] < by_method["3dvar"]["lead_time_loss_h"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(out["mlflow_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(c.data.params["method"] for c in children) == ["3dvar", "etkf", "none"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "obs.densty=0.3"], "obs.densty"),
        (["--set", "obs.density=1.5"], "obs.density"),
        (["--set", "ensemble.size=1", "--method", "letkf"], "ensemble.size"),
        (["--method", "kalman"], "unknown method 'kalman'"),
        (["--set", "cycles=ten"], "cycles"),
        (["--set", "assimilator.inflation=0.5", "--method", "etkf"], "inflation"),
        (["--set", "assimilator.radius=4", "--method", "etkf"], "radius"),
        (["--set", "obs={every: [2"], "not valid YAML"),
        (["--set", "methods.letkf.radius=.inf", "--method", "letkf"], "finite number"),
        (["--set", "assimilator.inflation=.nan", "--method", "etkf"], "finite number"),
    ],
)
def test_bad_input_names_the_field(args, needle, request):
    cfg_path = str(request.config.rootpath / CONFIG)
    result = runner.invoke(app, ["run", cfg_path, *args, "--no-track"])
    assert result.exit_code == 2
    assert needle in result.output


def test_divergence_reports_cycle_and_stage(request):
    """A free run inflated 50x per cycle blows up; the message names the cycle and the stage."""
    cfg_path = str(request.config.rootpath / CONFIG)
    args = [
        "--method",
        "none",
        "--set",
        "assimilator.inflation=50",
        "--set",
        "cycles=200",
        "--set",
        "burn_in=10",
    ]
    result = runner.invoke(app, ["run", cfg_path, *args, "--no-track"])
    assert result.exit_code == 3, result.output
    assert "non-finite state" in result.output and "by the forecast at cycle" in result.output


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["run", "no/such/config.yaml", "--no-track"])
    assert result.exit_code == 2
    assert "not found" in result.output
    result = runner.invoke(app, ["run", str(tmp_path), "--no-track"])
    assert result.exit_code == 2 and "is a directory" in result.output


def test_compare_reports_a_diverged_method_and_goes_on(store, request):
    cfg_path = str(request.config.rootpath / CONFIG)
    args = [
        "compare",
        cfg_path,
        "--methods",
        "none,etkf",
        *SHORT,
        "--set",
        "methods.none.inflation=50",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = _last_json(result.stdout)
    none, etkf = out["results"]
    assert none["diverged_at_cycle"] >= 1 and "forecast" in none["diverged"]
    assert etkf["rmse_a"] < 0.5

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(out["mlflow_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    status = {c.data.params["method"]: c.info.status for c in children}
    assert status == {"none": "FAILED", "etkf": "FINISHED"}
    failed = next(c for c in children if c.data.params["method"] == "none")
    assert "non-finite" in failed.data.tags["ensda.failure"]


def test_compare_default_methods_leave_out_what_the_testbed_cannot_run():
    """`ensda compare` without --methods runs COMPARE_DEFAULT less the methods refused on
    the testbed (oi's dense B on the sphere); an explicit --methods is taken as given."""
    from ensda import experiment
    from ensda.cli import COMPARE_DEFAULT
    from ensda.config import load

    sphere = load("experiments/configs/sphere.yaml")
    l96 = load(CONFIG)
    assert [m for m in COMPARE_DEFAULT if not experiment.runs_on(sphere, m)] == ["oi"]
    assert all(experiment.runs_on(l96, m) for m in COMPARE_DEFAULT + ("diffusion",))
    assert experiment.runs_on(sphere, "diffusion")  # the sphere denoiser (issue 7)


def test_version_is_the_package_version(request):
    import tomllib

    pyproject = tomllib.loads((request.config.rootpath / "pyproject.toml").read_text())
    result = runner.invoke(app, ["--version"])
    assert (
        result.exit_code == 0
        and result.output.strip() == f"ensda {pyproject['project']['version']}"
    )


def test_a_deterministic_method_has_no_spread_in_the_table():
    from ensda.cli import _score_cell

    assert _score_cell({"ssr_a": 0.0, "n_members": 1}, "ssr_a") == "–"
    assert _score_cell({"ssr_a": 1.04, "n_members": 20}, "ssr_a") == "1.0400"
    assert _score_cell({"rmse_a": 0.5, "n_members": 1}, "rmse_a") == "0.5000"
