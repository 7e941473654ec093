"""`ensda compare`, `ensda sweep` and `ensda report` on a sphere config, as on Lorenz-96.

The tiny shallow-water OSSE of ``test_sphere_cycle`` (T21 dycore, 32x16 grid, 3 channels;
N = 12, 12 cycles, burn-in 4) written as a YAML config. References: the observations the
runs logged (``observations.zarr``) are those ``make_osse`` draws for the same config (an
independent call); a denser network gives the LETKF a lower analysis error, and the
LETKF beats the free run; the deterministic 3D-Var runs one member.
"""

import json

import numpy as np
import optuna
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

pytest.importorskip("dinosaur")

from test_sphere_cycle import sw_experiment, sw_store  # noqa: E402,F401  (the tiny nature-run store)

from ensda.cli import app  # noqa: E402
from ensda.config import validate  # noqa: E402

runner = CliRunner()


@pytest.fixture
def env(sw_store, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # MLflow artifacts in tmp_path/mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = sw_experiment(
        sw_store,
        tracking={"enabled": True, "uri": uri, "experiment": "sphere-cli", "figures": False},
        sweep={
            "objective": "rmse_a",
            "sampler": "grid",
            "params": {"obs.density": [0.05, 0.3], "method": ["letkf"]},
        },
    )
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump(data))
    return {"config": str(path), "uri": uri, "data": data, "tmp": tmp_path}


def observations(client, run_id, tmp):
    return xr.open_zarr(
        client.download_artifacts(run_id, "observations.zarr", str(tmp / run_id)),
        consolidated=False,
    )


def test_compare_on_the_sphere_logs_the_shared_observations(env):
    from mlflow.tracking import MlflowClient

    from ensda.experiment import make_osse

    result = runner.invoke(
        app, ["compare", env["config"], "--methods", "letkf,3dvar,none", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    rec = {r["method"]: r for r in out["results"]}
    assert rec["3dvar"]["n_members"] == 1 and rec["letkf"]["n_members"] == 12
    assert rec["letkf"]["rmse_a"] < 0.8 * rec["none"]["rmse_a"], rec
    client = MlflowClient(tracking_uri=env["uri"])
    stored = observations(client, out["mlflow_run_id"], env["tmp"])
    osse = make_osse(validate(env["data"]))
    np.testing.assert_array_equal(stored["value"].values, np.asarray(osse.obs.y))
    assert stored.sizes == {"cycle": 12, "obs": 3 * 51}


def test_sweep_and_report_on_the_sphere(env):
    from mlflow.tracking import MlflowClient

    storage = f"sqlite:///{env['tmp'] / 'optuna.db'}"
    result = runner.invoke(app, ["sweep", env["config"], "--storage", storage])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="sw", storage=storage)
    trials = {t.params["obs.density"]: t for t in study.trials}
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values()) and set(
        trials
    ) == {0.05, 0.3}
    assert trials[0.3].value < trials[0.05].value  # more observed columns, lower analysis error
    client = MlflowClient(tracking_uri=env["uri"])
    for density, t in trials.items():
        stored = observations(client, t.user_attrs["ensda.mlflow_run_id"], env["tmp"])
        assert stored.sizes["obs"] == 3 * round(density * 512)
    out = env["tmp"] / "report"
    result = runner.invoke(
        app, ["report", "study:sw", "--storage", storage, "--uri", env["uri"], "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "report.html").stat().st_size > 1000
