"""The track stage against a real `mlflow server` (sqlite + proxied artifact root).

Read back over REST."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, serving
from pipeline.core.config import load_params
from pipeline.tracking.runs import TrackingError, log_pipeline_run

REPO = Path(__file__).resolve().parents[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def mlflow_server(tmp_path):
    """A lean server (as in `make ui`) on a free loopback port; yields its URL."""
    port = free_port()
    workdir = tmp_path / "server"
    workdir.mkdir()
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(mlflow_exe),
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir}/mlflow.db",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--workers",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with serving(cmd, url + "/health", workdir / "server.log", cwd=workdir, env=env):
        yield url, workdir


def make_project(root: Path) -> Path:
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "metrics").mkdir()
    (root / "metrics" / "evaluate.json").write_text(json.dumps({"si_rmse": 0.29, "rmse": 1.1}))
    (root / "metrics" / "benchmark.json").write_text(json.dumps({"median_ms": 37.0}))
    (root / "reports").mkdir()
    (root / "reports" / "history.csv").write_text("epoch,loss\n0,2.0\n1,1.5\n2,1.25\n")
    (root / "models").mkdir()
    (root / "models" / "model.tflite").write_bytes(b"TFL3" + bytes(4096))
    return root


def test_track_stage_logs_to_a_real_server(mlflow_server, tmp_path, monkeypatch):
    url, server_dir = mlflow_server
    project = make_project(tmp_path / "proj")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": url,
        "DVC_EXP_NAME": "srv-exp",
    }
    env.pop("DVC_EXP_BASELINE_REV", None)
    proc = subprocess.run(
        [sys.executable, "-m", "stages.track", "--experiment", "srv"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = proc.stdout.split("MLflow run ", 1)[1].split()[0]

    run = get_json(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert params["train.arch"] == "mobile_unet" and params["track.experiment"] == "mai-depth"
    assert metrics["evaluate.si_rmse"] == pytest.approx(0.29)
    assert metrics["benchmark.median_ms"] == pytest.approx(37.0)
    assert run["info"]["run_name"] == "srv-exp" and tags["dvc.exp_name"] == "srv-exp"
    assert run["info"]["status"] == "FINISHED"

    query = urllib.parse.urlencode({"run_id": run_id, "metric_key": "history.loss"})
    history = get_json(f"{url}/api/2.0/mlflow/metrics/get-history?{query}")["metrics"]
    assert sorted((h["step"], h["value"]) for h in history) == [(0, 2.0), (1, 1.5), (2, 1.25)]

    search = json.dumps({"experiment_ids": [run["info"]["experiment_id"]]}).encode()
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/runs/search",
        data=search,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        found = [r["info"]["run_id"] for r in json.loads(resp.read())["runs"]]
    assert found == [run_id]

    # artifacts went through the server's proxy into its artifact root, not into the project
    query = urllib.parse.urlencode({"run_id": run_id, "path": "models"})
    files = get_json(f"{url}/api/2.0/mlflow/artifacts/list?{query}")["files"]
    assert [(f["path"], int(f["file_size"])) for f in files] == [("models/model.tflite", 4100)]
    stored = list((server_dir / "artifacts").rglob("model.tflite"))
    assert len(stored) == 1 and stored[0].stat().st_size == 4100
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()

    # The same store opened directly (sqlite) cannot write that experiment's proxied artifacts:
    # refused up front, before a half-logged run exists.
    from mlflow import MlflowClient

    db_uri = f"sqlite:///{server_dir}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db_uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    with pytest.raises(TrackingError, match="stores artifacts through a tracking server"):
        log_pipeline_run(
            project_root=project, params=load_params(project / "params.yaml"), experiment_name="srv"
        )
    assert len(MlflowClient(tracking_uri=db_uri).search_runs([run["info"]["experiment_id"]])) == 1

    # "already tracked" through the server: with a dvc.lock, the second track finds the
    # first one's run by its pipeline key (the MLflow client path, not the sqlite shortcut)
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    runs = [
        subprocess.run(
            [sys.executable, "-m", "stages.track", "--experiment", "srv"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr[-2000:]
    keyed = runs[0].stdout.split("MLflow run ", 1)[1].split()[0]
    assert runs[1].stdout.startswith(f"already tracked: MLflow run {keyed} of experiment 'srv'")
