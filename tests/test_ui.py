"""`ensda ui` serves the MLflow UI on 127.0.0.1 and the runs of `ensda run` show up in it;
`ensda ui --optuna` also serves optuna-dashboard on the Optuna storage, and Ctrl-C stops both."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: dict | None = None):
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, resp.read()


def _wait_for(url: str, server: subprocess.Popen, limit_s: float = 120.0) -> bytes:
    """GET ``url`` until it answers 200 (the server must stay up); returns the body."""
    deadline = time.time() + limit_s
    while True:
        try:
            status, body = _get(url)
            if status == 200:
                return body
        except OSError:
            pass
        assert server.poll() is None, "the UI process exited"
        assert time.time() < deadline, f"{url} did not answer within {limit_s:.0f} s"
        time.sleep(1)


@pytest.mark.slow
def test_run_shows_up_in_ui(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    ensda = [sys.executable, "-m", "ensda.cli"]
    run = subprocess.run(
        [
            *ensda,
            "run",
            str(ROOT / "experiments/configs/l96.yaml"),
            "--method",
            "3dvar",
            "--set",
            "cycles=100",
            "--set",
            "burn_in=10",
            "--json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    run_id = json.loads(run.stdout.strip().splitlines()[-1])["mlflow_run_id"]

    port = _free_port()
    server = subprocess.Popen(
        [*ensda, "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/health", server)
        _, body = _get(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 10})
        experiments = {e["name"]: e for e in json.loads(body)["experiments"]}
        # the kind that makes MLflow 3's UI open the runs table, not the GenAI overview
        assert {t["key"]: t["value"] for t in experiments["l96"]["tags"]}[
            "mlflow.experimentKind"
        ] == "custom_model_development"
        experiments = {name: e["experiment_id"] for name, e in experiments.items()}
        _, body = _get(
            f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiments["l96"]]}
        )
        runs = json.loads(body)["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        status, page = _get(f"{base}/")
        assert status == 200 and b"<html" in page.lower()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_ui_optuna_serves_both_and_ctrl_c_stops_both(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="ui-study", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=2)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    port, optuna_port = _free_port(), _free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ensda.cli",
                "ui",
                "--port",
                str(port),
                "--optuna",
                "--optuna-port",
                str(optuna_port),
                "--storage",
                storage,
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    groups = []
    try:
        deadline = time.time() + 60
        while (
            not groups and ui.poll() is None and time.time() < deadline
        ):  # first, so that cleanup can find them
            lines = [x for x in log.read_text().splitlines() if x.startswith("process groups: ")]
            groups = (
                [int(g) for g in lines[0].removeprefix("process groups: ").split(", ")]
                if lines
                else []
            )
            time.sleep(0.2)
        assert len(groups) == 2 and all(_group_alive(g) for g in groups), log.read_text()
        body = _wait_for(f"http://127.0.0.1:{optuna_port}/api/studies", ui)
        assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["ui-study"]
        assert _wait_for(f"http://127.0.0.1:{port}/health", ui)
        ui.send_signal(
            signal.SIGINT
        )  # Ctrl-C: the terminal signals ensda's group, not the servers'
        assert ui.wait(timeout=90) == 0
        deadline = time.time() + 20
        while any(_group_alive(g) for g in groups) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_group_alive(g) for g in groups), "a server process outlived ensda ui"
        for p in (port, optuna_port):
            with pytest.raises(OSError):
                _get(f"http://127.0.0.1:{p}/")
    finally:
        for pgid in [ui.pid, *groups]:
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
