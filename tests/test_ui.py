"""`ensda ui` serves the MLflow UI on 127.0.0.1 and the runs of `ensda run` show up in it."""

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


@pytest.mark.slow
def test_run_shows_up_in_ui(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    ensda = [sys.executable, "-m", "ensda.cli"]
    run = subprocess.run(
        [*ensda, "run", str(ROOT / "experiments/configs/l96.yaml"), "--method", "3dvar",
         "--set", "cycles=100", "--set", "burn_in=10", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    run_id = json.loads(run.stdout.strip().splitlines()[-1])["mlflow_run_id"]

    port = _free_port()
    server = subprocess.Popen([*ensda, "ui", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if _get(f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, "the UI process exited"
            assert time.time() < deadline, "the UI did not answer within 120 s"
            time.sleep(1)
        _, body = _get(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 10})
        experiments = {e["name"]: e["experiment_id"] for e in json.loads(body)["experiments"]}
        assert "l96" in experiments
        _, body = _get(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiments["l96"]]})
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
