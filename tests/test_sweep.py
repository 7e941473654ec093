"""`ensda sweep`: config validation, multi-worker grids, resume after kill -9, failed trials.

Stores: a temporary sqlite file for Optuna per test and one temporary MLflow store for the
module (its first use runs migrations, ~7 s). References: a trial's value against
``run_method`` on the same overridden config (an independent path), the grid points
written in the test, and the MLflow runs read back from the store.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from ensda import config, sweep
from ensda.cli import app
from ensda.experiment import make_osse, run_method

CONFIG = "experiments/configs/l96_sweep.yaml"
#: short, cheap trials; heartbeats fast enough that a dead worker is noticed in seconds
SHORT = [
    "cycles=150",
    "burn_in=20",
    "ensemble.size=10",
    "testbed.climatology_samples=300",
    "testbed.spinup_steps=300",
    "tracking.figures=false",
    "lead_time.max_lead_h=null",
    "sweep.heartbeat_interval=1",
    "sweep.grace_period=5",
]
GRID = "sweep.params={obs.density: [0.5, 1.0], method: [etkf, 3dvar]}"
runner = CliRunner()


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def env(tmp_path, monkeypatch, mlflow_uri, request):
    """Working directory, stores and config path for one test (its own MLflow experiment)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.chdir(tmp_path)  # MLflow artifacts land in tmp_path/mlruns
    return {
        "config": str(request.config.rootpath / CONFIG),
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "experiment": request.node.name,
    }


def sets(env, *extra) -> list[str]:
    out = []
    for item in [*SHORT, f"tracking.experiment={env['experiment']}", *extra]:
        out += ["--set", item]
    return out


def load_study(env, name):
    return optuna.load_study(study_name=name, storage=env["storage"])


def children(parent_id):
    client = MlflowClient()
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return parent, runs


def completed_points(study) -> list[tuple]:
    return sorted(
        (t.params["obs.density"], t.params["method"])
        for t in study.get_trials()
        if t.state == TrialState.COMPLETE
    )


GRID_POINTS = sorted((d, m) for d in (0.5, 1.0) for m in ("etkf", "3dvar"))


def wait_for_a_running_trial(env, name, worker) -> list:
    """The study's running trials once one has its MLflow run open (the worker is inside
    run_method); fails if none does within 120 s or the worker exits first."""
    deadline = time.monotonic() + 120
    while True:
        running = [
            t
            for t in load_study(env, name).get_trials()
            if t.state == TrialState.RUNNING and sweep.RUN_ID in t.user_attrs
        ]
        if running or time.monotonic() > deadline or worker.poll() is not None:
            break
        time.sleep(0.2)
    assert running, "the worker never started a trial"
    return running


# ----------------------------------------------------------------------------- validation


def error_of(data) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.validate(data)
    return str(info.value)


@pytest.mark.parametrize(
    "params, named",
    [
        ({"obs.densty": [0.5]}, "sweep.params.obs.densty"),  # no such field
        ({"obs.density": [0.5, 1.5]}, "sweep.params.obs.density"),  # a value out of range
        (
            {"methods.letkf.radus": [2, 4]},
            "sweep.params.methods.letkf.radus",
        ),  # no such method setting
        ({"cycles.x": [1]}, "sweep.params.cycles.x"),  # cycles is not a section
        ({"obs.density": []}, "sweep.params.obs.density: empty list"),
        ({"obs.density": 0.5}, "sweep.params.obs.density"),  # neither a list nor a range
    ],
)
def test_bad_sweep_params_are_named(params, named):
    assert named in error_of({"sweep": {"params": params}})


def test_sweep_ranges_and_samplers_are_checked():
    tpe = lambda space: {"sweep": {"sampler": "tpe", "params": {"assimilator.inflation": space}}}  # noqa: E731
    assert "empty range" in error_of(tpe({"low": 1.1, "high": 1.0}))
    assert "log range needs low > 0" in error_of(
        {"sweep": {"sampler": "tpe", "params": {"seeds.obs": {"low": 0, "high": 4, "log": True}}}}
    )
    assert "sweep.params.assimilator.inflation.range.lg" in error_of(
        tpe({"low": 1.0, "high": 1.1, "lg": True})
    )
    assert "grid sampler needs a list" in error_of(
        {"sweep": {"params": {"assimilator.inflation": {"low": 1.0, "high": 1.1}}}}
    )
    assert "sweep.objective" in error_of(
        {"sweep": {"objective": "rmse", "params": {"method": ["etkf"]}}}
    )
    assert "|SSR - 1|" in error_of(
        {"sweep": {"objective": "ssr_a", "direction": "maximize", "params": {"method": ["etkf"]}}}
    )
    # a setting only some swept methods have is valid if one of them accepts it
    ok = config.validate(
        {"sweep": {"params": {"assimilator.radius": [2.0, 4.0], "method": ["letkf", "3dvar"]}}}
    )
    assert ok.sweep.grid_size() == 4
    assert "assimilator.radius" in error_of(
        {"sweep": {"params": {"assimilator.radius": [2.0], "method": ["etkf", "3dvar"]}}}
    )
    # a range: both ends applied to the config, int ranges take whole numbers
    assert "sweep.params.ensemble.size" in error_of(
        {
            "sweep": {
                "sampler": "random",
                "params": {"ensemble.size": {"low": 1, "high": 8, "int": True}},
            }
        }
    )
    rng = config.validate(
        {
            "sweep": {
                "sampler": "random",
                "params": {"ensemble.size": {"low": 4, "high": 8, "int": True}},
            }
        }
    )
    assert rng.sweep.params["ensemble.size"].integer


def test_shipped_sweep_config():
    """The reference sweep: 4 densities × (diffusion at 5 guidance strengths + LETKF, EnKF,
    3D-Var)."""
    cfg = config.load(CONFIG)
    assert (
        cfg.sweep.sampler == "grid"
        and cfg.sweep.objective == "crps_a"
        and cfg.sweep.grid_size() == 4 * (5 + 3)
    )
    points = cfg.sweep.grid_points()
    assert sum(p["method"] == "diffusion" for p in points) == 20
    assert all(
        ("assimilator.guidance_strength" in p) == (p["method"] == "diffusion") for p in points
    )
    assert {p["obs.density"] for p in points if p["method"] == "enkf"} == {0.05, 0.1, 0.25, 0.5}
    assert cfg.ensemble.size == 20 and cfg.cycles == 1100 and cfg.burn_in == 100


CONDITIONAL = {
    "obs.density": [0.5, 1.0],
    "method": ["letkf", "3dvar"],
    "assimilator.radius": {"values": [2.0, 4.0, 8.0], "when": {"method": "letkf"}},
}


def test_conditional_sweep_params():
    """A key swept only where ``when`` holds: grids expand it at those points only; the
    condition must name an unconditional swept key and one of its values."""
    cfg = config.validate({"sweep": {"params": CONDITIONAL}})
    points = cfg.sweep.grid_points()
    assert len(points) == cfg.sweep.grid_size() == 2 * (3 + 1)
    assert sorted(
        (p["obs.density"], p.get("assimilator.radius", 0.0))
        for p in points
        if p["method"] == "letkf"
    ) == [(d, r) for d in (0.5, 1.0) for r in (2.0, 4.0, 8.0)]
    assert all(p.keys() == {"obs.density", "method"} for p in points if p["method"] == "3dvar")
    assert "'obs.every' is not an unconditional swept key" in error_of(
        {
            "sweep": {
                "params": CONDITIONAL
                | {"assimilator.radius": {"values": [2.0], "when": {"obs.every": 2}}}
            }
        }
    )
    assert "method never takes ['etkf']" in error_of(
        {
            "sweep": {
                "params": CONDITIONAL
                | {"assimilator.radius": {"values": [2.0], "when": {"method": ["letkf", "etkf"]}}}
            }
        }
    )
    # a setting the conditioned method does not have
    assert "sweep.params.assimilator.radius" in error_of(
        {
            "sweep": {
                "params": CONDITIONAL
                | {"assimilator.radius": {"values": [2.0], "when": {"method": "3dvar"}}}
            }
        }
    )
    assert "grid sampler needs a list" in error_of(
        {
            "sweep": {
                "params": CONDITIONAL
                | {"assimilator.radius": {"low": 2.0, "high": 8.0, "when": {"method": "letkf"}}}
            }
        }
    )
    # tpe: the conditional range is suggested only in the trials where it is active
    tpe = config.validate(
        {
            "sweep": {
                "sampler": "tpe",
                "params": CONDITIONAL
                | {"assimilator.radius": {"low": 2.0, "high": 8.0, "when": {"method": "letkf"}}},
            }
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        values = sweep.suggest(study.ask(), tpe.sweep)
        assert ("assimilator.radius" in values) == (values["method"] == "letkf")
        assert 2.0 <= values.get("assimilator.radius", 2.0) <= 8.0


def test_sweep_command_errors_before_any_trial(env, tmp_path):
    result = runner.invoke(
        app, ["sweep", env["config"], *sets(env, "sweep.params={obs.densty: [0.5]}")]
    )
    assert result.exit_code == 2 and "sweep.params.obs.densty" in result.output
    unreachable = f"sqlite:///{tmp_path / 'missing' / 'dir' / 'optuna.db'}"
    result = runner.invoke(app, ["sweep", env["config"], *sets(env), "--storage", unreachable])
    assert result.exit_code == 2 and "cannot open the Optuna storage" in result.output
    assert "unable to open database file" in result.output
    result = runner.invoke(
        app,
        [
            "sweep",
            env["config"],
            *sets(env, "sweep.sampler=random", "sweep.params={obs.density: [0.5]}"),
            "--storage",
            env["storage"],
        ],
    )
    assert result.exit_code == 2 and "--trials" in result.output


def test_a_storage_password_is_masked_and_kept_off_worker_command_lines(env, monkeypatch):
    """The password of a storage URL never reaches messages or argv (``ps`` shows argv):
    workers get the URL in ``$ENSDA_STORAGE``, errors show it masked."""
    url = "postgresql+psycopg://ensda:s3cret@127.0.0.1:1/optuna"
    assert sweep.redact(url) == "postgresql+psycopg://ensda:***@127.0.0.1:1/optuna"
    assert sweep.redact("sqlite:///optuna.db") == "sqlite:///optuna.db"
    started = []
    monkeypatch.setattr(
        sweep.subprocess, "Popen", lambda cmd, env, stdout: started.append((cmd, env))
    )
    sweep.start_workers(url, "study", 2)
    assert len(started) == 2
    for cmd, worker_env in started:
        assert not any("s3cret" in part for part in cmd) and "--storage" not in cmd
        assert worker_env[sweep.STORAGE_ENV] == url
    # a refused connection: the error names the storage without its password
    result = runner.invoke(app, ["sweep", env["config"], *sets(env)], env={"ENSDA_STORAGE": url})
    assert result.exit_code == 2 and "ensda:***@127.0.0.1" in result.output, result.output
    assert "s3cret" not in result.output


# ----------------------------------------------------------------------------- sweeps


def postgres_url() -> str:
    """The PostgreSQL storage of the CI (.ci/postgres.sh); skip without it, unless
    ENSDA_REQUIRE_POSTGRES is set (CI), where a missing server is a failure."""
    url = os.environ.get("ENSDA_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("ENSDA_REQUIRE_POSTGRES"):
            pytest.fail("ENSDA_REQUIRE_POSTGRES is set but ENSDA_TEST_POSTGRES_URL is not")
        pytest.skip(
            "no PostgreSQL: set ENSDA_TEST_POSTGRES_URL (e.g. "
            "postgresql+psycopg://user@127.0.0.1:5432/db; .ci/run starts one)"
        )
    return url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_worker_grid_runs_each_point_once_with_child_runs(env, backend):
    """Two worker processes on one grid: every point COMPLETE exactly once (the other trials
    PRUNED without running), each with its FINISHED MLflow child run; on SQLite and on a
    real PostgreSQL server (CI)."""
    storage = env["storage"] if backend == "sqlite" else postgres_url()
    name = (
        "grid2" if backend == "sqlite" else f"grid2-{uuid.uuid4().hex[:8]}"
    )  # a server outlives the test
    cmd = [
        "sweep",
        env["config"],
        *sets(env, GRID),
        "--workers",
        "2",
        "--storage",
        storage,
        "--study",
        name,
    ]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=name, storage=storage)
    assert completed_points(study) == GRID_POINTS
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials())
    # two worker processes, one CPU core each
    assert {
        t.user_attrs[sweep.DEVICE] for t in study.get_trials() if t.state == TrialState.COMPLETE
    } == {"cpu (cores 0)", "cpu (cores 1)"}

    parent, runs = children(study.user_attrs[sweep.STUDY_PARENT])
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.study"] == name
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(by_number) == sorted(t.number for t in complete)
    for t in complete:
        run = by_number[t.number]
        assert run.info.run_id == t.user_attrs[sweep.RUN_ID] and run.info.status == "FINISHED"
        assert run.data.tags["optuna.study"] == name
        assert run.data.params["method"] == t.params["method"]
        assert float(run.data.params["obs.density"]) == t.params["obs.density"]
        assert run.data.metrics["crps_a"] == pytest.approx(t.value, rel=1e-12)
        summary = t.user_attrs[sweep.SUMMARY]
        if summary["lead_time_off_curve"]:  # "> max lead": no number to log, the tag says so
            assert "lead_time_loss_h" not in run.data.metrics and run.data.tags[
                "ensda.lead_time_loss"
            ].startswith("> ")
        else:
            assert run.data.metrics["lead_time_loss_h"] == pytest.approx(
                summary["lead_time_loss_h"], rel=1e-12
            )
    assert any(not t.user_attrs[sweep.SUMMARY]["lead_time_off_curve"] for t in complete)
    assert parent.data.metrics["best_crps_a"] == pytest.approx(
        min(t.value for t in complete), rel=1e-12
    )

    # the same command again: nothing left, nothing run twice
    assert runner.invoke(app, cmd).exit_code == 0
    assert len(optuna.load_study(study_name=name, storage=storage).get_trials()) == len(
        study.get_trials()
    )


CLAIM = """
import json, sys
import optuna
from ensda.sweep import open_storage
storage = open_storage(sys.argv[1])
study_id = storage.get_study_id_from_name("claims")
claimed = []
WAITING, RUNNING = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING
while waiting := storage.get_all_trials(study_id, deepcopy=False, states=(WAITING,)):
    set_running = storage.set_trial_state_values
    claimed += [t.number for t in waiting[:1] if set_running(t._trial_id, RUNNING)]
print(json.dumps(claimed))
"""


def test_sqlite_claims_of_waiting_trials_are_atomic(tmp_path):
    """Four processes claim 120 queued trials (WAITING → RUNNING, Optuna's own claim) as fast
    as they can through ``open_storage``: every trial is claimed exactly once. (Plain Optuna
    on SQLite claimed 35 of 200 trials twice in the same race: the read and the write were
    not one transaction; that made CI's two-worker grid fail with "Cannot tell a COMPLETE
    trial".)"""
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    study = optuna.create_study(study_name="claims", storage=sweep.open_storage(url))
    for i in range(120):
        study.enqueue_trial({"x": i})
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIM, url], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    claims = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(sum(claims, [])) == list(range(120))


def test_four_workers_each_on_its_own_host_device(env, monkeypatch):
    """With 4 forced CPU devices, `--workers 4` starts 4 workers computing on devices 0..3:
    each worker records the JAX device it computes on, and every trial ran on its worker's."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    grid = "sweep.params={obs.density: [0.5, 1.0], method: [climatology, none]}"  # cheap to compile
    cmd = [
        "sweep",
        env["config"],
        *sets(env, grid, "cycles=60", "lead_time.enabled=false"),
        "--workers",
        "4",
        "--storage",
        env["storage"],
        "--study",
        "dev4",
    ]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    study = load_study(env, "dev4")
    workers = {
        int(k.rsplit(".", 1)[1]): v
        for k, v in study.user_attrs.items()
        if k.startswith(sweep.WORKER + ".")
    }
    assert sorted(workers) == [0, 1, 2, 3]
    assert [workers[i]["device"] for i in range(4)] == ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]
    assert len({w["pid"] for w in workers.values()}) == 4
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    client = MlflowClient()
    for t in complete:
        index = int(t.user_attrs[sweep.DEVICE].split()[2])  # "cpu device i (cores ...)"
        assert t.user_attrs[sweep.JAX_DEVICE] == workers[index]["device"] == f"cpu:{index}"
        assert (
            client.get_run(t.user_attrs[sweep.RUN_ID]).data.tags["ensda.device"] == f"cpu:{index}"
        )


def test_trial_value_equals_run_method_on_the_same_config(env):
    """Trials in-process; the value is recomputed by the library on the config the user
    would write by hand (YAML + the same --set values + the trial's values). The radius is
    a conditional key: set in the LETKF trial, absent from the climatology one."""
    space = (
        "sweep.params={obs.density: [0.5], method: [letkf, climatology], "
        "assimilator.radius: {values: [3.0], when: {method: letkf}}}"
    )
    cmd = ["sweep", env["config"], *sets(env, space), "--storage", env["storage"], "--study", "one"]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    trials = {t.params["method"]: t for t in load_study(env, "one").get_trials()}
    assert (
        trials.keys() == {"letkf", "climatology"}
        and "assimilator.radius" not in trials["climatology"].params
    )
    trial = trials["letkf"]
    assert trial.state == TrialState.COMPLETE and trial.params["assimilator.radius"] == 3.0
    cfg = config.load(
        env["config"],
        [
            *SHORT,
            f"tracking.experiment={env['experiment']}",
            "obs.density=0.5",
            "method=letkf",
            "assimilator.radius=3.0",
            "sweep=null",
        ],
    )
    direct = run_method(cfg, make_osse(cfg), "letkf")
    assert trial.value == pytest.approx(direct.summary["crps_a"], rel=1e-5)
    assert trial.user_attrs[sweep.SUMMARY]["rmse_a"] == pytest.approx(
        direct.summary["rmse_a"], rel=1e-5
    )
    # ssr objective: |ssr - 1|
    assert sweep.objective_value({"ssr_a": 0.8}, "ssr_a") == pytest.approx(0.2)
    assert sweep.objective_value({"ssr_a": 1.3}, "ssr_a") == pytest.approx(0.3)


def test_resume_after_kill_9_mid_trial(env):
    """A worker is killed (SIGKILL) while it runs a trial; the same command again notices the
    stale trial (no heartbeat for the grace period), retries it and completes the grid with
    every point COMPLETE exactly once."""
    name = "killed"
    cfg = config.load(env["config"], [*SHORT, f"tracking.experiment={env['experiment']}", GRID])
    study, budget = sweep.prepare(cfg, env["storage"], name)
    assert budget == 4 and sweep.study_tally(study, cfg.sweep).waiting == 4
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ensda.cli",
            "sweep-worker",
            "--storage",
            env["storage"],
            "--study",
            name,
        ]
    )
    try:
        running = wait_for_a_running_trial(env, name, worker)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    killed = running[0]

    cmd = ["sweep", env["config"], *sets(env, GRID), "--storage", env["storage"], "--study", name]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    study = load_study(env, name)
    assert completed_points(study) == GRID_POINTS
    lost = study.get_trials()[killed.number]
    assert lost.state == TrialState.FAIL and sweep.FAILURE not in lost.user_attrs
    retries = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == killed.number]
    assert (
        len(retries) == 1
        and retries[0].state == TrialState.COMPLETE
        and retries[0].params == lost.params
    )
    # MLflow: the killed attempt FAILED with the reason, the retry FINISHED; 4 finished children
    client = MlflowClient()
    dead = client.get_run(killed.user_attrs[sweep.RUN_ID])
    assert dead.info.status == "FAILED" and "worker lost" in dead.data.tags["ensda.failure"]
    parent, runs = children(study.user_attrs[sweep.STUDY_PARENT])
    assert sorted(r.info.status for r in runs) == ["FAILED"] + ["FINISHED"] * 4
    assert parent.info.status == "FINISHED"


def test_diverging_trial_fails_and_the_sweep_goes_on(env):
    grid = "sweep.params={methods.none.inflation: [50], method: [none, etkf]}"
    cmd = [
        "sweep",
        env["config"],
        *sets(env, grid),
        "--storage",
        env["storage"],
        "--study",
        "diverge",
    ]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    trials = {t.params["method"]: t for t in load_study(env, "diverge").get_trials()}
    assert trials["none"].state == TrialState.FAIL
    assert "non-finite" in trials["none"].user_attrs[sweep.FAILURE]
    assert trials["etkf"].state == TrialState.COMPLETE and trials["etkf"].value > 0
    run = MlflowClient().get_run(trials["none"].user_attrs[sweep.RUN_ID])
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["ensda.failure"]
    assert "failed" in result.output
    # a diverged point counts as done: the same command runs nothing again
    assert runner.invoke(app, cmd).exit_code == 0
    assert len(load_study(env, "diverge").get_trials()) == 2


def test_a_trial_that_raises_is_final_with_its_reason_and_the_sweep_exits_non_zero(env):
    """A trial whose run raises (here: ens-diffusion with no checkpoint) is FAIL with the
    exception's type and message in Optuna, MLflow and the table, is not rerun, and the sweep
    exits 1 with its parent run FAILED (a divergence alone leaves it 0, test above)."""
    missing = "methods.ens-diffusion.checkpoint=no/such/checkpoint"
    grid = "sweep.params={method: [ens-diffusion, etkf]}"
    cmd = ["sweep", env["config"], *sets(env, grid, missing), "--storage", env["storage"]]
    cmd += ["--study", "raises"]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 1, result.output
    assert "failed for a reason other than divergence" in result.output
    trials = {t.params["method"]: t for t in load_study(env, "raises").get_trials()}
    bad = trials["ens-diffusion"]
    assert bad.state == TrialState.FAIL and bad.user_attrs[sweep.FAILURE_KIND] == "error"
    reason = bad.user_attrs[sweep.FAILURE]
    assert reason.startswith("ValueError: ") and "no ens-diffusion checkpoint at no/such" in reason
    assert "ValueError" in result.output  # the table shows the reason, not a guess
    assert trials["etkf"].state == TrialState.COMPLETE
    parent, runs = children(load_study(env, "raises").user_attrs[sweep.STUDY_PARENT])
    assert parent.info.status == "FAILED" and "checkpoint" in parent.data.tags["ensda.failure"]
    failed_run = MlflowClient().get_run(bad.user_attrs[sweep.RUN_ID])
    assert failed_run.info.status == "FAILED"
    assert failed_run.data.tags["ensda.failure"] == reason
    # final: the same command reruns nothing and still exits 1
    assert runner.invoke(app, cmd).exit_code == 1
    assert len(load_study(env, "raises").get_trials()) == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_an_interrupted_trial_runs_again_on_resume(env, sig):
    """SIGTERM and Ctrl-C (SIGINT) on a worker mid-trial behave the same: the trial is marked
    interrupted (its MLflow run KILLED), and the next launch reruns the same point at once
    (no wait for a heartbeat) and completes the grid, every point COMPLETE once."""
    name = f"interrupted-{sig.name}"
    # long enough (a few seconds of cycling) that the signal lands mid-trial: with 150 cycles
    # a loaded machine let the trial finish first (COMPLETE before the signal took effect)
    long = "cycles=3000"
    cfg = config.load(
        env["config"], [*SHORT, f"tracking.experiment={env['experiment']}", GRID, long]
    )
    study, _ = sweep.prepare(cfg, env["storage"], name)
    worker = subprocess.Popen(
        [sys.executable, "-m", "ensda.cli", "sweep-worker", "--study", name],
        env=os.environ | {sweep.STORAGE_ENV: env["storage"]},
    )
    try:
        running = wait_for_a_running_trial(env, name, worker)
        worker.send_signal(sig)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    stopped = load_study(env, name).get_trials()[running[0].number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs.get(sweep.INTERRUPTED)
    assert MlflowClient().get_run(stopped.user_attrs[sweep.RUN_ID]).info.status == "KILLED"

    cmd = ["sweep", env["config"], *sets(env, GRID, long), "--study", name]
    result = runner.invoke(app, [*cmd, "--storage", env["storage"]])
    assert result.exit_code == 0, result.output
    study = load_study(env, name)
    assert completed_points(study) == GRID_POINTS
    reruns = [t for t in study.get_trials() if t.user_attrs.get(sweep.RETRY_OF) == stopped.number]
    assert len(reruns) == 1 and reruns[0].state == TrialState.COMPLETE
    assert reruns[0].params == stopped.params


def test_random_sampler_runs_the_trial_budget_and_resumes_to_a_larger_one(env):
    space = "sweep.params={assimilator.inflation: {low: 1.0, high: 1.1}}"
    cmd = [
        "sweep",
        env["config"],
        *sets(env, space, "sweep.sampler=random", "method=etkf", "cycles=60"),
        "--storage",
        env["storage"],
        "--study",
        "rnd",
    ]
    assert runner.invoke(app, [*cmd, "--trials", "2"]).exit_code == 0
    assert runner.invoke(app, [*cmd, "--trials", "3"]).exit_code == 0
    trials = load_study(env, "rnd").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(1.0 <= t.params["assimilator.inflation"] <= 1.1 for t in trials)
    # another config under the same study name is refused
    other = runner.invoke(
        app,
        [
            *cmd[:-4],
            "--set",
            "obs.r_std=0.5",
            "--storage",
            env["storage"],
            "--study",
            "rnd",
            "--trials",
            "3",
        ],
    )
    assert other.exit_code == 2 and "obs.r_std" in other.output
    # a study started before a config field existed (stored without it) resumes with its default;
    # one whose stored config this version cannot read is refused with the reason
    study = load_study(env, "rnd")
    stored = study.user_attrs[sweep.STUDY_CONFIG]
    del stored["lead_time"]["stride"]
    study.set_user_attr(sweep.STUDY_CONFIG, stored)
    assert runner.invoke(app, [*cmd, "--trials", "3"]).exit_code == 0
    stored["lead_time"]["strides"] = 2
    study.set_user_attr(sweep.STUDY_CONFIG, stored)
    old = runner.invoke(app, [*cmd, "--trials", "3"])
    assert old.exit_code == 2 and "cannot read" in old.output and "lead_time.strides" in old.output


def test_worker_setups_pin_devices():
    two_gpus = sweep.worker_setups(3, gpus=2, cores=[0, 1])
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _, _ in two_gpus] == ["0", "1", "0"]
    assert all(
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for env, _, _ in two_gpus
    )  # shared GPU
    cpu = sweep.worker_setups(2, gpus=0, cores=[0, 1, 2, 3])
    assert [cores for _, _, cores in cpu] == [[0, 1], [2, 3]]
    assert all(
        env["JAX_PLATFORMS"] == "cpu" and "device_count" not in env["XLA_FLAGS"]
        for env, _, _ in cpu
    )
    assert [cores for _, _, cores in sweep.worker_setups(3, gpus=0, cores=[0, 1])] == [
        [0],
        [1],
        [0],
    ]
    forced = sweep.worker_setups(
        3, gpus=0, cores=[0, 1], xla_flags="--xla_force_host_platform_device_count=2"
    )
    assert [env[sweep.JAX_DEVICE_ENV] for env, _, _ in forced] == ["0", "1", "0"]
    assert [label for _, label, _ in forced] == [
        "cpu device 0 (cores 0)",
        "cpu device 1 (cores 1)",
        "cpu device 0 (cores 0)",
    ]
